"""The on-paper estimate of a Qwen2.5-Math-7B step (`--paper`): the `qwen_math_7b` preset on one
8-GPU node, split (4 learner + 4 vLLM GPUs) and colocated (every GPU both), from parameter and
FLOP counts, the assumed hardware figures, and the sync costs measured here (`--only sync`)."""

from __future__ import annotations

from collections.abc import Sequence

from egsw_rl.bench.report import format_table, human_bytes

# Qwen2.5-Math-7B (config.json of the hub model): 28 layers, hidden 3584, MLP 18944, 28 query and
# 4 key/value heads of 128, vocabulary 152064, untied input and output embeddings.
QWEN_MATH_7B = dict(
    layers=28, hidden=3584, intermediate=18944, heads=28, kv_heads=4, head_dim=128, vocab=152064, tied=False
)


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
    n_params = sum(transformer_tensors(**m))
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
            f"x {a['per_bucket_s'] * 1e3:.2g} ms (measured on CPU)",
        ],
        [
            "  layer-wise load, host",
            f"{est['sync_parts']['load_host_s']:.3f} s",
            f"{est['sync_tensors']} tensors x {a['per_tensor_load_s'] * 1e3:.2g} ms (measured on CPU)",
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
#   a handshake per bucket through the TCPStore, measured on CPU with the transport's own code
#   (`bench.sync.ipc_handshake_cost`: IpcSender and ipc_stream in two threads over a loopback
#   store, the slope from 4 to 200 buckets): 0.17 to 0.51 ms a bucket over five runs at load average 1.3 to
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
