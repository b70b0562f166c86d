"""`python -m egsw_rl.bench`: where the time of a training step goes, on this machine.

    python -m egsw_rl.bench --quick --out bench.json        # a few minutes on 2 cores (tiny model)
    python -m egsw_rl.bench --out bench.json                # + SmolLM2-135M (about 3 hours)
    python -m egsw_rl.bench --only steps,sync --presets tiny_cpu
    python -m egsw_rl.bench --paper                         # the Qwen2.5-Math-7B estimate only

Sub-benchmarks (`--only`, comma-separated; default all), each printing a table:

  steps    the real trainer (`egsw_rl.launch.run`) on each preset: median over the steps after a
           warm-up of generate, reward, logprobs (old + reference), update and weight sync, the
           overhead (step wall time minus those phases: driver work, shaping, RPC latency), and
           tokens generated per generate-second and trained per update-second.
  sync     weight pushes alone (2 ZeRO-3 ranks, 1 vLLM engine, no training; `sync_rig`) on
           shared memory and on the process group at three bucket sizes: seconds from the first
           byte sent until the engine has loaded and bumped its version, split into gather,
           transfer and load; the cost of one bucket (slope over the bucket count) and of one
           tensor in vLLM's layer-wise load (fit over the presets' models), next to this machine's
           memcpy and a bare loopback gloo broadcast. With `steps` in the same run, also the
           trainer's own pushes.
  reward   scorings/s and p99 per-sample latency of fresh reward pools (one pass) on the MATH-500
           human solutions, with 1, 2 and this machine's cores worker processes in total;
           reward_hidden_frac, the share of grading hidden behind generation in a real tiny_cpu
           run with 2 engines and 2 reward actors; the paper's 8,192 completions on paper.
  learner  the ZeRO-3 learner group alone: training tokens/s, padding fraction and peak RSS per
           rank, with 1 and 2 ranks.
  peer     TRL's GRPOTrainer on exactly the same workload (`egsw_rl.bench_peer`), with HF
           generation and with TRL's vLLM colocate mode, per optimizer step; egsw_rl's ratio.
  overlap  trainer.overlap true vs false: steps/s and the policy lag.
  generate the generator actor (`actors/generator.py`, the preset's sampling settings and top-k
           logprobs) against a bare `vllm.LLM.generate` (no logprobs, no detokenisation) with the
           same engine arguments on the same batches of the preset's prompts: tokens/s of each
           and their ratio, `engine_ratio` (JSON: generate.<preset>); where the actor's time goes
           besides the engine call (its post-processing, the Ray round trip; ms a call).

Numbers are medians over steps after `--warmup` steps. The load average is recorded with every
measurement: on a shared machine the numbers move with it. `--out FILE` writes everything as
JSON (and keeps the per-step rows); run directories go under `--workdir`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

SUITES = ("steps", "sync", "reward", "learner", "peer", "overlap", "generate")
PHASES = ("generate", "reward", "logprobs", "update", "sync")
SCHEMA = 1

# ============================================================================ pure helpers


def median(xs: Iterable[float]) -> float:
    """Median of the finite values; NaN when there are none."""
    vals = [float(x) for x in xs if x is not None and x == x]
    return float(statistics.median(vals)) if vals else float("nan")


def measured(rows: Sequence[dict], warmup: int) -> list[dict]:
    """The metrics rows after the warm-up steps (all of them if that would leave none)."""
    rows = sorted(rows, key=lambda r: r.get("step", 0))
    return list(rows[warmup:]) if len(rows) > warmup else list(rows)


def step_overhead(row: dict) -> float:
    """Step wall time minus the sum of the phases (generate, reward, logprobs, update, sync).
    In overlap mode the generation of the step's batch ran during the previous step; only the
    wait for it (timing/generate_wait_s) is on this step's clock."""
    gen = (
        row.get("timing/generate_wait_s")
        if "timing/generate_wait_s" in row
        else row.get("timing/generate_s", 0.0)
    )
    phases = [gen] + [row.get(f"timing/{p}_s", 0.0) for p in PHASES[1:]]
    return float(row["timing/step_s"]) - sum(float(x or 0.0) for x in phases)


def step_breakdown(rows: Sequence[dict], warmup: int) -> dict:
    """Medians over the measured steps of every phase, the overhead (absolute and as a fraction
    of the step), and throughputs: generated tokens per generate-second and per step-second,
    trained tokens per update-second and per step-second."""
    rows = measured(rows, warmup)
    if not rows:
        raise ValueError("no metrics rows to summarise")
    out: dict[str, Any] = {"steps": len(rows), "warmup": warmup}
    out["step_s"] = median(r["timing/step_s"] for r in rows)
    for p in PHASES:
        out[f"{p}_s"] = median(r.get(f"timing/{p}_s", 0.0) for r in rows)
    out["shape_s"] = median(r.get("timing/shape_s", 0.0) for r in rows)
    out["overhead_s"] = median(step_overhead(r) for r in rows)
    out["overhead_frac"] = median(step_overhead(r) / r["timing/step_s"] for r in rows)
    gen = [r.get("tokens/generated", 0) for r in rows]
    trained = [r.get("actor/train_tokens", 0) for r in rows]
    out["tokens_generated"] = median(gen)
    out["tokens_trained"] = median(trained)
    out["gen_tokens_per_s"] = median(
        g / r["timing/generate_s"] for g, r in zip(gen, rows) if r.get("timing/generate_s")
    )
    out["train_tokens_per_s"] = median(
        t / r["timing/update_s"] for t, r in zip(trained, rows) if r.get("timing/update_s")
    )
    out["gen_tokens_per_step_s"] = median(g / r["timing/step_s"] for g, r in zip(gen, rows))
    out["train_tokens_per_step_s"] = median(t / r["timing/step_s"] for t, r in zip(trained, rows))
    out["padding_frac"] = median(r.get("actor/padding_frac", float("nan")) for r in rows)
    out["response_len"] = median(r.get("response_length/mean", float("nan")) for r in rows)
    out["policy_lag"] = median(r.get("policy_lag/mean", 0.0) for r in rows)
    out["steps_per_s"] = 1.0 / out["step_s"] if out["step_s"] > 0 else float("nan")
    return out


def sync_summary(
    rows: Sequence[dict], warmup: int, memcpy_bytes_per_s: float, gloo_bytes_per_s: float | None = None
) -> dict:
    """One push, from the trainer's per-step metrics: bytes, seconds (whole push: ZeRO-3 gathers,
    broadcast, vLLM in-place reload and repack, probe check), bytes/s, and the ratio to memcpy
    (and to a bare gloo broadcast when measured). Also the sender's and the loader's share."""
    rows = measured(rows, warmup)
    nbytes = median(r.get("sync/bytes", float("nan")) for r in rows)
    secs = median(r["timing/sync_s"] for r in rows)
    bps = nbytes / secs if secs > 0 else float("nan")
    out = {
        "bytes": nbytes,
        "sync_s": secs,
        "bytes_per_s": bps,
        "send_s": median(r.get("sync/send_s", float("nan")) for r in rows),
        "recv_s": median(r.get("sync/recv_s", float("nan")) for r in rows),
        "load_s": median(r.get("sync/load_s", float("nan")) for r in rows),
        "memcpy_bytes_per_s": memcpy_bytes_per_s,
        "ratio_to_memcpy": bps / memcpy_bytes_per_s if memcpy_bytes_per_s else float("nan"),
    }
    if gloo_bytes_per_s:
        out["gloo_bytes_per_s"] = gloo_bytes_per_s
        out["ratio_to_gloo"] = bps / gloo_bytes_per_s
    return out


SYNC_SPLIT = ("total_s", "gather_s", "transfer_s", "load_s", "other_s", "header_s", "buckets")


def sync_push_summary(pushes: Sequence[dict]) -> dict:
    """Medians of the split of timed pushes (`WeightSync.push`' sync/* keys)."""
    if not pushes:
        raise ValueError("sync_push_summary needs at least one push")
    return {k: median(p.get(f"sync/{k}", float("nan")) for p in pushes) for k in SYNC_SPLIT}


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> dict:
    """Least-squares y = fixed + slope * x (e.g. a sync's transfer seconds against its number of
    buckets: the slope is the cost of one bucket, the fixed part what every sync pays)."""
    n = len(xs)
    if n < 2 or len(set(float(x) for x in xs)) < 2:
        raise ValueError("fit_line needs two distinct x values")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return {"slope": slope, "fixed": my - slope * mx}


