"""The pure parts of the weight-sync sub-benchmark: the trainer's pushes against memcpy and gloo,
the split of timed pushes, the per-bucket and per-tensor fits."""

import math

import pytest

from egsw_rl.bench import sync


def test_sync_summary_ratio_to_memcpy_and_gloo(step_row):
    rows = [step_row(s, sync=0.5) for s in range(1, 4)]
    s = sync.sync_summary(rows, 1, memcpy_bytes_per_s=4.0e6, gloo_bytes_per_s=1.0e7)
    assert s["bytes_per_s"] == pytest.approx(2.0e6)
    assert s["ratio_to_memcpy"] == pytest.approx(0.5)
    assert s["ratio_to_gloo"] == pytest.approx(0.2)
    assert s["send_s"] == 0.2 and s["load_s"] == 0.1
    assert "ratio_to_gloo" not in sync.sync_summary(rows, 1, 4.0e6)


def test_fit_line_recovers_slope_and_fixed_part():
    xs = [3, 40, 272]
    f = sync.fit_line(xs, [0.5 + 0.002 * x for x in xs])
    assert f["slope"] == pytest.approx(0.002) and f["fixed"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        sync.fit_line([5, 5], [1.0, 2.0])


def test_fit_load_separates_per_tensor_and_per_byte_costs():
    tensors, nbytes = [39, 272, 100], [1.8e6, 5.4e8, 1.0e8]
    secs = [1e-3 * t + 2e-9 * b for t, b in zip(tensors, nbytes)]
    f = sync.fit_load(tensors, nbytes, secs)
    assert f["per_tensor_s"] == pytest.approx(1e-3) and f["per_byte_s"] == pytest.approx(2e-9)
    with pytest.raises(ValueError):  # proportional models cannot tell the two apart
        sync.fit_load([10, 20], [1e6, 2e6], [0.1, 0.2])


def test_sync_push_summary_medians_of_the_split():
    pushes = [
        {
            "sync/total_s": t,
            "sync/gather_s": 0.1,
            "sync/transfer_s": 0.2,
            "sync/load_s": 0.3,
            "sync/other_s": t - 0.6,
            "sync/header_s": 0.01,
            "sync/buckets": 3.0,
        }
        for t in (1.0, 3.0, 2.0)
    ]
    s = sync.sync_push_summary(pushes)
    assert s["total_s"] == 2.0 and s["other_s"] == pytest.approx(1.4) and s["buckets"] == 3.0
    assert math.isnan(sync.sync_push_summary([{"sync/total_s": 1.0}])["gather_s"])  # shm: no split keys
    with pytest.raises(ValueError):
        sync.sync_push_summary([])
