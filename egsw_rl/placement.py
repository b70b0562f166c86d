"""The run's placement plan: every actor's resources decided up front, checked against the
cluster before anything starts, and reserved in one placement group.

Bundles: one per learner rank (1 GPU and `learner.cpus_per_rank` CPUs; on CPU only the CPUs), one
per vLLM engine (`rollout.tensor_parallel_size` GPUs and `rollout.cpus_per_generator` CPUs) and
one per reward actor (`REWARD_CPUS`). Learner ranks fill nodes in order, `learner.gpus_per_node`
a node (ZeRO-3 wants its ranks packed), different node groups on different nodes; engines and
reward actors take what is left, first fit. The assignment is computed on the driver from what
each node offers, so a plan the cluster cannot hold fails in seconds with the plan, the cluster
and the fix printed, instead of a placement group that waits forever; a plan that fits is
reserved with every bundle pinned to its node (the node-id label every Ray node carries).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

REWARD_CPUS = 0.5  # the reward actor mostly waits on its pool's worker processes


class PlacementError(RuntimeError):
    pass


@dataclass(frozen=True)
class Bundle:
    role: str  # learner | generator | reward
    index: int  # rank / engine / actor number within its role
    resources: dict
    group: int = 0  # learner ranks of one group share a node; other roles: 0


@dataclass
class Plan:
    bundles: list[Bundle]
    device: str
    learner_groups: int = 1
    nodes: list[str] = field(default_factory=list)  # assigned node id per bundle, once assigned

    def of(self, role: str) -> list[int]:
        """Bundle indices of a role, in rank / engine order."""
        return [i for i, b in enumerate(self.bundles) if b.role == role]

    def need(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for b in self.bundles:
            for k, v in b.resources.items():
                total[k] = total.get(k, 0.0) + v
        return total

    def describe(self) -> str:
        rows = []
        for role in ("learner", "generator", "reward"):
            idx = self.of(role)
            if not idx:
                continue
            res = self.bundles[idx[0]].resources
            each = ", ".join(f"{v:g} {k}" for k, v in res.items())
            where = ""
            if self.nodes:  # node ids are long hex strings: their head is enough to tell them apart
                where = " on node " + ", ".join(sorted({self.nodes[i][:8] for i in idx}))
            rows.append(f"{len(idx)} {role}{'s' if len(idx) > 1 else ''} x ({each}){where}")
        total = ", ".join(f"{v:g} {k}" for k, v in sorted(self.need().items()))
        return "; ".join(rows) + f" = {total}"


def make_plan(cfg, device: str, reward_actors: Optional[int] = None) -> Plan:
    """The plan of a run config on `device` (cpu | cuda)."""
    gpu = device == "cuda"
    lc, rc = cfg.learner, cfg.rollout
    n = int(lc.num_ranks)
    nodes = max(1, int(lc.num_nodes))
    per_node = int(lc.gpus_per_node) if gpu and int(lc.gpus_per_node) > 0 else -(-n // nodes)
    bundles = [Bundle("learner", r, {"CPU": float(lc.cpus_per_rank), **({"GPU": 1.0} if gpu else {})},
                      group=r // per_node) for r in range(n)]
    tp = int(rc.tensor_parallel_size)
    bundles += [Bundle("generator", i, {"CPU": float(rc.cpus_per_generator), **({"GPU": float(tp)} if gpu else {})})
                for i in range(int(rc.num_generators))]
    k = int(reward_actors if reward_actors is not None else cfg.reward.num_actors)
    bundles += [Bundle("reward", i, {"CPU": REWARD_CPUS}) for i in range(k)]
    return Plan(bundles, device, learner_groups=-(-n // per_node))


def assign(plan: Plan, nodes: dict[str, dict[str, float]]) -> list[str]:
    """A node id per bundle, from each node's free resources ({node id: {"CPU": .., "GPU": ..}}),
    or PlacementError saying what is needed, what the cluster has and what to change."""
    free = {nid: dict(res) for nid, res in nodes.items()}

    def fits(res: dict, have: dict) -> bool:
        return all(have.get(k, 0.0) + 1e-9 >= v for k, v in res.items())

    def take(res: dict, have: dict) -> None:
        for k, v in res.items():
            have[k] = have.get(k, 0.0) - v

    out: list[Optional[str]] = [None] * len(plan.bundles)
    used_by_learners: set[str] = set()
    for g in range(plan.learner_groups):
        idx = [i for i, b in enumerate(plan.bundles) if b.role == "learner" and b.group == g]
        total: dict[str, float] = {}
        for i in idx:
            for k, v in plan.bundles[i].resources.items():
                total[k] = total.get(k, 0.0) + v
        # the fullest node that holds the whole group, never one another group already uses
        options = [nid for nid in free if nid not in used_by_learners and fits(total, free[nid])]
        if not options:
            raise PlacementError(_refusal(plan, nodes, f"learner ranks {idx[0]}-{idx[-1]} need "
                                          f"{_fmt(total)} on one node"))
        nid = min(options, key=lambda x: (free[x].get("GPU", 0.0), free[x].get("CPU", 0.0)))
        used_by_learners.add(nid)
        take(total, free[nid])
        for i in idx:
            out[i] = nid
    for i, b in enumerate(plan.bundles):
        if b.role == "learner":
            continue
        options = [nid for nid in free if fits(b.resources, free[nid])]
        if not options:
            raise PlacementError(_refusal(plan, nodes, f"{b.role} {b.index} needs {_fmt(b.resources)}"))
        nid = min(options, key=lambda x: (free[x].get("GPU", 0.0), free[x].get("CPU", 0.0)))
        take(b.resources, free[nid])
        out[i] = nid
    plan.nodes = [str(x) for x in out]
    return plan.nodes


def _fmt(res: dict) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(res.items()) if v)


def _refusal(plan: Plan, nodes: dict, what: str) -> str:
    have = "; ".join(f"{nid}: {_fmt({k: v for k, v in r.items() if k in ('CPU', 'GPU')}) or 'nothing free'}"
                     for nid, r in nodes.items()) or "no nodes"
    need = plan.need()
    fixes = []
    total_cpu = sum(r.get("CPU", 0.0) for r in nodes.values())
    total_gpu = sum(r.get("GPU", 0.0) for r in nodes.values())
    if need.get("GPU", 0.0) > total_gpu:
        fixes.append(f"The run needs {need['GPU']:g} GPUs and the cluster has {total_gpu:g}: lower "
                     "learner.num_ranks / rollout.num_generators, or add GPU nodes")
    if need.get("CPU", 0.0) > total_cpu:
        fixes.append(f"The run needs {need['CPU']:g} CPUs and the cluster offers {total_cpu:g}: start it "
                     f"with more logical CPUs (ray start --head --num-cpus={int(need['CPU'] + 0.999)}; "
                     "the actors mostly wait on each other) or lower learner.cpus_per_rank / "
                     "rollout.cpus_per_generator")
    if not fixes:
        fixes.append("The totals fit but not per node: learner ranks of one group need one node "
                     "(learner.gpus_per_node, learner.num_nodes); check the per-node resources")
    return (f"the cluster cannot hold this run: {what}. Plan: {plan.describe()}. Free in the cluster: "
            f"{have}. " + " ".join(fixes))


def local_cpus(plan: Plan) -> int:
    """Logical CPUs of a private local Ray: the machine's, raised to what the plan asks for. On a
    2-core laptop the actors mostly wait on each other: they take turns rather than refuse to
    schedule."""
    import math
    import os

    return max(os.cpu_count() or 1, math.ceil(plan.need().get("CPU", 0.0) - 1e-9))


def free_resources() -> dict[str, dict[str, float]]:
    """{node id (hex): free CPU / GPU} of the live Ray nodes (the driver must be connected)."""
    from ray._private.state import available_resources_per_node  # a DeveloperAPI of Ray 2.60

    return {nid: {"CPU": float(res.get("CPU", 0.0)), "GPU": float(res.get("GPU", 0.0))}
            for nid, res in available_resources_per_node().items()}


def reserve(plan: Plan, timeout_s: float = 120.0):
    """Check the plan against the cluster, then reserve it: one placement group whose bundles are
    pinned to their assigned nodes. Returns the placement group."""
    import ray
    from ray.util.placement_group import placement_group

    nodes = assign(plan, free_resources())
    bundles = [{k: v for k, v in b.resources.items() if v} for b in plan.bundles]
    # every node carries its id as the label ray.io/node-id: each bundle goes where it was assigned
    pg = placement_group(bundles, strategy="PACK",
                         bundle_label_selector=[{"ray.io/node-id": nid} for nid in nodes])
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        ray.util.remove_placement_group(pg)
        raise PlacementError(f"the placement group for {plan.describe()} was not ready within "
                             f"{timeout_s:.0f} s although the cluster reported room for it (another "
                             "job took the resources?)")
    return pg
