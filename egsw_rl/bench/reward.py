"""Grading (`--only reward`): scorings/s and per-sample latency of the reward pool on the MATH-500
human solutions, in process and with 1, 2 and this machine's cores worker processes; a hostile
batch against the pool's deadline; the share of grading hidden behind generation in a real
run; and the paper's 8,192 completions graded on paper at the rate measured here."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from egsw_rl.bench.paper import paper_estimate
from egsw_rl.bench.report import format_table, measured, median
from egsw_rl.bench.runner import compose

if TYPE_CHECKING:
    from egsw_rl.bench.runner import Bench


def in_process_throughput(completions: Sequence[str], golds: Sequence[str]) -> dict:
    """Score the batch in this process, one thread, no deadline: the grader alone, without the
    pool's processes and their hand-offs."""
    from egsw_rl.rewards.grading import math_reward

    t0 = time.perf_counter()
    results = [math_reward(c, g, timeout_s=None) for c, g in zip(completions, golds)]
    secs = time.perf_counter() - t0
    return {
        "samples": len(results),
        "scorings_per_s": len(results) / secs,
        "correct": sum(r.status == "correct" for r in results),
        "load_avg": os.getloadavg()[0],
    }


def hostile_batch() -> tuple[list[str], list[str]]:
    """Completions built to hang, blow up or escape a grader (power towers, megabyte texts, deep
    nesting, division by zero, lone surrogates, a boxed shell command), with their golds."""
    payload = "__import__('os').system('touch /tmp/egsw_rl_bench_pwned')"
    cases = [
        (r"\boxed{9^{9^{9^{9^{9}}}}}", "5"),
        ("lorem ipsum " * 87_000 + r"\boxed{5}", "5"),
        (r"\boxed{" + "{" * 10_000 + "5" + "}" * 10_000 + "}", "5"),
        (r"\boxed{" + "+".join(["1"] * 20_000) + "}", "20000"),
        ("the answer is $" + "+".join(["x"] * 20_000) + "$", "5"),
        (r"\boxed{\frac{1}{0}}", "5"),
        ("\x00\ud800 \\boxed{5}\udfff", "5"),
        ("", "5"),
        (r"\boxed{5}", ""),
        (rf"\boxed{{{payload}}}", "5"),
    ]
    return [c for c, _ in cases], [g for _, g in cases]


def hostile_run(workers: int = 2, timeout_s: float = 5.0) -> dict:
    """The hostile batch through a fresh pool: its wall time (bounded by the deadline) and each
    sample's status."""
    from egsw_rl.rewards.pool import RewardPool

    comps, golds = hostile_batch()
    with RewardPool(workers=workers, timeout_s=timeout_s) as pool:
        t0 = time.perf_counter()
        results, _ = pool.score(comps, golds)
        wall = time.perf_counter() - t0
    return {
        "samples": len(comps),
        "workers": workers,
        "timeout_s": timeout_s,
        "wall_s": wall,
        "statuses": [r.status for r in results],
    }


def reward_throughput(
    completions: Sequence[str], golds: Sequence[str], workers: int, timeout_s: float = 5.0, repeats: int = 1
) -> dict:
    """Score the batch in a fresh pool of `workers` processes: scorings/s (batch wall time) and
    the p50 / p99 per-sample latency. The graders memoise parsed answers, so a second pass over
    the same batch in the same pool measures the caches: keep `repeats` at 1 for real numbers."""
    from egsw_rl.rewards.pool import RewardPool

    best: dict | None = None
    with RewardPool(workers=workers, timeout_s=timeout_s) as pool:
        for _ in range(repeats):
            _, m = pool.score(list(completions), list(golds))
            if best is None or m["reward/latency_s"] < best["reward/latency_s"]:
                best = m
    n = len(completions)
    return {
        "workers": workers,
        "samples": n,
        "scorings_per_s": n / best["reward/latency_s"],
        "p50_ms": best["reward/sample_p50_s"] * 1e3,
        "p99_ms": best["reward/sample_p99_s"] * 1e3,
        "correct": best["reward/correct_count"],
        "load_avg": os.getloadavg()[0],
    }


def paper_reward_workers(node_cpus: float = 64.0) -> list[int]:
    """Grading processes per reward actor of the `qwen_math_7b` preset's defaults on one 8-GPU
    node with `node_cpus` CPUs (reward.workers: auto, as the trainer resolves it)."""
    from egsw_rl import placement
    from egsw_rl.actors.reward import plan_workers

    cfg = compose("qwen_math_7b")
    plan = placement.make_plan(cfg, "cuda")
    placement.assign(plan, {"node": {"CPU": float(node_cpus), "GPU": 8.0}})
    return plan_workers(cfg.reward.workers, plan, {"node": float(node_cpus)})


