"""The CUDA IPC transport (`trainer.placement=colocated` on GPU).

Every engine worker shares its device with a learner rank. ZeRO-3's gather leaves every rank
holding each full bucket on its own GPU, so each rank packs it into a staging buffer and the
engine worker on the same device reads it through a CUDA IPC handle: nothing crosses a link beyond
ZeRO-3's own all-gather. Handles, bucket sizes and acknowledgements travel through a TCPStore
hosted by learner rank 0 (`IpcSender`; the receiving half is `ipc_stream`, run by
`WorkerExtension.egsw_ipc_receive`); the group transport's wire protocol is not used.
"""

from __future__ import annotations

import datetime
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.multiprocessing import reductions

from egsw_rl.sync.plan import DEFAULT_TIMEOUT_S, DTYPES, ParamMeta, checkpoint_name, gathered, run_probe


def ipc_handle(t: torch.Tensor) -> dict:
    """What another process on the same GPU needs to map `t` (a CUDA tensor): torch's own CUDA
    IPC description of its storage, as plain values, and the device's UUID (the receiver checks
    it holds the same physical GPU; device indices differ between processes)."""
    _, args = reductions.reduce_tensor(t)
    (
        _,
        size,
        stride,
        offset,
        _,
        dtype,
        _,
        handle,
        storage_bytes,
        storage_offset,
        _,
        ref_handle,
        ref_offset,
        event_handle,
        event_sync,
    ) = args
    return {
        "size": list(size),
        "stride": list(stride),
        "offset": int(offset),
        "dtype": str(dtype).removeprefix("torch."),
        "handle": bytes(handle),
        "storage_bytes": int(storage_bytes),
        "storage_offset": int(storage_offset),
        "ref_handle": bytes(ref_handle),
        "ref_offset": int(ref_offset),
        "event_handle": bytes(event_handle) if event_handle is not None else None,
        "event_sync": bool(event_sync),
        "uuid": str(torch.cuda.get_device_properties(t.device).uuid),
    }


def open_ipc_handle(h: dict, device: torch.device) -> torch.Tensor:
    """Map the tensor `ipc_handle` described, on `device` of this process, which must be the
    same physical GPU."""
    mine = str(torch.cuda.get_device_properties(device).uuid)
    if mine != h["uuid"]:
        raise ValueError(
            f"CUDA IPC: the learner's buffer is on GPU {h['uuid']}, this engine worker on "
            f"{mine}: "
            "a colocated engine worker must share its learner rank's device"
        )
    return reductions.rebuild_cuda_tensor(
        torch.Tensor,
        torch.Size(h["size"]),
        tuple(h["stride"]),
        h["offset"],
        torch.UntypedStorage,
        getattr(torch, h["dtype"]),
        torch.device(device).index,
        h["handle"],
        h["storage_bytes"],
        h["storage_offset"],
        False,
        h["ref_handle"],
        h["ref_offset"],
        h["event_handle"],
        h["event_sync"],
    )


def ipc_store(addr: str, port: int, is_master: bool, timeout_s: float):
    store = dist.TCPStore(
        addr,
        int(port),
        None,
        is_master=is_master,
        timeout=datetime.timedelta(seconds=timeout_s),
        wait_for_workers=False,
    )
    return dist.PrefixStore("egsw_rl_ipc", store)


class IpcSender:
    """The learner side of the CUDA IPC transport; every learner rank has one (rank 0's hosts
    the store). Per push and bucket, every rank takes part in the ZeRO-3 gather, packs the full
    bucket into its staging buffer and announces its size under `b/<push>/<k>/<rank>`; before
    packing the next bucket it waits for `a/<push>/<k>/<rank>`, the engine worker's word that it
    copied the bucket out (vLLM's layer-wise loader keeps references to a layer's tensors until
    the layer is complete, so the engine cannot load from a buffer the learner reuses). The
    staging buffer (one bucket) is allocated for the push and freed after it."""

    def __init__(
        self,
        addr: str,
        port: int,
        rank: int,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        share: Callable[[torch.Tensor], Any] | None = None,
    ):
        """`share`: how the staging buffer is described to the receiver (default `ipc_handle`;
        the protocol's unit test hands a tensor between threads instead)."""
        self.rank = int(rank)
        self.store = ipc_store(addr, port, self.rank == 0, timeout_s)
        self.share = share or ipc_handle
        self.pushes = 0

    @torch.no_grad()
    def send(
        self,
        module: torch.nn.Module,
        buckets: Sequence[Sequence[ParamMeta]],
        probe: bool,
        device: torch.device,
    ) -> dict:
        params = {checkpoint_name(n): p for n, p in module.named_parameters()}
        push, r, store = self.pushes, self.rank, self.store
        self.pushes += 1
        t0 = time.perf_counter()
        staging = torch.empty(
            max(sum(m.padded_nbytes for m in b) for b in buckets), dtype=torch.uint8, device=device
        )
        if push:  # the previous push's handle and probe: every engine has read them
            store.delete_key(f"h/{push - 1}/{r}")
            if r == 0:
                store.delete_key(f"p/{push - 1}")
        store.set(f"h/{push}/{r}", pickle.dumps(self.share(staging)))
        gathers, waits, total = [], [], 0
        for k, bucket in enumerate(buckets):
            t1 = time.perf_counter()
            plist = [params[m.name] for m in bucket]
            with gathered(plist):
                t2 = time.perf_counter()
                if k:  # the engine has copied bucket k-1 out of the staging buffer
                    store.get(f"a/{push}/{k - 1}/{r}")
                    store.delete_key(f"a/{push}/{k - 1}/{r}")
                t3 = time.perf_counter()
                off = 0
                for m, p in zip(bucket, plist):
                    staging[off : off + m.nbytes].view(DTYPES[m.dtype]).view(m.shape).copy_(p.data)
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
        return {
            "bytes": total,
            "seconds": time.perf_counter() - t0,
            "buckets": len(buckets),
            "gathers": gathers,
            "gather_s": sum(gathers),
            "ack_wait_s": sum(waits),
        }


def ipc_stream(
    store, push: int, rank: int, meta: Sequence[ParamMeta], staging: torch.Tensor, state: dict
) -> Iterator[tuple[str, torch.Tensor]]:
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
        for m in meta[pos : pos + n]:
            yield m.name, flat[off : off + m.nbytes].view(DTYPES[m.dtype]).view(m.shape)
            off += m.padded_nbytes
        pos += n
        k += 1


def ipc_probe(store, push: int) -> dict:
    """The sender's probe of push `push` ({"ids": [], "logprobs": []} when it sent none)."""
    return pickle.loads(store.get(f"p/{push}"))
