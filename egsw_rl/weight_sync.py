"""Learner -> vLLM weight transport. Two transports:

- shared memory (CPU, learner ranks and engines on one node): one buffer file mapped by every
  learner rank and every engine, laid out like one big bucket (`shared_layout`). Each ZeRO-3 rank
  copies its own partition of every parameter to where it belongs (`write_shards`), so the full
  tensors appear without a gather or a socket, and the engines load straight from views of it
  (`WorkerExtension.egsw_load_shared`). The learner side orders write-then-load through Ray.
- a process group (GPU; CPU across nodes), described below.
- CUDA IPC (`trainer.placement=colocated` on GPU: every engine worker shares its device with a
  learner rank). ZeRO-3's gather leaves every rank holding each full bucket on its own GPU, so
  each rank packs it into a staging buffer and the engine worker on the same device reads it
  through a CUDA IPC handle: nothing crosses a link beyond ZeRO-3's own all-gather. Handles,
  bucket sizes and acknowledgements travel through a TCPStore hosted by learner rank 0
  (`IpcSender`, `WorkerExtension.egsw_ipc_receive`); the wire protocol below is not used.

`choose_transport` decides between them (learner.sync_transport=auto: ipc when colocated on GPU,
shm on one CPU node, else group).

One dedicated process group joins the sender (learner rank 0, rank 0 of the group) and every vLLM
worker of every generator (ranks 1..W-1). It is built from its own `TCPStore` and a
`ProcessGroupGloo` (CPU) or `ProcessGroupNCCL` (GPU) object, so it never touches the default
torch.distributed group that DeepSpeed and vLLM use in those processes. vLLM's own NCCL
communicator is not used: without NCCL it silently does nothing.

Wire protocol (all broadcasts from rank 0; the receiver needs only the ordered parameter list):

    per bucket:  header int64[4] = [KIND_BUCKET, n_params, n_bytes, 0]
                 payload uint8[n_bytes]: the bucket's tensors packed in meta order, each at a
                 16-byte aligned offset, in the sender's dtype
    at the end:  header int64[4] = [KIND_END, n_probe, 0, 0]
                 probe ids int64[n_probe], then the sender's probe logprobs float32[n_probe - 1]

Sender side (`param_meta`, `plan_buckets`, `WeightSender`) is written for ZeRO-3: shapes and
sizes come from `ds_shape` / `ds_numel`, and each bucket is gathered on every learner rank with
`deepspeed.zero.GatheredParameters` (plain modules are sent as they are). Every learner rank calls
`send` with the same buckets; only rank 0 holds a process group.

Receiving side (`WorkerExtension`, loaded by vLLM as `worker_extension_cls`) streams the buckets
into the model runner's layer-wise in-place reload (`reload_weights(weights_iterator=...,
is_checkpoint_format=True)`): it accepts checkpoint (HF) names, lets vLLM fuse qkv / gate_up and
re-runs the post-load processing, which on CPU repacks every linear weight. A module whose weight
aliases another one (the tied embedding / output head) keeps its own kernel-side copy that this
reload does not refresh, so such modules are re-processed afterwards.

Consistency check: after the buckets, every learner rank runs a forward on a fixed token sequence
(the "probe"); rank 0 broadcasts its logprobs at temperature 1, and the generator compares them
with vLLM's own (`sync/logprob_diff_max`).

Timing: the sender and every receiver stamp their own timelines (`Laps`: CUDA events on GPU,
where a collective's `wait()` returns before the transfer is done). The sender reports each
bucket's gather; a receiver its wait for each header and payload and the loader's time in
between. `split_sync` turns one receiver's timeline into gather, transfer and load.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

log = logging.getLogger(__name__)

__all__ = [
    "ParamMeta",
    "param_meta",
    "plan_buckets",
    "meta_to_rows",
    "rows_to_meta",
    "probe_token_ids",
    "probe_logprobs",
    "run_probe",
    "validate_meta",
    "WeightSender",
    "WorkerExtension",
    "sync_weights",
    "shared_layout",
    "shared_dir",
    "map_shared",
    "write_shards",
    "KIND_BUCKET",
    "KIND_END",
    "Laps",
    "lap_intervals",
    "lap_lists",
    "split_sync",
    "choose_transport",
    "IpcSender",
    "ipc_handle",
    "open_ipc_handle",
    "ipc_stream",
    "ipc_probe",
]

KIND_BUCKET = 1
KIND_END = 2
ALIGN = 16  # byte alignment of each tensor inside a bucket (dtype views need aligned offsets)
DEFAULT_TIMEOUT_S = 1800.0
PROBE_LEN = 32
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64}


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
        return self.numel * _DTYPES[self.dtype].itemsize

    @property
    def padded_nbytes(self) -> int:
        return _align(self.nbytes)


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def checkpoint_name(name: str) -> str:
    """The HF checkpoint name of a module parameter: wrapper prefixes removed."""
    changed = True
    while changed:
        changed = False
        for prefix in ("module.", "_orig_mod.", "_fsdp_wrapped_module."):
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name.replace("._orig_mod.", ".").replace("._fsdp_wrapped_module.", ".")


def _dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"cannot send parameters of dtype {dtype}")
    return name


def param_meta(module: torch.nn.Module) -> list[ParamMeta]:
    """Name, full shape and dtype of every parameter of `module`, in `named_parameters` order
    (shared parameters once: a tied output head travels as the embedding). ZeRO-3 partitioned
    parameters report their full shape (`ds_shape`), not the empty local one."""
    out = []
    for name, p in module.named_parameters():
        shape = tuple(int(s) for s in (p.ds_shape if hasattr(p, "ds_shape") else p.shape))
        out.append(ParamMeta(checkpoint_name(name), shape, _dtype_name(p.dtype)))
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


# ============================================================================ process group


def _local_ip_towards(addr: str) -> str:
    """This host's address on the route to `addr` (no packet is sent)."""
    if addr in ("127.0.0.1", "localhost", "::1"):
        return "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((addr, 9))
            return s.getsockname()[0]
    except OSError:
        return socket.gethostbyname(socket.gethostname())


