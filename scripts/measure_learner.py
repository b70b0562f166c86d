"""Measure the learner group: training tokens/s and peak RSS per rank with 1 and 2 ranks, and
seconds per weight push to one vLLM generator. A thin wrapper around
`egsw_rl.bench.learner_throughput` (`python -m egsw_rl.bench --only learner` runs the same).

    python scripts/measure_learner.py                     # tiny model, 1 and 2 ranks, 3 updates
    python scripts/measure_learner.py --model medium      # ~25M parameters
    python scripts/measure_learner.py --model large --seqs 4 --updates 1 --max-completion 48
                                                          # ~140M: memory halving shows
    python scripts/measure_learner.py --push              # also time weight pushes (starts vLLM)

Prints one JSON line per configuration. CPU only here (2 cores): with 2 ranks both processes
share the same two cores, so tokens/s measures overhead, not scaling.
"""

from __future__ import annotations

import argparse
import json
import os


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny", help="tiny | medium | large | smollm2 | an HF folder")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--seqs", type=int, default=32)
    ap.add_argument("--max-completion", type=int, default=160)
    ap.add_argument("--updates", type=int, default=3)
    ap.add_argument("--micro-batch-tokens", type=int, default=2048)
    ap.add_argument("--push", action="store_true", help="time weight pushes to one vLLM generator")
    ap.add_argument("--pushes", type=int, default=3)
    args = ap.parse_args()

    import ray

    from egsw_rl.bench import learner_throughput

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    ray.init(
        address="local",
        num_cpus=8,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env={
            "env_vars": {
                "VLLM_CPU_KVCACHE_SPACE": os.environ["VLLM_CPU_KVCACHE_SPACE"],
                "TOKENIZERS_PARALLELISM": "false",
            }
        },
    )
    try:
        for ranks in [int(r) for r in args.ranks.split(",")]:
            row = learner_throughput(
                args.model,
                ranks,
                seqs=args.seqs,
                max_completion=args.max_completion,
                updates=args.updates,
                micro_batch_tokens=args.micro_batch_tokens,
                push=args.pushes if args.push else 0,
            )
            print(json.dumps(row), flush=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
