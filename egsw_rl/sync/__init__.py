"""Learner -> vLLM weights: one package, and `WeightSync`, the one object that moves them.

    sync = WeightSync(learners, generators, colocated=...)   # connect once (and after a resume)
    metrics = sync.push()                                     # after every update

The modules: `plan` (what travels, checked against the engine's checkpoint; the probe; the
choice of transport), the transports `shm`, `group` and `ipc`, `vllm_worker` (the code that runs
inside vLLM's worker) and `timing` (the gather / transfer / load split). The protocol is
described in docs/architecture.md, "The weight-sync protocol".

The sending side is a `LearnerGroup` (every ZeRO-3 rank takes part; the trainer's case) or a
`ModuleSender`: a plain torch module in this process, over the group transport (the tests and the
measurement scripts push from one through the same object).
"""

from __future__ import annotations

import socket
import time
from typing import Any

import ray
import torch

from egsw_rl.actors.group import wait_all
from egsw_rl.sync.group import WeightSender, receiver_rank_offsets
from egsw_rl.sync.plan import (
    DEFAULT_TIMEOUT_S,
    ParamMeta,
    choose_transport,
    meta_to_rows,
    param_meta,
    plan_buckets,
    rows_to_meta,
    validate_meta,
)
from egsw_rl.sync.timing import split_sync

__all__ = ["WeightSync", "ModuleSender"]