def new_group(master_addr: str, master_port: int, rank: int, world_size: int, backend: str,
              timeout_s: float = DEFAULT_TIMEOUT_S):
    """A process group over its own TCPStore (rank 0 hosts the store). Collective: every rank
    must call it at the same time. Returns (group, store, device)."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(master_addr, int(master_port), int(world_size), is_master=(rank == 0),
                          timeout=timeout, wait_for_workers=False)
    store = dist.PrefixStore("egsw_rl_weight_sync", store)
    if backend == "gloo":
        opts = dist.ProcessGroupGloo._Options()
        opts._timeout = timeout
        iface = os.environ.get("GLOO_SOCKET_IFNAME")
        dev = (dist.ProcessGroupGloo.create_device(interface=iface) if iface else
               dist.ProcessGroupGloo.create_device(hostname=_local_ip_towards(master_addr)))
        opts._devices = [dev]
        pg = dist.ProcessGroupGloo(store, rank, world_size, opts)
        device = torch.device("cpu")
    elif backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        pg = dist.ProcessGroupNCCL(store, rank, world_size, opts)
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        raise ValueError(f"weight sync backend must be gloo or nccl, got {backend!r}")
    return pg, store, device


def _bcast(pg, tensor: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    pg.broadcast([tensor], opts).wait()
    return tensor


# ============================================================================ timing


class Laps:
    """Consecutive intervals of one timeline, each labelled by the mark that closes it. On a CUDA
    device a stamp is an event on the current stream: a collective's `wait()` there only makes
    the stream wait (the host goes on), so a host clock would time the enqueue, not the transfer.
    Events end an interval when the device got there; they are read once, after one
    synchronize, in `intervals()`. On CPU the stamps are `perf_counter()`."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.device = torch.device(device)
        self._labels: list[Optional[str]] = []
        self._stamps: list[Any] = []
        self.mark(None)

    def mark(self, label: Optional[str]) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(torch.cuda.current_stream(self.device))
            self._stamps.append(ev)
        else:
            self._stamps.append(time.perf_counter())
        self._labels.append(label)

    def intervals(self) -> list[tuple[str, float]]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            first = self._stamps[0]
            stamps = [0.0] + [first.elapsed_time(e) / 1e3 for e in self._stamps[1:]]
        else:
            stamps = list(self._stamps)
        return lap_intervals(self._labels, stamps)


def lap_intervals(labels: Sequence[Optional[str]], stamps: Sequence[float]) -> list[tuple[str, float]]:
    """(label of the closing mark, seconds since the previous mark) for every mark after the
    first, consecutive intervals of the same label merged (a bucket's gather and the release of
    the previous one are one gather)."""
    out: list[tuple[str, float]] = []
    for i in range(1, len(stamps)):
        label, dt = str(labels[i]), float(stamps[i]) - float(stamps[i - 1])
        if out and out[-1][0] == label:
            out[-1] = (label, out[-1][1] + dt)
        else:
            out.append((label, dt))
    return out


def lap_lists(intervals: Sequence[tuple[str, float]]) -> dict[str, list[float]]:
    """The intervals grouped by label, in order."""
    out: dict[str, list[float]] = {}
    for label, dt in intervals:
        out.setdefault(label, []).append(dt)
    return out


def split_sync(gathers: Sequence[float], headers: Sequence[float], payloads: Sequence[float],
               load_s: float) -> dict:
    """One group-transport sync on the receiving engine's timeline, split into gather, transfer
    and load. The engine alternates: wait for bucket k's header (the sender is gathering and
    packing bucket k, or the header is on the wire), wait for its payload (the wire: the sender
    broadcasts it right after the header), load it. So bucket k's header wait `headers[k]` holds
    the part of the sender's gather `gathers[k]` not hidden behind the engine's load of bucket
    k-1 (at most `gathers[k]`) and the header's own round trip; the first header wait holds the
    sender's start-up instead (the push's RPC, settling ZeRO-3), counted apart as `start_s`.

    Returns gather_s (gather the engine waited for), gather_hidden_s (gather done while it was
    loading), header_s (header round trips, buckets after the first), transfer_s (header_s + the
    payload waits), load_s, start_s and buckets."""
    n = len(payloads)
    if len(headers) < n or len(gathers) < n:
        raise ValueError(f"{n} payloads need as many headers and gathers, got {len(headers)} and {len(gathers)}")
    exposed = [min(float(headers[k]), float(gathers[k])) for k in range(n)]
    header_s = sum(float(headers[k]) - exposed[k] for k in range(1, n))
    start_s = float(headers[0]) - exposed[0] if n else 0.0
    return {"gather_s": sum(exposed), "gather_hidden_s": sum(float(g) for g in gathers[:n]) - sum(exposed),
            "header_s": header_s, "transfer_s": header_s + sum(float(p) for p in payloads),
            "load_s": float(load_s), "start_s": start_s, "buckets": n}