def fit_load(tensors: Sequence[float], nbytes: Sequence[float], seconds: Sequence[float]) -> dict:
    """Least squares of an engine's load time, seconds = per_tensor_s * tensors + per_byte_s *
    bytes, over models of different sizes: the per-tensor part is vLLM's layer-wise bookkeeping
    (buffering each checkpoint tensor, materializing and finalizing its layer), which is host
    work on any device; the per-byte part is copying and, on CPU, repacking."""
    if len(seconds) < 2:
        raise ValueError("fit_load needs two models")
    a11 = sum(t * t for t in tensors)
    a12 = sum(t * b for t, b in zip(tensors, nbytes))
    a22 = sum(b * b for b in nbytes)
    y1 = sum(t * s for t, s in zip(tensors, seconds))
    y2 = sum(b * s for b, s in zip(nbytes, seconds))
    det = a11 * a22 - a12 * a12
    if abs(det) <= 1e-12 * a11 * a22:
        raise ValueError("fit_load needs models whose tensor counts and sizes are not proportional")
    return {"per_tensor_s": (y1 * a22 - y2 * a12) / det, "per_byte_s": (a11 * y2 - a12 * y1) / det}


def overlap_summary(off: dict, on: dict) -> dict:
    """steps/s with and without trainer.overlap (step breakdowns), the speed-up and the lag."""
    # With generation on its own cores or GPUs, an overlapped step lasts as long as the longer of
    # generation and the rest of the step (plus the old-logprob pass that off-policy data needs),
    # then the sync; estimated from the non-overlapped run's phases.
    train_side = (
        off["step_s"] - off["generate_s"] - off["sync_s"] + max(0.0, on["logprobs_s"] - off["logprobs_s"])
    )
    ideal = off["step_s"] / (max(off["generate_s"], train_side) + off["sync_s"])
    return {
        "steps_per_s_off": off["steps_per_s"],
        "steps_per_s_on": on["steps_per_s"],
        "ideal_speedup_own_devices": ideal,
        "speedup": on["steps_per_s"] / off["steps_per_s"] if off["steps_per_s"] else float("nan"),
        "policy_lag_off": off["policy_lag"],
        "policy_lag_on": on["policy_lag"],
        "step_s_off": off["step_s"],
        "step_s_on": on["step_s"],
        "logprobs_s_on": on["logprobs_s"],
        "generate_s_on": on["generate_s"],
        "update_s_off": off["update_s"],
        "update_s_on": on["update_s"],
    }


def peer_summary(ours_step_s: float, peer: dict) -> dict:
    """A TRL run's median step (after its warm-up) and egsw_rl's ratio to it, or its error."""
    steps = list(peer.get("step_s") or [])
    warm = int(peer.get("warmup", 0))
    kept = steps[warm:] if len(steps) > warm else steps
    out = {
        "mode": peer.get("mode"),
        "steps_done": len(steps),
        "error": peer.get("error"),
        "peak_rss_gib": peer.get("peak_rss_gib"),
        "step_s": median(kept),
        "generate_s": median((peer.get("generate_s") or [])[warm:] or (peer.get("generate_s") or [])),
        "completion_len": median(peer.get("completion_len") or []),
    }
    out["ours_over_peer"] = ours_step_s / out["step_s"] if kept and out["step_s"] > 0 else float("nan")
    return out


def fmt(v: Any, digits: int = 3) -> str:
    """A table cell: floats to `digits` significant digits (thousands grouped), NaN/None blank."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v:
            return ""
        if v != 0 and (abs(v) >= 10**digits):
            return f"{v:,.0f}"
        return f"{v:.{digits}g}"
    return str(v)


def format_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table under a `### title` line; cells through `fmt`."""
    cells = [[fmt(c) for c in r] for r in rows]
    lines = [
        f"### {title}",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(lines) + "\n"


def human_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def machine_info() -> dict:
    info = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg": list(os.getloadavg()),
    }
    try:
        import psutil

        info["mem_gib"] = psutil.virtual_memory().total / 2**30
    except ImportError:
        pass
    for mod in ("torch", "vllm", "deepspeed", "ray", "transformers", "trl"):
        try:
            info[f"{mod}_version"] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - not installed / broken: just not reported
            pass
    return info


def document(results: dict, *, quick: bool, argv: Sequence[str], info: dict | None = None) -> dict:
    """The JSON written by --out: schema version, the command, the machine, and one entry per
    sub-benchmark that ran ({"table": ..., "rows"/"summary": ...} or {"error": ...})."""
    unknown = sorted(set(results) - set(SUITES) - {"paper"})
    if unknown:
        raise ValueError(f"unknown sub-benchmark(s) {unknown}")
    return {
        "schema": SCHEMA,
        "command": "python -m egsw_rl.bench " + " ".join(argv),
        "quick": bool(quick),
        "machine": info if info is not None else machine_info(),
        "results": results,
    }


def load_tag() -> str:
    return "{:.1f} / {:.1f} / {:.1f}".format(*os.getloadavg())


# ============================================================================ on paper


# Qwen2.5-Math-7B (config.json of the hub model): 28 layers, hidden 3584, MLP 18944, 28 query and
# 4 key/value heads of 128, vocabulary 152064, untied input and output embeddings.
QWEN_MATH_7B = dict(
    layers=28, hidden=3584, intermediate=18944, heads=28, kv_heads=4, head_dim=128, vocab=152064, tied=False
)


def transformer_params(
    layers: int,
    hidden: int,
    intermediate: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    vocab: int,
    tied: bool,
) -> int:
    attn = hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden
    attn_bias = heads * head_dim + 2 * kv_heads * head_dim  # Qwen2: q/k/v biases
    mlp = 3 * hidden * intermediate
    norms = 2 * hidden
    emb = vocab * hidden * (1 if tied else 2)
    return layers * (attn + attn_bias + mlp + norms) + emb + hidden


def transformer_tensors(
    layers: int,
    hidden: int,
    intermediate: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    vocab: int,
    tied: bool,
) -> list[int]:
    """Element counts of a Qwen2 checkpoint's tensors, in the order a sync sends them: the
    embedding, per layer q/k/v (weights and biases), o, gate, up, down and two norms, the final
    norm and (untied) the output head."""
    q, kv = heads * head_dim, kv_heads * head_dim
    layer = [
        hidden * q,
        q,
        hidden * kv,
        kv,
        hidden * kv,
        kv,
        q * hidden,
        hidden * intermediate,
        hidden * intermediate,
        intermediate * hidden,
        hidden,
        hidden,
    ]
    return [vocab * hidden] + layer * layers + [hidden] + ([] if tied else [vocab * hidden])


