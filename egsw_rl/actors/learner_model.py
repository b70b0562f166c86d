"""The learner's torch side: the DeepSpeed config it generates, the LR schedule, and the module
DeepSpeed wraps (a causal LM whose output head returns sampled-token logprobs chunk by chunk).

Why a wrapper module: a plain `model(...)` returns full logits [rows, seq, vocab], which for a
150k vocabulary is the memory hog of RL training. `LogprobModel.forward` runs the decoder, keeps
only the hidden states of completion positions, and `ChunkedLogprobHead` turns them into
logprobs (and, when asked, exact entropy / ClipV's N) `chunk_tokens` rows at a time. With
gradients each chunk is recomputed in backward (activation checkpointing), so at most one
[chunk, vocab] block of logits is alive at any moment in forward or backward. Under ZeRO-3 the
head weight belongs to another module (`lm_head`, or the tied embedding), so it is registered as
an external parameter of the head: DeepSpeed gathers it once per head forward / backward.
"""

from __future__ import annotations

import copy
import json
import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.initialization import no_init_weights

from egsw_rl.algos import clipv_stats_from_logits, entropy_from_logits
from egsw_rl.models import resolve_model

# ----------------------------------------------------------------------------- DeepSpeed config


def deep_merge(base: dict, extra: dict) -> dict:
    """`extra` over `base`, recursively for nested dicts (user pass-through DeepSpeed keys)."""
    out = copy.deepcopy(base)
    for k, v in (extra or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def build_ds_config(lcfg, *, device: str, dtype: str, train: bool, hidden_size: int | None = None) -> dict:
    """The DeepSpeed config generated from `learner.*` (the user never writes JSON).

    ZeRO stage 3; bf16 on GPU (fp32 gradient accumulation), fp32 on CPU; torch's AdamW on every
    device (fused kernels on GPU); gradient clipping. Batch sizes are placeholders
    (micro 1, accumulation 1): the learner forms token-budget micro-batches and marks the
    accumulation boundary itself. With the model's `hidden_size` the ZeRO-3 buffers are sized
    from it (reduce bucket h^2, prefetch 0.9 h^2, persistence 10 h, the usual recipe) instead of
    DeepSpeed's fixed 5e8-element reduce bucket, whose full-gradient staging would not shrink
    with the number of ranks. `learner.deepspeed` is merged over the result.
    """
    on_gpu = device == "cuda"
    zero: dict[str, Any] = {
        "stage": 3,
        "overlap_comm": on_gpu,
        "contiguous_gradients": True,
        "stage3_gather_16bit_weights_on_model_save": False,
    }
    if hidden_size:
        h = int(hidden_size)
        zero["reduce_bucket_size"] = h * h
        zero["stage3_prefetch_bucket_size"] = int(0.9 * h * h)
        zero["stage3_param_persistence_threshold"] = 10 * h
    if lcfg.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    if train and lcfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_optimization": zero,
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
    }
    if dtype in ("bfloat16", "float16"):
        cfg["data_types"] = {"grad_accum_dtype": "fp32"}
    if train:
        cfg["gradient_clipping"] = float(lcfg.grad_clip)
        cfg["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": float(lcfg.lr),
                "betas": [float(b) for b in lcfg.adam_betas],
                "eps": float(lcfg.adam_eps),
                "weight_decay": float(lcfg.weight_decay),
                # torch.optim.AdamW everywhere. DeepSpeed's own FusedAdam / DeepSpeedCPUAdam are
                # C++/CUDA ops JIT-compiled on first use, which needs a CUDA toolkit matching
                # torch's on every node (DeepSpeed asserts it) and minutes of build per rank;
                # torch's AdamW ships compiled with torch. With torch_adam DeepSpeed takes this
                # branch before it looks at offload, so an offloaded optimizer is torch's too.
                "torch_adam": True,
            },
        }
        if on_gpu:
            # torch's fused multi-tensor kernel: FusedAdam's speed without a build. It also has
            # a CPU kernel, which is where the step runs when the optimizer is offloaded.
            cfg["optimizer"]["params"]["fused"] = True
    return deep_merge(cfg, dict(lcfg.deepspeed or {}))


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int | None):
    """Multiplier of the base LR per optimizer step: linear warmup, then constant or cosine to 0."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"learner.lr_schedule must be 'constant' or 'cosine', got {schedule!r}")
    if schedule == "cosine" and not total_steps:
        raise ValueError(
            "learner.lr_schedule=cosine needs the number of optimizer steps "
            "(LearnerGroup(total_steps=trainer.total_steps))"
        )
    warm = max(0, int(warmup_steps))

    def f(step: int) -> float:
        if warm and step < warm:
            return float(step + 1) / float(warm + 1)
        if schedule == "constant":
            return 1.0
        span = max(1, int(total_steps) - warm)
        progress = min(1.0, max(0.0, (step - warm) / span))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


# ----------------------------------------------------------------------------- loading


def _checkpoint_index(path: str) -> dict[str, str]:
    """tensor name -> safetensors file of an HF model folder (`path` as `model.path` allows: a hub
    repo id, a run or checkpoint directory, a folder)."""
    path = str(resolve_model(path))
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            wm = json.load(f)["weight_map"]
        return {k: os.path.join(path, v) for k, v in wm.items()}
    if os.path.exists(single):
        with safe_open(single, framework="pt") as f:
            return {k: single for k in f.keys()}
    raise FileNotFoundError(
        f"{path}: no model.safetensors(.index.json); the learner loads safetensors "
        "weights (convert .bin / .pth checkpoints with transformers' save_pretrained)"
    )


def load_zero3_causal_lm(
    path: str,
    ds_config: dict,
    dtype,
    *,
    rank: int,
    trust_remote_code: bool = False,
    bucket_bytes: int = 256 * 2**20,
) -> nn.Module:
    """Build the causal LM inside `deepspeed.zero.Init` (each rank only ever allocates its own
    partition) and fill it from the safetensors checkpoint: rank 0 reads the files, every rank
    takes part in `GatheredParameters(..., modifier_rank=0)`, which broadcasts and re-partitions.

    (transformers' own ZeRO-3 loading path needs `accelerate`, which is not a dependency.)
    """
    import deepspeed

    # Every rank resolves `path` on its own node: a hub id names that node's Hugging Face cache.
    path = str(resolve_model(path))
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    # No random init (the partitions are empty and get overwritten anyway); no_init_weights also
    # skips tying, so tie explicitly (a tied head then shares the embedding's ZeRO-3 parameter).
    # dtype=None: zero.Init then takes the dtype from the config's bf16 / fp16 flags (set from the
    # same dtype by build_ds_config). An explicit dtype is not honoured by DeepSpeed 0.19.8: its
    # fallback chain yields bfloat16 on any accelerator without fp16, every CPU included, and CPU
    # bf16 matmuls without AVX512-BF16 run a scalar loop, 6-20x slower (deepspeedai/DeepSpeed#8428).
    with deepspeed.zero.Init(config_dict_or_path=ds_config, dtype=None), no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.tie_weights()
    wrong = {str(p.dtype) for p in model.parameters() if p.dtype != dtype}
    if wrong:
        raise RuntimeError(
            f"ZeRO-3 built the model in {sorted(wrong)}, not {dtype}: check the "
            "DeepSpeed config's bf16 / fp16 flags against model.dtype"
        )
    named = list(model.named_parameters())  # tied parameters appear once
    where = _checkpoint_index(path) if rank == 0 else {}
    handles: dict[str, Any] = {}

    def source(name: str) -> str | None:
        for cand in (name, name.removeprefix("model."), "model." + name):
            if cand in where:
                return cand
        return None

    if rank == 0:
        missing = [n for n, _ in named if source(n) is None]
        if missing:
            raise KeyError(f"{path}: checkpoint lacks {missing[:5]}{' ...' if len(missing) > 5 else ''}")

    def nbytes(p) -> int:
        return int(getattr(p, "ds_numel", p.numel())) * p.element_size()

    i = 0
    try:
        while i < len(named):
            group, size = [], 0
            while i < len(named) and (not group or size + nbytes(named[i][1]) <= bucket_bytes):
                group.append(named[i])
                size += nbytes(named[i][1])
                i += 1
            with deepspeed.zero.GatheredParameters([p for _, p in group], modifier_rank=0):
                if rank == 0:
                    with torch.no_grad():
                        for name, p in group:
                            key = source(name)
                            f = where[key]
                            if f not in handles:
                                handles[f] = safe_open(f, framework="pt")
                            t = handles[f].get_tensor(key)
                            if tuple(t.shape) != tuple(p.shape):
                                raise ValueError(
                                    f"{name}: checkpoint shape {tuple(t.shape)} != model {tuple(p.shape)}"
                                )
                            p.data.copy_(t.to(p.dtype))
    finally:
        handles.clear()
    return model


# ----------------------------------------------------------------------------- the module


def _no_dropout(model: nn.Module) -> None:
    """RL needs the old-policy pass and the update pass to compute the same function."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "attention_dropout", None), float):
            m.attention_dropout = 0.0
    cfg = getattr(model, "config", None)
    for key in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout"):
        if cfg is not None and isinstance(getattr(cfg, key, None), float):
            setattr(cfg, key, 0.0)


class ChunkedLogprobHead(nn.Module):
    """hidden [n, H] + targets [n] -> logprob of each target under softmax(W h / temperature).

    Optional per-token extras: "entropy" (exact, differentiable when `grad_entropy`), "clipv"
    (entropy and ClipV's N, detached). Holds no parameter of its own: the output embedding is
    registered as an external ZeRO-3 parameter by `LogprobModel`.
    """

    def __init__(self, owner: nn.Module, temperature: float, chunk_tokens: int):
        super().__init__()
        self._owner = [owner]  # a list, so the output embedding is not registered twice
        self.inv_temp = 1.0 / float(temperature)
        self.chunk = max(1, int(chunk_tokens))

    def _weights(self) -> tuple[Tensor, Tensor | None]:
        out = self._owner[0]
        return out.weight, getattr(out, "bias", None)

    def _chunk(
        self,
        h: Tensor,
        w: Tensor,
        b: Tensor | None,
        tgt: Tensor,
        want_ent: bool,
        grad_ent: bool,
        want_clipv: bool,
    ):
        logits = F.linear(h, w, b).float() * self.inv_temp  # [c, V], one chunk only
        lp = logits.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        ent = clipv = None
        if want_clipv:
            ent, clipv = clipv_stats_from_logits(logits.detach(), chunk_size=logits.shape[0])
        elif want_ent:
            if grad_ent:
                ent = entropy_from_logits(logits, chunk_size=logits.shape[0])
            else:
                with torch.no_grad():
                    ent = entropy_from_logits(logits, chunk_size=logits.shape[0])
        return lp, ent, clipv

    def forward(
        self,
        hidden: Tensor,
        targets: Tensor,
        want_ent: bool = False,
        grad_ent: bool = False,
        want_clipv: bool = False,
    ):
        w, b = self._weights()
        lps, ents, ns = [], [], []
        use_ckpt = torch.is_grad_enabled() and hidden.requires_grad
        for s in range(0, hidden.shape[0], self.chunk):
            h, t = hidden[s : s + self.chunk], targets[s : s + self.chunk]
            if use_ckpt:
                # Recompute the chunk's logits in backward instead of keeping them.
                lp, ent, n = checkpoint(
                    self._chunk, h, w, b, t, want_ent, grad_ent, want_clipv, use_reentrant=False
                )
            else:
                lp, ent, n = self._chunk(h, w, b, t, want_ent, grad_ent, want_clipv)
            lps.append(lp)
            ents.append(ent)
            ns.append(n)
        empty = hidden.new_zeros(0, dtype=torch.float32)
        lp = torch.cat(lps) if lps else empty
        ent = torch.cat(ents) if ents and ents[0] is not None else None
        n = torch.cat(ns) if ns and ns[0] is not None else None
        return lp, ent, n


class LogprobModel(nn.Module):
    """What DeepSpeed wraps: decoder + chunked head. forward returns flat per-token tensors for
    the positions (rows, cols) of the padded [rows, seq] input: (logprobs, entropy | None,
    clipv_n | None)."""

    def __init__(self, causal_lm: nn.Module, temperature: float, chunk_tokens: int):
        super().__init__()
        self.lm = causal_lm
        out = causal_lm.get_output_embeddings()
        self.head = ChunkedLogprobHead(out, temperature, chunk_tokens)
        _no_dropout(causal_lm)

    def register_zero3_external(self) -> None:
        import deepspeed

        out = self.lm.get_output_embeddings()
        deepspeed.zero.register_external_parameter(self.head, out.weight)
        if getattr(out, "bias", None) is not None:
            deepspeed.zero.register_external_parameter(self.head, out.bias)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
        rows: Tensor,
        cols: Tensor,
        targets: Tensor,
        want_ent: bool = False,
        grad_ent: bool = False,
        want_clipv: bool = False,
    ):
        base = self.lm.get_decoder() if hasattr(self.lm, "get_decoder") else self.lm.model
        out = base(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        hidden = out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state
        h = hidden[rows, cols]  # [n_tokens, H]: completion positions only
        return self.head(h, targets, want_ent, grad_ent, want_clipv)


# ----------------------------------------------------------------------------- inputs


def collate(
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    idx: list[int],
    pad_id: int,
    device: torch.device,
) -> dict[str, Any]:
    """Right-padded [b, L] inputs for sequences `idx` (prompt + completion minus its last token)
    and the flat positions / targets of their completion tokens.

    Returns input tensors plus `tok_row`, `tok_col` (where each flat token goes in a [b, T]
    completion-aligned array) and `T` (the longest completion in this micro-batch). An empty
    `idx` gives a 1-token dummy input whose single target is masked out by the caller.
    """
    if not idx:
        one = torch.zeros(1, 1, dtype=torch.long, device=device)
        z = torch.zeros(1, dtype=torch.long, device=device)
        return dict(
            input_ids=one,
            attention_mask=torch.ones_like(one),
            position_ids=torch.zeros_like(one),
            rows=z,
            cols=z,
            targets=z,
            tok_row=z,
            tok_col=z,
            T=1,
            dummy=True,
        )
    seqs, rows, cols, tgts, trow, tcol = [], [], [], [], [], []
    T = 1
    for b, i in enumerate(idx):
        p, c = list(prompt_ids[i]), list(completion_ids[i])
        if not p:
            raise ValueError(f"sequence {i} has an empty prompt: nothing predicts its first token")
        full = p + c
        seqs.append(full[:-1] if c else full)
        P, Tc = len(p), len(c)
        T = max(T, Tc)
        rows += [b] * Tc
        cols += list(range(P - 1, P - 1 + Tc))
        tgts += c
        trow += [b] * Tc
        tcol += list(range(Tc))
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), int(pad_id), dtype=torch.long)
    am = torch.zeros((len(seqs), L), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
        am[b, : len(s)] = 1
    pos = torch.arange(L, dtype=torch.long).unsqueeze(0).expand(len(seqs), L).contiguous()
    lt = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
    return dict(
        input_ids=ids.to(device),
        attention_mask=am.to(device),
        position_ids=pos.to(device),
        rows=lt(rows),
        cols=lt(cols),
        targets=lt(tgts),
        tok_row=lt(trow),
        tok_col=lt(tcol),
        T=T,
        dummy=False,
    )


def scatter_tokens(flat: Tensor, tok_row: Tensor, tok_col: Tensor, b: int, T: int) -> Tensor:
    """Flat per-token values -> [b, T] (zeros elsewhere), keeping the autograd graph."""
    out = flat.new_zeros((b, T))
    return out.index_put((tok_row, tok_col), flat)
