"""Timing a push: laps on each side's own timeline, and the gather / transfer / load split.

The sender and every receiver stamp their own timelines (`Laps`: CUDA events on GPU, where a
collective's `wait()` returns before the transfer is done). The sender reports each bucket's
gather; a receiver its wait for each header and payload and the loader's time in between.
`split_sync` turns one receiver's timeline into gather, transfer and load.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch


class Laps:
    """Consecutive intervals of one timeline, each labelled by the mark that closes it. On a CUDA
    device a stamp is an event on the current stream: a collective's `wait()` there only makes
    the stream wait (the host goes on), so a host clock would time the enqueue, not the transfer.
    Events end an interval when the device got there; they are read once, after one
    synchronize, in `intervals()`. On CPU the stamps are `perf_counter()`."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.device = torch.device(device)
        self._labels: list[str | None] = []
        self._stamps: list[Any] = []
        self.mark(None)

    def mark(self, label: str | None) -> None:
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


def lap_intervals(labels: Sequence[str | None], stamps: Sequence[float]) -> list[tuple[str, float]]:
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


def split_sync(
    gathers: Sequence[float], headers: Sequence[float], payloads: Sequence[float], load_s: float
) -> dict:
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
        raise ValueError(
            f"{n} payloads need as many headers and gathers, got {len(headers)} and {len(gathers)}"
        )
    exposed = [min(float(headers[k]), float(gathers[k])) for k in range(n)]
    header_s = sum(float(headers[k]) - exposed[k] for k in range(1, n))
    start_s = float(headers[0]) - exposed[0] if n else 0.0
    return {
        "gather_s": sum(exposed),
        "gather_hidden_s": sum(float(g) for g in gathers[:n]) - sum(exposed),
        "header_s": header_s,
        "transfer_s": header_s + sum(float(p) for p in payloads),
        "load_s": float(load_s),
        "start_s": start_s,
        "buckets": n,
    }
