"""What a weight push carries, decided before anything is sent.

`ParamMeta` is one parameter as it travels: checkpoint (Hugging Face) name, full unpartitioned
shape, dtype. `param_meta` reads them from a module without gathering (ZeRO-3's `ds_shape`),
`plan_buckets` cuts them into buckets, `validate_meta` checks a plan against the engine's
checkpoint (`checkpoint_shapes`) so a bad plan is refused before the engines change, and the probe
(`run_probe`) is the fixed token sequence whose logprobs the first push after set-up carries.
`choose_transport` picks shm, group or ipc (docs/architecture.md, "The weight-sync protocol").
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import safe_open

from egsw_rl.models import ModelNotFoundError, resolve_model

log = logging.getLogger(__name__)

ALIGN = 16  # byte alignment of each tensor inside a bucket (dtype views need aligned offsets)
DEFAULT_TIMEOUT_S = 1800.0
PROBE_LEN = 32
DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


# ============================================================================ metadata


@dataclass(frozen=True)
class ParamMeta:
    """One parameter as it travels: checkpoint name, full (unpartitioned) shape, dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # "float32" | "bfloat16" | "float16"

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= int(s)
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPES[self.dtype].itemsize

    @property
    def padded_nbytes(self) -> int:
        return align(self.nbytes)


def align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def checkpoint_name(name: str) -> str:
    """The HF checkpoint name of a module parameter: wrapper prefixes removed."""
    changed = True
    while changed:
        changed = False
        for prefix in ("module.", "_orig_mod.", "_fsdp_wrapped_module."):
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name.replace("._orig_mod.", ".").replace("._fsdp_wrapped_module.", ".")


def dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"cannot send parameters of dtype {dtype}")
    return name


def param_meta(module: torch.nn.Module) -> list[ParamMeta]:
    """Name, full shape and dtype of every parameter of `module`, in `named_parameters` order
    (shared parameters once: a tied output head travels as the embedding). ZeRO-3 partitioned
    parameters report their full shape (`ds_shape`), not the empty local one."""
    out = []
    for name, p in module.named_parameters():
        shape = tuple(int(s) for s in (p.ds_shape if hasattr(p, "ds_shape") else p.shape))
        out.append(ParamMeta(checkpoint_name(name), shape, dtype_name(p.dtype)))
    return out


def plan_buckets(meta: Sequence[ParamMeta], bucket_bytes: int) -> list[list[ParamMeta]]:
    """Split `meta` (in order) into buckets of at most `bucket_bytes` (aligned) bytes each; a
    parameter larger than a bucket travels alone. Sizes come from the full shapes (ds_numel under
    ZeRO-3), never from a partitioned parameter's local numel()."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    buckets: list[list[ParamMeta]] = []
    cur: list[ParamMeta] = []
    size = 0
    for m in meta:
        if cur and size + m.padded_nbytes > bucket_bytes:
            buckets.append(cur)
            cur, size = [], 0
        cur.append(m)
        size += m.padded_nbytes
    if cur:
        buckets.append(cur)
    return buckets


def meta_to_rows(meta: Sequence[ParamMeta]) -> list[list[Any]]:
    """Plain lists (msgpack-safe) for vLLM's collective_rpc: [[name, [shape], dtype], ...]."""
    return [[m.name, list(m.shape), m.dtype] for m in meta]


def rows_to_meta(rows: Sequence[Any]) -> list[ParamMeta]:
    out = []
    for r in rows:
        if isinstance(r, ParamMeta):
            out.append(r)
        else:
            name, shape, dtype = r
            out.append(ParamMeta(str(name), tuple(int(s) for s in shape), str(dtype)))
    return out


# ============================================================================ the probe


def probe_token_ids(vocab_size: int, n: int = PROBE_LEN) -> list[int]:
    """A fixed token sequence for the post-sync consistency check. Ids stay below 256 (and below
    the vocabulary): byte-level BPE vocabularies hold their byte tokens there, so every tokenizer
    the engine validates against accepts them."""
    hi = max(4, min(256, int(vocab_size)))
    return [(37 * i + 11) % (hi - 3) + 3 for i in range(n)]


def _module_vocab_size(module: torch.nn.Module) -> int:
    cfg = getattr(module, "config", None)
    v = getattr(cfg, "vocab_size", None)
    if v:
        return int(v)
    emb = module.get_input_embeddings() if hasattr(module, "get_input_embeddings") else None
    w = getattr(emb, "weight", None)
    if w is not None:
        return int(w.ds_shape[0] if hasattr(w, "ds_shape") else w.shape[0])
    return 256