# ============================================================================ sender


def _gathered(params: list[torch.nn.Parameter]):
    """Gather ZeRO-3 partitioned parameters on all ranks (collective); plain ones as they are."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    return contextlib.nullcontext()


class WeightSender:
    """Rank 0 of the sync group (learner rank 0). Other learner ranks use `non_sender()`: they
    take part in the ZeRO-3 gathers and the probe forward but send nothing."""

    def __init__(self, master_addr: Optional[str], master_port: Optional[int], world_size: int,
                 backend: str = "gloo", timeout_s: float = DEFAULT_TIMEOUT_S):
        self.master_addr = master_addr
        self.master_port = master_port
        self.world_size = int(world_size)
        self.backend = backend
        self.timeout_s = timeout_s
        self.pg = None
        self._store = None
        self.device = torch.device("cpu")

    @classmethod
    def non_sender(cls) -> "WeightSender":
        return cls(None, None, 0)

    def connect(self) -> None:
        """Create the group as its rank 0; the receivers' `init_weight_receiver` must run
        concurrently."""
        if self.world_size < 2:
            raise ValueError(f"world_size must count the sender and >= 1 receiver, got {self.world_size}")
        self.pg, self._store, self.device = new_group(self.master_addr, self.master_port, 0,
                                                      self.world_size, self.backend, self.timeout_s)

    def close(self) -> None:
        self.pg, self._store = None, None

    def _header(self, kind: int, a: int, b: int) -> None:
        _bcast(self.pg, torch.tensor([kind, a, b, 0], dtype=torch.int64, device=self.device))

    @torch.no_grad()
    def send(self, module: torch.nn.Module, buckets: Sequence[Sequence[ParamMeta]], is_sender: bool,
             probe: bool = True) -> dict:
        """Send `module`'s parameters bucket by bucket. Call on EVERY learner rank with the same
        buckets (the gathers are collective); only `is_sender` (rank 0) broadcasts."""
        if is_sender and self.pg is None:
            raise RuntimeError("WeightSender.send before connect()")
        params = {checkpoint_name(n): p for n, p in module.named_parameters()}
        missing = [m.name for b in buckets for m in b if m.name not in params]
        if missing:
            raise KeyError(f"parameters not in the module: {missing[:5]}")
        t0 = time.perf_counter()
        laps = Laps(self.device if is_sender else torch.device("cpu"))
        total = 0
        for bucket in buckets:
            plist = [params[m.name] for m in bucket]
            with _gathered(plist):
                if not is_sender:
                    continue
                nbytes = sum(m.padded_nbytes for m in bucket)
                flat = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
                off = 0
                for m, p in zip(bucket, plist):
                    data = p.data
                    if tuple(data.shape) != m.shape or _dtype_name(data.dtype) != m.dtype:
                        raise ValueError(f"{m.name}: module has {tuple(data.shape)} {data.dtype}, "
                                         f"the plan says {m.shape} {m.dtype}")
                    view = flat[off:off + m.nbytes].view(_DTYPES[m.dtype]).view(m.shape)
                    view.copy_(data)
                    off += m.padded_nbytes
                laps.mark("gather")  # the previous bucket's release (re-partition) counts here too
                self._header(KIND_BUCKET, len(bucket), nbytes)
                laps.mark("header")
                _bcast(self.pg, flat)
                laps.mark("payload")
                total += nbytes
        laps.mark("gather")
        ids: list[int] = []
        lp = None
        if probe:
            ids, lp = run_probe(module)
        laps.mark("probe")
        if is_sender:
            self._header(KIND_END, len(ids), 0)
            if ids:
                _bcast(self.pg, torch.tensor(ids, dtype=torch.int64, device=self.device))
                _bcast(self.pg, lp.to(self.device, torch.float32).contiguous())
            laps.mark("end")
        lists = lap_lists(laps.intervals())  # on GPU: synchronizes, the broadcasts have completed
        secs = time.perf_counter() - t0
        return {"bytes": total, "seconds": secs, "buckets": len(lists.get("payload", [])),
                "gathers": lists.get("gather", []), "gather_s": sum(lists.get("gather", [])),
                "header_s": sum(lists.get("header", [])), "payload_s": sum(lists.get("payload", [])),
                "probe_s": sum(lists.get("probe", []))}


# ============================================================================ receiver


def checkpoint_shapes(model_path: str) -> Optional[dict[str, tuple[int, ...]]]:
    """Names and shapes of the tensors in a model folder's safetensors files (what vLLM's
    `load_weights` consumes); None when there are none to read."""
    import glob

    from egsw_rl.models import ModelNotFoundError, resolve_model

    try:
        path = str(resolve_model(model_path))
    except ModelNotFoundError as e:  # the engine loaded from somewhere else: the check needs the files
        log.warning("weight sync: no parameter-name check against the checkpoint (%s)", e)
        return None
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        return None
    from safetensors import safe_open

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


def validate_meta(meta: Sequence[ParamMeta], expected: Optional[dict[str, tuple[int, ...]]],
                  tied: bool) -> list[str]:
    """Problems with a sync plan against the engine's checkpoint: missing names, unknown names,
    shape or dtype errors. Empty when the plan covers exactly the model."""
    problems = []
    names = [m.name for m in meta]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        problems.append(f"duplicate parameter names: {dup[:5]}")
    for m in meta:
        if m.dtype not in _DTYPES:
            problems.append(f"{m.name}: unsupported dtype {m.dtype}")
    if expected is None:
        return problems
    optional = _optional_names(expected, tied)
    have = set(names)
    missing = sorted(set(expected) - have - optional)
    if missing:
        problems.append(f"missing parameter(s) {missing[:8]}{' ...' if len(missing) > 8 else ''} "
                        f"({len(missing)} of {len(expected)}): the engine would keep old weights")
    allowed = set(expected) | ({"lm_head.weight"} if tied else set())
    unknown = sorted(have - allowed)
    if unknown:
        problems.append(f"unknown parameter name(s) {unknown[:8]}: not in the engine's checkpoint")
    for m in meta:
        if m.name in expected and tuple(expected[m.name]) != tuple(m.shape):
            problems.append(f"{m.name}: shape {m.shape}, the engine expects {expected[m.name]}")
    return problems


def receiver_rank_offsets(num_engines: int, tensor_parallel_size: int) -> list[int]:
    """The sync group's first rank of each engine: rank 0 is the sender, and engine i's
    `tensor_parallel_size` workers take the consecutive ranks from offset i (worker rank added),
    so every worker of every engine is one receiver of every broadcast bucket."""
    return [1 + i * int(tensor_parallel_size) for i in range(int(num_engines))]


class WorkerExtension:
    """Mixed into vLLM's worker (`worker_extension_cls="egsw_rl.weight_sync.WorkerExtension"`).
    Named methods called with `LLM.collective_rpc("egsw_...")`; plain-list arguments only (no
    pickled callables, no VLLM_ALLOW_INSECURE_SERIALIZATION). Names are prefixed so they never
    clash with the worker's own attributes."""

    def egsw_init_receiver(self, master_addr: str, master_port: int, rank_offset: int,
                           world_size: int, backend: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> int:
        """Join the sync group as rank `rank_offset + this worker's rank` (tensor parallel
        workers of one engine take consecutive ranks)."""
        self.egsw_close_receiver()
        rank = int(rank_offset) + int(getattr(self, "rank", 0))
        self._egsw_pg, self._egsw_store, self._egsw_device = new_group(
            master_addr, master_port, rank, world_size, backend, timeout_s)
        return rank

    def egsw_close_receiver(self) -> None:
        self._egsw_pg = None
        self._egsw_store = None

    def _egsw_expected(self):
        if not hasattr(self, "_egsw_shapes"):
            self._egsw_shapes = checkpoint_shapes(self.model_config.model)
        tied = bool(getattr(self.model_config.hf_config, "tie_word_embeddings", False))
        return self._egsw_shapes, tied

    def egsw_expected_weights(self) -> dict:
        """{"names": {name: shape}, "tied": bool} from the engine's checkpoint (None: unknown)."""
        shapes, tied = self._egsw_expected()
        return {"shapes": None if shapes is None else {k: list(v) for k, v in shapes.items()},
                "tied": tied}

    def egsw_reseed(self, seed: int) -> None:
        """Reset the worker's global RNG (vLLM samples from it when no per-request seed is set)."""
        from vllm.utils.torch_utils import set_random_seed

        set_random_seed(int(seed))

    def _egsw_header(self) -> tuple[int, int, int]:
        h = _bcast(self._egsw_pg, torch.empty(4, dtype=torch.int64, device=self._egsw_device)).tolist()
        return int(h[0]), int(h[1]), int(h[2])

    def _egsw_stream(self, meta: list[ParamMeta], state: dict,
                     drain: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (name, tensor) bucket by bucket; reads the END message (probe) last. With
        `drain`, receive and discard everything up to END (keeps the group in step)."""
        pos = 0
        laps = state.setdefault("laps", Laps(self._egsw_device))
        while True:
            laps.mark("load")  # the loader's time since the last tensor was handed to it
            kind, a, b = self._egsw_header()
            laps.mark("header" if kind == KIND_BUCKET else "end")
            if kind == KIND_BUCKET:
                flat = _bcast(self._egsw_pg, torch.empty(b, dtype=torch.uint8, device=self._egsw_device))
                laps.mark("payload")
                state["bytes"] += b
                if drain:
                    continue
                off = 0
                for m in meta[pos:pos + a]:
                    t = flat[off:off + m.nbytes].view(_DTYPES[m.dtype]).view(m.shape)
                    off += m.padded_nbytes
                    state["names"].append(m.name)
                    yield m.name, t
                pos += a
            elif kind == KIND_END:
                if a > 0:
                    ids = _bcast(self._egsw_pg, torch.empty(a, dtype=torch.int64, device=self._egsw_device))
                    lp = _bcast(self._egsw_pg, torch.empty(a - 1, dtype=torch.float32, device=self._egsw_device))
                    state["probe_ids"] = ids.cpu().tolist()
                    state["probe_logprobs"] = lp.cpu().tolist()
                laps.mark("end")
                state["done"] = True
                return
            else:
                raise RuntimeError(f"weight sync: unexpected message kind {kind}")

    def _egsw_drain(self, state) -> None:
        for _ in self._egsw_stream([], state, drain=True):
            pass

    def egsw_receive(self, meta_rows: list, strict: bool = True) -> dict:
        """Receive one whole sync and load it in place. With a plan that does not cover the model
        exactly, the incoming stream is drained (the sender finishes) and ValueError is raised
        before any weight changes: the engine keeps serving the old weights."""
        if getattr(self, "_egsw_pg", None) is None:
            raise RuntimeError("egsw_receive before egsw_init_receiver")
        meta = rows_to_meta(meta_rows)
        state: dict = {"bytes": 0, "names": [], "done": False}
        t0 = time.perf_counter()
        rejected = self._egsw_rejected(meta, strict)
        if rejected:
            self._egsw_drain(state)
            raise ValueError(rejected)
        try:
            repacked = self._egsw_reload(self._egsw_stream(meta, state))
        finally:
            if not state["done"]:  # keep the group in step with the sender whatever happened
                self._egsw_drain(state)
        laps = state["laps"]
        laps.mark("load")  # vLLM's finalize and the tied head's re-processing
        lists = lap_lists(laps.intervals())  # on GPU: synchronizes, the engine has loaded
        return {"bytes": state["bytes"], "params": len(state["names"]),
                "probe_ids": state.get("probe_ids", []),
                "probe_logprobs": state.get("probe_logprobs", []),
                "repacked": repacked, "seconds": time.perf_counter() - t0,
                "header_waits": lists.get("header", []), "payload_waits": lists.get("payload", []),
                "end_wait_s": sum(lists.get("end", [])), "load_s": sum(lists.get("load", []))}

    def _egsw_rejected(self, meta: Sequence[ParamMeta], strict: bool) -> str:
        """Why a plan cannot be loaded ('' when it covers the engine's model exactly)."""
        shapes, tied = self._egsw_expected()
        problems = validate_meta(meta, shapes if strict else None, tied)
        return "weight sync rejected, engine weights unchanged: " + "; ".join(problems) if problems else ""

    def _egsw_reload(self, weights: Iterator[tuple[str, torch.Tensor]]) -> list[str]:
        """vLLM's in-place layer-wise reload from (name, tensor) pairs, then the tied head."""
        from egsw_rl.actors.vllm_logs import quiet_benign_reload

        quiet_benign_reload(tied_head=self._egsw_expected()[1])
        self.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        return _reprocess_aliased_modules(self.model_runner.get_model())

    def egsw_open_shared(self, path: str, nbytes: int) -> None:
        """Map the learners' shared weights file (same node only); kept mapped for every sync."""
        self._egsw_shared = map_shared(path, int(nbytes))

    def egsw_load_shared(self, meta_rows: list, strict: bool = True) -> dict:
        """Load the weights the learner ranks wrote into the shared buffer, in place; a plan that
        does not cover the model exactly raises ValueError before any weight changes."""
        buf = getattr(self, "_egsw_shared", None)
        if buf is None:
            raise RuntimeError("egsw_load_shared before egsw_open_shared")
        meta = rows_to_meta(meta_rows)
        t0 = time.perf_counter()
        rejected = self._egsw_rejected(meta, strict)
        if rejected:
            raise ValueError(rejected)
        offsets, total = shared_layout(meta)
        if total > buf.numel():
            raise ValueError(f"weight sync plan needs {total} bytes, the shared buffer has {buf.numel()}")
        t1 = time.perf_counter()
        repacked = self._egsw_reload(shared_views(buf, meta, offsets))
        t2 = time.perf_counter()
        return {"bytes": sum(m.nbytes for m in meta), "params": len(meta), "repacked": repacked,
                "seconds": t2 - t0, "load_s": t2 - t1}

    def egsw_ipc_receive(self, meta_rows: list, addr: str, port: int, rank_offset: int, push: int,
                         strict: bool = True, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
        """CUDA IPC transport: load one push from the staging buffer of the learner rank on this
        worker's device (rank `rank_offset` + this worker's tensor-parallel rank), bucket by bucket,
        each copied out on the device before it is acknowledged (see `IpcSender`). A plan that
        does not cover the model raises ValueError before any weight changes; the learner ranks
        then time out on their first acknowledgement, as a group sender does on a dead receiver."""
        import pickle

        meta = rows_to_meta(meta_rows)
        t0 = time.perf_counter()
        rejected = self._egsw_rejected(meta, strict)
        if rejected:
            raise ValueError(rejected)
        store = getattr(self, "_egsw_ipc_store", None)
        if store is None or getattr(self, "_egsw_ipc_at", None) != (addr, int(port)):
            store = self._egsw_ipc_store = _ipc_store(addr, port, False, timeout_s)
            self._egsw_ipc_at = (addr, int(port))
        r = int(rank_offset) + int(getattr(self, "rank", 0))
        device = torch.device("cuda", torch.cuda.current_device())
        staging = open_ipc_handle(pickle.loads(store.get(f"h/{push}/{r}")), device)
        state: dict = {"bytes": 0, "waits": [], "copies": []}
        repacked = self._egsw_reload(ipc_stream(store, push, r, meta, staging, state))
        torch.cuda.synchronize(device)
        del staging
        probe = ipc_probe(store, push)
        secs = time.perf_counter() - t0
        return {"bytes": state["bytes"], "params": len(meta), "repacked": repacked, "seconds": secs,
                "probe_ids": probe["ids"], "probe_logprobs": probe["logprobs"],
                "handoff_wait_s": sum(state["waits"]), "copy_s": sum(state["copies"]),
                # the group transport's timeline names (split_sync): each bucket's wait for its
                # announcement, then its copy out of the rank's buffer
                "header_waits": list(state["waits"]), "payload_waits": list(state["copies"]),
                "load_s": secs - sum(state["waits"]) - sum(state["copies"])}


def _reprocess_aliased_modules(model: torch.nn.Module) -> list[str]:
    """Re-run post-load processing of modules whose weight is shared with another module (a
    tied output head). The layer-wise reload refreshes the embedding; the head, which loaded
    nothing of its own, would otherwise keep the kernel-side copy of the old weight that its
    processing made (on CPU: the packed oneDNN / sgl matrix)."""
    by_storage: dict[int, list[tuple[str, torch.nn.Module]]] = {}
    for name, mod in model.named_modules():
        qm = getattr(mod, "quant_method", None)
        w = getattr(mod, "weight", None)
        if qm is None or not isinstance(w, torch.Tensor) or w.numel() == 0 or w.is_meta:
            continue
        by_storage.setdefault(w.data_ptr(), []).append((name, mod))
    done = []
    for group in by_storage.values():
        if len(group) < 2:
            continue
        for name, mod in group:
            mod.quant_method.process_weights_after_loading(mod)
            done.append(name)
    return done


# ============================================================================ shared memory


def shared_layout(meta: Sequence[ParamMeta]) -> tuple[list[int], int]:
    """Byte offset of every parameter in the shared buffer (meta order, 16-byte aligned) and
    the buffer's size."""
    offsets, off = [], 0
    for m in meta:
        offsets.append(off)
        off += m.padded_nbytes
    return offsets, off


def shared_dir(nbytes: int) -> str:
    """Where the shared weights file goes: /dev/shm (tmpfs) when it has room, else the temp
    directory (a shared mapping of an ordinary file works as well; Docker's default /dev/shm is
    64 MB). `$EGSW_RL_SHM_DIR` overrides."""
    import tempfile

    forced = os.environ.get("EGSW_RL_SHM_DIR")
    if forced:
        return forced
    try:
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize > 1.1 * nbytes:
            return "/dev/shm"
    except OSError:
        pass
    return tempfile.gettempdir()


def map_shared(path: str, nbytes: int, create: bool = False) -> torch.Tensor:
    """A uint8 tensor over the file `path` mapped shared (MAP_SHARED): every process that maps
    it sees the same memory. `create` makes the file (it must not exist yet)."""
    if create:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, int(nbytes))
        finally:
            os.close(fd)
    return torch.from_file(path, shared=True, size=int(nbytes), dtype=torch.uint8)


def shared_views(buf: torch.Tensor, meta: Sequence[ParamMeta], offsets: Sequence[int]) -> Iterator[tuple[str, torch.Tensor]]:
    for m, off in zip(meta, offsets):
        yield m.name, buf[off:off + m.nbytes].view(_DTYPES[m.dtype]).view(m.shape)


@torch.no_grad()
def write_shards(module: torch.nn.Module, meta: Sequence[ParamMeta], offsets: Sequence[int],
                 buf: torch.Tensor, rank: int) -> int:
    """Write this rank's part of every parameter into the shared buffer; returns the bytes
    written. A ZeRO-3 parameter of n elements is stored flat, rank r holding elements
    [r*s, (r+1)*s) of it in `ds_tensor` (s = the padded partition size, the tail beyond n is
    padding): each rank copies exactly its slice, so the full tensors appear in the buffer
    without any gather. A parameter that is not partitioned is written whole by rank 0."""
    params = {checkpoint_name(n): p for n, p in module.named_parameters()}
    written = 0
    for m, off in zip(meta, offsets):
        p = params.get(m.name)
        if p is None:
            raise KeyError(f"parameter {m.name} not in the module")
        if _dtype_name(p.dtype) != m.dtype:
            raise ValueError(f"{m.name}: module has {p.dtype}, the plan says {m.dtype}")
        dst = buf[off:off + m.nbytes].view(_DTYPES[m.dtype])
        part = getattr(p, "ds_tensor", None)
        if part is None:
            if rank == 0:
                if tuple(p.shape) != m.shape:
                    raise ValueError(f"{m.name}: module has {tuple(p.shape)}, the plan says {m.shape}")
                dst.copy_(p.data.reshape(-1))
                written += m.nbytes
            continue
        size = part.numel()
        start = rank * size
        count = min(size, m.numel - start)
        if count > 0:
            dst[start:start + count].copy_(part.data.reshape(-1)[:count])
            written += count * dst.element_size()
    return written


# ============================================================================ same device: CUDA IPC


def choose_transport(want: str, device: str, colocated: bool, nodes: int) -> str:
    """The weight transport of learner.sync_transport=`want` (auto | shm | group | ipc) for the
    run's device, layout and the number of nodes the learner ranks and engines use, or
    ValueError naming what the asked one needs."""
    if want == "ipc":
        if not (device == "cuda" and colocated):
            raise ValueError("learner.sync_transport=ipc reads the learner's GPU buffers from the engine "
                             "on the same GPU: it needs trainer.placement=colocated on cuda (use auto)")
        return "ipc"
    if want == "shm":
        if device == "cuda" or nodes != 1:
            raise ValueError("learner.sync_transport=shm needs the learner ranks and every generator on one "
                             f"CPU node; they run on {nodes} node(s) on {device} (use group or auto)")
        return "shm"
    if want == "group":
        if device == "cuda" and colocated:
            raise ValueError("learner.sync_transport=group with trainer.placement=colocated on cuda: NCCL "
                             "refuses two ranks of one group on one GPU (learner rank 0 and the engine "
                             "worker beside it); colocated, weights go over CUDA IPC (use auto)")
        return "group"
    if device == "cuda":
        return "ipc" if colocated else "group"
    return "shm" if nodes == 1 else "group"


def ipc_handle(t: torch.Tensor) -> dict:
    """What another process on the same GPU needs to map `t` (a CUDA tensor): torch's own CUDA
    IPC description of its storage, as plain values, and the device's UUID (the receiver checks
    it holds the same physical GPU; device indices differ between processes)."""
    from torch.multiprocessing.reductions import reduce_tensor

    _, args = reduce_tensor(t)
    (_, size, stride, offset, _, dtype, _, handle, storage_bytes, storage_offset, _, ref_handle,
     ref_offset, event_handle, event_sync) = args
    return {"size": list(size), "stride": list(stride), "offset": int(offset),
            "dtype": str(dtype).removeprefix("torch."),
            "handle": bytes(handle), "storage_bytes": int(storage_bytes),
            "storage_offset": int(storage_offset),
            "ref_handle": bytes(ref_handle), "ref_offset": int(ref_offset),
            "event_handle": bytes(event_handle) if event_handle is not None else None,
            "event_sync": bool(event_sync), "uuid": str(torch.cuda.get_device_properties(t.device).uuid)}


def open_ipc_handle(h: dict, device: torch.device) -> torch.Tensor:
    """Map the tensor `ipc_handle` described, on `device` of this process, which must be the
    same physical GPU."""
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    mine = str(torch.cuda.get_device_properties(device).uuid)
    if mine != h["uuid"]:
        raise ValueError(f"CUDA IPC: the learner's buffer is on GPU {h['uuid']}, this engine worker on "
                         f"{mine}: "
                         "a colocated engine worker must share its learner rank's device")
    return rebuild_cuda_tensor(torch.Tensor, torch.Size(h["size"]), tuple(h["stride"]), h["offset"],
                               torch.UntypedStorage, getattr(torch, h["dtype"]),
                               torch.device(device).index, h["handle"], h["storage_bytes"],
                               h["storage_offset"], False, h["ref_handle"], h["ref_offset"],
                               h["event_handle"], h["event_sync"])


def _ipc_store(addr: str, port: int, is_master: bool, timeout_s: float):
    import torch.distributed as dist

    store = dist.TCPStore(addr, int(port), None, is_master=is_master,
                          timeout=datetime.timedelta(seconds=timeout_s), wait_for_workers=False)
    return dist.PrefixStore("egsw_rl_ipc", store)


class IpcSender:
    """The learner side of the CUDA IPC transport; every learner rank has one (rank 0's hosts
    the store). Per push and bucket, every rank takes part in the ZeRO-3 gather, packs the full
    bucket into its staging buffer and announces its size under `b/<push>/<k>/<rank>`; before
    packing the next bucket it waits for `a/<push>/<k>/<rank>`, the engine worker's word that it
    copied the bucket out (vLLM's layer-wise loader keeps references to a layer's tensors until
    the layer is complete, so the engine cannot load from a buffer the learner reuses). The
    staging buffer (one bucket) is allocated for the push and freed after it."""

    def __init__(self, addr: str, port: int, rank: int, timeout_s: float = DEFAULT_TIMEOUT_S,
                 share: Optional[Callable[[torch.Tensor], Any]] = None):
        """`share`: how the staging buffer is described to the receiver (default `ipc_handle`;
        the protocol's unit test hands a tensor between threads instead)."""
        self.rank = int(rank)
        self.store = _ipc_store(addr, port, self.rank == 0, timeout_s)
        self.share = share or ipc_handle
        self.pushes = 0

    @torch.no_grad()
    def send(self, module: torch.nn.Module, buckets: Sequence[Sequence[ParamMeta]], probe: bool,
             device: torch.device) -> dict:
        params = {checkpoint_name(n): p for n, p in module.named_parameters()}
        push, r, store = self.pushes, self.rank, self.store
        self.pushes += 1
        t0 = time.perf_counter()
        staging = torch.empty(max(sum(m.padded_nbytes for m in b) for b in buckets), dtype=torch.uint8,
                              device=device)
        import pickle

        if push:  # the previous push's handle and probe: every engine has read them
            store.delete_key(f"h/{push - 1}/{r}")
            if r == 0:
                store.delete_key(f"p/{push - 1}")
        store.set(f"h/{push}/{r}", pickle.dumps(self.share(staging)))
        gathers, waits, total = [], [], 0
        for k, bucket in enumerate(buckets):
            t1 = time.perf_counter()
            plist = [params[m.name] for m in bucket]
            with _gathered(plist):
                t2 = time.perf_counter()
                if k:  # the engine has copied bucket k-1 out of the staging buffer
                    store.get(f"a/{push}/{k - 1}/{r}")
                    store.delete_key(f"a/{push}/{k - 1}/{r}")
                t3 = time.perf_counter()
                off = 0
                for m, p in zip(bucket, plist):
                    staging[off:off + m.nbytes].view(_DTYPES[m.dtype]).view(m.shape).copy_(p.data)
                    off += m.padded_nbytes
                if staging.is_cuda:  # packed before it is announced
                    torch.cuda.current_stream(device).synchronize()
            store.set(f"b/{push}/{k}/{r}", f"{len(bucket)} {off}")
            gathers.append(t2 - t1)
            waits.append(t3 - t2)
            total += off
        if buckets:
            store.get(f"a/{push}/{len(buckets) - 1}/{r}")
            store.delete_key(f"a/{push}/{len(buckets) - 1}/{r}")
        ids: list[int] = []
        lp = None
        if probe:
            ids, lp = run_probe(module)
        if r == 0:
            store.set(f"p/{push}", pickle.dumps({"ids": ids, "logprobs": [] if lp is None else lp.tolist()}))
        store.set(f"b/{push}/{len(buckets)}/{r}", "end")
        del staging  # the engine's mapping keeps nothing alive past its own receive
        return {"bytes": total, "seconds": time.perf_counter() - t0, "buckets": len(buckets),
                "gathers": gathers, "gather_s": sum(gathers), "ack_wait_s": sum(waits)}


def ipc_stream(store, push: int, rank: int, meta: Sequence[ParamMeta], staging: torch.Tensor,
               state: dict) -> Iterator[tuple[str, torch.Tensor]]:
    """The receiving half of `IpcSender`: (name, tensor) bucket by bucket from learner rank
    `rank`'s staging buffer (mapped as `staging`), each bucket copied out before it is
    acknowledged, until the sender's end mark. Fills state["bytes"], ["waits"], ["copies"]."""
    pos, k = 0, 0
    state.setdefault("bytes", 0)
    while True:
        t1 = time.perf_counter()
        head = store.get(f"b/{push}/{k}/{rank}").decode()
        store.delete_key(f"b/{push}/{k}/{rank}")
        t2 = time.perf_counter()
        if head == "end":
            return
        n, nbytes = (int(x) for x in head.split())
        flat = staging[:nbytes].clone()  # the loader may hold views until a layer is whole
        if flat.is_cuda:
            torch.cuda.current_stream(flat.device).synchronize()
        store.set(f"a/{push}/{k}/{rank}", "1")
        state.setdefault("waits", []).append(t2 - t1)
        state.setdefault("copies", []).append(time.perf_counter() - t2)
        state["bytes"] += nbytes
        off = 0
        for m in meta[pos:pos + n]:
            yield m.name, flat[off:off + m.nbytes].view(_DTYPES[m.dtype]).view(m.shape)
            off += m.padded_nbytes
        pos += n
        k += 1


def ipc_probe(store, push: int) -> dict:
    """The sender's probe of push `push` ({"ids": [], "logprobs": []} when it sent none)."""
    import pickle

    return pickle.loads(store.get(f"p/{push}"))


# ============================================================================ driver helper


def sync_weights(send: Callable[[], Any], generators, meta: Sequence[ParamMeta]) -> dict:
    """Run one sync from the driver. `generators` is a GeneratorGroup; `send()` starts the
    sender side: either it returns the learner ranks' ObjectRefs (every rank runs
    `WeightSender.send`; rank 0 broadcasts) or it sends in this process and returns anything
    else. Every generator's receive is started first, so the two sides meet. Returns the
    generators' summary (sync/version, sync/logprob_diff_max, sync/recv_s, ...) plus
    timing/sync_s."""
    import ray

    t0 = time.perf_counter()
    recv = generators.receive_weights(meta)  # validates the plan; raises before anything starts
    sent = send()
    refs = sent if isinstance(sent, list) else [sent]
    if refs and all(isinstance(r, ray.ObjectRef) for r in refs):
        ray.get(refs)
    out = dict(ray.get(recv))
    out["timing/sync_s"] = time.perf_counter() - t0
    return out
