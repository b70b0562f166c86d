"""RewardGroup on a real local Ray without the trainer: several jobs (one per generator share)
over two actors come back in submission and input order; a dead actor's slices are retried once
on a fresh actor; a slice whose retry dies too raises Ray's actor error (the run's dead-actor
path)."""

from __future__ import annotations

import random

import pytest

from egsw_rl.rewards import math_reward

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pairs(dataset):
    rows = random.Random(3).sample(dataset("math500"), 30)
    comps = [r["solution"] for r in rows]
    golds = [r["answer"] for r in rows[:20]] + [r["answer"] for r in rows[21:]] + [rows[0]["answer"]]
    want = [math_reward(c, g, timeout_s=None) for c, g in zip(comps, golds)]
    assert 0 < sum(w.status == "correct" for w in want) < len(want)  # an order mix-up would show
    return comps, golds, want


@pytest.fixture
def group(ray_session):
    from egsw_rl.actors.reward import RewardGroup

    g = RewardGroup({"timeout_s": 10.0}, workers=[1, 1])
    yield g
    g.shutdown()


def key(r):
    return (r.status, r.score, r.parsed)


def test_shares_in_order_across_actors(group, pairs):
    comps, golds, want = pairs
    cuts = [0, 7, 8, 30]  # three shares of unequal size, one of a single sample
    jobs = [group.submit(comps[a:b], golds[a:b]) for a, b in zip(cuts, cuts[1:])]
    results, metrics = group.result(jobs)
    assert [key(r) for r in results] == [key(w) for w in want]
    assert sum(group.scored()) == len(comps) and all(n > 0 for n in group.scored())
    assert metrics["reward/correct_count"] == sum(w.status == "correct" for w in want)
    assert metrics["reward/actor_restarts"] == 0


def test_dead_actor_retried_once_then_fatal(group, pairs):
    import ray

    comps, golds, want = pairs
    ray.kill(group.actors[1], no_restart=True)
    results, metrics = group.score(comps, golds)
    assert [key(r) for r in results] == [key(w) for w in want]
    assert metrics["reward/actor_restarts"] == 1

    # the fresh actor dies too before the retry is answered: the slice is not retried again
    real_start = group._start

    def start_dead(i):
        a = real_start(i)
        ray.kill(a, no_restart=True)
        return a

    group._start = start_dead
    ray.kill(group.actors[0], no_restart=True)
    with pytest.raises(ray.exceptions.RayActorError):
        group.score(comps, golds)
