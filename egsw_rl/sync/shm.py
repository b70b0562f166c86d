"""The shared-memory transport (CPU, learner ranks and engines on one node).

One buffer file mapped by every learner rank and every engine, laid out like one big bucket
(`shared_layout`). Each ZeRO-3 rank copies its own partition of every parameter to where it
belongs (`write_shards`), so the full tensors appear without a gather or a socket, and the engines
load straight from views of it (`shared_views`, in `WorkerExtension.egsw_load_shared`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence

import torch

from egsw_rl.sync.plan import DTYPES, ParamMeta, checkpoint_name, dtype_name


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


def shared_views(
    buf: torch.Tensor, meta: Sequence[ParamMeta], offsets: Sequence[int]
) -> Iterator[tuple[str, torch.Tensor]]:
    for m, off in zip(meta, offsets):
        yield m.name, buf[off : off + m.nbytes].view(DTYPES[m.dtype]).view(m.shape)


@torch.no_grad()
def write_shards(
    module: torch.nn.Module, meta: Sequence[ParamMeta], offsets: Sequence[int], buf: torch.Tensor, rank: int
) -> int:
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
        if dtype_name(p.dtype) != m.dtype:
            raise ValueError(f"{m.name}: module has {p.dtype}, the plan says {m.dtype}")
        dst = buf[off : off + m.nbytes].view(DTYPES[m.dtype])
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
            dst[start : start + count].copy_(part.data.reshape(-1)[:count])
            written += count * dst.element_size()
    return written
