"""Measure rollout throughput and weight-sync speed on this machine.

    python scripts/measure_rollout.py                       # tiny model: generation + sync
    python scripts/measure_rollout.py --model medium        # ~27M-param random Qwen2 (108 MB fp32)
    python scripts/measure_rollout.py --model smollm2 --what gen
    python scripts/measure_rollout.py --model /path/to/hf_folder

Generation: B prompts x G completions per call (default 8 x 8), up to --max-tokens new tokens,
after one warm-up call; reports completion tokens per second (median of --repeats), measured in
the driver around GeneratorGroup.generate (Ray included) and inside the actor (engine only).

Sync: the script process is the sender (a plain transformers model, rank 0 of a gloo group) and
one generator actor receives; reports seconds and MB/s of a whole sync (send + receive + in-place
reload + consistency probe) next to a plain tensor.copy_ of the same number of bytes and a bare
gloo broadcast of them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def _model_path(name: str) -> str:
    if name == "medium":
        from egsw_rl.testing import tiny_model

        return str(
            tiny_model(
                hidden_size=512,
                num_layers=8,
                num_heads=8,
                num_kv_heads=8,
                intermediate_size=1536,
                vocab_size=512,
            )
        )
    from egsw_rl.models import resolve_model_path

    return resolve_model_path(name)


def measure_generation(group, args) -> dict:
    questions = [f"What is {3 * i + 4} + {7 * i + 2}? Show the steps." for i in range(args.batch)]
    prompts = group.render(questions)
    group.generate(prompts, n=args.g, max_tokens=min(16, args.max_tokens))  # warm-up
    runs = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        comps = group.generate(prompts, n=args.g, max_tokens=args.max_tokens)
        wall = time.perf_counter() - t0
        tokens = sum(len(c.token_ids) for c in comps)
        engine = group.stats()
        runs.append(
            {
                "tokens": tokens,
                "wall_s": wall,
                "tokens_per_s": tokens / wall,
                "engine_tokens_per_s": sum(s["tokens_per_s"] for s in engine),
                "mean_len": tokens / len(comps),
                "stop_frac": sum(c.finish_reason == "stop" for c in comps) / len(comps),
            }
        )
    return {
        "batch": args.batch,
        "G": args.g,
        "max_tokens": args.max_tokens,
        "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in runs),
        "engine_tokens_per_s_median": statistics.median(r["engine_tokens_per_s"] for r in runs),
        "runs": runs,
    }


def _copy_baseline(nbytes: int, repeats: int = 5) -> float:
    from egsw_rl.bench import memcpy_bandwidth

    return memcpy_bandwidth(nbytes, repeats) / 2**20


def _gloo_baseline(nbytes: int, repeats: int = 3) -> float:
    """A bare broadcast of `nbytes` between two threads of this process over loopback gloo."""
    from egsw_rl.bench import gloo_bandwidth

    return gloo_bandwidth(nbytes, repeats) / 2**20


def measure_sync(group, model_path: str, args) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from egsw_rl.sync import ModuleSender, WeightSync
    from egsw_rl.sync.plan import plan_buckets

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    sync = WeightSync(ModuleSender(model, args.bucket_mb * 2**20), group)
    buckets = plan_buckets(sync.meta, args.bucket_mb * 2**20)
    runs = []
    for i in range(args.repeats + 1):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 1e-3)
        t0 = time.perf_counter()
        out = sync.push(probe=True)
        wall = time.perf_counter() - t0
        if i:  # the first sync pays one-off costs (checkpoint scan, allocator)
            runs.append(
                {
                    "wall_s": wall,
                    "send_s": out["sync/send_s"],
                    "recv_s": out["sync/recv_s"],
                    "load_s": out["sync/load_s"],
                    "logprob_diff_max": out["sync/logprob_diff_max"],
                }
            )
    nbytes = int(out["sync/bytes"])
    wall = statistics.median(r["wall_s"] for r in runs)
    return {
        "bytes": nbytes,
        "MB": nbytes / 2**20,
        "buckets": len(buckets),
        "bucket_mb": args.bucket_mb,
        "sync_s_median": wall,
        "sync_MB_per_s": nbytes / 2**20 / wall,
        "send_s_median": statistics.median(r["send_s"] for r in runs),
        "load_s_median": statistics.median(r["load_s"] for r in runs),
        "tensor_copy_MB_per_s": _copy_baseline(nbytes),
        "gloo_broadcast_MB_per_s": _gloo_baseline(nbytes),
        "logprob_diff_max": float(np.max([r["logprob_diff_max"] for r in runs])),
        "runs": runs,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="tiny | medium | smollm2 | HF folder")
    ap.add_argument("--what", default="gen,sync")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--g", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--generators", type=int, default=1)
    ap.add_argument("--bucket-mb", type=int, default=256)
    ap.add_argument("--kv-gib", type=float, default=0.5)
    ap.add_argument("--out", default=None, help="write the JSON result here too")
    args = ap.parse_args()

    import ray

    from egsw_rl.actors.generator import GeneratorGroup
    from egsw_rl.config import ModelConfig, RolloutConfig

    path = _model_path(args.model)
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    rollout = RolloutConfig(
        num_generators=args.generators,
        cpu_kvcache_gib=args.kv_gib,
        max_model_len=max(1024, args.max_tokens + 256),
        max_tokens=args.max_tokens,
        n=args.g,
        temperature=1.0,
        logprobs=20,
    )
    t0 = time.perf_counter()
    group = GeneratorGroup(ModelConfig(path=path), rollout, "cpu")
    result = {
        "model": args.model,
        "path": path,
        "generators": args.generators,
        "engine_start_s": time.perf_counter() - t0,
        "cpus": os.cpu_count(),
        "load_avg_start": os.getloadavg()[0],
    }
    try:
        if "gen" in args.what:
            result["generation"] = measure_generation(group, args)
        if "sync" in args.what:
            result["sync"] = measure_sync(group, path, args)
    finally:
        group.shutdown()
        ray.shutdown()
    result["load_avg_end"] = os.getloadavg()[0]
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
