"""The ZeRO-3 learner group alone (`--only learner`): training tokens/s, padding, a no-grad
logprob pass and peak RSS per rank, with 1 and 2 ranks, on a synthetic batch."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from egsw_rl.bench.report import format_table, median
from egsw_rl.bench.runner import MODELS, model_dir

if TYPE_CHECKING:
    from egsw_rl.bench.runner import Bench

# the synthetic batch and the timed updates, by model (`runner.model_dir` kinds)
LEARNER_WORKLOADS = {
    "tiny": dict(seqs=64, max_completion=160, prompt_len=(24, 64), updates=3),
    # half a smollm2_cpu batch: 32 sequences, GSM8K-like prompts of 120-200 tokens, <= 128 new
    "smollm2": dict(seqs=32, max_completion=128, prompt_len=(120, 200), updates=1, micro_batch_tokens=1024),
    # ~140M parameters: a short batch, where the memory per rank is the point
    "large": dict(seqs=4, max_completion=48, updates=1),
    "default": dict(seqs=32, max_completion=160, updates=3),
}


def synthetic_batch(
    n: int,
    *,
    seed: int = 0,
    vocab: int = 480,
    max_completion: int = 160,
    prompt_len: tuple[int, int] = (24, 64),
    min_completion: int = 16,
):
    """A TrainBatch of random token ids: prompt lengths uniform in `prompt_len`, completion
    lengths uniform in [min_completion, max_completion), advantages N(0, 1) per sequence."""
    import numpy as np

    from egsw_rl.batch import TrainBatch

    rng = np.random.default_rng(seed)
    prompts = [rng.integers(5, vocab, size=int(rng.integers(*prompt_len))).tolist() for _ in range(n)]
    comps = [
        rng.integers(
            5, vocab, size=int(rng.integers(min_completion, max(min_completion + 1, max_completion)))
        ).tolist()
        for _ in range(n)
    ]
    T = max(len(c) for c in comps)
    mask = np.zeros((n, T), dtype=bool)
    for i, c in enumerate(comps):
        mask[i, : len(c)] = True
    adv = (rng.normal(size=(n, 1)) * mask).astype(np.float32)
    return TrainBatch(
        prompt_ids=prompts, completion_ids=comps, advantages=adv, weights=mask.astype(np.float32), mask=mask
    )


def learner_throughput(
    model: str,
    ranks: int,
    *,
    seqs: int = 32,
    max_completion: int = 160,
    prompt_len: tuple[int, int] = (24, 64),
    updates: int = 3,
    micro_batch_tokens: int = 2048,
    cpus_per_rank: float | None = None,
) -> dict:
    """Start a LearnerGroup of `ranks` ZeRO-3 ranks on `model` (needs Ray up), one warm-up update,
    then `updates` timed ones on a synthetic batch: median training tokens/s, padding fraction,
    one no-grad logprob pass, memory per rank. (Weight pushes: `sync.sync_rig`.)"""
    from transformers import AutoConfig

    from egsw_rl.actors.learner import LearnerGroup
    from egsw_rl.config import AlgoConfig, LearnerConfig, ModelConfig

    path = model_dir(model)
    vocab = int(AutoConfig.from_pretrained(path).vocab_size)
    batch = synthetic_batch(seqs, vocab=min(vocab, 480), max_completion=max_completion, prompt_len=prompt_len)
    # every rank gets an equal share of the cores (a rank runs cpus_per_rank torch threads): 1 rank x
    # 2 threads vs 2 ranks x 1 thread on a 2-core machine, not 1 idle core
    cpus = cpus_per_rank if cpus_per_rank is not None else float(max(1, (os.cpu_count() or 1) // ranks))
    lcfg = LearnerConfig(num_ranks=ranks, cpus_per_rank=cpus, micro_batch_tokens=micro_batch_tokens, lr=1e-5)
    t0 = time.perf_counter()
    group = LearnerGroup(ModelConfig(path=path), lcfg, AlgoConfig(), "cpu", 1.0)
    try:
        start_s = time.perf_counter() - t0
        mem_start = group.memory()
        group.update(batch)  # warm-up: the first step allocates the optimizer state
        rates, secs = [], []
        load = os.getloadavg()[0]
        for _ in range(updates):
            m = group.update(batch)
            rates.append(m["perf/train_tokens_per_s"])
            secs.append(m["timing/update_s"])
        t1 = time.perf_counter()
        group.compute_logprobs(batch)
        lp_s = time.perf_counter() - t1
        mem = group.memory()
        row = {
            "model": model,
            "ranks": ranks,
            "cpus_per_rank": cpus,
            "params": group.shard_info()[0]["total_numel"],
            "local_params": [s["local_numel"] for s in group.shard_info()],
            "seqs": seqs,
            "train_tokens_per_update": m["actor/train_tokens"],
            "padding_frac": m["actor/padding_frac"],
            "micro_batches": m.get("actor/micro_batches"),
            "train_tokens_per_s": median(rates),
            "update_s": median(secs),
            "logprob_pass_s": lp_s,
            "start_s": start_s,
            "base_rss_gib": [round(x["base_rss_gib"], 3) for x in mem_start],
            "rss_after_load_gib": [round(x["rss_gib"], 3) for x in mem_start],
            "rss_after_updates_gib": [round(x["rss_gib"], 3) for x in mem],
            "peak_rss_gib": [round(x["peak_rss_gib"], 3) for x in mem],
            "load_avg": load,
        }
        return row
    finally:
        group.shutdown()


def learner_workloads(presets: Sequence[str]) -> list[tuple[str, dict]]:
    """(model, `learner_throughput` keywords) of each preset's model, each model once."""
    models = dict.fromkeys(MODELS.get(p, p) for p in presets)
    return [(m, LEARNER_WORKLOADS.get(m, LEARNER_WORKLOADS["default"])) for m in models]


def learner_bench(bench: Bench) -> dict:
    """`learner_throughput` with 1 and 2 ranks on each preset's model (`runner.MODELS`; another
    --presets name is a model kind or folder), with that model's workload."""
    bench.ray()
    configs = learner_workloads(bench.presets)
    runs = []
    for model, kw in configs:
        for ranks in (1, 2):
            bench.echo(f"[bench] learner {model}, {ranks} rank(s)")
            runs.append(learner_throughput(model, ranks, **kw))
    table = format_table(
        "Learner (ZeRO-3 over gloo, fp32; the ranks share the machine's cores)",
        [
            "model",
            "ranks x threads",
            "train tok/s",
            "update s",
            "padding",
            "peak RSS GiB per rank",
            "params per rank",
            "load avg",
        ],
        [
            [
                r["model"],
                f"{r['ranks']} x {r['cpus_per_rank']:g}",
                r["train_tokens_per_s"],
                r["update_s"],
                r["padding_frac"],
                " / ".join(f"{x:.2f}" for x in r["peak_rss_gib"]),
                " / ".join(f"{x / 1e6:.1f}M" for x in r["local_params"]),
                r["load_avg"],
            ]
            for r in runs
        ],
    )
    return {"table": table, "runs": runs}
