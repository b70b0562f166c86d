"""Throughput / latency of the reward pool: python -m egsw_rl.rewards.bench [--data FILE]

Scores the 500 MATH-500 human solutions against their answers with 1, 2 and 4 workers (a fresh
pool each), then a batch of hostile completions, and prints one line per run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from egsw_rl.data import dataset_path, read_rows
from egsw_rl.rewards.grading import math_reward
from egsw_rl.rewards.pool import RewardPool


def hostile_batch() -> tuple[list[str], list[str]]:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--data",
        default=None,
        help="a .jsonl[.gz] with solution / answer fields "
        "(default: the MATH-500 copy shipped in the package)",
    )
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--timeout-s", type=float, default=5.0)
    args = ap.parse_args()
    rows = read_rows(Path(args.data) if args.data else dataset_path("math500"))
    completions = [r["solution"] for r in rows]
    golds = [r["answer"] for r in rows]

    t0 = time.perf_counter()
    inproc = [math_reward(c, g, timeout_s=None) for c, g in zip(completions, golds)]
    dt = time.perf_counter() - t0
    print(
        f"in-process, 1 thread: {len(rows) / dt:7.1f} scorings/s "
        f"({sum(r.status == 'correct' for r in inproc)}/{len(rows)} correct)"
    )

    from egsw_rl.bench import reward_throughput  # the same measurement as `python -m egsw_rl.bench`

    for n in [int(x) for x in args.workers.split(",")]:
        r = reward_throughput(completions, golds, n, timeout_s=args.timeout_s)
        print(
            f"pool, {n} worker(s): {r['scorings_per_s']:7.1f} scorings/s, "
            f"p50 {r['p50_ms']:6.1f} ms, p99 {r['p99_ms']:6.1f} ms "
            f"per sample, {r['correct']}/{len(rows)} correct "
            f"(one pass, a fresh pool, load {r['load_avg']:.1f})"
        )

    comps, gs = hostile_batch()
    with RewardPool(workers=2, timeout_s=args.timeout_s) as pool:
        t0 = time.perf_counter()
        results, m = pool.score(comps, gs)
        wall = time.perf_counter() - t0
    print(
        f"hostile batch ({len(comps)} samples, 2 workers, timeout {args.timeout_s:g} s): "
        f"{wall:.2f} s wall; statuses {[r.status for r in results]}"
    )


if __name__ == "__main__":
    main()