def bucket_count(tensor_bytes: Sequence[int], bucket_bytes: int) -> int:
    """Buckets `sync.plan.plan_buckets` makes of tensors of these sizes (16-byte aligned, a
    tensor larger than a bucket alone)."""
    from egsw_rl.sync.plan import ParamMeta, plan_buckets

    meta = [ParamMeta(f"t{i}", (int(b),), "float16") for i, b in enumerate(b // 2 for b in tensor_bytes)]
    return len(plan_buckets(meta, int(bucket_bytes)))


# Measured here (`python -m egsw_rl.bench --only sync`, 2 cores at load average 46-68; README
# "Weight sync"): one more bucket on the group transport costs 2.1 ms of transfer on SmolLM2
# (1.5 ms on tiny: the slope over 3 to 211 buckets; header broadcast, the engine's wait for it,
# the payload's set-up), and vLLM's layer-wise load 1.8 ms per checkpoint tensor besides
# 1.9 s/GB (fit over tiny and SmolLM2). The per-tensor part is the loader's bookkeeping and, on
# CPU, each layer's repack set-up: a GPU host pays the first, so this is an upper bound there.
MEASURED_PER_BUCKET_S = 2.1e-3
MEASURED_PER_TENSOR_LOAD_S = 1.8e-3


def paper_estimate(
    *,
    prompts: int = 1024,
    G: int = 8,
    prompt_tokens: float = 150,
    response_tokens: float = 700,
    learner_gpus: int = 4,
    vllm_gpus: int = 4,
    gpu_tflops: float = 989.0,
    mfu: float = 0.40,
    link_gb_s: float = 150.0,
    hbm_tb_s: float = 3.35,
    decode_tokens_per_s_per_gpu: float = 2500.0,
    gradient_checkpointing: bool = True,
    old_logprob_pass: bool = True,
    reference: bool = True,
    bytes_per_param: int = 2,
    model: dict | None = None,
    bucket_mb: int = 256,
    per_bucket_s: float = MEASURED_PER_BUCKET_S,
    per_tensor_load_s: float = MEASURED_PER_TENSOR_LOAD_S,
    load_hbm_passes: int = 4,
) -> dict:
    """Expected sync and step time split of the `qwen_math_7b` preset on one 8-GPU node, from
    parameter and FLOP counts. Defaults: H100 SXM (989 dense bf16 TFLOP/s, 3.35 TB/s HBM), 40%
    MFU for training, an effective 150 GB/s for an NCCL broadcast from one GPU to four over
    NVLink (bus bandwidth of a 1-to-N broadcast pipeline; NVLink 4 peaks at 450 GB/s a
    direction), vLLM decoding about 2,500 tokens/s per GPU for a 7B bf16 model at a few hundred
    concurrent sequences, and 150-token prompts with 700-token mean responses (Qwen2.5-Math-7B's
    early RL responses on MATH level 3-5; they grow during training)."""
    m = dict(QWEN_MATH_7B if model is None else model)
    n_params = transformer_params(**m)
    seqs = prompts * G
    sync_bytes = n_params * bytes_per_param
    # ZeRO-3: every learner rank receives the other ranks' shards (all-gather), then rank 0
    # broadcasts the full tensors to the vLLM GPUs; on NVLink the two run at link speed.
    gather_bytes = sync_bytes * (learner_gpus - 1) / learner_gpus
    link_only_s = (gather_bytes + sync_bytes) / (link_gb_s * 1e9) + sync_bytes * 2 / (hbm_tb_s * 1e12)
    # What a sync also pays, one bucket after the other (an engine loads bucket k before it reads
    # bucket k+1's header, and the sender's next broadcast waits for that): a header round trip
    # per bucket, and vLLM's layer-wise reload, per checkpoint tensor on the host and, on the
    # device, `load_hbm_passes` passes over the bytes (read and write of the loader's copy into a
    # fresh layer and of the copy back into the engine's own tensors).
    tensors = transformer_tensors(**m)
    buckets = bucket_count([t * bytes_per_param for t in tensors], bucket_mb * 2**20)
    sync_parts = {
        "gather_s": gather_bytes / (link_gb_s * 1e9),
        "broadcast_s": sync_bytes / (link_gb_s * 1e9),
        "header_s": buckets * per_bucket_s,
        "load_host_s": len(tensors) * per_tensor_load_s,
        "load_device_s": load_hbm_passes * sync_bytes / (hbm_tb_s * 1e12),
    }
    sync_s = sum(sync_parts.values())
    train_tokens = seqs * (prompt_tokens + response_tokens)
    non_emb = n_params - m["vocab"] * m["hidden"] * (1 if m["tied"] else 2)
    # forward 2 FLOPs a parameter a token (+ the output head, + attention 4 * L * T * d per token)
    head = 2 * m["vocab"] * m["hidden"]
    attn = 4 * m["layers"] * (prompt_tokens + response_tokens) / 2 * m["heads"] * m["head_dim"]
    fwd_per_token = 2 * non_emb + head + attn
    passes = 3 + (1 if gradient_checkpointing else 0)  # fwd + bwd (2x) + recomputed fwd
    update_flops = passes * fwd_per_token * train_tokens
    logprob_flops = fwd_per_token * train_tokens * ((1 if old_logprob_pass else 0) + (1 if reference else 0))
    learner_flops_s = learner_gpus * gpu_tflops * 1e12 * mfu
    gen_tokens = seqs * response_tokens
    prefill_flops = fwd_per_token * prompts * prompt_tokens  # G samples share the prompt's KV
    gen_s = gen_tokens / (decode_tokens_per_s_per_gpu * vllm_gpus)
    out = {
        "params": n_params,
        "sync_bytes": sync_bytes,
        "sync_s": sync_s,
        "sync_link_only_s": link_only_s,
        "sync_parts": sync_parts,
        "sync_buckets": buckets,
        "sync_tensors": len(tensors),
        "sequences": seqs,
        "train_tokens": train_tokens,
        "generated_tokens": gen_tokens,
        "fwd_flops_per_token": fwd_per_token,
        "update_flops": update_flops,
        "logprob_flops": logprob_flops,
        "update_s": update_flops / learner_flops_s,
        "logprobs_s": logprob_flops / learner_flops_s,
        "generate_flops": 2 * non_emb * gen_tokens + prefill_flops,
        "generate_s": gen_s,
        "assumptions": {
            "prompts": prompts,
            "G": G,
            "prompt_tokens": prompt_tokens,
            "response_tokens": response_tokens,
            "learner_gpus": learner_gpus,
            "vllm_gpus": vllm_gpus,
            "gpu_tflops": gpu_tflops,
            "mfu": mfu,
            "link_gb_s": link_gb_s,
            "hbm_tb_s": hbm_tb_s,
            "decode_tokens_per_s_per_gpu": decode_tokens_per_s_per_gpu,
            "gradient_checkpointing": gradient_checkpointing,
            "old_logprob_pass": old_logprob_pass,
            "reference": reference,
            "bucket_mb": bucket_mb,
            "per_bucket_s": per_bucket_s,
            "per_tensor_load_s": per_tensor_load_s,
            "load_hbm_passes": load_hbm_passes,
        },
    }
    out["step_s"] = out["generate_s"] + out["logprobs_s"] + out["update_s"] + sync_s
    return out


def paper_table(est: dict) -> str:
    a = est["assumptions"]
    rows = [
        ["parameters", f"{est['params'] / 1e9:.2f} B", "Qwen2.5-Math-7B, untied head"],
        ["bytes per sync", human_bytes(est["sync_bytes"]), "bf16, every parameter once"],
        [
            "sync time",
            f"{est['sync_s']:.2f} s",
            f"sum of the five rows below, one after the other "
            f"(link only, as before: {est['sync_link_only_s']:.2f} s)",
        ],
        [
            "  ZeRO-3 gather",
            f"{est['sync_parts']['gather_s']:.3f} s",
            f"3/4 of the bytes at {a['link_gb_s']:g} GB/s (NVLink)",
        ],
        ["  broadcast", f"{est['sync_parts']['broadcast_s']:.3f} s", f"all bytes at {a['link_gb_s']:g} GB/s"],
        [
            "  bucket headers",
            f"{est['sync_parts']['header_s']:.3f} s",
            f"{est['sync_buckets']} buckets of {a['bucket_mb']} MiB "
            f"x {a['per_bucket_s'] * 1e3:.2g} ms (measured here)",
        ],
        [
            "  layer-wise load, host",
            f"{est['sync_parts']['load_host_s']:.3f} s",
            f"{est['sync_tensors']} tensors x {a['per_tensor_load_s'] * 1e3:.2g} ms (measured here)",
        ],
        [
            "  layer-wise load, device",
            f"{est['sync_parts']['load_device_s']:.3f} s",
            f"{a['load_hbm_passes']} passes over the bytes at {a['hbm_tb_s']:g} TB/s HBM",
        ],
        ["sequences / step", f"{est['sequences']:,}", f"{a['prompts']} prompts x G={a['G']}"],
        [
            "generate",
            f"{est['generate_s']:.0f} s",
            f"{est['generated_tokens'] / 1e6:.1f} M tokens at {a['decode_tokens_per_s_per_gpu']:,.0f} tok/s "
            f"x {a['vllm_gpus']} GPUs",
        ],
        ["logprobs (old + ref)", f"{est['logprobs_s']:.0f} s", f"{est['logprob_flops']:.2e} FLOPs"],
        [
            "update",
            f"{est['update_s']:.0f} s",
            f"{est['update_flops']:.2e} FLOPs at {a['mfu']:.0%} of {a['gpu_tflops']:g} TFLOP/s "
            f"x {a['learner_gpus']}",
        ],
        ["step", f"{est['step_s']:.0f} s", "phases run one after the other (overlap off)"],
    ]
    return format_table(
        "On paper: qwen_math_7b on one 8-GPU node (4 learner + 4 vLLM GPUs)",
        ["quantity", "value", "from"],
        rows,
    )


# Colocated (trainer.placement=colocated; README "Learners"): the costs of handing each device
# back and forth, with where each figure comes from.
#
# - vLLM sleep / wake. vLLM's own measurements ("Zero-Reload Model Switching with vLLM Sleep
#   Mode", vLLM blog, 2025-10-26; models of 0.6B to 235B parameters on A4000 to A100 GPUs): a wake
#   from level 1 takes 0.1-6 s, from level 2 0.8-2.6 s, and that level-2 wake includes loading
#   the weights again, which here the push does anyway. The upper level-2 figure stands for one
#   step's sleep plus its two partial wakes (weights, then KV cache).
# - the learner's offload and reload: every rank's resident training state (bf16 and fp32
#   partitions, AdamW's two moments, gradient partitions, the reference model's partitions)
#   across PCIe and back, pinned, at an assumed 25 GB/s (PCIe Gen5 x16 peaks at 64 GB/s a
#   direction; eight GPUs of a node share the host's memory bandwidth).
# - CUDA IPC: no broadcast; each rank packs every gathered bucket into its staging buffer and the
#   engine worker on the same GPU copies it out (2 passes over the bytes in HBM each side), plus
#   a handshake per bucket through the TCPStore, measured here with the transport's own code
#   (`ipc_handshake_cost`: IpcSender and ipc_stream in two threads over a loopback store, the
#   slope from 4 to 200 buckets): 0.17 to 0.51 ms a bucket over five runs at load average 1.3 to
#   2.8; the estimate takes 0.5 ms. Opening the IPC handle is once a push.
SLEEP_WAKE_S = 2.6
PCIE_GB_S = 25.0
MEASURED_IPC_PER_BUCKET_S = 0.5e-3


def colocated_estimate(
    *,
    gpus: int = 8,
    sleep_wake_s: float = SLEEP_WAKE_S,
    pcie_gb_s: float = PCIE_GB_S,
    per_bucket_s: float = MEASURED_IPC_PER_BUCKET_S,
    **kw,
) -> dict:
    """`paper_estimate` for the same node colocated: generation on all `gpus`, then logprobs and
    the update on all `gpus`, the weights pushed over CUDA IPC on each device, and each step's
    hand-overs (vLLM sleep and wake, the learners' offload and reload)."""
    base = paper_estimate(learner_gpus=gpus, vllm_gpus=gpus, **kw)
    a = base["assumptions"]
    hbm = a["hbm_tb_s"] * 1e12
    nbytes = base["sync_bytes"]
    parts = {
        "gather_s": base["sync_parts"]["gather_s"],  # ZeRO-3's all-gather, over 8 ranks now
        "pack_copy_s": 2 * 2 * nbytes / hbm,  # the rank packs, the engine copies out: r+w each
        "handshake_s": base["sync_buckets"] * per_bucket_s,
        "load_host_s": base["sync_parts"]["load_host_s"],
        "load_device_s": base["sync_parts"]["load_device_s"],
    }
    from egsw_rl.placement import learner_resident_bytes

    resident = learner_resident_bytes(base["params"], gpus, reference=a["reference"])
    hand = {"sleep_wake_s": sleep_wake_s, "offload_reload_s": 2 * resident["total"] / (pcie_gb_s * 1e9)}
    out = dict(base)
    out.update(
        sync_parts=parts,
        sync_s=sum(parts.values()),
        handover_parts=hand,
        handover_s=sum(hand.values()),
        resident=resident,
    )
    out["assumptions"] = dict(
        a, sleep_wake_s=sleep_wake_s, pcie_gb_s=pcie_gb_s, ipc_per_bucket_s=per_bucket_s
    )
    out["step_s"] = (
        base["generate_s"] + base["logprobs_s"] + base["update_s"] + out["sync_s"] + out["handover_s"]
    )
    return out


def colocated_table(split: dict, coloc: dict) -> str:
    a = coloc["assumptions"]
    g = a["vllm_gpus"]

    def row(name, key):
        return [name, f"{split[key]:.0f} s", f"{coloc[key]:.0f} s"]

    rows = [
        row("generate", "generate_s"),
        row("logprobs (old + ref)", "logprobs_s"),
        row("update", "update_s"),
        ["weight sync", f"{split['sync_s']:.2f} s (NCCL broadcast)", f"{coloc['sync_s']:.2f} s (CUDA IPC)"],
        [
            "  of which transfer",
            f"{split['sync_parts']['broadcast_s'] + split['sync_parts']['header_s']:.2f} s",
            f"{coloc['sync_parts']['pack_copy_s'] + coloc['sync_parts']['handshake_s']:.2f} s "
            f"({coloc['sync_buckets']} buckets x {a['ipc_per_bucket_s'] * 1e3:.2g} ms + 4 HBM passes)",
        ],
        ["hand-overs", "-", f"{coloc['handover_s']:.1f} s"],
        [
            "  vLLM sleep + wakes",
            "-",
            f"{coloc['handover_parts']['sleep_wake_s']:.1f} s (vLLM blog: level-2 wake <= 2.6 s)",
        ],
        [
            "  learner offload + reload",
            "-",
            f"{coloc['handover_parts']['offload_reload_s']:.1f} s "
            f"(2 x {coloc['resident']['total'] / 1e9:.1f} GB "
            f"a GPU at {a['pcie_gb_s']:g} GB/s)",
        ],
        row("step", "step_s"),
        ["speed-up", "1.00x", f"{split['step_s'] / coloc['step_s']:.2f}x"],
    ]
    return format_table(
        f"On paper: qwen_math_7b split (4 learner + 4 vLLM GPUs) vs colocated ({g} GPUs, each both)",
        ["quantity", "split", "colocated"],
        rows,
    )


# ============================================================================ measurements


def ipc_handshake_cost(buckets: Sequence[int] = (4, 200), pushes: int = 5) -> dict:
    """Seconds a bucket adds to a CUDA IPC push beyond its bytes: the transport's own protocol
    (`sync.ipc.IpcSender`, `ipc_stream`) between two threads over a loopback TCPStore, tiny
    buckets, the slope of the median push time over the bucket count."""
    import pickle
    import socket
    import threading

    import torch

    from egsw_rl.sync import ipc, plan

    medians = []
    for n in buckets:
        module = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(int(n))])
        meta = plan.param_meta(module)
        bplan = plan.plan_buckets(meta, 400)  # one layer's weight and bias a bucket
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        shared: dict = {}

        def share(t):  # the stand-in for a CUDA IPC handle: the same tensor, another thread
            shared[id(t)] = t  # noqa: B023 - called within its iteration
            return id(t)

        sender = ipc.IpcSender("127.0.0.1", port, 0, timeout_s=120, share=share)
        store = ipc.ipc_store("127.0.0.1", port, False, 120)
        times = []
        for push in range(pushes):

            def receive(push=push):
                staging = shared[pickle.loads(store.get(f"h/{push}/0"))]  # noqa: B023 - called within its iteration
                for _ in ipc.ipc_stream(store, push, 0, meta, staging, {}):  # noqa: B023 - called within its iteration
                    pass
                ipc.ipc_probe(store, push)  # noqa: B023 - called within its iteration

            t = threading.Thread(target=receive)
            t0 = time.perf_counter()
            t.start()
            sender.send(module, bplan, False, torch.device("cpu"))
            t.join()
            times.append(time.perf_counter() - t0)
        medians.append((len(bplan), median(times)))
    (n0, t0), (n1, t1) = medians[0], medians[-1]
    return {"per_bucket_s": (t1 - t0) / (n1 - n0), "pushes": medians}


