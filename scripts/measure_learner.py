"""Measure the learner group: training tokens/s and peak RSS per rank with 1 and 2 ranks, and
seconds per weight push to one vLLM generator.

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
import time


def model_dir(kind: str) -> str:
    from egsw_rl.testing import tiny_model

    if kind == "tiny":
        return str(tiny_model())
    if kind == "medium":  # ~25M parameters
        return str(tiny_model(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=2,
                              intermediate_size=1408, vocab_size=4096))
    if kind == "large":  # ~140M parameters: parameter and optimizer state dominate the RSS
        return str(tiny_model(hidden_size=1024, num_layers=12, num_heads=16, num_kv_heads=4,
                              intermediate_size=2816, vocab_size=4096))
    return kind


def make_batch(n: int, seed: int = 0, vocab: int = 480, max_completion: int = 160):
    import numpy as np

    from egsw_rl.batch import TrainBatch

    rng = np.random.default_rng(seed)
    prompts = [rng.integers(5, vocab, size=int(rng.integers(24, 64))).tolist() for _ in range(n)]
    comps = [rng.integers(5, vocab, size=int(rng.integers(16, max(17, max_completion)))).tolist() for _ in range(n)]
    T = max(len(c) for c in comps)
    mask = np.zeros((n, T), dtype=bool)
    for i, c in enumerate(comps):
        mask[i, :len(c)] = True
    adv = (rng.normal(size=(n, 1)) * mask).astype(np.float32)
    return TrainBatch(prompt_ids=prompts, completion_ids=comps, advantages=adv,
                      weights=mask.astype(np.float32), mask=mask)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny", help="tiny | medium | an HF folder")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--seqs", type=int, default=32)
    ap.add_argument("--max-completion", type=int, default=160)
    ap.add_argument("--updates", type=int, default=3)
    ap.add_argument("--micro-batch-tokens", type=int, default=2048)
    ap.add_argument("--push", action="store_true", help="time weight pushes to one vLLM generator")
    ap.add_argument("--pushes", type=int, default=3)
    args = ap.parse_args()

    import ray

    from egsw_rl.actors.learner import LearnerGroup
    from egsw_rl.config import AlgoConfig, LearnerConfig, ModelConfig, RolloutConfig

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    ray.init(address="local", num_cpus=8, include_dashboard=False, _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": os.environ["VLLM_CPU_KVCACHE_SPACE"],
                                       "TOKENIZERS_PARALLELISM": "false"}})
    path = model_dir(args.model)
    from transformers import AutoConfig

    vocab = int(AutoConfig.from_pretrained(path).vocab_size)
    batch = make_batch(args.seqs, vocab=min(vocab, 480), max_completion=args.max_completion)
    for ranks in [int(r) for r in args.ranks.split(",")]:
        lcfg = LearnerConfig(num_ranks=ranks, cpus_per_rank=1.0, micro_batch_tokens=args.micro_batch_tokens,
                             lr=1e-5)
        t0 = time.perf_counter()
        group = LearnerGroup(ModelConfig(path=path), lcfg, AlgoConfig(), "cpu", 1.0)
        start_s = time.perf_counter() - t0
        mem_start = group.memory()
        group.update(batch)  # warm-up (first step allocates optimizer state)
        rates, secs = [], []
        for _ in range(args.updates):
            m = group.update(batch)
            rates.append(m["perf/train_tokens_per_s"])
            secs.append(m["timing/update_s"])
        t1 = time.perf_counter()
        group.compute_logprobs(batch)
        lp_s = time.perf_counter() - t1
        mem = group.memory()
        rss_now = [round(x["rss_gib"], 3) for x in mem]
        row = {
            "model": args.model, "ranks": ranks, "params": group.shard_info()[0]["total_numel"],
            "local_params": [s["local_numel"] for s in group.shard_info()],
            "train_tokens_per_update": m["actor/train_tokens"], "padding_frac": m["actor/padding_frac"],
            "train_tokens_per_s": sorted(rates)[len(rates) // 2], "update_s": sorted(secs)[len(secs) // 2],
            "logprob_pass_s": lp_s, "start_s": start_s,
            "base_rss_gib": [round(x["base_rss_gib"], 3) for x in mem_start],
            "rss_after_load_gib": [round(x["rss_gib"], 3) for x in mem_start],
            "rss_after_updates_gib": rss_now,
            "peak_rss_gib": [round(x["peak_rss_gib"], 3) for x in mem],
        }
        if args.push:
            from egsw_rl.actors.generator import GeneratorGroup

            gens = GeneratorGroup(ModelConfig(path=path), RolloutConfig(num_generators=1, max_model_len=512), "cpu")
            group.setup_weight_sync(gens)
            pushes = [group.push_weights(gens) for _ in range(args.pushes)]
            row["push_s"] = [round(p["timing/sync_s"], 3) for p in pushes]
            row["sync_logprob_diff_max"] = [p.get("sync/logprob_diff_max") for p in pushes]
            gens.shutdown()
        group.shutdown()
        print(json.dumps(row), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
