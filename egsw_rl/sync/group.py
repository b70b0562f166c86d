"""The process-group transport: learner rank 0 broadcasts buckets to every vLLM worker.

One dedicated process group joins the sender (learner rank 0, rank 0 of the group) and every vLLM
worker of every generator (ranks 1..W-1, `receiver_rank_offsets`). It is built from its own
`TCPStore` and a `ProcessGroupGloo` (CPU) or `ProcessGroupNCCL` (GPU) object, so it never touches
the default torch.distributed group that DeepSpeed and vLLM use in those processes. vLLM's own
NCCL communicator is not used: without NCCL it silently does nothing.

Wire protocol (all broadcasts from rank 0; the receiver needs only the ordered parameter list):

    per bucket:  header int64[4] = [KIND_BUCKET, n_params, n_bytes, 0]
                 payload uint8[n_bytes]: the bucket's tensors packed in meta order, each at a
                 16-byte aligned offset, in the sender's dtype
    at the end:  header int64[4] = [KIND_END, n_probe, 0, 0]
                 probe ids int64[n_probe], then the sender's probe logprobs float32[n_probe - 1]

`WeightSender` is written for ZeRO-3: each bucket is gathered on every learner rank with
`deepspeed.zero.GatheredParameters` (plain modules are sent as they are); every learner rank calls
`send` with the same buckets, only rank 0 holds the group. `receive_stream` is the other end,
run inside each vLLM worker (`egsw_rl.sync.vllm_worker`).
"""

from __future__ import annotations

import datetime
import os
import socket
import time
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist

from egsw_rl.sync.plan import (
    DEFAULT_TIMEOUT_S,
    DTYPES,
    ParamMeta,
    checkpoint_name,
    dtype_name,
    gathered,
    run_probe,
)
from egsw_rl.sync.timing import Laps, lap_lists

KIND_BUCKET = 1
KIND_END = 2


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


def new_group(
    master_addr: str,
    master_port: int,
    rank: int,
    world_size: int,
    backend: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
):
    """A process group over its own TCPStore (rank 0 hosts the store). Collective: every rank
    must call it at the same time. Returns (group, store, device)."""
    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(
        master_addr,
        int(master_port),
        int(world_size),
        is_master=(rank == 0),
        timeout=timeout,
        wait_for_workers=False,
    )
    store = dist.PrefixStore("egsw_rl_weight_sync", store)
    if backend == "gloo":
        opts = dist.ProcessGroupGloo._Options()
        opts._timeout = timeout
        iface = os.environ.get("GLOO_SOCKET_IFNAME")
        dev = (
            dist.ProcessGroupGloo.create_device(interface=iface)
            if iface
            else dist.ProcessGroupGloo.create_device(hostname=_local_ip_towards(master_addr))
        )
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


def bcast(pg, tensor: torch.Tensor) -> torch.Tensor:
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    pg.broadcast([tensor], opts).wait()
    return tensor


