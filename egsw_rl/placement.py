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

`trainer.placement` chooses between two layouts of the same bundles' contents:

- split (default): the bundles above, learner ranks and engines on devices of their own.
- colocated: one bundle per device, each carrying a learner rank *and* one vLLM worker (1 GPU
  and `learner.cpus_per_rank` CPUs, plus `rollout.cpus_per_generator` on the device that hosts
  an engine's actor). Engine i spans the `rollout.tensor_parallel_size` devices of ranks
  i*tp .. i*tp+tp-1, so `learner.num_ranks` = `rollout.num_generators` x tp. Ray lets an actor
  into one bundle only, and only whole or fractional (< 1) GPUs: both actors of a device ask
  for `COLOCATED_GPU_SHARE` of its GPU (Ray's accounting; the memory is shared by taking
  turns, see trainer.py), and an engine with tp > 1 sits in the bundle of its first device and
  is told the GPUs of the other ones (its ranks' GPU ids, `engine_spans`), with
  RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES so its process sees them. The bundles of one
  engine are on one node because learner ranks fill whole nodes (`learner.gpus_per_node`, a
  multiple of tp). On CPU the same plan holds the same actors, CPUs only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

REWARD_CPUS = 0.5  # the reward actor mostly waits on its pool's worker processes
# Ray's share of a colocated GPU for each of its two actors (learner rank, engine worker): two
# halves make the device whole, so nothing else is scheduled onto it.
COLOCATED_GPU_SHARE = 0.5
LAYOUTS = ("split", "colocated")


class PlacementError(RuntimeError):
    pass


@dataclass(frozen=True)
class Bundle:
    role: str  # learner | generator | reward | device (colocated: a learner rank and an engine worker)
    index: int  # rank / engine / actor number within its role
    resources: dict
    group: int = 0  # learner ranks of one group share a node; other roles: 0


@dataclass
class Plan:
    bundles: list[Bundle]
    device: str
    learner_groups: int = 1
    nodes: list[str] = field(default_factory=list)  # assigned node id per bundle, once assigned
    layout: str = "split"
    tp: int = 1  # rollout.tensor_parallel_size

    def of(self, role: str) -> list[int]:
        """Bundle indices of a role's actors, in rank / engine order. Colocated, learner rank r is
        in device bundle r and engine i in device bundle i*tp (the first device it spans)."""
        if self.layout == "colocated" and role in ("learner", "generator"):
            devices = [i for i, b in enumerate(self.bundles) if b.role == "device"]
            return devices if role == "learner" else devices[:: self.tp]
        return [i for i, b in enumerate(self.bundles) if b.role == role]

    def gpu_share(self, role: str) -> float:
        """GPUs an actor of `role` asks Ray for inside its bundle (0 on CPU)."""
        if self.device != "cuda" or role == "reward":
            return 0.0
        if self.layout == "colocated":
            return COLOCATED_GPU_SHARE
        return 1.0 if role == "learner" else float(self.tp)

    def engine_spans(self) -> list[list[int]]:
        """Colocated: the learner ranks whose devices each engine spans (engine i: ranks i*tp ..
        i*tp+tp-1; its tensor-parallel worker k on rank i*tp+k's device)."""
        ranks = len(self.of("learner"))
        return [list(range(i, i + self.tp)) for i in range(0, ranks, self.tp)]

    def need(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for b in self.bundles:
            for k, v in b.resources.items():
                total[k] = total.get(k, 0.0) + v
        return total

    def describe(self) -> str:
        rows = []
        roles = ("device", "reward") if self.layout == "colocated" else ("learner", "generator", "reward")
        for role in roles:
            idx = self.of(role)
            if not idx:
                continue
            res = self.bundles[idx[0]].resources
            each = ", ".join(f"{v:g} {k}" for k, v in res.items())
            where = ""
            if self.nodes:  # node ids are long hex strings: their head is enough to tell them apart
                where = " on node " + ", ".join(sorted({self.nodes[i][:8] for i in idx}))
            what = role + ("s" if len(idx) > 1 else "")
            if role == "device":  # colocated: say what shares each one
                idx = [i for i, b in enumerate(self.bundles) if b.role == "device"]
                what = (
                    f"colocated device{'s' if len(idx) > 1 else ''} (a learner rank and an engine "
                    f"worker each, {len(idx) // self.tp} engine(s) of tp={self.tp})"
                )
            rows.append(f"{len(idx)} {what} x ({each}){where}")
        total = ", ".join(f"{v:g} {k}" for k, v in sorted(self.need().items()))
        return "; ".join(rows) + f" = {total}"


def layout_of(cfg) -> str:
    """trainer.placement of a config (an OmegaConf node or the RunConfig dataclass); split when
    it has no trainer section (callers that build only the hardware keys, unit tests)."""
    trainer = cfg.get("trainer") if hasattr(cfg, "get") else getattr(cfg, "trainer", None)
    if trainer is None:
        return "split"
    placement = trainer.get("placement") if hasattr(trainer, "get") else getattr(trainer, "placement", None)
    return str(placement or "split")


def colocation_errors(cfg, device: str) -> list[str]:
    """Why a trainer.placement=colocated config cannot work ([] when it can, or when split)."""
    if layout_of(cfg) != "colocated":
        return []
    lc, rc = cfg.learner, cfg.rollout
    n, tp, engines = int(lc.num_ranks), int(rc.tensor_parallel_size), int(rc.num_generators)
    out = []
    if engines * tp != n:
        out.append(
            f"trainer.placement=colocated puts one engine worker on every learner rank's device: "
            f"rollout.num_generators x rollout.tensor_parallel_size = {engines} x {tp} must equal "
            f"learner.num_ranks={n} (set rollout.num_generators={max(1, n // tp)})"
        )
    if device == "cuda" and int(lc.gpus_per_node) % tp:
        out.append(
            f"trainer.placement=colocated: an engine's {tp} GPUs must be on one node, so "
            f"learner.gpus_per_node={lc.gpus_per_node} must be a multiple of "
            "rollout.tensor_parallel_size"
        )
    if cfg.trainer.overlap:
        out.append(
            "trainer.overlap=true generates while the learners train: colocated, they share the "
            "devices and take turns (trainer.placement=split for overlap)"
        )
    if device == "cuda" and str(getattr(lc, "sync_transport", None) or "auto") == "group":
        out.append(
            "learner.sync_transport=group with trainer.placement=colocated on cuda: NCCL refuses two "
            "ranks of one group on one GPU (learner rank 0 and the engine worker beside it); "
            "colocated, weights go over CUDA IPC (learner.sync_transport=auto)"
        )
    if lc.offload_params:
        out.append(
            "learner.offload_params=true: colocated, the learner moves its parameters off the "
            "device between phases itself (DeepSpeed's offload_states refuses parameters that "
            "ZeRO already offloads); set learner.offload_params=false"
        )
    return out


def make_plan(cfg, device: str, reward_actors: int | None = None) -> Plan:
    """The plan of a run config on `device` (cpu | cuda), in the config's layout."""
    gpu = device == "cuda"
    lc, rc = cfg.learner, cfg.rollout
    n = int(lc.num_ranks)
    nodes = max(1, int(lc.num_nodes))
    per_node = int(lc.gpus_per_node) if gpu and int(lc.gpus_per_node) > 0 else -(-n // nodes)
    tp = int(rc.tensor_parallel_size)
    layout = layout_of(cfg)
    if layout == "colocated":
        problems = colocation_errors(cfg, device)
        if problems:
            raise PlacementError("; ".join(problems))
        # the device of rank r also hosts engine r // tp's worker r % tp; the engine's actor (and
        # its CPUs) sits on the first device it spans
        bundles = [
            Bundle(
                "device",
                r,
                {
                    "CPU": float(lc.cpus_per_rank) + (float(rc.cpus_per_generator) if r % tp == 0 else 0.0),
                    **({"GPU": 1.0} if gpu else {}),
                },
                group=r // per_node,
            )
            for r in range(n)
        ]
    else:
        bundles = [
            Bundle(
                "learner",
                r,
                {"CPU": float(lc.cpus_per_rank), **({"GPU": 1.0} if gpu else {})},
                group=r // per_node,
            )
            for r in range(n)
        ]
        bundles += [
            Bundle(
                "generator", i, {"CPU": float(rc.cpus_per_generator), **({"GPU": float(tp)} if gpu else {})}
            )
            for i in range(int(rc.num_generators))
        ]
    k = int(reward_actors if reward_actors is not None else cfg.reward.num_actors)
    bundles += [Bundle("reward", i, {"CPU": REWARD_CPUS}) for i in range(k)]
    return Plan(bundles, device, learner_groups=-(-n // per_node), layout=layout, tp=tp)


_RANK_ROLES = ("learner", "device")  # bundles placed as learner groups, whole nodes first


def assign(plan: Plan, nodes: dict[str, dict[str, float]]) -> list[str]:
    """A node id per bundle, from each node's free resources ({node id: {"CPU": .., "GPU": ..}}),
    or PlacementError saying what is needed, what the cluster has and what to change."""
    free = {nid: dict(res) for nid, res in nodes.items()}

    def fits(res: dict, have: dict) -> bool:
        return all(have.get(k, 0.0) + 1e-9 >= v for k, v in res.items())

    def take(res: dict, have: dict) -> None:
        for k, v in res.items():
            have[k] = have.get(k, 0.0) - v

    out: list[str | None] = [None] * len(plan.bundles)
    used_by_learners: set[str] = set()
    for g in range(plan.learner_groups):
        idx = [i for i, b in enumerate(plan.bundles) if b.role in _RANK_ROLES and b.group == g]
        total: dict[str, float] = {}
        for i in idx:
            for k, v in plan.bundles[i].resources.items():
                total[k] = total.get(k, 0.0) + v
        # the fullest node that holds the whole group, never one another group already uses
        options = [nid for nid in free if nid not in used_by_learners and fits(total, free[nid])]
        if not options:
            raise PlacementError(
                _refusal(plan, nodes, f"learner ranks {idx[0]}-{idx[-1]} need {_fmt(total)} on one node")
            )
        nid = min(options, key=lambda x: (free[x].get("GPU", 0.0), free[x].get("CPU", 0.0)))
        used_by_learners.add(nid)
        take(total, free[nid])
        for i in idx:
            out[i] = nid
    for i, b in enumerate(plan.bundles):
        if b.role in _RANK_ROLES:
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
    have = (
        "; ".join(
            f"{nid}: {_fmt({k: v for k, v in r.items() if k in ('CPU', 'GPU')}) or 'nothing free'}"
            for nid, r in nodes.items()
        )
        or "no nodes"
    )
    need = plan.need()
    fixes = []
    total_cpu = sum(r.get("CPU", 0.0) for r in nodes.values())
    total_gpu = sum(r.get("GPU", 0.0) for r in nodes.values())
    if need.get("GPU", 0.0) > total_gpu:
        fixes.append(
            f"The run needs {need['GPU']:g} GPUs and the cluster has {total_gpu:g}: lower "
            "learner.num_ranks / rollout.num_generators, or add GPU nodes"
            + (
                ""
                if plan.layout == "colocated"
                else " (or trainer.placement=colocated: engines and learner ranks on the same GPUs)"
            )
        )
    if need.get("CPU", 0.0) > total_cpu:
        fixes.append(
            f"The run needs {need['CPU']:g} CPUs and the cluster offers {total_cpu:g}: start it "
            f"with more logical CPUs (ray start --head --num-cpus={int(need['CPU'] + 0.999)}; "
            "the actors mostly wait on each other) or lower learner.cpus_per_rank / "
            "rollout.cpus_per_generator"
        )
    if not fixes:
        fixes.append(
            "The totals fit but not per node: learner ranks of one group need one node "
            "(learner.gpus_per_node, learner.num_nodes); check the per-node resources"
        )
    return (
        f"the cluster cannot hold this run: {what}. Plan: {plan.describe()}. Free in the cluster: "
        f"{have}. " + " ".join(fixes)
    )


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

    return {
        nid: {"CPU": float(res.get("CPU", 0.0)), "GPU": float(res.get("GPU", 0.0))}
        for nid, res in available_resources_per_node().items()
    }


def reserve(plan: Plan, timeout_s: float = 120.0):
    """Check the plan against the cluster, then reserve it: one placement group whose bundles are
    pinned to their assigned nodes. Returns the placement group."""
    import ray
    from ray.util.placement_group import placement_group

    nodes = assign(plan, free_resources())
    bundles = [{k: v for k, v in b.resources.items() if v} for b in plan.bundles]
    # every node carries its id as the label ray.io/node-id: each bundle goes where it was assigned
    pg = placement_group(
        bundles, strategy="PACK", bundle_label_selector=[{"ray.io/node-id": nid} for nid in nodes]
    )
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        ray.util.remove_placement_group(pg)
        raise PlacementError(
            f"the placement group for {plan.describe()} was not ready within "
            f"{timeout_s:.0f} s although the cluster reported room for it (another "
            "job took the resources?)"
        )
    return pg


# ------------------------------------------------------------------------------ memory plan

GIB = 2**30
# Device memory a process holds beyond its tensors: the CUDA context and kernels, NCCL's
# buffers (ZeRO-3's group for a learner rank), the caching allocator's slack. An assumption
# (1.5 GiB is what a torch + NCCL process typically shows on an H100 before any tensor).
PROCESS_OVERHEAD_GIB = 1.5


def learner_resident_bytes(
    n_params: int, ranks: int, *, reference: bool = True, bytes_per_param: int = 2
) -> dict:
    """Bytes of training state one ZeRO-3 rank keeps between steps (what a colocated rank moves
    to the host while the engines generate): its bf16 partition, fp32 master partition, AdamW's
    two fp32 moments, bf16 gradient partition and, with a KL term, the reference model's bf16
    partition."""
    shard = n_params / ranks
    parts = {
        "params_bf16": shard * bytes_per_param,
        "master_fp32": shard * 4,
        "adam_fp32": shard * 8,
        "grads_bf16": shard * bytes_per_param,
        "reference_bf16": shard * bytes_per_param if reference else 0.0,
    }
    parts["total"] = sum(parts.values())
    return parts


def memory_plan(
    *,
    n_params: int,
    layers: int,
    hidden: int,
    vocab: int,
    gpu_gib: float,
    layout: str,
    learner_gpus: int,
    gpu_memory_utilization: float,
    micro_batch_tokens: int,
    logprob_chunk_tokens: int,
    bucket_mb: int = 256,
    reference: bool = True,
    gradient_checkpointing: bool = True,
) -> dict:
    """GiB a GPU holds in each phase of a step, by who holds it, for a bf16 ZeRO-3 learner and a
    vLLM engine. Split: the learner GPUs and the engine GPUs apart (each holds its own all the
    time). Colocated: the same GPU in its three phases: generate (engine awake, learner state on
    the host), train (engine asleep, learner state back plus the update's working set), sync
    (engine weights awake, learner state, the gathered buckets). Estimates, not measurements:
    the working set is activations kept for the backward (one [tokens, hidden] bf16 tensor a
    layer with checkpointing) plus a layer recomputed, two chunks of fp32 logits, and ZeRO-3's
    gathered layers; vLLM takes `gpu_memory_utilization` of the device, weights included."""
    g = lambda b: b / GIB  # noqa: E731
    resident = learner_resident_bytes(n_params, learner_gpus, reference=reference)
    layer_params = (n_params - 2 * vocab * hidden) / layers
    acts = micro_batch_tokens * hidden * 2 * (layers if gradient_checkpointing else 12 * layers)
    recompute = micro_batch_tokens * hidden * 2 * 12  # one layer's full activations (MLP ~5.3x hidden)
    logits = 2 * logprob_chunk_tokens * vocab * 4
    gathered = 3 * layer_params * 2  # the layer in use and ZeRO-3's prefetch
    working = acts + recompute + logits + gathered
    engine = gpu_memory_utilization * gpu_gib * GIB
    weights = n_params * 2
    bucket = bucket_mb * 2**20
    over = PROCESS_OVERHEAD_GIB * GIB
    learner_state = {k: g(v) for k, v in resident.items() if k != "total"}
    if layout == "colocated":
        phases = {
            "generate": {"vLLM (weights + KV cache + graphs)": g(engine), "learner process": g(over)},
            "train": {
                "learner state": g(resident["total"]),
                "update working set": g(working),
                "vLLM process (asleep)": g(over),
                "learner process": g(over),
            },
            "sync": {
                "vLLM weights": g(weights),
                "learner state": g(resident["total"]),
                "buckets (gathered x2, staging, engine copy)": g(4 * bucket),
                "vLLM process": g(over),
                "learner process": g(over),
            },
        }
    else:
        phases = {
            "learner GPU": {
                "learner state": g(resident["total"]),
                "update working set": g(working),
                "learner process": g(over),
            },
            "engine GPU": {"vLLM (weights + KV cache + graphs)": g(engine)},
        }
    totals = {name: sum(parts.values()) for name, parts in phases.items()}
    return {
        "layout": layout,
        "gpu_gib": gpu_gib,
        "phases": phases,
        "totals": totals,
        "peak_gib": max(totals.values()),
        "learner_state": learner_state,
        "learner_state_gib": g(resident["total"]),
        "kv_cache_gib": g(engine - weights) - 2.0,
        "host_pinned_gib_per_gpu": g(resident["total"]) if layout == "colocated" else 0.0,
    }
