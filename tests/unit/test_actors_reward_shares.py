"""The pure parts of `reward.num_actors` / `reward.workers: auto`: how a batch is split between
reward actors, how the slices' results come back in input order, how their metrics merge, and
how many grading processes `auto` gives each actor on its node."""

from __future__ import annotations

import random

import pytest

from egsw_rl.actors.reward import (
    AUTO_HEADROOM_CPUS,
    AUTO_MAX_WORKERS,
    auto_workers,
    gather_in_order,
    merge_share_metrics,
    plan_workers,
    split_shares,
)


@pytest.mark.parametrize("n,k", [(0, 1), (1, 1), (1, 3), (7, 2), (8, 2), (64, 3), (8192, 2), (5, 8)])
def test_split_shares_covers_every_index_once_in_order(n, k):
    shares = split_shares(n, k)
    assert len(shares) == k
    assert shares[0][0] == 0 and shares[-1][1] == n
    for (_s0, e0), (s1, _) in zip(shares, shares[1:]):
        assert e0 == s1  # contiguous, in order
    sizes = [e - s for s, e in shares]
    assert all(x >= 0 for x in sizes) and sum(sizes) == n
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # the larger slices first


def test_split_shares_refuses_no_actor():
    with pytest.raises(ValueError):
        split_shares(4, 0)


def test_gather_in_order_whatever_the_arrival_order():
    n = 23
    items = [f"r{i}" for i in range(n)]
    pieces = [(s, e, items[s:e]) for s, e in split_shares(n, 4)]
    random.Random(0).shuffle(pieces)
    assert gather_in_order(n, pieces) == items


def test_gather_in_order_refuses_gaps_overlaps_and_short_slices():
    with pytest.raises(ValueError, match="never scored"):
        gather_in_order(4, [(0, 2, ["a", "b"])])
    with pytest.raises(ValueError, match="twice"):
        gather_in_order(4, [(0, 3, ["a", "b", "c"]), (2, 4, ["c", "d"])])
    with pytest.raises(ValueError, match="returned 1 results"):
        gather_in_order(2, [(0, 2, ["a"])])
    assert gather_in_order(0, []) == []


def _m(n, correct, latency, p50, p99, restarts=0, score=None):
    return {
        "reward/latency_s": latency,
        "reward/correct_count": correct,
        "reward/wrong_count": n - correct,
        "reward/mean_score": correct / n if score is None else score,
        "reward/sample_p50_s": p50,
        "reward/sample_p99_s": p99,
        "reward/worker_restarts": restarts,
    }


def test_merge_share_metrics():
    # actor 0 scored two slices (one per generator share), actor 1 one
    parts = [
        (0, _m(4, 1, 2.0, 0.1, 0.5), 4),
        (1, _m(4, 3, 3.0, 0.3, 0.9, restarts=1), 4),
        (0, _m(2, 2, 1.5, 0.2, 0.4), 2),
    ]
    out = merge_share_metrics(parts)
    assert out["reward/correct_count"] == 6 and out["reward/wrong_count"] == 4
    assert out["reward/mean_score"] == pytest.approx(0.6)
    assert out["reward/worker_restarts"] == 1
    assert out["reward/latency_s"] == pytest.approx(3.5)  # actor 0: 2.0 + 1.5, the busiest
    assert out["reward/sample_p50_s"] == pytest.approx((0.1 * 4 + 0.3 * 4 + 0.2 * 2) / 10)
    assert out["reward/sample_p99_s"] == pytest.approx(0.9)
    assert merge_share_metrics([]) == {}


@pytest.mark.parametrize(
    "cpus,reserved,actors,expected",
    [
        (64, 37, 2, 12),  # the paper's node: 4 x 8 learner CPUs, 4 engines, 2 reward slots
        (64, 37, 1, 25),
        (256, 37, 1, AUTO_MAX_WORKERS),  # capped
        (8, 7.5, 1, 1),  # nothing left: still one grader
        (2, 4, 1, 1),
    ],
)
def test_auto_workers(cpus, reserved, actors, expected):
    assert auto_workers(cpus, reserved, actors) == expected


def test_auto_workers_formula():
    for cpus in range(1, 200, 7):
        for reserved in (0, 3.5, 20):
            for k in (1, 2, 3):
                free = cpus - reserved - AUTO_HEADROOM_CPUS
                want = min(AUTO_MAX_WORKERS, max(1, int(free // k)))
                assert auto_workers(cpus, reserved, k) == want
    with pytest.raises(ValueError):
        auto_workers(8, 0, 0)


class _Cfg(dict):
    __getattr__ = dict.__getitem__


def _cfg(num_actors, ranks=4, gens=4, cpus_per_rank=8.0, cpus_per_gen=1.0):
    return _Cfg(
        learner=_Cfg(num_ranks=ranks, num_nodes=1, gpus_per_node=4, cpus_per_rank=cpus_per_rank),
        rollout=_Cfg(tensor_parallel_size=1, num_generators=gens, cpus_per_generator=cpus_per_gen),
        reward=_Cfg(num_actors=num_actors),
    )


def test_plan_workers_counts_what_the_run_reserves_on_each_node():
    from egsw_rl import placement

    plan = placement.make_plan(_cfg(2), "cuda")
    placement.assign(plan, {"a": {"CPU": 64, "GPU": 8}})
    assert plan_workers("auto", plan, {"a": 64}) == [12, 12]
    assert plan_workers(3, plan, {"a": 64}) == [3, 3]
    # learners fill node a; the engines and reward actors land on node b (fewer CPUs reserved there)
    plan = placement.make_plan(_cfg(3), "cuda")
    placement.assign(plan, {"a": {"CPU": 32, "GPU": 4}, "b": {"CPU": 32, "GPU": 4}})
    assert set(plan.nodes[i] for i in plan.of("reward")) == {"b"}
    # b: 32 CPUs - (4 engines x 1 + 3 x 0.5) - 2 = 24.5 -> 8 per actor
    assert plan_workers("auto", plan, {"a": 32, "b": 32}) == [8, 8, 8]


def test_plan_workers_auto_needs_an_assigned_plan():
    from egsw_rl import placement

    with pytest.raises(ValueError, match="assigned"):
        plan_workers("auto", placement.make_plan(_cfg(1), "cuda"), {})