class ModuleSender:
    """A plain torch module in this process as the sending side of `WeightSync` (group transport,
    CPU). Set `module` to push other weights of the same architecture."""

    device = "cpu"

    def __init__(self, module: torch.nn.Module, bucket_bytes: int, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.module, self.bucket_bytes, self.timeout_s = module, int(bucket_bytes), float(timeout_s)
        self.sender: WeightSender | None = None

    def connect(self, port: int, world: int) -> dict:
        """Rank 0 of the sync group; the engines' joins must have been started."""
        self.sender = WeightSender("127.0.0.1", port, world, "gloo", timeout_s=self.timeout_s)
        self.sender.connect()
        return {"params": len(param_meta(self.module))}

    def send(self, meta: list[ParamMeta], probe: bool) -> dict:
        return self.sender.send(
            self.module, plan_buckets(meta, self.bucket_bytes), is_sender=True, probe=probe
        )

    def close(self) -> None:
        if self.sender is not None:
            self.sender.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def collect_engines(actors, *versions) -> dict:
    """The engines' summary of one push, once every engine has returned its new version (every
    engine must agree): the worst probe difference, the slowest receipt and load, and each
    engine's own timeline ("engines") for the split. Runs in the driver: as a Ray task it needed
    a worker process, and on a small node Ray started a fresh one for most pushes (3-6 s)."""
    stats = ray.get([a.last_sync_stats.remote() for a in actors])
    out: dict[str, Any] = {"sync/version": int(versions[0]) if versions else 0}
    diffs = [s["sync/logprob_diff_max"] for s in stats if "sync/logprob_diff_max" in s]
    if diffs:
        out["sync/logprob_diff_max"] = float(max(diffs))
    for key in ("sync/recv_s", "sync/load_s", "sync/mb_per_s", "sync/handoff_s"):
        vals = [s[key] for s in stats if key in s]
        if vals:
            out[key] = float(max(vals)) if key != "sync/mb_per_s" else float(min(vals))
    if stats and "sync/bytes" in stats[0]:
        out["sync/bytes"] = float(stats[0]["sync/bytes"])
    out["engines"] = [s["detail"] for s in stats if "detail" in s]
    if len(set(int(v) for v in versions)) > 1:
        raise RuntimeError(f"generators disagree on the weight version after a sync: {versions}")
    return out


class WeightSync:
    """Connects a sending side (a `LearnerGroup` or a `ModuleSender`) to every engine of a
    `GeneratorGroup` and pushes the current weights (see the module docstring).

    `transport` overrides learner.sync_transport (auto | shm | group | ipc; a `ModuleSender`
    uses group). The first push after set-up carries the consistency probe."""

    def __init__(self, learners, generators, *, transport: str | None = None, colocated: bool = False):
        self.learners, self.generators = learners, generators
        self.local = isinstance(learners, ModuleSender)
        self._expected: dict | None = None
        want = str(transport or ("group" if self.local else learners.lcfg.sync_transport))
        self.transport = self._choose(want, bool(colocated))
        self.info = {"transport": self.transport, **self._connect()}
        self.meta = (
            param_meta(learners.module)
            if self.local
            else rows_to_meta(ray.get(learners.actors[0].sync_meta.remote()))
        )
        self.pushes = 0

    # ------------------------------------------------------------------ set-up

    def _names(self, engines: int = 0) -> list[str]:
        """Who each ref of a wait came from: the learner ranks, then the first `engines` engines."""
        return ([] if self.local else self.learners.names()) + self.generators.names()[:engines]

    def _choose(self, want: str, colocated: bool) -> str:
        device = self.learners.device
        nodes = 1
        if want in ("auto", "shm") and device != "cuda":  # only then does the node count matter
            ids = (
                {ray.get_runtime_context().get_node_id()}
                if self.local
                else set(ray.get([a.node_id.remote() for a in self.learners.actors]))
            )
            nodes = len(ids | set(ray.get([a.node_id.remote() for a in self.generators.actors])))
        return choose_transport(want, device, colocated, nodes)

    def _connect(self) -> dict:
        gens = self.generators
        engines = len(gens.actors)
        if self.transport == "ipc":  # every rank for the engine worker on its device
            addr = self.learners.master_addr
            _, port = ray.get(self.learners.actors[0].address.remote())
            self._ipc_at = (addr, port)
            return wait_all(
                [a.init_ipc_sender.remote(addr, port) for a in self.learners.actors], self._names()
            )[0]
        if self.transport == "shm":
            first = ray.get(self.learners.actors[0].open_shared.remote())
            try:
                wait_all(
                    [a.open_shared.remote(first["path"]) for a in self.learners.actors[1:]]
                    + [a.open_shared.remote(first["path"], int(first["bytes"])) for a in gens.actors],
                    self._names(engines)[1:],
                )
            finally:
                ray.get(self.learners.actors[0].unlink_shared.remote())
            return first
        # group: learner rank 0 and every vLLM worker of every engine, rank 0 hosting the store
        world = 1 + engines * gens.tp
        if self.local:
            addr, port = "127.0.0.1", _free_port()
        else:
            addr = self.learners.master_addr
            _, port = ray.get(self.learners.actors[0].address.remote())
        backend = "nccl" if self.learners.device == "cuda" else "gloo"
        joins = [
            a.init_weight_receiver.remote(addr, port, offset, world, backend)
            for offset, a in zip(receiver_rank_offsets(engines, gens.tp), gens.actors)
        ]
        if self.local:
            info = self.learners.connect(port, world)
            wait_all(joins, self._names(engines))
            return info
        return wait_all(
            [a.init_weight_sender.remote(addr, port, world) for a in self.learners.actors] + joins,
            self._names(engines),
        )[0]

    # ------------------------------------------------------------------ the plan

    def check(self, meta=None) -> list:
        """Validate a plan (default: this sync's) against the engines' checkpoint: a missing or
        unknown parameter raises ValueError here, before anything is sent. Returns it as rows."""
        meta = rows_to_meta(self.meta if meta is None else meta)
        if self._expected is None:
            self._expected = ray.get(self.generators.actors[0].expected_weights.remote())
        exp = self._expected
        shapes = None if exp["shapes"] is None else {k: tuple(v) for k, v in exp["shapes"].items()}
        problems = validate_meta(meta, shapes, exp["tied"])
        if problems:
            raise ValueError("weight sync rejected: " + "; ".join(problems))
        return meta_to_rows(meta)

    # ------------------------------------------------------------------ a push

    def _send(self, probe: bool) -> list:
        """Start every sending rank (a ModuleSender sends here, after the receivers started)."""
        if self.local:
            return [self.learners.send(self.meta, probe)]
        return [a.send_weights.remote(probe) for a in self.learners.actors]

    def _receive(self, method: str, *args, per_engine=None) -> list:
        """Start every engine's `method` (args, plus `per_engine(i)` if given): a ref each."""
        return [
            getattr(a, method).remote(*args, *(per_engine(i) if per_engine else ()))
            for i, a in enumerate(self.generators.actors)
        ]

    def push(self, probe: bool | None = None) -> dict:
        """Send the current weights to every engine. Returns the engines' summary (sync/version,
        sync/load_s, ...), the split (sync/gather_s, sync/transfer_s, sync/load_s),
        sync/send_s, sync/total_s and timing/sync_s; with `probe` (default: the first push after
        set-up) also sync/logprob_diff_max, vLLM against the learner on a fixed token sequence.
        Every later step's drift shows in rollout/logprob_diff_* from the update itself."""
        probe = self.pushes == 0 if probe is None else bool(probe)
        rows = self.check()  # cached: validates before anything is sent
        t0 = time.perf_counter()
        if self.transport == "shm":
            res = wait_all(self._send(probe), self._names())
            send_s = time.perf_counter() - t0
            recv = self._receive("load_shared", rows, res[0].get("probe_ids"), res[0].get("probe_logprobs"))
            versions = self.generators.wait(recv)
            out = collect_engines(self.generators.actors, *versions)
            total_s = time.perf_counter() - t0
            # nothing is gathered: every rank writes its own shards at once, the slowest one counts
            split = {
                "gather_s": 0.0,
                "transfer_s": max(float(r.get("write_s", 0.0)) for r in res),
                "load_s": float(out.get("sync/load_s", 0.0)),
            }
        else:
            # group: rank 0 broadcasts every bucket to every engine; ipc: every rank hands it to
            # the engine worker on its own GPU. Either way an engine waits for each bucket, takes
            # it (the wire, or a copy out of the rank's buffer) and loads it: one timeline
            if self.transport == "ipc":
                tp = self.generators.tp
                recv = self._receive(
                    "receive_ipc", rows, *self._ipc_at, per_engine=lambda i: (i * tp, self.pushes)
                )
            else:
                recv = self._receive("receive_weights", rows)
            sends = self._send(probe)  # a ModuleSender's is its result, already in
            names = (["the module sender"] if self.local else []) + self._names(len(recv))
            res = wait_all(sends + recv, names)
            out = collect_engines(self.generators.actors, *res[len(sends) :])
            total_s = time.perf_counter() - t0
            send_s = float(res[0]["seconds"])
            sent = res[0]
            # the slowest engine's timeline against the sender's gathers (one engine's parts, so
            # they add up within its receipt)
            timelines = [e for e in out.get("engines", []) if e.get("payload_waits") is not None]
            slowest = max(timelines, key=lambda e: float(e.get("recv_s", 0.0)), default=None)
            split = (
                {}
                if slowest is None
                else dict(
                    split_sync(
                        sent.get("gathers", []),
                        slowest["header_waits"],
                        slowest["payload_waits"],
                        slowest["load_s"],
                    )
                )
            )
            split["gather_total_s"] = float(sent.get("gather_s", 0.0))
        out = {k: v for k, v in out.items() if isinstance(v, (int, float))}
        out.update({f"sync/{k}": float(v) for k, v in split.items()})
        out["sync/send_s"] = send_s
        # first byte sent -> every engine has loaded (device synchronized) and bumped its version
        out["sync/total_s"] = total_s
        out["sync/other_s"] = total_s - sum(split.get(k, 0.0) for k in ("gather_s", "transfer_s", "load_s"))
        out["timing/sync_s"] = time.perf_counter() - t0
        self.pushes += 1
        return out