def reward_paper_estimate(
    per_worker_per_s: float,
    workers: Sequence[int],
    *,
    step_s: float,
    completions: int = 1024 * 8,
    engines: int = 4,
    before_workers: int = 2,
) -> dict:
    """The paper's batch graded at `per_worker_per_s` scorings/s per grading process, scaling
    linearly with processes (the 1 / 2 / cores measurement checks that), against `step_s`, the
    on-paper step without grading. `all_s`: every completion graded after generation, the case
    when the engines finish together; `last_share_s`: only the last engine's share left, when
    they finish apart. `before_s`: one actor with `before_workers` processes, whole batch."""
    total = int(sum(workers))
    rate = per_worker_per_s * total
    all_s = completions / rate
    last = completions / engines / rate
    before = completions / (per_worker_per_s * before_workers)
    return {
        "completions": completions,
        "actors": len(workers),
        "workers": total,
        "per_worker_per_s": per_worker_per_s,
        "scorings_per_s": rate,
        "all_s": all_s,
        "all_frac": all_s / (step_s + all_s),
        "last_share_s": last,
        "last_share_frac": last / (step_s + last),
        "before_workers": before_workers,
        "before_s": before,
        "before_frac": before / (step_s + before),
        "step_s": step_s,
    }


def reward_hidden_summary(rows: Sequence[dict], warmup: int) -> dict:
    """Medians over the measured steps of a run: timing/reward_s (grading left after the last
    generator share), reward/latency_s (the busiest reward actor's grading time) and
    reward/hidden_frac (the share of that grading time hidden behind generation)."""
    rows = measured(rows, warmup)
    return {
        "steps": len(rows),
        "reward_s": median(r.get("timing/reward_s", 0.0) for r in rows),
        "grading_s": median(r.get("reward/latency_s", 0.0) for r in rows),
        "generate_s": median(r.get("timing/generate_s", 0.0) for r in rows),
        "reward_hidden_frac": median(r.get("reward/hidden_frac", 0.0) for r in rows),
    }


def reward_bench(bench: Bench, data: str | None = None, workers: Sequence[int] | None = None) -> dict:
    """Scorings/s in process (one thread) and of fresh pools (one pass each) with 1, 2 and this
    machine's cores worker processes in total; the hostile batch's wall time and statuses;
    reward_hidden_frac of a real tiny_cpu run with two engines and two
    reward actors (one engine returns one share: nothing to hide); the paper's batch on
    paper from the 1-worker rate."""
    from egsw_rl.data import dataset_path, read_rows

    path = Path(data) if data else dataset_path("math500")
    rows = read_rows(path)
    comps, golds = [r["solution"] for r in rows], [r["answer"] for r in rows]
    workers = sorted(set(workers or (1, 2, os.cpu_count() or 1)))
    inproc = in_process_throughput(comps, golds)
    res = [reward_throughput(comps, golds, w) for w in workers]
    hostile = hostile_run()
    table = format_table(
        f"Reward throughput (MATH-500 human solutions, {len(rows)} samples, fresh pools)",
        ["workers", "scorings/s", "per worker", "p50 ms", "p99 ms", "correct", "load avg"],
        [
            [
                "in process",
                inproc["scorings_per_s"],
                inproc["scorings_per_s"],
                None,
                None,
                f"{inproc['correct']}/{inproc['samples']}",
                inproc["load_avg"],
            ]
        ]
        + [
            [
                r["workers"],
                r["scorings_per_s"],
                r["scorings_per_s"] / r["workers"],
                r["p50_ms"],
                r["p99_ms"],
                f"{r['correct']}/{r['samples']}",
                r["load_avg"],
            ]
            for r in res
        ],
    )
    table += (
        f"hostile batch ({hostile['samples']} samples, {hostile['workers']} workers, timeout "
        f"{hostile['timeout_s']:g} s): {hostile['wall_s']:.2f} s wall; statuses {hostile['statuses']}\n"
    )
    overrides = ["rollout.num_generators=2", "reward.num_actors=2"]
    run = bench.train("tiny_cpu", overrides)
    hidden = {
        **reward_hidden_summary(run["rows"], run["warmup"]),
        "overrides": overrides,
        "load_avg": [run["load_avg_start"], run["load_avg_end"]],
        "run_dir": run["run_dir"],
    }
    table += "\n" + format_table(
        "Grading behind generation (tiny_cpu, 2 engines, 2 reward actors)",
        ["generate s", "grading s", "reward s (left)", "reward_hidden_frac", "load avg"],
        [
            [
                hidden["generate_s"],
                hidden["grading_s"],
                hidden["reward_s"],
                hidden["reward_hidden_frac"],
                "{:.1f}-{:.1f}".format(*tuple(hidden["load_avg"])),
            ]
        ],
    )
    paper = reward_paper_estimate(
        res[0]["scorings_per_s"] / res[0]["workers"],
        paper_reward_workers(),
        step_s=paper_estimate()["step_s"],
    )
    table += "\n" + format_table(
        "On paper: qwen_math_7b's 8,192 completions on a 64-core node (per-worker rate measured here)",
        ["setting", "workers", "grading s", "share of step"],
        [
            [
                "before: 1 actor, workers 2",
                paper["before_workers"],
                paper["before_s"],
                paper["before_frac"],
            ],
            [
                f"{paper['actors']} actors, workers auto, all after generation",
                paper["workers"],
                paper["all_s"],
                paper["all_frac"],
            ],
            [
                "same, last engine's share only",
                paper["workers"],
                paper["last_share_s"],
                paper["last_share_frac"],
            ],
        ],
    )
    return {
        "table": table,
        "runs": res,
        "in_process": inproc,
        "hostile": hostile,
        "data": str(path),
        "tiny_cpu": hidden,
        "reward_hidden_frac": hidden["reward_hidden_frac"],
        "paper": paper,
    }