def memcpy_bandwidth(nbytes: int = 512 * 2**20, repeats: int = 5) -> float:
    """Bytes/s of the best of `repeats` `dst.copy_(src)` of `nbytes` (uint8, CPU)."""
    import torch

    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.empty_like(src)
    dst.copy_(src)  # fault the pages in
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def gloo_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 3) -> float:
    """Bytes/s of the best of `repeats` broadcasts of `nbytes` between two threads of this process
    over a loopback gloo group (the weight-sync transport without anything around it)."""
    import socket
    import threading

    import torch

    from egsw_rl.sync.group import bcast, new_group

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    groups = {}

    def join(rank):
        groups[rank] = new_group("127.0.0.1", port, rank, 2, "gloo", 120)[0]

    t = threading.Thread(target=join, args=(1,))
    t.start()
    join(0)
    t.join()
    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = threading.Thread(target=bcast, args=(groups[1], dst))
        t0 = time.perf_counter()
        t.start()
        bcast(groups[0], src)
        t.join()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


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


def learner_model_dir(kind: str) -> str:
    """tiny | medium (~25M) | large (~140M random Qwen2) | smollm2 | an HF folder."""
    from egsw_rl.testing import tiny_model

    if kind == "tiny":
        return str(tiny_model())
    if kind == "medium":
        return str(
            tiny_model(
                hidden_size=512,
                num_layers=8,
                num_heads=8,
                num_kv_heads=2,
                intermediate_size=1408,
                vocab_size=4096,
            )
        )
    if kind == "large":
        return str(
            tiny_model(
                hidden_size=1024,
                num_layers=12,
                num_heads=16,
                num_kv_heads=4,
                intermediate_size=2816,
                vocab_size=4096,
            )
        )
    from egsw_rl.models import resolve_model_path

    return resolve_model_path(kind)


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
    push: int = 0,
    cpus_per_rank: float | None = None,
) -> dict:
    """Start a LearnerGroup of `ranks` ZeRO-3 ranks on `model` (needs Ray up), one warm-up update,
    then `updates` timed ones on a synthetic batch: median training tokens/s, padding fraction,
    one no-grad logprob pass, memory per rank. With `push` > 0, that many weight pushes to one
    vLLM generator are timed too."""
    from transformers import AutoConfig

    from egsw_rl.actors.learner import LearnerGroup
    from egsw_rl.config import AlgoConfig, LearnerConfig, ModelConfig, RolloutConfig

    path = learner_model_dir(model)
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
        if push:
            from egsw_rl.actors.generator import GeneratorGroup
            from egsw_rl.sync import WeightSync

            gens = GeneratorGroup(
                ModelConfig(path=path), RolloutConfig(num_generators=1, max_model_len=512), "cpu"
            )
            try:
                sync = WeightSync(group, gens)
                pushes = [sync.push() for _ in range(push)]
                row["push_s"] = [round(p["timing/sync_s"], 3) for p in pushes]
                row["sync_logprob_diff_max"] = [p.get("sync/logprob_diff_max") for p in pushes]
            finally:
                gens.shutdown()
        return row
    finally:
        group.shutdown()


