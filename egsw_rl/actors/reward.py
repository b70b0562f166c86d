"""The reward actors: thin Ray wrappers around `egsw_rl.rewards.RewardPool`, and the driver's
handle on `reward.num_actors` of them.

    from egsw_rl.actors.reward import RewardGroup
    group = RewardGroup(reward_options, workers=[8, 8], placement_group=pg, bundle_indices=[5, 6])
    job = group.submit(texts, golds)          # returns at once; each actor scores its slice
    results, metrics = group.result([job])    # input order; a dead actor's slice retried once

A batch (or each generator's share of one, as it arrives) is split in contiguous slices, one per
actor, so `num_actors` actors with `workers` processes each score in parallel. An actor that dies
costs a retry of its slices on a fresh actor in the same placement bundle (with a warning); a
second death of the same slice raises the Ray error, which ends the run as any dead actor does.

`reward.workers: auto` sizes each actor's pool from the node: see `auto_workers`. The pool's
worker processes are children of the actor process (forkserver), killed with it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import ray

from egsw_rl.actors.group import ActorGroup
from egsw_rl.batch import split_shares
from egsw_rl.rewards.pool import RewardPool
from egsw_rl.rewards.types import RewardResult

log = logging.getLogger(__name__)

# `reward.workers: auto`: CPUs left on a node for the driver, raylet and vLLM's frontends
AUTO_HEADROOM_CPUS = 2.0
# and at most this many grading processes per actor: one actor's dispatch loop (one pipe message
# per sample) keeps up with thousands of scorings/s, far more than 32 graders produce, and each
# grader holds its own sympy / math-verify import (about 100 MB)
AUTO_MAX_WORKERS = 32


class RewardWorkerPool:
    """Plain class (usable without Ray); `RewardActor` is its Ray actor form.

    Constructor: workers, timeout_s, then reward options (scheme, correct_score,
    wrong_boxed_score, no_box_score, format_penalty, extraction, fallback_last_number,
    answer_format, max_answer_chars, task). `num_actors` (how many of these actors the driver
    starts) is accepted and ignored, so the whole `reward` config section can be passed as is.
    """

    def __init__(
        self, workers: int = 2, timeout_s: float = 5.0, num_actors: int | None = None, **reward_options
    ) -> None:
        self._pool = RewardPool(workers=workers, timeout_s=timeout_s, **reward_options)
        self._scored = 0

    def score(
        self,
        completions: Sequence[str],
        golds: Sequence[str],
        choices: Sequence[Sequence[str] | None] | None = None,
    ) -> tuple[list[RewardResult], dict]:
        out = self._pool.score(list(completions), list(golds), choices)
        self._scored += len(completions)
        return out

    def scored(self) -> int:
        """Completions scored since the actor started (tests check every sample is scored once)."""
        return self._scored

    def workers(self) -> int:
        return self._pool.workers

    def worker_pids(self) -> list[int]:
        return self._pool.worker_pids()

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        self._pool.close()


RewardActor = ray.remote(RewardWorkerPool)


# ============================================================================ pure parts


def gather_in_order(n: int, pieces: Sequence[tuple[int, int, Sequence]]) -> list:
    """The n results of a batch from its slices' results (start, end, results), whatever order
    they arrive in; refuses a slice of the wrong length and any index covered twice or never."""
    out: list = [None] * n
    seen = [False] * n
    for start, end, res in pieces:
        if len(res) != end - start:
            raise ValueError(f"slice [{start}, {end}) returned {len(res)} results")
        for i in range(start, end):
            if seen[i]:
                raise ValueError(f"sample {i} scored twice")
            seen[i] = True
        out[start:end] = list(res)
    missing = [i for i, s in enumerate(seen) if not s]
    if missing:
        raise ValueError(f"{len(missing)} samples never scored (first: {missing[0]})")
    return out


def auto_workers(
    node_cpus: float,
    reserved_cpus: float,
    actors_on_node: int,
    *,
    headroom: float = AUTO_HEADROOM_CPUS,
    cap: int = AUTO_MAX_WORKERS,
) -> int:
    """Grading processes per reward actor for `reward.workers: auto`:

        min(cap, max(1, floor((node_cpus - reserved_cpus - headroom) / actors_on_node)))

    node_cpus: the CPUs Ray reports for the node; reserved_cpus: what the run's bundles on that
    node take (learner ranks, engines and the reward actors' own slots). The graders are
    unaccounted processes, so they get the CPUs nobody reserved, split between the node's reward
    actors, a little left for the driver and Ray's own processes."""
    if actors_on_node < 1:
        raise ValueError(f"actors_on_node must be >= 1, got {actors_on_node}")
    free = float(node_cpus) - float(reserved_cpus) - float(headroom)
    return int(min(cap, max(1, math.floor(free / actors_on_node + 1e-9))))


def plan_workers(workers: Any, plan, node_cpus: dict[str, float]) -> list[int]:
    """Workers of each reward actor (in `plan.of("reward")` order): `workers` itself when it is a
    number, else (`auto`) `auto_workers` on the node the plan assigned each actor to.
    `node_cpus`: {node id: CPUs Ray reports}; the plan must be assigned (`plan.nodes`)."""
    idx = plan.of("reward")
    if workers != "auto":
        return [int(workers)] * len(idx)
    if not plan.nodes:
        raise ValueError("reward.workers=auto needs the placement plan assigned to nodes")
    reserved: dict[str, float] = {}
    for b, nid in zip(plan.bundles, plan.nodes):
        reserved[nid] = reserved.get(nid, 0.0) + float(b.resources.get("CPU", 0.0))
    actors: dict[str, int] = {}
    for i in idx:
        actors[plan.nodes[i]] = actors.get(plan.nodes[i], 0) + 1
    return [
        auto_workers(node_cpus.get(plan.nodes[i], 0.0), reserved[plan.nodes[i]], actors[plan.nodes[i]])
        for i in idx
    ]


def node_cpus() -> dict[str, float]:
    """{node id (hex): CPUs Ray reports} of the live nodes (the driver must be connected)."""
    return {n["NodeID"]: float(n.get("Resources", {}).get("CPU", 0.0)) for n in ray.nodes() if n.get("Alive")}


def merge_share_metrics(parts: Sequence[tuple[int, dict, int]]) -> dict[str, float]:
    """One batch's metrics from its slices' pool metrics, parts = (actor, metrics, samples):
    counts and worker restarts summed, mean score and p50 weighted by samples, p99 the largest,
    `reward/latency_s` the busiest actor's grading time (the batch's wall time had it been scored
    at once; slices of one actor run one after another)."""
    out: dict[str, float] = {}
    n = sum(c for _, _, c in parts)
    busy: dict[int, float] = {}
    for actor, m, _ in parts:
        busy[actor] = busy.get(actor, 0.0) + float(m.get("reward/latency_s", 0.0))
    keys = dict.fromkeys(k for _, m, _ in parts for k in m)
    for key in keys:
        vals = [(float(m.get(key, 0.0)), c) for _, m, c in parts]
        if key == "reward/latency_s":
            out[key] = max(busy.values()) if busy else 0.0
        elif key.endswith("_count") or key == "reward/worker_restarts":
            out[key] = sum(v for v, _ in vals)
        elif key == "reward/sample_p99_s":
            out[key] = max((v for v, c in vals if c), default=0.0)
        else:
            out[key] = sum(v * c for v, c in vals) / n if n else 0.0
    return out


# ============================================================================ the driver's handle


@dataclasses.dataclass
class _Slice:
    actor: int
    start: int
    end: int
    ref: Any
    handle: Any  # the actor handle the slice was sent to
    retried: bool = False


@dataclasses.dataclass
class Scoring:
    """One submitted batch: its inputs (kept for a retry) and one slice per actor."""

    texts: list
    golds: list
    choices: list | None
    slices: list
    submitted: float


class RewardGroup(ActorGroup):
    """`num_actors` RewardActors, one per placement bundle (`bundle_indices`), `workers[i]`
    grading processes in actor i. `score` has the signature of `RewardPool.score`, so the group is
    also the evaluator's grader (`eval.Grader(scorers=...)`). Unlike the other groups it does not
    fail fast on a dead actor: it replaces the actor and scores its slice again."""

    kind = "reward actor"

    def __init__(
        self,
        reward_options: dict,
        workers: Sequence[int],
        *,
        placement_group=None,
        bundle_indices: Sequence[int] | None = None,
        num_cpus: float = 0.5,
        ready_timeout_s: float = 300.0,
    ) -> None:
        self.options = {k: v for k, v in dict(reward_options).items() if k not in ("workers", "num_actors")}
        self.workers = [int(w) for w in workers]
        if not self.workers:
            raise ValueError("a RewardGroup needs at least one actor")
        self.placement = placement_group  # the trainer's: not released by shutdown
        self.bundles = list(bundle_indices) if bundle_indices is not None else [None] * len(self.workers)
        self.num_cpus = float(num_cpus)
        self.restarts = 0
        self.actors = [self._start(i) for i in range(len(self.workers))]
        ray.get([a.ready.remote() for a in self.actors], timeout=ready_timeout_s)

    def _start(self, i: int):
        (actor,) = self.start(
            RewardWorkerPool,
            1,
            lambda _: (self.workers[i],),
            options={"num_cpus": self.num_cpus},
            kwargs=self.options,
            placement_group=self.placement,
            bundle_of=[self.bundles[i]],
        )
        return actor

    def submit(
        self,
        texts: Sequence[str],
        golds: Sequence[str],
        choices: Sequence[Sequence[str] | None] | None = None,
    ) -> Scoring:
        """Send each actor its contiguous slice; returns at once."""
        texts, golds = list(texts), list(golds)
        if len(golds) != len(texts):
            raise ValueError(f"{len(texts)} completions but {len(golds)} gold answers")
        choices = None if choices is None else list(choices)
        job = Scoring(texts, golds, choices, [], time.perf_counter())
        for a, (s, e) in enumerate(split_shares(len(texts), len(self.actors))):
            if e > s:
                job.slices.append(self._send(a, s, e, job))
        return job

    def _send(self, a: int, s: int, e: int, job: Scoring, retried: bool = False) -> _Slice:
        handle = self.actors[a]
        ref = handle.score.remote(
            job.texts[s:e], job.golds[s:e], None if job.choices is None else job.choices[s:e]
        )
        return _Slice(a, s, e, ref, handle, retried)

    def _get(self, sl: _Slice, job: Scoring):
        try:
            return ray.get(sl.ref)
        except ray.exceptions.RayActorError as e:
            if sl.retried:
                raise
            if self.actors[sl.actor] is sl.handle:  # the first slice to see this death replaces it
                log.warning(
                    "reward actor %d died (%s); starting a fresh one and scoring its %d samples again",
                    sl.actor,
                    type(e).__name__,
                    sl.end - sl.start,
                )
                try:
                    ray.kill(sl.handle)
                except Exception:  # noqa: BLE001 - already gone
                    pass
                self.actors[sl.actor] = self._start(sl.actor)
                self.restarts += 1
            return self._get(self._send(sl.actor, sl.start, sl.end, job, retried=True), job)

    def result(self, jobs: Sequence[Scoring]) -> tuple[list[RewardResult], dict]:
        """Results of the jobs, concatenated in submission order, each in its input order, and
        their merged metrics plus reward/actor_restarts (actors replaced while collecting)."""
        restarts0 = self.restarts
        results: list[RewardResult] = []
        parts: list[tuple[int, dict, int]] = []
        for job in jobs:
            pieces = []
            for sl in job.slices:
                res, m = self._get(sl, job)
                pieces.append((sl.start, sl.end, res))
                parts.append((sl.actor, m, sl.end - sl.start))
            results.extend(gather_in_order(len(job.texts), pieces))
        metrics = merge_share_metrics(parts)
        metrics["reward/actor_restarts"] = float(self.restarts - restarts0)
        return results, metrics

    def score(
        self,
        completions: Sequence[str],
        golds: Sequence[str],
        choices: Sequence[Sequence[str] | None] | None = None,
    ) -> tuple[list[RewardResult], dict]:
        return self.result([self.submit(completions, golds, choices)])

    def scored(self) -> list[int]:
        return self.call_all("scored")