@torch.no_grad()
def probe_logprobs(module: torch.nn.Module, ids: Sequence[int]) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) for t >= 1 at temperature 1, float32 on CPU. Under ZeRO-3 every
    rank must call this (the forward gathers parameters collectively)."""
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    try:
        x = torch.tensor([list(ids)], dtype=torch.long, device=device)
        logits = module(input_ids=x, use_cache=False).logits[0, :-1].float()
        lp = torch.log_softmax(logits, dim=-1).gather(-1, x[0, 1:, None])[:, 0]
    finally:
        module.train(was_training)
    return lp.cpu()


def run_probe(module: torch.nn.Module) -> tuple[list[int], torch.Tensor]:
    """The probe sequence for `module` and its logprobs. Every ZeRO-3 rank must call it (the
    forward is collective)."""
    ids = probe_token_ids(_module_vocab_size(module))
    return ids, probe_logprobs(module, ids)


# ============================================================================ the engine's checkpoint


def checkpoint_shapes(model_path: str) -> dict[str, tuple[int, ...]] | None:
    """Names and shapes of the tensors in a model folder's safetensors files (what vLLM's
    `load_weights` consumes); None when there are none to read."""
    try:
        path = str(resolve_model(model_path))
    except ModelNotFoundError as e:  # the engine loaded from somewhere else: the check needs the files
        log.warning("weight sync: no parameter-name check against the checkpoint (%s)", e)
        return None
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        return None
    shapes = {}
    for f in files:
        with safe_open(f, framework="pt") as fh:
            for k in fh.keys():
                shapes[k] = tuple(int(s) for s in fh.get_slice(k).get_shape())
    return shapes


def _optional_names(expected: dict[str, tuple[int, ...]], tied: bool) -> set[str]:
    """Checkpoint tensors vLLM skips anyway (a sync need not carry them)."""
    out = {k for k in expected if "rotary_emb.inv_freq" in k}
    if tied:
        out |= {k for k in expected if k == "lm_head.weight" or k.endswith(".lm_head.weight")}
    return out


def validate_meta(
    meta: Sequence[ParamMeta], expected: dict[str, tuple[int, ...]] | None, tied: bool
) -> list[str]:
    """Problems with a sync plan against the engine's checkpoint: missing names, unknown names,
    shape or dtype errors. Empty when the plan covers exactly the model."""
    problems = []
    names = [m.name for m in meta]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        problems.append(f"duplicate parameter names: {dup[:5]}")
    for m in meta:
        if m.dtype not in DTYPES:
            problems.append(f"{m.name}: unsupported dtype {m.dtype}")
    if expected is None:
        return problems
    optional = _optional_names(expected, tied)
    have = set(names)
    missing = sorted(set(expected) - have - optional)
    if missing:
        problems.append(
            f"missing parameter(s) {missing[:8]}{' ...' if len(missing) > 8 else ''} "
            f"({len(missing)} of {len(expected)}): the engine would keep old weights"
        )
    allowed = set(expected) | ({"lm_head.weight"} if tied else set())
    unknown = sorted(have - allowed)
    if unknown:
        problems.append(f"unknown parameter name(s) {unknown[:8]}: not in the engine's checkpoint")
    for m in meta:
        if m.name in expected and tuple(expected[m.name]) != tuple(m.shape):
            problems.append(f"{m.name}: shape {m.shape}, the engine expects {expected[m.name]}")
    return problems


def choose_transport(want: str, device: str, colocated: bool, nodes: int) -> str:
    """The weight transport of learner.sync_transport=`want` (auto | shm | group | ipc) for the
    run's device, layout and the number of nodes the learner ranks and engines use, or
    ValueError naming what the asked one needs."""
    if want == "ipc":
        if not (device == "cuda" and colocated):
            raise ValueError(
                "learner.sync_transport=ipc reads the learner's GPU buffers from the engine "
                "on the same GPU: it needs trainer.placement=colocated on cuda (use auto)"
            )
        return "ipc"
    if want == "shm":
        if device == "cuda" or nodes != 1:
            raise ValueError(
                "learner.sync_transport=shm needs the learner ranks and every generator on one "
                f"CPU node; they run on {nodes} node(s) on {device} (use group or auto)"
            )
        return "shm"
    if want == "group":
        if device == "cuda" and colocated:
            raise ValueError(
                "learner.sync_transport=group with trainer.placement=colocated on cuda: NCCL "
                "refuses two ranks of one group on one GPU (learner rank 0 and the engine "
                "worker beside it); colocated, weights go over CUDA IPC (use auto)"
            )
        return "group"
    if device == "cuda":
        return "ipc" if colocated else "group"
    return "shm" if nodes == 1 else "group"


def gathered(params: list[torch.nn.Parameter]):
    """Gather ZeRO-3 partitioned parameters on all ranks (collective); plain ones as they are."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    return contextlib.nullcontext()