# ============================================================================ weight sync

# bucket sizes the group transport is timed at, by model: from about one tensor a bucket to the
# preset's 256 MiB, so the per-bucket cost is the slope of the transfer time over the count
SYNC_BUCKETS = {"tiny": [16 * 2**10, 128 * 2**10, 256 * 2**20], "smollm2": [2**20, 16 * 2**20, 256 * 2**20]}
SYNC_MODELS = {"tiny_cpu": "tiny", "smollm2_cpu": "smollm2"}


def _replan_buckets(learner, bucket_bytes: int) -> int:
    from egsw_rl.sync.plan import plan_buckets

    learner._sync_buckets = plan_buckets(learner._sync_meta, int(bucket_bytes))
    return len(learner._sync_buckets)


def sync_rig(
    model: str,
    *,
    pushes: int,
    warmup: int = 1,
    bucket_bytes: Sequence[int] | None = None,
    echo: Callable[[str], None] = print,
) -> dict:
    """Weight pushes alone (needs Ray up): two ZeRO-3 learner ranks over gloo (one core each)
    and one vLLM CPU engine on `model`, `warmup` + `pushes` pushes over shared memory and then
    over the process group at each bucket size. Every push is the trainer's own
    (`WeightSync.push`, without the probe), timed from the first byte sent until the
    engine has loaded and bumped its version, and split into gather, transfer and load."""
    import ray

    from egsw_rl.actors.generator import GeneratorGroup
    from egsw_rl.actors.learner import LearnerGroup
    from egsw_rl.config import AlgoConfig, LearnerConfig, ModelConfig, RolloutConfig
    from egsw_rl.sync import WeightSync

    path = learner_model_dir(model)
    sizes = list(bucket_bytes or SYNC_BUCKETS.get(model, SYNC_BUCKETS["smollm2"]))
    group = LearnerGroup(
        ModelConfig(path=path),
        LearnerConfig(num_ranks=2, cpus_per_rank=1.0),
        AlgoConfig(beta=0.0),
        "cpu",
        1.0,
    )
    gens = None
    out: dict = {"model": model, "runs": []}
    try:
        gens = GeneratorGroup(
            ModelConfig(path=path),
            RolloutConfig(num_generators=1, max_model_len=512, cpu_kvcache_gib=0.25),
            "cpu",
        )
        for transport, size in [("shm", None)] + [("group", b) for b in sizes]:
            if size is None or size == sizes[0]:
                sync = WeightSync(group, gens, transport=transport)
                check = sync.push(probe=True)  # the consistency check, untimed
                out.setdefault("logprob_diff_max", {})[transport] = check.get("sync/logprob_diff_max")
                out["tensors"] = len(sync.meta)
            if size is not None:
                n = ray.get([a.__ray_call__.remote(_replan_buckets, size) for a in group.actors])[0]
            load0 = os.getloadavg()[0]
            rows = [sync.push(probe=False) for _ in range(warmup + pushes)][warmup:]
            run = {
                "transport": transport,
                "bucket_bytes": size,
                **sync_push_summary(rows),
                "bytes": median(r.get("sync/bytes", float("nan")) for r in rows),
                "load_avg": [load0, os.getloadavg()[0]],
                "pushes": rows,
            }
            if size is not None:
                run["planned_buckets"] = n
            echo(
                f"[bench] sync {model} {transport} {size or ''}: total {run['total_s']:.3f} s, "
                f"gather {run['gather_s']:.3f}, transfer {run['transfer_s']:.3f}, load {run['load_s']:.3f}, "
                f"buckets {run['buckets']}, load avg {load0:.1f}"
            )
            out["runs"].append(run)
        group_runs = [r for r in out["runs"] if r["transport"] == "group"]
        if len({r["buckets"] for r in group_runs}) >= 2:
            for key in ("transfer_s", "total_s"):
                f = fit_line([r["buckets"] for r in group_runs], [r[key] for r in group_runs])
                out[f"per_bucket_{key}"] = f["slope"]
        return out
    finally:
        if gens is not None:
            gens.shutdown()
        group.shutdown()


# ============================================================================ generation


def generate_summary(actor: Sequence[dict], bare: Sequence[dict]) -> dict:
    """The generator actor against a bare engine on the same batches: per-round rows
    {"tokens", "seconds"} of each; medians of tokens/s and their ratio (`engine_ratio`, 1.0 when
    the actor adds nothing to the engine's own time), and the median of the per-round ratios
    (`engine_ratio_paired`)."""
    if not actor or not bare:
        raise ValueError("generate_summary needs at least one round of each")
    a = median(r["tokens"] / r["seconds"] for r in actor if r["seconds"] > 0)
    b = median(r["tokens"] / r["seconds"] for r in bare if r["seconds"] > 0)
    # the same round's two calls run back to back, under about the same load: their ratio's median
    # moves less with other jobs on the machine than the ratio of the two medians
    paired = [
        (x["tokens"] / x["seconds"]) / (y["tokens"] / y["seconds"])
        for x, y in zip(actor, bare)
        if x["seconds"] > 0 and y["seconds"] > 0 and y["tokens"] > 0
    ]
    return {
        "actor_tokens_per_s": a,
        "bare_tokens_per_s": b,
        "engine_ratio": a / b if b > 0 else float("nan"),
        "engine_ratio_paired": median(paired) if paired else float("nan"),
        "rounds": len(actor),
        "actor_tokens": median(r["tokens"] for r in actor),
        "bare_tokens": median(r["tokens"] for r in bare),
    }


def _median_ms(xs: Iterable[float | None]) -> float | None:
    xs = [1e3 * x for x in xs if x is not None]
    return median(xs) if xs else None


class BareEngine:
    """`vllm.LLM.generate` with nothing around it (no top-k logprobs, no detokenisation): the
    engine's own limit that the generator actor is compared with. A Ray actor in the bench."""

    def __init__(self, engine_args: dict, env: dict):
        os.environ.update({k: str(v) for k, v in env.items()})
        from vllm import LLM

        self.llm = LLM(**engine_args)

    def generate(
        self, prompt_ids: list, n: int, temperature: float, top_p: float, top_k: int, max_tokens: int
    ) -> dict:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        sp = SamplingParams(
            n=int(n),
            temperature=float(temperature),
            top_p=float(top_p),
            top_k=int(top_k) if top_k not in (None, 0) else -1,
            max_tokens=int(max_tokens),
            detokenize=False,
        )
        t0 = time.perf_counter()
        outs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids], sp, use_tqdm=False
        )
        secs = time.perf_counter() - t0
        return {"tokens": sum(len(c.token_ids) for o in outs for c in o.outputs), "engine_s": secs}

    def close(self) -> None:
        try:
            self.llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 - already gone
            pass


