"""RewardPool without Ray: hard per-sample timeouts, worker replacement, order, hostile input.

Small pools (2 workers) and short timeouts: the machine has 2 cores shared with other work.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from egsw_rl.rewards import STATUSES, RewardPool, math_reward

TIMEOUT_S = 2.0
MARGIN_S = 3.0  # process replacement + a loaded 2-core box
MARKER = Path("/tmp/egsw_rl_reward_pool_pwned")
TOWER = r"so the answer is \boxed{9^{9^{9^{9^{9}}}}}"  # SymPy would evaluate this for ever


@pytest.fixture(scope="module")
def pool():
    with RewardPool(workers=2, timeout_s=TIMEOUT_S, _debug_sleep_s=60.0) as p:
        yield p


@pytest.fixture(scope="module")
def math500(dataset) -> list[dict]:
    return dataset("math500")


def test_pool_matches_in_process_scores_in_input_order(pool, math500):
    rows = math500[:40]
    completions = [r["solution"] for r in rows] + [r"\boxed{-1}"] * 5 + ["no answer here"] * 5
    golds = [r["answer"] for r in rows] + [r["answer"] for r in rows[:5]] + ["3"] * 5
    results, metrics = pool.score(completions, golds)
    expected = [math_reward(c, g, timeout_s=None) for c, g in zip(completions, golds)]
    assert results == expected
    assert [r.status for r in results] == ["correct"] * 40 + ["wrong"] * 5 + ["no_answer"] * 5
    assert metrics["reward/correct_count"] == 40
    assert metrics["reward/wrong_count"] == 5
    assert metrics["reward/no_answer_count"] == 5
    assert metrics["reward/timeout_count"] == metrics["reward/error_count"] == 0
    assert metrics["reward/mean_score"] == pytest.approx(40 / 50)
    assert metrics["reward/latency_s"] > 0


def test_stuck_sample_times_out_worker_is_replaced_and_pool_keeps_scoring(pool):
    before = set(pool.worker_pids())
    t0 = time.monotonic()
    results, metrics = pool.score(["<debug-sleep> \\boxed{4}", r"\boxed{4}", r"\boxed{5}"], ["4", "4", "4"])
    wall = time.monotonic() - t0
    assert [r.status for r in results] == ["timeout", "correct", "wrong"]
    assert results[0].score == 0.0 and "2 s" in results[0].message
    assert wall < TIMEOUT_S + MARGIN_S
    assert metrics["reward/timeout_count"] == 1 and metrics["reward/worker_restarts"] == 1
    after = set(pool.worker_pids())
    assert len(after) == 2 and len(after - before) == 1  # exactly the stuck worker was replaced
    results, _ = pool.score([r"\boxed{4}"] * 4, ["4"] * 4)
    assert [r.status for r in results] == ["correct"] * 4


def test_every_hostile_input_returns_within_the_timeout_with_a_status(pool):
    MARKER.unlink(missing_ok=True)
    payload = f"__import__('os').system('touch {MARKER}')"
    hostile = {
        "power tower": (TOWER, "5"),
        "1 MB completion": ("lorem ipsum " * 87_000 + r"\boxed{5}", "5"),
        "10k nested braces": (r"\boxed{" + "{" * 10_000 + "5" + "}" * 10_000 + "}", "5"),
        "20k-term sum": (r"\boxed{" + "+".join(["1"] * 20_000) + "}", "20000"),
        "20k-term sum, unboxed": ("the answer is $" + "+".join(["x"] * 20_000) + "$", "5"),
        "division by zero": (r"\boxed{\frac{1}{0}}", "5"),
        "NUL and surrogates": ("\x00\ud800 \\boxed{5}\udfff", "5"),
        "empty completion": ("", "5"),
        "empty gold": (r"\boxed{5}", ""),
        "python payload": (rf"\boxed{{{payload}}}", "5"),
        "python payload, unboxed": (f"The answer is: {payload}", "5"),
    }
    statuses = {}
    for name, (completion, gold) in hostile.items():
        for _extraction in ("boxed_then_latex",):
            t0 = time.monotonic()
            results, _ = pool.score([completion], [gold])
            wall = time.monotonic() - t0
            assert wall < TIMEOUT_S + MARGIN_S, (name, wall)
            assert len(results) == 1 and results[0].status in STATUSES
            statuses[name] = results[0].status
    assert statuses["power tower"] == "timeout"
    assert statuses["1 MB completion"] == "correct"
    assert statuses["NUL and surrogates"] == "correct"
    assert statuses["empty completion"] == "no_answer"
    assert statuses["empty gold"] == "error"
    assert statuses["10k nested braces"] == statuses["20k-term sum"] == "wrong"
    assert not MARKER.exists(), "model output was executed"


def test_a_sigkilled_worker_is_replaced_and_its_sample_retried():
    with RewardPool(workers=2, timeout_s=20.0, _debug_sleep_s=1.5) as p:
        victim = p.worker_pids()[0]
        killer = threading.Timer(0.7, os.kill, args=(victim, signal.SIGKILL))
        killer.start()
        results, metrics = p.score(["<debug-sleep> \\boxed{4}"] * 4, ["4"] * 4)
        killer.join()
        assert [r.status for r in results] == ["correct"] * 4  # the killed sample was retried
        assert metrics["reward/worker_restarts"] == 1
        assert victim not in p.worker_pids() and len(p.worker_pids()) == 2
        results, _ = p.score([r"\boxed{4}", r"\boxed{3}"], ["4", "4"])
        assert [r.status for r in results] == ["correct", "wrong"]


def test_a_sample_that_kills_workers_twice_is_an_error_and_the_batch_returns():
    with RewardPool(workers=1, timeout_s=20.0, _debug_sleep_s=1.0) as p:
        stop = threading.Event()

        def kill_loop():
            seen = set()
            while not stop.is_set() and len(seen) < 2:
                pid = p.worker_pids()[0]
                if pid not in seen:
                    time.sleep(0.5)  # mid-sample
                    os.kill(pid, signal.SIGKILL)
                    seen.add(pid)
                time.sleep(0.05)

        t = threading.Thread(target=kill_loop)
        t.start()
        results, metrics = p.score(["<debug-sleep> \\boxed{4}", r"\boxed{4}"], ["4", "4"])
        stop.set()
        t.join()
        assert [r.status for r in results] == ["error", "correct"]
        assert "died twice" in results[0].message
        assert metrics["reward/error_count"] == 1 and metrics["reward/worker_restarts"] == 2


def test_pool_refuses_bad_arguments_before_starting():
    with pytest.raises(ValueError, match="reward.sheme"):
        RewardPool(workers=1, sheme="binary")
    with pytest.raises(ValueError, match="reward.workers"):
        RewardPool(workers=0)
    with pytest.raises(ValueError, match="reward.timeout_s"):
        RewardPool(workers=1, timeout_s=0)


def test_pool_checks_batch_shape_and_empty_batch(pool):
    with pytest.raises(ValueError, match="2 completions but 1 gold"):
        pool.score(["a", "b"], ["1"])
    results, metrics = pool.score([], [])
    assert results == [] and metrics["reward/correct_count"] == 0


def test_recycled_workers_and_choice_task():
    with RewardPool(workers=1, timeout_s=10.0, max_tasks_per_worker=2, task="choice") as p:
        first = p.worker_pids()
        results, metrics = p.score(
            [r"\boxed{B}", r"\boxed{15}", r"\boxed{A}"],
            ["B", "B", "(B)"],
            choices=[None, ["12", "15", "20", "30"], None],
        )
        assert [r.status for r in results] == ["correct", "correct", "wrong"]
        assert metrics["reward/worker_restarts"] == 1 and p.worker_pids() != first


def test_a_worker_that_died_between_batches_is_replaced_before_the_next(caplog):
    caplog.set_level("WARNING", logger="egsw_rl.rewards.pool")
    with RewardPool(workers=1, timeout_s=10.0) as p:
        (victim,) = p.worker_pids()
        os.kill(victim, signal.SIGKILL)
        time.sleep(0.3)
        results, metrics = p.score([r"\boxed{4}"], ["4"])
        assert results[0].status == "correct"
        assert metrics["reward/worker_restarts"] == 1 and p.worker_pids() != [victim]
        assert "died while idle (exit code -9)" in caplog.text
