"""The pure timing arithmetic of a weight sync: labelled laps on one timeline and the split of a
group-transport sync into gather, transfer and load from the sender's gathers and an engine's
waits."""

import pytest
import torch

from egsw_rl.sync import timing


def test_lap_intervals_label_each_interval_by_its_closing_mark_and_merge_repeats():
    labels = [None, "gather", "header", "payload", "gather", "gather", "header", "payload", "gather"]
    stamps = [10.0, 10.5, 10.6, 11.6, 11.7, 12.0, 12.1, 13.1, 13.15]
    got = timing.lap_intervals(labels, stamps)
    assert [k for k, _ in got] == ["gather", "header", "payload", "gather", "header", "payload", "gather"]
    assert [round(v, 6) for _, v in got] == [0.5, 0.1, 1.0, 0.4, 0.1, 1.0, 0.05]
    lists = timing.lap_lists(got)
    assert [round(v, 6) for v in lists["gather"]] == [0.5, 0.4, 0.05]
    assert lists["payload"] == pytest.approx([1.0, 1.0])
    assert sum(v for _, v in got) == pytest.approx(stamps[-1] - stamps[0])


def test_cpu_laps_partition_the_wall_time():
    laps = timing.Laps(torch.device("cpu"))
    for label in ("a", "b", "a"):
        sum(range(2000))
        laps.mark(label)
    got = laps.intervals()
    assert [k for k, _ in got] == ["a", "b", "a"] and all(v >= 0 for _, v in got)


def test_split_sync_hidden_and_exposed_gather_headers_and_start():
    # bucket 0: the engine waited 2.0 s for the first header, of which 0.5 s was the gather
    # bucket 1: gather 0.3 s while the engine was still loading bucket 0 (header wait 0.01 s):
    #           0.01 s exposed, 0.29 s hidden, no header round trip left over
    # bucket 2: gather 0.1 s, header wait 0.15 s: 0.1 s gather + 0.05 s header round trip
    s = timing.split_sync(
        gathers=[0.5, 0.3, 0.1, 0.02], headers=[2.0, 0.01, 0.15], payloads=[1.0, 1.0, 0.5], load_s=3.0
    )
    assert s["buckets"] == 3
    assert s["start_s"] == pytest.approx(1.5)
    assert s["gather_s"] == pytest.approx(0.5 + 0.01 + 0.1)
    assert s["gather_hidden_s"] == pytest.approx(0.29)
    assert s["header_s"] == pytest.approx(0.05)
    assert s["transfer_s"] == pytest.approx(0.05 + 2.5)
    assert s["load_s"] == 3.0
    # the engine's timeline is exactly start + gather waited for + transfer + load
    assert s["start_s"] + s["gather_s"] + s["transfer_s"] + s["load_s"] == pytest.approx(
        sum([2.0, 0.01, 0.15]) + 2.5 + 3.0
    )


def test_split_sync_refuses_missing_waits_and_handles_no_buckets():
    with pytest.raises(ValueError):
        timing.split_sync([0.1], [0.1, 0.1], [1.0, 1.0], 0.0)
    empty = timing.split_sync([], [], [], 0.2)
    assert empty["buckets"] == 0 and empty["transfer_s"] == 0 and empty["load_s"] == 0.2