# Environment of the generator actor that decides how its engine runs; the bare engine copies it.
ENGINE_ENV_KEYS = (
    "VLLM_ENABLE_V1_MULTIPROCESSING",
    "VLLM_CPU_OMP_THREADS_BIND",
    "VLLM_NO_USAGE_STATS",
    "TOKENIZERS_PARALLELISM",
    "OMP_NUM_THREADS",
)


def generate_throughput(
    preset: str,
    *,
    rounds: int,
    warmup: int,
    overrides: Sequence[str] = (),
    echo: Callable[[str], None] = print,
) -> dict:
    """The preset's generator actor (a real `GeneratorGroup` of one engine) and a bare engine
    (`BareEngine`, same engine arguments, environment and CPU slots) alive side by side, called in
    turn on the same batches of the preset's training prompts with the same sampling settings
    (n, temperature, top_p, top_k, max_tokens); `warmup` rounds first, then `rounds` timed ones,
    which of the two goes first alternating. Both are timed from the driver around the Ray call,
    so the actor's figure includes everything a trainer step waits for (tokenising, top-k
    logprobs, entropy, completion text, returning the completions). Needs Ray up."""
    import dataclasses as dc

    import ray
    from omegaconf import OmegaConf

    from egsw_rl.actors.generator import GeneratorGroup
    from egsw_rl.bench_peer import workload
    from egsw_rl.config import ModelConfig, RolloutConfig

    cfg = compose(preset, [*BENCH_OVERRIDES, *overrides])
    wl = workload(cfg, warmup + rounds)
    B = wl["batch_size"]
    batches = [wl["prompts"][i * B : (i + 1) * B] for i in range(warmup + rounds)]
    mcfg = ModelConfig(**OmegaConf.to_container(cfg.model, resolve=True))
    rcfg = RolloutConfig(**OmegaConf.to_container(cfg.rollout, resolve=True))
    rcfg = dc.replace(rcfg, num_generators=1)
    device = "cuda" if str(cfg.trainer.device) == "cuda" else "cpu"
    echo(
        f"[bench] generate {preset}: {rounds} rounds of {B} prompts x G={rcfg.n}, "
        f"<= {rcfg.max_tokens} new tokens, top-k logprobs {rcfg.logprobs}"
    )
    gens = GeneratorGroup(mcfg, rcfg, device)
    bare = None
    try:
        actor = gens.actors[0]
        engine_args = ray.get(actor.__ray_call__.remote(lambda self: self.engine_args()))
        env = ray.get(
            actor.__ray_call__.remote(
                lambda self, keys: {k: os.environ[k] for k in keys if k in os.environ}, ENGINE_ENV_KEYS
            )
        )
        for key in ("worker_extension_cls", "logprobs_mode", "max_logprobs"):
            engine_args.pop(key, None)
        opts = {
            "num_cpus": float(rcfg.cpus_per_generator),
            "num_gpus": float(rcfg.tensor_parallel_size if device == "cuda" else 0),
        }
        bare = ray.remote(BareEngine).options(**opts).remote(engine_args, env)
        ray.get(bare.__ray_call__.remote(lambda self: None))
        sampling = dict(
            n=rcfg.n,
            temperature=rcfg.temperature,
            top_p=rcfg.top_p,
            top_k=rcfg.top_k,
            max_tokens=rcfg.max_tokens,
        )
        actor_rows, bare_rows = [], []
        load0 = os.getloadavg()[0]
        for r, batch in enumerate(batches):
            # warm-up rounds only start the engines' lazy work: a few tokens are enough
            new_tokens = rcfg.max_tokens if r >= warmup else min(8, rcfg.max_tokens)

            def run_actor():
                t0 = time.perf_counter()
                comps = gens.generate(batch, max_tokens=new_tokens)  # noqa: B023 - called within its iteration
                secs = time.perf_counter() - t0
                st = gens.stats()[0]
                return {
                    "tokens": sum(len(c.token_ids) for c in comps),
                    "seconds": secs,
                    "engine_s": st.get("seconds"),
                    "post_s": st.get("post_s"),
                    "call_s": st.get("call_s"),
                }

            def run_bare(prompt_ids):
                t0 = time.perf_counter()
                res = ray.get(bare.generate.remote(prompt_ids, **{**sampling, "max_tokens": new_tokens}))  # noqa: B023 - called within its iteration
                return {**res, "seconds": time.perf_counter() - t0}

            # the bare engine gets exactly the token ids the actor will encode (untimed)
            ids = ray.get(
                actor.__ray_call__.remote(lambda self, p, m: self._encode(p, m), batch, rcfg.max_tokens)
            )
            if r % 2 == 0:
                a, b = run_actor(), run_bare(ids)
            else:
                b, a = run_bare(ids), run_actor()
            if r >= warmup:
                actor_rows.append(a)
                bare_rows.append(b)
        out = generate_summary(actor_rows, bare_rows)
        out.update(
            {
                "preset": preset,
                "device": device,
                "prompts_per_call": B,
                "G": int(rcfg.n),
                "max_tokens": int(rcfg.max_tokens),
                "logprobs": int(rcfg.logprobs),
                "engine_in_process": env.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "0",
                "actor_engine_tokens_per_s": median(
                    x["tokens"] / x["engine_s"] for x in actor_rows if x.get("engine_s")
                ),
                "bare_engine_tokens_per_s": median(x["tokens"] / x["engine_s"] for x in bare_rows),
                # where the actor's time goes besides the engine: its own work after the engine
                # (entropy, text, records) and the Ray round trip (call, arguments, return)
                "engine_call_ratio": median(
                    (x["tokens"] / x["engine_s"]) / (y["tokens"] / y["engine_s"])
                    for x, y in zip(actor_rows, bare_rows)
                    if x.get("engine_s") and y.get("engine_s") and y["tokens"]
                ),
                "actor_post_ms": _median_ms(x.get("post_s") for x in actor_rows),
                "actor_ray_ms": _median_ms(x["seconds"] - x["call_s"] for x in actor_rows if x.get("call_s")),
                "bare_ray_ms": _median_ms(x["seconds"] - x["engine_s"] for x in bare_rows),
                "actor_rows": actor_rows,
                "bare_rows": bare_rows,
                "load_avg": [load0, os.getloadavg()[0]],
            }
        )
        return out
    finally:
        if bare is not None:
            try:
                ray.get(bare.close.remote(), timeout=60)
            except Exception:  # noqa: BLE001
                pass
            ray.kill(bare)
        gens.shutdown()


# ============================================================================ the runner


def compose(preset: str, overrides: Sequence[str] = ()):
    from egsw_rl.bench_peer import compose as _compose

    return _compose(preset, tuple(overrides))


# (warm-up, measured) trainer steps by preset: [full run, --quick]
DEFAULT_COUNTS = {"tiny_cpu": [(2, 10), (2, 6)], "smollm2_cpu": [(1, 2), (1, 2)]}
# (warm-up, timed) generate calls of each of the actor and the bare engine: [full run, --quick]
# (tiny_cpu: a call is ~0.1 s and moves by tens of percent with other jobs on the box; 40 rounds)
GENERATE_ROUNDS = {"tiny_cpu": [(2, 40), (2, 20)], "smollm2_cpu": [(1, 2), (1, 2)]}
PEER_STEPS = {"tiny_cpu": 4, "smollm2_cpu": 2}  # measured TRL steps (after one warm-up step)
# TRL's loss micro-batch, in sequences, with about the same token budget as egsw_rl's
PEER_MICRO_BATCH = {"tiny_cpu": 16, "smollm2_cpu": 4}
BENCH_OVERRIDES = (
    "trainer.save_every=0",
    "data.eval=[]",
    "logger.wandb.mode=disabled",
    "logger.progress_bar=false",
    "logger.plots=false",
)


