"""`python -m egsw_rl.bench`: where the time of a training step goes, on this machine.

    python -m egsw_rl.bench --quick --out bench.json        # a few minutes on 2 cores (tiny model)
    python -m egsw_rl.bench --out bench.json                # + SmolLM2-135M (about 3 hours)
    python -m egsw_rl.bench --only steps,sync --presets tiny_cpu
    python -m egsw_rl.bench --only learner,sync --presets large   # a ~140M random Qwen2 alone
    python -m egsw_rl.bench --paper                         # the Qwen2.5-Math-7B estimate only

Sub-benchmarks (`--only`, comma-separated; default all), each printing a table:

  steps    the real trainer (`egsw_rl.launch.run`) on each preset: median over the steps after a
           warm-up of generate, reward, logprobs (old + reference), update and weight sync, the
           overhead (step wall time minus those phases: driver work, shaping, RPC latency), and
           tokens generated per generate-second and trained per update-second.  (step.py)
  sync     weight pushes alone (2 ZeRO-3 ranks, 1 vLLM engine, no training; `sync_rig`) on
           shared memory and on the process group at three bucket sizes: seconds from the first
           byte sent until the engine has loaded and bumped its version, split into gather,
           transfer and load; the cost of one bucket (slope over the bucket count) and of one
           tensor in vLLM's layer-wise load (fit over the presets' models), next to this machine's
           memcpy and a bare loopback gloo broadcast. With `steps` in the same run, also the
           trainer's own pushes.  (sync.py)
  reward   scorings/s and p99 per-sample latency on the MATH-500 human solutions, in process and
           in fresh reward pools (one pass) with 1, 2 and this machine's cores worker processes in
           total; a hostile batch against the pool's deadline; reward_hidden_frac, the share of
           grading hidden behind generation in a real tiny_cpu run with 2 engines and 2 reward
           actors; the paper's 8,192 completions on paper.  (reward.py)
  learner  the ZeRO-3 learner group alone: training tokens/s, padding fraction and peak RSS per
           rank, with 1 and 2 ranks, on each preset's model.  (learner.py)
  peer     TRL's GRPOTrainer on exactly the same workload, with HF generation and with TRL's vLLM
           colocate mode, per optimizer step; egsw_rl's ratio.  (peer.py)
  overlap  trainer.overlap true vs false: steps/s and the policy lag.  (step.py)
  generate the generator actor (`actors/generator.py`, the preset's sampling settings and top-k
           logprobs) against a bare `vllm.LLM.generate` (no logprobs, no detokenisation) with the
           same engine arguments on the same batches of the preset's prompts: tokens/s of each
           and their ratio, `engine_ratio` (JSON: generate.<preset>); where the actor's time goes
           besides the engine call (its post-processing, the Ray round trip; ms a call).
           (generate.py)

After them, and alone with `--paper`, the on-paper Qwen2.5-Math-7B step (paper.py).

Numbers are medians over steps after `--warmup` steps. The load average is recorded with every
measurement: on a shared machine the numbers move with it. The machine (CPUs, CPU model, memory,
load, library versions) is one header line and the JSON's `machine` entry. `--out FILE` writes
everything as JSON (and keeps the per-step rows); run directories go under `--workdir`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from egsw_rl.bench import generate, learner, peer, reward, step, sync
from egsw_rl.bench.paper import colocated_estimate, colocated_table, paper_estimate, paper_table
from egsw_rl.bench.report import SUITES, document, machine_info, machine_line
from egsw_rl.bench.runner import Bench


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(
        prog="python -m egsw_rl.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--quick", action="store_true", help="tiny_cpu only, fewer steps: a few minutes on 2 CPU cores"
    )
    ap.add_argument("--only", default=",".join(SUITES), help=f"comma-separated subset of {','.join(SUITES)}")
    ap.add_argument(
        "--presets",
        default=None,
        help="default: tiny_cpu with --quick, else tiny_cpu,smollm2_cpu; for learner and sync also a "
        "model (tiny, medium, large, smollm2, a folder)",
    )
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="measured trainer steps after the warm-up (default: 10 on tiny_cpu, 2 on smollm2_cpu; "
        "6 and 2 with --quick); for generate, rounds (default 40 / 20 on tiny_cpu)",
    )
    ap.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="trainer steps left out of the medians (default: 2 on tiny_cpu, 1 on smollm2_cpu)",
    )
    ap.add_argument("--peer-steps", type=int, default=None)
    ap.add_argument("--peer-timeout", type=float, default=3600.0, help="seconds per TRL run")
    ap.add_argument("--reward-data", default=None, help="MATH-500 jsonl (default: the data directories)")
    ap.add_argument("--workdir", default=None, help="run directories (default: a new temporary one)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every trainer and peer run (repeatable)",
    )
    ap.add_argument("--paper", action="store_true", help="print only the on-paper Qwen2.5-Math-7B estimate")
    args = ap.parse_args(argv)

    est = paper_estimate()
    coloc = colocated_estimate()
    if args.paper:
        print(paper_table(est))
        print("\n" + colocated_table(est, coloc))
        if args.out:
            Path(args.out).write_text(json.dumps({"paper": est, "paper_colocated": coloc}, indent=1))
        return 0
    suites = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = sorted(set(suites) - set(SUITES))
    if bad:
        ap.error(f"--only: unknown sub-benchmark(s) {bad}; choose from {', '.join(SUITES)}")
    presets = (
        args.presets.split(",")
        if args.presets
        else (["tiny_cpu"] if args.quick else ["tiny_cpu", "smollm2_cpu"])
    )
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="egsw_rl_bench_"))
    bench = Bench(
        workdir,
        quick=args.quick,
        presets=presets,
        steps=args.steps,
        warmup=args.warmup,
        peer_steps=args.peer_steps,
        peer_warmup=1,
        peer_timeout_s=args.peer_timeout,
        extra=args.set,
    )
    info = machine_info()
    print(
        f"egsw_rl.bench: {', '.join(suites)} on {', '.join(presets)}; run directories in {workdir}\n"
        + machine_line(info),
        flush=True,
    )
    results: dict[str, Any] = {}
    runners: dict[str, Callable[[], dict]] = {
        "steps": lambda: step.steps_bench(bench),
        "sync": lambda: sync.sync_bench(bench),
        "reward": lambda: reward.reward_bench(bench, args.reward_data),
        "learner": lambda: learner.learner_bench(bench),
        "peer": lambda: peer.peer_bench(bench),
        "overlap": lambda: step.overlap_bench(bench),
        "generate": lambda: generate.generate_bench(bench),
    }

    def write() -> None:
        if args.out:
            doc = document(
                {**results, "paper": {**est, "colocated": coloc}}, quick=args.quick, argv=argv, info=info
            )
            doc["machine"]["load_avg_end"] = list(os.getloadavg())
            Path(args.out).write_text(json.dumps(doc, indent=1, default=str))

    try:
        for name in suites:
            t0 = time.perf_counter()
            try:
                results[name] = runners[name]()
            except Exception as e:  # noqa: BLE001 - one failing sub-benchmark must not lose the others
                results[name] = {
                    "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc()[-3000:],
                }
                print(f"\n[bench] {name} failed: {type(e).__name__}: {e}", flush=True)
            else:
                print("\n" + results[name]["table"], flush=True)
            results[name]["seconds"] = time.perf_counter() - t0
            results[name]["load_avg_end"] = list(os.getloadavg())
            write()
    finally:
        bench.close()
    print("\n" + paper_table(est))
    print("\n" + colocated_table(est, coloc))
    write()
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