class WeightSender:
    """Rank 0 of the sync group (learner rank 0). Other learner ranks use `non_sender()`: they
    take part in the ZeRO-3 gathers and the probe forward but send nothing."""

    def __init__(
        self,
        master_addr: str | None,
        master_port: int | None,
        world_size: int,
        backend: str = "gloo",
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ):
        self.master_addr = master_addr
        self.master_port = master_port
        self.world_size = int(world_size)
        self.backend = backend
        self.timeout_s = timeout_s
        self.pg = None
        self._store = None
        self.device = torch.device("cpu")

    @classmethod
    def non_sender(cls) -> WeightSender:
        return cls(None, None, 0)

    def connect(self) -> None:
        """Create the group as its rank 0; the receivers' `init_weight_receiver` must run
        concurrently."""
        if self.world_size < 2:
            raise ValueError(f"world_size must count the sender and >= 1 receiver, got {self.world_size}")
        self.pg, self._store, self.device = new_group(
            self.master_addr, self.master_port, 0, self.world_size, self.backend, self.timeout_s
        )

    def close(self) -> None:
        self.pg, self._store = None, None

    def _header(self, kind: int, a: int, b: int) -> None:
        bcast(self.pg, torch.tensor([kind, a, b, 0], dtype=torch.int64, device=self.device))

    @torch.no_grad()
    def send(
        self,
        module: torch.nn.Module,
        buckets: Sequence[Sequence[ParamMeta]],
        is_sender: bool,
        probe: bool = True,
    ) -> dict:
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
            with gathered(plist):
                if not is_sender:
                    continue
                nbytes = sum(m.padded_nbytes for m in bucket)
                flat = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
                off = 0
                for m, p in zip(bucket, plist):
                    data = p.data
                    if tuple(data.shape) != m.shape or dtype_name(data.dtype) != m.dtype:
                        raise ValueError(
                            f"{m.name}: module has {tuple(data.shape)} {data.dtype}, "
                            f"the plan says {m.shape} {m.dtype}"
                        )
                    view = flat[off : off + m.nbytes].view(DTYPES[m.dtype]).view(m.shape)
                    view.copy_(data)
                    off += m.padded_nbytes
                laps.mark("gather")  # the previous bucket's release (re-partition) counts here too
                self._header(KIND_BUCKET, len(bucket), nbytes)
                laps.mark("header")
                bcast(self.pg, flat)
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
                bcast(self.pg, torch.tensor(ids, dtype=torch.int64, device=self.device))
                bcast(self.pg, lp.to(self.device, torch.float32).contiguous())
            laps.mark("end")
        lists = lap_lists(laps.intervals())  # on GPU: synchronizes, the broadcasts have completed
        secs = time.perf_counter() - t0
        return {
            "bytes": total,
            "seconds": secs,
            "buckets": len(lists.get("payload", [])),
            "gathers": lists.get("gather", []),
            "gather_s": sum(lists.get("gather", [])),
            "header_s": sum(lists.get("header", [])),
            "payload_s": sum(lists.get("payload", [])),
            "probe_s": sum(lists.get("probe", [])),
        }


def receive_stream(
    pg, device: torch.device, meta: Sequence[ParamMeta], state: dict, drain: bool = False
) -> Iterator[tuple[str, torch.Tensor]]:
    """A receiver's end of one push over group `pg`: (name, tensor) bucket by bucket, then the
    END message (the probe, into state["probe_ids"] / ["probe_logprobs"]). With `drain`, receive
    and discard everything up to END (keeps the group in step). Fills state["bytes"],
    ["names"], ["done"] and the timeline state["laps"]."""
    pos = 0
    laps = state.setdefault("laps", Laps(device))
    while True:
        laps.mark("load")  # the loader's time since the last tensor was handed to it
        kind, a, b, _ = bcast(pg, torch.empty(4, dtype=torch.int64, device=device)).tolist()
        laps.mark("header" if kind == KIND_BUCKET else "end")
        if kind == KIND_BUCKET:
            flat = bcast(pg, torch.empty(b, dtype=torch.uint8, device=device))
            laps.mark("payload")
            state["bytes"] += b
            if drain:
                continue
            off = 0
            for m in meta[pos : pos + a]:
                t = flat[off : off + m.nbytes].view(DTYPES[m.dtype]).view(m.shape)
                off += m.padded_nbytes
                state["names"].append(m.name)
                yield m.name, t
            pos += a
        elif kind == KIND_END:
            if a > 0:
                ids = bcast(pg, torch.empty(a, dtype=torch.int64, device=device))
                lp = bcast(pg, torch.empty(a - 1, dtype=torch.float32, device=device))
                state["probe_ids"] = ids.cpu().tolist()
                state["probe_logprobs"] = lp.cpu().tolist()
            laps.mark("end")
            state["done"] = True
            return
        else:
            raise RuntimeError(f"weight sync: unexpected message kind {kind}")


def receiver_rank_offsets(num_engines: int, tensor_parallel_size: int) -> list[int]:
    """The sync group's first rank of each engine: rank 0 is the sender, and engine i's
    `tensor_parallel_size` workers take the consecutive ranks from offset i (worker rank added),
    so every worker of every engine is one receiver of every broadcast bucket."""
    return [1 + i * int(tensor_parallel_size) for i in range(int(num_engines))]