class Bench:
    """Runs the sub-benchmarks; trainer runs are cached, so `sync` reuses the `steps` runs and the
    peer comparison reuses egsw_rl's step times."""

    def __init__(
        self,
        workdir: Path,
        *,
        quick: bool,
        presets: Sequence[str],
        steps: int | None,
        warmup: int | None,
        peer_steps: int | None,
        peer_warmup: int,
        peer_timeout_s: float,
        extra: Sequence[str] = (),
        echo: Callable[[str], None] = print,
    ):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.quick = quick
        self.presets = list(presets)
        self.steps, self.warmup = steps, warmup
        self.peer_steps, self.peer_warmup, self.peer_timeout_s = peer_steps, peer_warmup, peer_timeout_s
        self.echo = echo
        self.extra = list(extra)
        self._runs: dict[tuple, dict] = {}
        self._ray_started = False

    # ------------------------------------------------------------------ plumbing

    def counts(self, preset: str) -> tuple[int, int]:
        """(warm-up, measured) trainer steps: --warmup / --steps, else by preset (SmolLM2 steps
        take a minute or more on 2 cores)."""
        w, s = DEFAULT_COUNTS.get(preset, DEFAULT_COUNTS["tiny_cpu"])[self.quick]
        return (self.warmup if self.warmup is not None else w, self.steps if self.steps is not None else s)

    def ray(self) -> None:
        import ray

        if ray.is_initialized():
            return
        from egsw_rl.launch import _worker_env

        # the workers' environment as a run of the first preset sets it (logger.level and all)
        env = {"env_vars": _worker_env(compose(self.presets[0] if self.presets else "tiny_cpu"))}
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], runtime_env=env, log_to_driver=False)
        else:
            # logical slots: a run's generator (2), learner ranks and reward actor, as launch counts them,
            # plus headroom for the learner sub-benchmark's own groups
            ray.init(
                address="local",
                num_cpus=max(os.cpu_count() or 1, 8),
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                runtime_env=env,
                log_to_driver=False,
            )
            self._ray_started = True

    def close(self) -> None:
        if self._ray_started:
            import ray

            ray.shutdown()

    def train(self, preset: str, overrides: Sequence[str] = ()) -> dict:
        """Run the real trainer for warmup + steps steps; {"rows", "summary", "run_dir", ...}."""
        key = (preset, tuple(overrides))
        if key in self._runs:
            return self._runs[key]
        from egsw_rl.launch import run
        from egsw_rl.runlog import read_metrics

        warmup, steps = self.counts(preset)
        total = warmup + steps
        name = preset + "".join("_" + o.replace("=", "-").replace(".", "_") for o in overrides)
        run_dir = self.workdir / f"{name}_{time.strftime('%H%M%S')}"
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg = compose(preset, [*BENCH_OVERRIDES, f"trainer.total_steps={total}", *self.extra, *overrides])
        self.ray()
        self.echo(f"[bench] {preset} {' '.join(overrides)}: {total} steps ({warmup} warm-up) in {run_dir}")
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        run(cfg, run_dir)
        rows = read_metrics(run_dir / "metrics.jsonl")
        res = {
            "preset": preset,
            "overrides": list(overrides),
            "run_dir": str(run_dir),
            "wall_s": time.perf_counter() - t0,
            "load_avg_start": load0,
            "load_avg_end": os.getloadavg()[0],
            "rows": rows,
            "warmup": warmup,
            "summary": step_breakdown(rows, warmup),
        }
        self._runs[key] = res
        return res

    # ------------------------------------------------------------------ sub-benchmarks

    def steps_bench(self) -> dict:
        out = {}
        for preset in self.presets:
            r = self.train(preset)
            out[preset] = {
                **r["summary"],
                "load_avg": [r["load_avg_start"], r["load_avg_end"]],
                "run_dir": r["run_dir"],
                "rows": r["rows"],
            }
        headers = [
            "preset",
            "step s",
            "generate",
            "reward",
            "logprobs",
            "update",
            "sync",
            "overhead",
            "overhead %",
            "gen tok/s",
            "train tok/s",
            "padding",
            "load avg",
        ]
        rows = [
            [
                p,
                s["step_s"],
                s["generate_s"],
                s["reward_s"],
                s["logprobs_s"],
                s["update_s"],
                s["sync_s"],
                s["overhead_s"],
                100 * s["overhead_frac"],
                s["gen_tokens_per_s"],
                s["train_tokens_per_s"],
                s["padding_frac"],
                "{:.1f}-{:.1f}".format(*tuple(s["load_avg"])),
            ]
            for p, s in out.items()
        ]
        return {
            "table": format_table("Step breakdown (median seconds per step after warm-up)", headers, rows),
            "presets": out,
        }

    def sync_bench(self) -> dict:
        self.ray()
        out: dict = {"memcpy_bytes_per_s": memcpy_bandwidth()}
        try:
            out["gloo_bytes_per_s"] = gloo_bandwidth()
        except Exception as e:  # noqa: BLE001 - the baseline is optional
            self.echo(f"[bench] gloo baseline failed: {e}")
        warmup, pushes = (1, 3) if self.quick else (1, 5)
        presets: dict = {}
        rows = []
        for preset in self.presets:
            model = SYNC_MODELS.get(preset, preset)
            r = sync_rig(model, pushes=pushes, warmup=warmup, echo=self.echo)
            trainer = self._runs.get((preset, ()))  # the trainer's own pushes, when `steps` ran
            if trainer is not None:
                r["trainer"] = sync_summary(
                    trainer["rows"], trainer["warmup"], out["memcpy_bytes_per_s"], out.get("gloo_bytes_per_s")
                )
            presets[preset] = r
            for run in r["runs"]:
                rows.append(
                    [
                        preset,
                        run["transport"],
                        human_bytes(run["bytes"]),
                        "" if run["bucket_bytes"] is None else human_bytes(run["bucket_bytes"]),
                        run["buckets"],
                        run["total_s"],
                        run["gather_s"],
                        run["transfer_s"],
                        run["load_s"],
                        run["other_s"],
                        run["bytes"] / run["total_s"] / 1e6,
                        run["bytes"] / run["total_s"] / out["memcpy_bytes_per_s"],
                        "{:.1f}-{:.1f}".format(*tuple(run["load_avg"])),
                    ]
                )
        fits = {
            p: {k: r.get(k) for k in ("tensors", "per_bucket_transfer_s", "per_bucket_total_s")}
            for p, r in presets.items()
        }
        shm = {p: next(x for x in r["runs"] if x["transport"] == "shm") for p, r in presets.items()}
        if len(shm) >= 2:
            try:
                out["load_fit"] = fit_load(
                    [presets[p]["tensors"] for p in shm],
                    [shm[p]["bytes"] for p in shm],
                    [shm[p]["load_s"] for p in shm],
                )
            except ValueError as e:
                self.echo(f"[bench] load fit: {e}")
        out["fits"] = fits
        table = format_table(
            "Weight sync (learner ranks -> vLLM, first byte sent to every engine loaded and versioned)",
            [
                "preset",
                "transport",
                "bytes",
                "bucket",
                "buckets",
                "total s",
                "gather s",
                "transfer s",
                "load s",
                "other s",
                "MB/s",
                "of memcpy",
                "load avg",
            ],
            rows,
        )
        extra = [
            f"per bucket ({p}, group): transfer {fmt(f['per_bucket_transfer_s'])} s, "
            f"total {fmt(f['per_bucket_total_s'])} s; {f['tensors']} tensors"
            for p, f in fits.items()
        ]
        if "load_fit" in out:
            lf = out["load_fit"]
            extra.append(
                f"engine load fit: {lf['per_tensor_s'] * 1e3:.3g} ms a tensor + "
                f"{lf['per_byte_s'] * 1e9:.3g} s a GB"
            )
        return {"table": table + "\n" + "\n".join(extra) + "\n", "presets": presets, **out}

    def reward_bench(self, data: str | None = None, workers: Sequence[int] | None = None) -> dict:
        """Scorings/s of fresh pools (one pass each) with 1, 2 and this machine's cores worker
        processes in total; reward_hidden_frac of a real tiny_cpu run with two engines and two
        reward actors (one engine returns one share: nothing to hide); the paper's batch on
        paper from the 1-worker rate."""
        from egsw_rl.data import dataset_path, read_rows

        path = Path(data) if data else dataset_path("math500")
        rows = read_rows(path)
        comps, golds = [r["solution"] for r in rows], [r["answer"] for r in rows]
        workers = sorted(set(workers or (1, 2, os.cpu_count() or 1)))
        res = [reward_throughput(comps, golds, w) for w in workers]
        table = format_table(
            f"Reward throughput (MATH-500 human solutions, {len(rows)} samples, fresh pools)",
            ["workers", "scorings/s", "per worker", "p50 ms", "p99 ms", "correct", "load avg"],
            [
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
        overrides = ["rollout.num_generators=2", "reward.num_actors=2"]
        run = self.train("tiny_cpu", overrides)
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
            "data": str(path),
            "tiny_cpu": hidden,
            "reward_hidden_frac": hidden["reward_hidden_frac"],
            "paper": paper,
        }

    def learner_bench(self) -> dict:
        self.ray()
        configs = [("tiny", dict(seqs=64, max_completion=160, prompt_len=(24, 64), updates=3))]
        if not self.quick:
            # half a smollm2_cpu batch: 32 sequences, GSM8K-like prompts of 120-200 tokens, <= 128 new
            configs.append(
                (
                    "smollm2",
                    dict(
                        seqs=32, max_completion=128, prompt_len=(120, 200), updates=1, micro_batch_tokens=1024
                    ),
                )
            )
        runs = []
        for model, kw in configs:
            for ranks in (1, 2):
                self.echo(f"[bench] learner {model}, {ranks} rank(s)")
                runs.append(learner_throughput(model, ranks, **kw))
        table = format_table(
            "Learner (ZeRO-3 over gloo, fp32; both ranks share the 2 cores)",
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

    def peer_run(self, preset: str, mode: str) -> dict:
        out = self.workdir / f"peer_{preset}_{mode}.json"
        cmd = [
            sys.executable,
            "-m",
            "egsw_rl.bench_peer",
            "--preset",
            preset,
            "--mode",
            mode,
            "--steps",
            str(self.peer_steps or PEER_STEPS.get(preset, 2)),
            "--warmup",
            str(self.peer_warmup),
            "--micro-batch",
            str(PEER_MICRO_BATCH.get(preset, 16)),
            "--out",
            str(out),
            *self.extra,
        ]
        self.echo(f"[bench] peer: TRL GRPOTrainer, {preset}, {mode}")
        load0 = os.getloadavg()[0]
        log = self.workdir / f"peer_{preset}_{mode}.log"
        try:
            with log.open("w") as f:
                proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=self.peer_timeout_s)
            res = (
                json.loads(out.read_text())
                if out.exists()
                else {
                    "mode": mode,
                    "error": f"peer process exited {proc.returncode} without a result (see {log})",
                }
            )
        except subprocess.TimeoutExpired:
            res = json.loads(out.read_text()) if out.exists() else {}
            res.update({"mode": mode, "error": f"timed out after {self.peer_timeout_s:.0f} s"})
        res["load_avg"] = [load0, os.getloadavg()[0]]
        res["log"] = str(log)
        return res

    def peer_bench(self) -> dict:
        out = {}
        rows = []
        for preset in self.presets:
            ours = self.train(preset)["summary"]
            out[preset] = {"egsw_rl_step_s": ours["step_s"], "egsw_rl_response_len": ours["response_len"]}
            for mode in ("hf", "vllm"):
                raw = self.peer_run(preset, mode)
                s = peer_summary(ours["step_s"], raw)
                s["load_avg"] = raw.get("load_avg")
                s["raw"] = {k: v for k, v in raw.items() if k != "traceback_tail"}
                s["traceback_tail"] = raw.get("traceback_tail")
                out[preset][mode] = s
                label = {"hf": "TRL, HF generate", "vllm": "TRL, vLLM colocate"}[mode]
                rows.append(
                    [
                        preset,
                        label,
                        s["step_s"] if not s["error"] or s["steps_done"] else None,
                        s["generate_s"],
                        s["completion_len"],
                        s["peak_rss_gib"],
                        ours["step_s"],
                        s["ours_over_peer"],
                        s["error"] or "",
                        "{:.1f}-{:.1f}".format(*tuple(s["load_avg"])),
                    ]
                )
        table = format_table(
            "Peer: TRL GRPOTrainer on the same workload (median s per optimizer step)",
            [
                "preset",
                "peer",
                "peer step s",
                "peer generate s",
                "peer resp len",
                "peer peak RSS GiB",
                "egsw_rl step s",
                "egsw_rl / peer",
                "error",
                "load avg",
            ],
            rows,
        )
        return {"table": table, "presets": out}

    def generate_bench(self) -> dict:
        self.ray()
        out = {}
        for preset in self.presets:
            warmup, rounds = GENERATE_ROUNDS.get(preset, GENERATE_ROUNDS["tiny_cpu"])[self.quick]
            warmup, rounds = (
                self.warmup if self.warmup is not None else warmup,
                self.steps if self.steps is not None else rounds,
            )
            try:
                out[preset] = generate_throughput(
                    preset, rounds=rounds, warmup=warmup, overrides=self.extra, echo=self.echo
                )
            except Exception as e:  # noqa: BLE001 - one preset failing must not lose the other's figures
                self.echo(f"[bench] generate {preset} failed: {type(e).__name__}: {e}")
                out[preset] = {"error": f"{type(e).__name__}: {e}"}
        ok = {p: s for p, s in out.items() if "error" not in s}
        if not ok:
            raise RuntimeError("; ".join(f"{p}: {s['error']}" for p, s in out.items()))
        table = format_table(
            "Generation: the generator actor vs a bare vllm.LLM.generate (same prompts, same sampling)",
            [
                "preset",
                "engine",
                "prompts x G",
                "max new",
                "top-k",
                "actor tok/s",
                "bare tok/s",
                "engine_ratio",
                "paired",
                "engine call / bare",
                "actor post ms",
                "actor Ray ms",
                "bare Ray ms",
                "load avg",
            ],
            [
                [
                    p,
                    "in process" if s["engine_in_process"] else "own process",
                    f"{s['prompts_per_call']} x {s['G']}",
                    s["max_tokens"],
                    s["logprobs"],
                    s["actor_tokens_per_s"],
                    s["bare_tokens_per_s"],
                    s["engine_ratio"],
                    s["engine_ratio_paired"],
                    s["engine_call_ratio"],
                    s["actor_post_ms"],
                    s["actor_ray_ms"],
                    s["bare_ray_ms"],
                    "{:.1f}-{:.1f}".format(*tuple(s["load_avg"])),
                ]
                for p, s in ok.items()
            ],
        )
        return {"table": table, "presets": out}

    def overlap_bench(self) -> dict:
        out = {}
        for preset in self.presets:
            off = self.train(preset)
            on = self.train(preset, ["trainer.overlap=true"])
            out[preset] = {
                **overlap_summary(off["summary"], on["summary"]),
                "load_avg_off": [off["load_avg_start"], off["load_avg_end"]],
                "load_avg_on": [on["load_avg_start"], on["load_avg_end"]],
                "rows_on": on["rows"],
            }
        table = format_table(
            "Overlap (generate batch k+1 while training on batch k)",
            [
                "preset",
                "steps/s off",
                "steps/s on",
                "speed-up",
                "speed-up, own devices (est.)",
                "policy lag off",
                "policy lag on",
                "old-logprob pass on (s)",
                "update off / on (s)",
                "load avg off / on",
            ],
            [
                [
                    p,
                    s["steps_per_s_off"],
                    s["steps_per_s_on"],
                    s["speedup"],
                    s["ideal_speedup_own_devices"],
                    s["policy_lag_off"],
                    s["policy_lag_on"],
                    s["logprobs_s_on"],
                    f"{s['update_s_off']:.3g} / {s['update_s_on']:.3g}",
                    "{:.1f} / {:.1f}".format(s["load_avg_off"][1], s["load_avg_on"][1]),
                ]
                for p, s in out.items()
            ],
        )
        return {"table": table, "presets": out}


# ============================================================================ CLI


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(
        prog="python -m egsw_rl.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--quick", action="store_true", help="tiny_cpu only, fewer steps: a few minutes on 2 cores"
    )
    ap.add_argument("--only", default=",".join(SUITES), help=f"comma-separated subset of {','.join(SUITES)}")
    ap.add_argument(
        "--presets", default=None, help="default: tiny_cpu with --quick, else tiny_cpu,smollm2_cpu"
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
        f"egsw_rl.bench: {', '.join(suites)} on {', '.join(presets)}; {info['cpus']} CPUs, "
        f"load average {load_tag()}; run directories in {workdir}",
        flush=True,
    )
    results: dict[str, Any] = {}
    runners = {
        "steps": bench.steps_bench,
        "sync": bench.sync_bench,
        "reward": lambda: bench.reward_bench(args.reward_data),
        "learner": bench.learner_bench,
        "peer": bench.peer_bench,
        "overlap": bench.overlap_bench,
        "generate": bench.generate_bench,
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
                import traceback

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
