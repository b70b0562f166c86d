"""The reward actor on a real local Ray: same scores as the main process, hard timeouts, worker
replacement after a stuck sample or a SIGKILL, and the pure function off the main thread."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

from egsw_rl.rewards import math_reward

pytestmark = pytest.mark.integration

TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def pairs(dataset) -> tuple[list[str], list[str]]:
    rows = dataset("math500")
    rng = random.Random(7)
    picked = rng.sample(rows, 50)
    completions = [r["solution"] for r in picked]
    # half against their own answer, half against another problem's answer
    golds = [r["answer"] for r in picked[:25]] + [r["answer"] for r in picked[26:]] + [picked[0]["answer"]]
    return completions, golds


@pytest.fixture(scope="module")
def actor(ray_session):
    from egsw_rl.actors.reward import RewardActor

    ray = ray_session
    a = RewardActor.options(num_cpus=1).remote(
        workers=2, timeout_s=TIMEOUT_S, num_actors=1, _debug_sleep_s=60.0
    )
    assert ray.get(a.ready.remote(), timeout=120)
    yield a
    ray.get(a.close.remote(), timeout=30)
    ray.kill(a)


def test_actor_and_threads_score_a_correct_answer_one(ray_session, actor):
    ray = ray_session
    completion, gold = r"so $r = \boxed{\left( 3, \frac{\pi}{2} \right)}$", r"(3, \frac{\pi}{2})"
    results, metrics = ray.get(actor.score.remote([completion], [gold]), timeout=60)
    assert (results[0].score, results[0].status) == (1.0, "correct")
    assert metrics["reward/correct_count"] == 1

    out = []
    t = threading.Thread(target=lambda: out.append(math_reward(completion, gold)))
    t.start()
    t.join(60)
    assert (out[0].score, out[0].status) == (1.0, "correct")

    # the pure function on a Ray actor's worker threads (a threaded actor runs methods off the
    # main thread, where math-verify's signal.alarm timeouts would fail and score 0)
    @ray.remote(num_cpus=0, max_concurrency=2)
    class Threaded:
        def grade(self, c, g, timeout_s=5.0):
            t0 = time.monotonic()
            res = math_reward(c, g, timeout_s=timeout_s)
            return threading.current_thread() is threading.main_thread(), res, time.monotonic() - t0

    th = Threaded.remote()
    on_main, res, _ = ray.get(th.grade.remote(completion, gold), timeout=60)
    # and its deadline holds there too: the grading worker is killed, the call returns
    _, tower, elapsed = ray.get(th.grade.remote(r"\boxed{9^{9^{9^{9^{9}}}}}", "1", 1.5), timeout=60)
    ray.kill(th)
    assert on_main is False
    assert (res.score, res.status) == (1.0, "correct")
    assert (tower.score, tower.status) == (0.0, "timeout") and elapsed < 3.5


def test_actor_and_thread_scores_equal_main_process_scores(ray_session, actor, pairs):
    ray = ray_session
    completions, golds = pairs
    main = [math_reward(c, g) for c, g in zip(completions, golds)]
    assert sum(r.status == "correct" for r in main) == 25
    assert sum(r.status == "wrong" for r in main) == 25
    remote, metrics = ray.get(actor.score.remote(completions, golds), timeout=120)
    threaded: list = []
    t = threading.Thread(
        target=lambda: threaded.extend(math_reward(c, g) for c, g in zip(completions, golds))
    )
    t.start()
    t.join(120)
    assert remote == main
    assert threaded == main
    assert metrics["reward/correct_count"] == 25 and metrics["reward/wrong_count"] == 25


def test_stuck_sample_times_out_and_the_worker_is_replaced(ray_session, actor):
    ray = ray_session
    before = set(ray.get(actor.worker_pids.remote()))
    t0 = time.monotonic()
    results, metrics = ray.get(
        actor.score.remote(
            ["<debug-sleep> \\boxed{1}", r"\boxed{9^{9^{9^{9^{9}}}}}", r"\boxed{1}"], ["1", "1", "1"]
        ),
        timeout=60,
    )
    wall = time.monotonic() - t0
    assert [r.status for r in results] == ["timeout", "timeout", "correct"]
    assert metrics["reward/timeout_count"] == 2 and metrics["reward/worker_restarts"] == 2
    assert wall < 2 * TIMEOUT_S + 4.0
    after = set(ray.get(actor.worker_pids.remote()))
    assert len(after) == 2 and not (after & before)
    results, metrics = ray.get(actor.score.remote([r"\boxed{2}", r"\boxed{3}"], ["2", "2"]), timeout=60)
    assert [r.status for r in results] == ["correct", "wrong"]
    assert metrics["reward/worker_restarts"] == 0


def test_worker_sigkilled_mid_batch_is_replaced_and_the_batch_returns(ray_session):
    from egsw_rl.actors.reward import RewardActor

    ray = ray_session
    a = RewardActor.options(num_cpus=1).remote(workers=2, timeout_s=30.0, _debug_sleep_s=2.0)
    try:
        pids = ray.get(a.worker_pids.remote(), timeout=120)
        ref = a.score.remote(["<debug-sleep> \\boxed{7}"] * 4, ["7"] * 4)
        time.sleep(1.0)  # both workers are inside their first 2 s sample
        os.kill(pids[0], signal.SIGKILL)
        results, metrics = ray.get(ref, timeout=60)
        assert [r.status for r in results] == ["correct"] * 4
        assert metrics["reward/worker_restarts"] == 1
        now = ray.get(a.worker_pids.remote())
        assert pids[0] not in now and pids[1] in now
        results, _ = ray.get(a.score.remote([r"\boxed{7}"], ["7"]), timeout=60)
        assert results[0].status == "correct"
    finally:
        ray.kill(a)
    # the pool's processes do not outlive the actor
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(p) for p in now):
        time.sleep(0.2)
    assert not any(_alive(p) for p in now)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
