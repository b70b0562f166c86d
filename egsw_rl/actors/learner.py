"""The learner group: N ranks of DeepSpeed ZeRO-3 as Ray actors.

`Learner` is one rank (a plain class; the group makes it a Ray actor). `LearnerGroup` is what the
driver holds: it places the ranks (a placement group), does the rendezvous (rank 0's IP and a
free port), cuts each batch (`learner_plan`) and calls every rank at once.

What a rank does:
- `compute_logprobs`: no grad; the current policy's logprobs of the sampled tokens, optionally
  the exact entropy and ClipV's N, and the frozen reference model's logprobs when beta > 0.
  Logits are divided by the sampling temperature, as vLLM did when sampling.
- `update`: `algos.policy_loss` over token-budget micro-batches with the normaliser of the whole
  optimizer step (the batch, or its mini-batch), for `algo.ppo_epochs` x `algo.mini_batches`
  optimizer steps. DeepSpeed averages gradients over ranks, so each rank's loss is multiplied by
  the world size: the result is the gradient of the single-process whole-batch loss. The
  accumulation boundary is set by hand (`set_gradient_accumulation_boundary`) because ranks run
  a variable number of micro-batches per step (equalised across ranks, see `learner_plan`).
- the sending half of a weight push (`egsw_rl.sync`, which drives it): on one CPU node every
  rank writes its own shards into a shared-memory buffer the engines load from; otherwise all
  ranks gather ZeRO-3 buckets and rank 0 broadcasts them (or, colocated on GPU, every rank hands
  them to the engine worker on its device);
- DeepSpeed checkpoints, and `save_hf` (an ordinary HF model folder from gathered weights).

Old logprobs: when `algo.ppo_epochs == 1`, `algo.mini_batches == 1` and no exact entropy is
needed, the old policy is the current one and `update` uses its own detached logprobs when
`batch.old_logprobs` is None (`LearnerGroup.old_logprobs_needed`). The reference logprobs, if
beta > 0 and `batch.ref_logprobs` is None, are computed on the fly in the same micro-batches.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import resource
import socket
import time
import uuid
import warnings
from typing import Any

import numpy as np
import psutil
import ray
import torch
from ray.util.placement_group import placement_group
from transformers import AutoConfig, AutoTokenizer

from egsw_rl.actors import learner_plan as plan
from egsw_rl.actors.group import ActorGroup, as_cfg
from egsw_rl.actors.learner_model import (
    LogprobModel,
    build_ds_config,
    collate,
    load_zero3_causal_lm,
    lr_lambda,
    scatter_tokens,
)
from egsw_rl.algos import (
    loss_normalizers,
    policy_loss,
    reduce_loss_metrics,
    reduce_rollout_is,
    rollout_is_weights,
)
from egsw_rl.batch import TrainBatch
from egsw_rl.config import AlgoConfig, LearnerConfig, ModelConfig, resolve_device, resolve_dtype
from egsw_rl.models import resolve_model, resolve_model_path
from egsw_rl.sync.group import WeightSender
from egsw_rl.sync.ipc import IpcSender
from egsw_rl.sync.plan import meta_to_rows, param_meta, plan_buckets, run_probe
from egsw_rl.sync.shm import map_shared, shared_dir, shared_layout, write_shards

log = logging.getLogger(__name__)

__all__ = ["Learner", "LearnerGroup"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _malloc_trim() -> None:
    """Return freed heap pages to the OS (glibc); a no-op elsewhere."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# =============================================================================== one rank


class Learner:
    """One rank of the learner group (made a Ray actor by `LearnerGroup`)."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        model_path: str,
        model_cfg: ModelConfig,
        learner_cfg: LearnerConfig,
        algo_cfg: AlgoConfig,
        device: str,
        sampling_temperature: float = 1.0,
        seed: int = 0,
        total_steps: int | None = None,
    ):
        self.rank, self.world_size = int(rank), int(world_size)
        self.model_path = str(model_path)
        self.mcfg, self.lcfg, self.acfg = model_cfg, learner_cfg, algo_cfg
        self.device_kind = resolve_device(device)
        self.dtype_name = resolve_dtype(model_cfg.dtype, self.device_kind)
        self.temperature = float(sampling_temperature)
        self.seed = int(seed)
        self.total_steps = total_steps
        # DeepSpeed picks its accelerator at import: make it follow `device`, not the machine.
        os.environ["DS_ACCELERATOR"] = "cuda" if self.device_kind == "cuda" else "cpu"
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        # DeepSpeed 0.19.8 calls the c10d collectives torch 2.x renamed; torch warns on every call
        # (thousands of lines a run) about an API that is not ours to change.
        warnings.filterwarnings(
            "ignore",
            category=FutureWarning,
            message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor|reduce_op)` "
            r"is deprecated",
        )
        if self.device_kind == "cpu":
            torch.set_num_threads(max(1, int(round(float(learner_cfg.cpus_per_rank)))))
        self.engine = None
        self.ref_engine = None
        self.sender = None  # group transport
        self._shared = None  # shared-memory transport: the mapped buffer
        self._sync_buckets = None

    # ------------------------------------------------------------------ rendezvous / setup

    def address(self) -> tuple[str, int]:
        return ray.util.get_node_ip_address(), _free_port()

    def _local_device_index(self) -> int:
        """Index of this rank's GPU among the visible ones (Ray restricts CUDA_VISIBLE_DEVICES to
        the actor's GPU, so usually 0)."""
        ids = [str(i) for i in ray.get_gpu_ids()]
        visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        if ids and visible and ids[0] in visible:
            return visible.index(ids[0])
        if ids and not visible:  # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES: every GPU is visible
            return int(ids[0])
        return 0

    def init(self, master_addr: str, master_port: int) -> dict:
        import deepspeed

        self.model_path = str(
            resolve_model(self.model_path)
        )  # on this rank's node: a hub id reads its HF cache
        local = self._local_device_index() if self.device_kind == "cuda" else 0
        os.environ.update(
            {
                "MASTER_ADDR": str(master_addr),
                "MASTER_PORT": str(master_port),
                "RANK": str(self.rank),
                "WORLD_SIZE": str(self.world_size),
                "LOCAL_RANK": str(local),
            }
        )
        if self.device_kind == "cuda":
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        else:
            self.device = torch.device("cpu")
        backend = "nccl" if self.device_kind == "cuda" else "gloo"
        if self.device_kind != "cuda":
            # On CPU DeepSpeed JIT-compiles a C++ shared-memory all-reduce at init. It serves only
            # inference all-reduce, never ZeRO-3 training, and a build killed midway leaves a
            # lock file that every later rank on the machine waits on forever: skip it.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
        torch.manual_seed(self.seed)
        self._rss_base = self._rss()  # libraries + process group, before any model memory
        self._build()
        _malloc_trim()  # hand the loader's transient buffers (full-size gathers) back to the OS
        return self.shard_info()

    @staticmethod
    def _rss() -> float:
        return psutil.Process().memory_info().rss / 2**30

    def _load_hf(self, ds_config: dict, *, train: bool):
        model = load_zero3_causal_lm(
            self.model_path,
            ds_config,
            getattr(torch, self.dtype_name),
            rank=self.rank,
            trust_remote_code=self.mcfg.trust_remote_code,
            bucket_bytes=int(self.lcfg.sync_bucket_mb) * 2**20,
        )
        model.config.use_cache = False
        if train and self.lcfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model

    def _build(self) -> None:
        import deepspeed

        chunk = int(self.lcfg.logprob_chunk_tokens)
        hidden = getattr(
            AutoConfig.from_pretrained(self.model_path, trust_remote_code=self.mcfg.trust_remote_code),
            "hidden_size",
            None,
        )
        self.ds_config = build_ds_config(
            self.lcfg, device=self.device_kind, dtype=self.dtype_name, train=True, hidden_size=hidden
        )
        hf = self._load_hf(self.ds_config, train=True)
        self.pad_id = int(hf.config.pad_token_id if hf.config.pad_token_id is not None else 0)
        self.hf_config = hf.config
        module = LogprobModel(hf, self.temperature, chunk)
        module.register_zero3_external()
        fn = lr_lambda(
            self.lcfg.lr_schedule,
            self.lcfg.warmup_steps,
            None
            if not self.total_steps
            else int(self.total_steps) * int(self.acfg.ppo_epochs) * int(self.acfg.mini_batches),
        )
        params = [p for p in module.parameters() if p.requires_grad]
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module,
            model_parameters=params,
            config=self.ds_config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, fn),
        )
        self.module = module
        if float(self.acfg.beta) > 0:
            ref_cfg = build_ds_config(
                self.lcfg, device=self.device_kind, dtype=self.dtype_name, train=False, hidden_size=hidden
            )
            ref_hf = self._load_hf(ref_cfg, train=False)
            ref_hf.requires_grad_(False)
            ref = LogprobModel(ref_hf, self.temperature, chunk)
            ref.register_zero3_external()
            self.ref_engine, *_ = deepspeed.initialize(model=ref, config=ref_cfg)
            self.ref_engine.eval()

    # ------------------------------------------------------------------ introspection

    def shard_info(self) -> dict:
        """Parameter counts: the full model (ds_numel) and what this rank holds (ds_tensor)."""
        total = local = 0
        for p in self.module.parameters():
            total += int(getattr(p, "ds_numel", p.numel()))
            t = getattr(p, "ds_tensor", None)
            local += int(t.numel()) if t is not None else int(p.numel())
        return {
            "rank": self.rank,
            "total_numel": total,
            "local_numel": local,
            "has_ref": self.ref_engine is not None,
        }

    def memory(self) -> dict:
        """RSS now, peak RSS, and the RSS before the model was built (libraries, process group)."""
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {
            "rank": self.rank,
            "rss_gib": self._rss(),
            "peak_rss_gib": peak_kib / 2**20,
            "base_rss_gib": getattr(self, "_rss_base", float("nan")),
        }

    # ------------------------------------------------------------------ forward helpers

    def _forward(self, engine, batch: TrainBatch, idx: list[int], **flags):
        x = collate(batch.prompt_ids, batch.completion_ids, idx, self.pad_id, self.device)
        out = engine(
            x["input_ids"],
            x["attention_mask"],
            x["position_ids"],
            x["rows"],
            x["cols"],
            x["targets"],
            **flags,
        )
        return x, out

    def compute_logprobs(
        self,
        batch: TrainBatch,
        micro: list[list[int]],
        with_old: bool = True,
        with_entropy: bool = False,
        with_clipv: bool = False,
    ) -> dict:
        """Per-sequence arrays for this rank's micro-batches: {"index": [...], name: [array]}."""
        run_policy = with_old or with_entropy or with_clipv
        out: dict[str, list] = {"index": []}
        t0 = time.perf_counter()
        with torch.no_grad():
            for idx in micro:
                vals: dict[str, Any] = {}
                if run_policy:
                    x, (lp, ent, n) = self._forward(
                        self.engine, batch, idx, want_ent=with_entropy, want_clipv=with_clipv
                    )
                    vals["old_logprobs"] = lp
                    if ent is not None:
                        vals["entropy"] = ent
                    if n is not None:
                        vals["clipv_n"] = n
                if self.ref_engine is not None:
                    x, (rlp, _, _) = self._forward(self.ref_engine, batch, idx)
                    vals["ref_logprobs"] = rlp
                if not idx:
                    continue
                lens = [len(batch.completion_ids[i]) for i in idx]
                out["index"] += list(idx)
                for k, v in vals.items():
                    parts = torch.split(v.float().cpu(), lens)
                    out.setdefault(k, []).extend(p.numpy().astype(np.float32) for p in parts)
        out["seconds"] = time.perf_counter() - t0
        return out

    def update(
        self, batch: TrainBatch, steps: list[dict], algo: AlgoConfig | None = None, keep_policy: bool = False
    ) -> dict:
        """Run the optimizer steps planned by the group. steps[k] = {"micro": this rank's
        micro-batches, "global_tokens", "global_seqs"}; `algo`: the group's algorithm config
        (the loss keys are read from it, so the planner and the loss never disagree).
        `keep_policy` (one step only): also return, from the same forward, the pre-update
        policy's per-token old_logprobs / entropy / clipv_n, as `compute_logprobs` would.
        Returns per-step metric sums."""
        a = self.acfg if algo is None else as_cfg(algo, AlgoConfig)
        correction = str(a.rollout_correction)
        eng = self.engine
        eng.train()
        want_ent = True  # the entropy metric; differentiable only for an entropy bonus
        grad_ent = float(a.entropy_coef) != 0.0
        beta = float(a.beta)
        adv_all = np.asarray(batch.advantages, dtype=np.float32)
        w_all = None if batch.weights is None else np.asarray(batch.weights, dtype=np.float32)
        m_all = np.asarray(batch.mask, dtype=bool)
        old_all = None if batch.old_logprobs is None else np.asarray(batch.old_logprobs, dtype=np.float32)
        ref_all = None if batch.ref_logprobs is None else np.asarray(batch.ref_logprobs, dtype=np.float32)
        # the old policy's logprobs (this forward's, or the old-logprob pass's) against vLLM's on
        # the sampled tokens: the sync's drift (with overlap, the one-step lag too). Each epoch
        # covers every sequence once, so repeating it leaves the mean and the max unchanged.
        roll_all = (
            np.asarray(batch.rollout_logprobs, dtype=np.float32)
            if batch.rollout_logprobs is not None
            else None
        )
        drift = {"sum": 0.0, "count": 0, "max": 0.0}
        is_stats: list[dict] = []
        policy: dict[str, list] = {"index": []}
        if keep_policy and (len(steps) != 1 or grad_ent):
            raise ValueError("keep_policy needs one optimizer step and no entropy bonus")
        if beta > 0 and ref_all is None and self.ref_engine is None:
            raise RuntimeError("beta > 0 but no reference model on this learner")
        dev = self.device
        sel = lambda arr, idx, T: torch.from_numpy(np.ascontiguousarray(arr[idx, :T])).to(dev)  # noqa: E731
        results = []
        t_start = time.perf_counter()
        for st in steps:
            micro = st["micro"]
            parts = []
            real = padded = 0
            for j, idx in enumerate(micro):
                eng.set_gradient_accumulation_boundary(j == len(micro) - 1)
                x, (lp_flat, ent_flat, n_flat) = self._forward(
                    eng, batch, idx, want_ent=want_ent, grad_ent=grad_ent, want_clipv=keep_policy
                )
                if keep_policy and idx:
                    lens = [len(batch.completion_ids[i]) for i in idx]
                    policy["index"] += list(idx)
                    for k, v in (("old_logprobs", lp_flat), ("entropy", ent_flat), ("clipv_n", n_flat)):
                        parts_k = torch.split(v.detach().float().cpu(), lens)
                        policy.setdefault(k, []).extend(p.numpy().astype(np.float32) for p in parts_k)
                if x["dummy"]:
                    # An empty micro-batch keeps ranks in step (ZeRO-3 collectives): zero loss.
                    loss = lp_flat.sum() * 0.0
                    if ent_flat is not None and grad_ent:
                        loss = loss + ent_flat.sum() * 0.0
                    if beta > 0 and ref_all is None:
                        with torch.no_grad():
                            self._forward(self.ref_engine, batch, idx)
                else:
                    b, T = len(idx), x["T"]
                    real += int(x["attention_mask"].sum())
                    padded += int(x["attention_mask"].numel())
                    lp = scatter_tokens(lp_flat, x["tok_row"], x["tok_col"], b, T)
                    valid = scatter_tokens(torch.ones_like(lp_flat), x["tok_row"], x["tok_col"], b, T) > 0
                    mask = sel(m_all, idx, T) & valid
                    old = lp.detach() if old_all is None else sel(old_all, idx, T)
                    if roll_all is not None:
                        gap = (old - sel(roll_all, idx, T)).abs()[valid]
                        gap = gap[torch.isfinite(gap)]
                        if gap.numel():
                            drift["sum"] += float(gap.sum())
                            drift["count"] += int(gap.numel())
                            drift["max"] = max(drift["max"], float(gap.max()))
                    ent = (
                        None
                        if ent_flat is None
                        else scatter_tokens(ent_flat, x["tok_row"], x["tok_col"], b, T)
                    )
                    ref = None
                    if beta > 0:
                        if ref_all is not None:
                            ref = sel(ref_all, idx, T)
                        else:
                            with torch.no_grad():
                                _, (rlp, _, _) = self._forward(self.ref_engine, batch, idx)
                            ref = scatter_tokens(rlp, x["tok_row"], x["tok_col"], b, T)
                    w = None if w_all is None else sel(w_all, idx, T)
                    if correction != "none":  # the tokens came from vLLM, not from `old`
                        isw, stats = rollout_is_weights(
                            old,
                            sel(roll_all, idx, T),
                            mask,
                            mode=correction,
                            cap=float(a.rollout_correction_cap),
                        )
                        w = isw.to(old.dtype) if w is None else w * isw.to(w.dtype)
                        is_stats.append({k: float(v) for k, v in stats.items()})
                    loss, metrics = policy_loss(
                        lp,
                        old,
                        sel(adv_all, idx, T),
                        mask,
                        weights=w,
                        ref_logprobs=ref,
                        clip_low=a.clip_low,
                        clip_high=a.clip_high,
                        beta=beta,
                        agg=a.agg,
                        norm_constant=a.norm_constant,
                        entropy=ent,
                        entropy_coef=a.entropy_coef,
                        global_tokens=st["global_tokens"],
                        global_seqs=st["global_seqs"],
                    )
                    parts.append(metrics)
                # DeepSpeed averages gradients over ranks: x world size gives the sum.
                eng.backward(loss * float(self.world_size), scale_wrt_gas=False)
            eng.step()
            gn = eng.get_global_grad_norm()
            res = reduce_loss_metrics(parts)
            res.update(
                {
                    "grad_norm": float(gn) if gn is not None else float("nan"),
                    "real_tokens": real,
                    "padded_tokens": padded,
                    "micro_batches": len(micro),
                }
            )
            results.append(res)
        lr = self.scheduler.get_last_lr()[0] if self.scheduler is not None else float(self.lcfg.lr)
        return {
            "steps": results,
            "seconds": time.perf_counter() - t_start,
            "lr": float(lr),
            "drift": drift if roll_all is not None else None,
            "rollout_is": is_stats,
            "policy": policy if keep_policy else None,
        }

    # ------------------------------------------------------------------ gathered weights

    def _settle_zero3(self) -> None:
        """Wait for and release every parameter ZeRO-3 still holds gathered or in flight.

        A no-grad forward ends with prefetches in flight for a backward that never comes, and a
        forward of the bare HF module (the sync probe) bypasses the engine's step bookkeeping.
        `GatheredParameters` skips in-flight parameters and then refuses to re-partition them
        ("Cannot partition a param in flight"), so every gather outside a forward starts and
        ends from a clean state. The ZeRO-3 optimizer's `empty_partition_cache` does it (the
        engine's method of that name also runs gc.collect(), ~0.2 s a call)."""
        if self.engine is None:
            return
        opt = getattr(self.engine, "optimizer", None)
        if hasattr(opt, "empty_partition_cache"):
            opt.empty_partition_cache()
        else:
            self.engine.empty_partition_cache()

    def _named_params(self):
        """(HF name, parameter) of the policy, shared (tied) parameters once."""
        return list(self.module.lm.named_parameters())

    def gathered_state_dict(self, bucket_mb: int | None = None) -> dict | None:
        """Full weights (CPU tensors) on rank 0, None elsewhere. All ranks must call."""
        import deepspeed

        self._settle_zero3()
        named = self._named_params()
        budget = int((bucket_mb or self.lcfg.sync_bucket_mb) * 2**20)
        out: dict = {} if self.rank == 0 else None
        i = 0
        while i < len(named):
            group, size = [], 0
            while i < len(named) and (not group or size + self._nbytes(named[i][1]) <= budget):
                group.append(named[i])
                size += self._nbytes(named[i][1])
                i += 1
            with deepspeed.zero.GatheredParameters([p for _, p in group], modifier_rank=None):
                if self.rank == 0:
                    for name, p in group:
                        out[name] = p.data.detach().cpu().clone()
        return out

    @staticmethod
    def _nbytes(p) -> int:
        return int(getattr(p, "ds_numel", p.numel())) * p.element_size()

    def save_hf(self, path: str) -> str | None:
        sd = self.gathered_state_dict()
        if self.rank != 0:
            return None
        os.makedirs(path, exist_ok=True)
        self.module.lm.save_pretrained(path, state_dict=sd, safe_serialization=True)
        tok = AutoTokenizer.from_pretrained(
            self.mcfg.tokenizer or self.model_path, trust_remote_code=self.mcfg.trust_remote_code
        )
        tok.save_pretrained(path)
        return path

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, directory: str) -> None:
        self._settle_zero3()
        self.engine.save_checkpoint(directory)

    def load_checkpoint(self, directory: str) -> None:
        self._settle_zero3()
        path, _ = self.engine.load_checkpoint(
            directory, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint found in {directory}")

    # ------------------------------------------------------------------ weight sync

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def _plan_sync(self) -> None:
        self._sync_meta = param_meta(self.module.lm)
        self._sync_buckets = plan_buckets(self._sync_meta, int(self.lcfg.sync_bucket_mb) * 2**20)

    def init_weight_sender(self, master_addr: str, master_port: int, world_size: int) -> dict:
        """Group transport. Every rank plans the same buckets (all ranks take part in every
        gather); rank 0 also joins the learner -> generators process group as its rank 0
        (collective with the generators' `init_weight_receiver`)."""
        self._plan_sync()
        self._shared = self._ipc = None  # a re-connection replaces whatever transport came before
        if self.rank == 0:
            backend = "nccl" if self.device_kind == "cuda" else "gloo"
            self.sender = WeightSender(master_addr, master_port, world_size, backend)
            self.sender.connect()
        else:
            self.sender = WeightSender.non_sender()
        return {"buckets": len(self._sync_buckets), "params": len(self._sync_meta)}

    def open_shared(self, path: str | None = None) -> dict:
        """Shared-memory transport: rank 0 (no `path`) creates the buffer file, the other ranks
        map the file it names. Returns {"path", "bytes"}."""
        self._plan_sync()
        if self.sender is not None:
            self.sender.close()
            self.sender = None
        self._ipc = None
        self._shared_offsets, nbytes = shared_layout(self._sync_meta)
        if path is None:
            path = os.path.join(shared_dir(nbytes), f"egsw_rl_weights_{os.getpid()}_{uuid.uuid4().hex[:8]}")
        self._shared = map_shared(path, nbytes, create=self.rank == 0)
        self._shared_path = path
        return {"path": path, "bytes": nbytes}

    def unlink_shared(self) -> None:
        """Remove the buffer's name once every process has mapped it: the memory lives on in the
        mappings and is freed with the last of them, even when a process dies."""
        path = getattr(self, "_shared_path", None)
        if path and os.path.exists(path):
            os.unlink(path)

    def sync_meta(self) -> list:
        return meta_to_rows(self._sync_meta)

    def send_weights(self, probe: bool = True) -> dict:
        """One push. Group transport: gather each bucket on every rank, rank 0 broadcasts it.
        Shared memory: every rank writes its own shards into the buffer. With `probe`, every
        rank then runs the probe forward (collective under ZeRO-3), whose logprobs the
        generators compare with their own."""
        t0 = time.perf_counter()
        self._settle_zero3()
        self.module.lm.eval()
        try:
            if getattr(self, "_ipc", None) is not None:  # colocated on GPU: the engine reads our buffer
                out = self._ipc.send(self.module.lm, self._sync_buckets, probe, self.device)
            elif self._shared is not None:
                t1 = time.perf_counter()
                out = {
                    "bytes": write_shards(
                        self.module.lm, self._sync_meta, self._shared_offsets, self._shared, self.rank
                    )
                }
                out["write_s"] = time.perf_counter() - t1
                if probe:
                    ids, lp = run_probe(self.module.lm)
                    out.update(probe_ids=ids, probe_logprobs=lp.tolist())
            elif self.sender is not None:
                out = self.sender.send(
                    self.module.lm, self._sync_buckets, is_sender=self.rank == 0, probe=probe
                )
            else:
                raise RuntimeError("send_weights before init_weight_sender / open_shared")
        finally:
            self.module.lm.train()
            self._settle_zero3()
        out["seconds"] = time.perf_counter() - t0
        return out

    # ------------------------------------------------------------------ colocated: IPC, offload

    def init_ipc_sender(self, addr: str, port: int) -> dict:
        """CUDA IPC transport (colocated on GPU): every rank packs the gathered buckets for the
        engine worker on its own device; rank 0 hosts the handshake store."""
        self._plan_sync()
        self._shared, self.sender = None, None
        self._ipc = IpcSender(addr, port, self.rank)
        return {"buckets": len(self._sync_buckets), "params": len(self._sync_meta)}

    def gpu_id(self) -> str | None:
        """The GPU Ray gave this rank (its id on the node), None on CPU: a colocated engine
        spanning several ranks' devices is told theirs."""
        ids = ray.get_gpu_ids()
        return str(ids[0]) if ids else None

    def _resident_tensors(self) -> list:
        """What a colocated rank moves off its device while the engine generates, beyond
        DeepSpeed's own offload_states (the bf16 partitions, gradient partitions and the
        contiguous gradient buffer): the fp32 master partitions and AdamW's two moments (DeepSpeed
        moves these only for its FusedAdam; this project's optimizer is torch's AdamW, no op to
        compile, whose state has the same keys) and the reference model's partitions (an
        engine without an optimizer, which offload_states refuses)."""
        out = []
        opt = self.engine.optimizer
        if not self.lcfg.offload_optimizer:  # else they live on the host already
            out += list(getattr(opt, "fp32_partitioned_groups_flat", []))
            for state in opt.optimizer.state.values():
                out += [state[k] for k in ("exp_avg", "exp_avg_sq") if k in state]
        if self.ref_engine is not None:
            out += [p.ds_tensor for p in self.ref_engine.module.parameters() if hasattr(p, "ds_tensor")]
        return out

    def offload(self) -> dict:
        """Move this rank's training state to host memory (colocated: the engine on this device
        generates next). Pinned host buffers, kept for the next offload. On CPU the states are
        host memory already: the same calls run as copies (the path is exercised, nothing freed)."""
        from deepspeed.runtime.zero.offload_config import OffloadDeviceEnum
        from deepspeed.runtime.zero.offload_config import OffloadStateTypeEnum as S

        t0 = time.perf_counter()
        cuda = self.device_kind == "cuda"
        before = torch.cuda.memory_allocated(self.device) if cuda else 0
        self._settle_zero3()
        self.engine.offload_states(
            include=[S.lp_params, S.lp_grads, S.contiguous_grad_buffer],
            device=OffloadDeviceEnum.cpu,
            pin_memory=cuda,
            non_blocking=False,
        )
        # each tensor's own host buffer, kept with the tensor so the id is never reused: the list
        # grows once AdamW has state, and a buffer must never serve two tensors (on CPU a
        # reload leaves the tensors on their host buffers)
        host = self.__dict__.setdefault("_host_copies", {})
        moved = 0
        for t in self._resident_tensors():
            _, buf = host.get(id(t), (None, None))
            if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
                buf = torch.empty_like(t, device="cpu", pin_memory=cuda)
                host[id(t)] = (t, buf)
            if buf.data_ptr() != t.data_ptr():
                buf.copy_(t.data)
            t.data = buf
            moved += t.numel() * t.element_size()
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
        after = torch.cuda.memory_allocated(self.device) if cuda else 0
        return {
            "rank": self.rank,
            "seconds": time.perf_counter() - t0,
            "device_bytes_before": before,
            "device_bytes_after": after,
            "moved_bytes": moved,
        }

    def reload(self) -> dict:
        """The training state back on this rank's device (before logprobs and the update)."""
        t0 = time.perf_counter()
        self.engine.reload_states(non_blocking=False)
        for t in self._resident_tensors():
            t.data = t.data.to(self.device)
        if self.device_kind == "cuda":
            torch.cuda.synchronize(self.device)
        return {
            "rank": self.rank,
            "seconds": time.perf_counter() - t0,
            "device_bytes": torch.cuda.memory_allocated(self.device) if self.device_kind == "cuda" else 0,
        }

    def ping(self) -> int:
        return self.rank


# =============================================================================== the group


def _assemble(parts: list[dict], batch: TrainBatch) -> dict[str, np.ndarray]:
    """Ranks' per-sequence arrays ({"index": [...], name: [array]}) -> [N, T] float32, zero-padded."""
    N = len(batch)
    T = max([1] + [len(c) for c in batch.completion_ids])
    out: dict[str, np.ndarray] = {}
    for part in parts:
        for k, seqs in part.items():
            if k in ("index", "seconds"):
                continue
            arr = out.setdefault(k, np.zeros((N, T), dtype=np.float32))
            for i, v in zip(part["index"], seqs):
                arr[i, : len(v)] = v
    return out


class LearnerGroup(ActorGroup):
    """The driver's handle on the learner ranks (see the module docstring)."""

    kind = "learner rank"

    def __init__(
        self,
        model_cfg: ModelConfig,
        learner_cfg: LearnerConfig,
        algo_cfg: AlgoConfig,
        device: str = "auto",
        sampling_temperature: float = 1.0,
        *,
        total_steps: int | None = None,
        seed: int = 0,
        ready_timeout_s: float = 900.0,
        placement: tuple | None = None,
        gpu_share: float | None = None,
    ):
        """`placement`: (placement group, bundle index per rank) from the run's plan
        (`egsw_rl.placement`); without it the group reserves its own ranks. `gpu_share`: the GPUs
        a rank asks for in its bundle (colocated: its share of the device; default 1)."""
        self.mcfg = as_cfg(model_cfg, ModelConfig)
        self.lcfg = as_cfg(learner_cfg, LearnerConfig)
        self.acfg = as_cfg(algo_cfg, AlgoConfig)
        self.device = resolve_device(device)
        self.world_size = n = int(self.lcfg.num_ranks)
        if n < 1:
            raise ValueError(f"learner.num_ranks must be >= 1, got {n}")
        self.model_path = resolve_model_path(self.mcfg.path)
        self._step_seed = int(seed)
        self.updates = 0  # updates so far: seeds each update's mini-batch shuffle (checkpointed)

        gpu = self.device == "cuda"
        nodes = max(1, int(self.lcfg.num_nodes))
        cpus = float(self.lcfg.cpus_per_rank)
        per_node = int(self.lcfg.gpus_per_node) if gpu and self.lcfg.gpus_per_node > 0 else -(-n // nodes)
        if per_node * nodes < n:
            raise ValueError(
                f"learner.num_ranks={n} does not fit learner.num_nodes={nodes} x "
                f"learner.gpus_per_node={per_node}"
            )
        used = -(-n // per_node)  # nodes that get ranks, filled in order: ranks contiguous per node
        if used == 1:
            bundles = [{"CPU": cpus, **({"GPU": 1} if gpu else {})} for _ in range(n)]
            bundle_of = list(range(n))
            strategy = "STRICT_PACK" if gpu else "PACK"
        else:
            # One bundle per node holding that node's ranks, each bundle on a different node.
            counts = [min(per_node, n - k * per_node) for k in range(used)]
            bundles = [{"CPU": cpus * c, **({"GPU": c} if gpu else {})} for c in counts]
            bundle_of = [r // per_node for r in range(n)]
            strategy = "STRICT_SPREAD"
        # the cosine schedule needs its length: fail here, before any actor starts
        lr_lambda(self.lcfg.lr_schedule, self.lcfg.warmup_steps, total_steps)
        if placement is not None:  # the run's plan: the group neither reserves nor releases it
            pg, bundle_of = placement
            self.pg = None
        else:
            self.pg = pg = placement_group(bundles, strategy=strategy)
            ready, _ = ray.wait([pg.ready()], timeout=ready_timeout_s)
            if not ready:
                ray.util.remove_placement_group(pg)
                raise RuntimeError(
                    f"the learner placement group {bundles} ({strategy}) could not be placed "
                    f"within {ready_timeout_s:.0f}s: not enough CPUs/GPUs in the Ray cluster"
                )
        self.actors = self.start(
            Learner,
            n,
            lambda r: (
                r,
                n,
                self.model_path,
                self.mcfg,
                self.lcfg,
                self.acfg,
                self.device,
                sampling_temperature,
                seed,
                total_steps,
            ),
            options=dict(
                num_cpus=cpus,
                num_gpus=(1 if gpu_share is None else gpu_share) if gpu else 0,
                max_concurrency=1,
            ),
            placement_group=pg,
            bundle_of=bundle_of,
        )
        try:
            addr, port = ray.get(self.actors[0].address.remote())
            self.master_addr = addr
            t0 = time.perf_counter()
            self.shards = self.wait([a.init.remote(addr, port) for a in self.actors])
        except BaseException:
            self.shutdown()  # no half-started ranks left holding resources
            raise
        self.init_seconds = time.perf_counter() - t0
        self.has_ref = bool(self.shards[0]["has_ref"])

    def _lengths(self, batch: TrainBatch) -> list[int]:
        # forward tokens: prompt + completion minus the last token (its logits are never used)
        return [len(p) + max(len(c), 1) - 1 for p, c in zip(batch.prompt_ids, batch.completion_ids)]

    def old_logprobs_needed(
        self, with_entropy: bool = False, off_policy: bool = False, keep_policy: bool = False
    ) -> bool:
        """Whether the driver must call `compute_logprobs` for old logprobs (the one place that
        decides). False when the old policy provably equals the current one at update time: one
        epoch, one mini-batch, no exact entropy wanted, data sampled from the current weights
        (not `off_policy`, e.g. overlap mode). `update` then uses its own detached logprobs
        (ratio 1, same gradient), and with beta > 0 computes the reference logprobs itself in the
        same micro-batches. Dropout is disabled in the policy, so the two forwards would be the
        same function. `keep_policy`: the caller wants the pre-update policy, which `update`'s
        own forward gives only without an entropy bonus (its entropy then carries a gradient)."""
        a = self.acfg
        return bool(
            a.ppo_epochs > 1
            or a.mini_batches > 1
            or with_entropy
            or off_policy
            or (keep_policy and float(a.entropy_coef) != 0.0)
        )

    # ------------------------------------------------------------------ the driver's calls

    def compute_logprobs(
        self,
        batch: TrainBatch,
        *,
        with_entropy: bool = False,
        with_clipv: bool = False,
        with_old: bool = True,
    ) -> dict[str, np.ndarray]:
        """[N, T] float32 arrays (zero-padded): old_logprobs (if with_old or entropy asked),
        entropy (with_entropy or with_clipv), clipv_n (with_clipv), ref_logprobs (beta > 0)."""
        lengths = self._lengths(batch)
        micro = plan.plan_pass(
            lengths, list(range(len(batch))), self.world_size, int(self.lcfg.micro_batch_tokens)
        )
        ref = ray.put(batch)
        parts = self.wait(
            [
                a.compute_logprobs.remote(ref, micro[r], with_old, with_entropy, with_clipv)
                for r, a in enumerate(self.actors)
            ]
        )
        return _assemble(parts, batch)

    def _plan_update(self, batch: TrainBatch) -> list[dict]:
        """Per optimizer step: the sequences, their normalisers and every rank's micro-batches."""
        a = self.acfg
        lengths = self._lengths(batch)
        n = len(batch)
        mask = torch.from_numpy(np.asarray(batch.mask, dtype=bool))
        steps = []
        for epoch in range(int(a.ppo_epochs)):
            if int(a.mini_batches) == 1:
                splits = [list(range(n))]
            else:
                splits = plan.mini_batch_split(
                    n,
                    int(a.mini_batches),
                    seed=int(
                        np.random.SeedSequence([self._step_seed, self.updates, epoch]).generate_state(1)[0]
                    ),
                )
            for seqs in splits:
                if len(splits) == 1 and batch.global_tokens is not None and batch.global_seqs is not None:
                    norms = {
                        "global_tokens": float(batch.global_tokens),
                        "global_seqs": float(batch.global_seqs),
                    }
                else:
                    norms = {k: float(v) for k, v in loss_normalizers(mask[seqs], a.agg).items()}
                per_rank = plan.plan_pass(lengths, seqs, self.world_size, int(self.lcfg.micro_batch_tokens))
                steps.append({"seqs": seqs, "per_rank": per_rank, **norms})
        return steps

    def update(self, batch: TrainBatch, keep_policy: bool = False):
        """One batch's optimizer steps; returns the metrics. With `keep_policy` (one optimizer
        step per batch: see `old_logprobs_needed`) returns (metrics, the pre-update policy's
        [N, T] old_logprobs / entropy / clipv_n), read from the update's own forward at no extra
        pass; the entropy-dynamics monitor compares them with the policy after the step."""
        for name in ("advantages", "mask"):
            if getattr(batch, name) is None:
                raise ValueError(f"TrainBatch.{name} is required by update()")
        if batch.old_logprobs is None and (int(self.acfg.ppo_epochs) > 1 or int(self.acfg.mini_batches) > 1):
            raise ValueError(
                "TrainBatch.old_logprobs is required with algo.ppo_epochs > 1 or "
                "algo.mini_batches > 1 (compute_logprobs before update)"
            )
        correction = str(self.acfg.rollout_correction)
        if correction != "none" and batch.rollout_logprobs is None:
            raise ValueError(
                f"algo.rollout_correction={correction} needs TrainBatch.rollout_logprobs "
                "(vLLM's logprobs of the sampled tokens)"
            )
        t0 = time.perf_counter()
        steps = self._plan_update(batch)
        ref = ray.put(batch)
        outs = self.wait(
            [
                a.update.remote(
                    ref,
                    [
                        {
                            "micro": st["per_rank"][r],
                            "global_tokens": st["global_tokens"],
                            "global_seqs": st["global_seqs"],
                        }
                        for st in steps
                    ],
                    self.acfg,
                    keep_policy,
                )
                for r, a in enumerate(self.actors)
            ]
        )
        self.updates += 1
        per_step = []
        real = padded = 0
        for k in range(len(steps)):
            ranks = [o["steps"][k] for o in outs]
            m = reduce_loss_metrics(ranks)
            m["actor/grad_norm"] = ranks[0]["grad_norm"]
            real += sum(r["real_tokens"] for r in ranks)
            padded += sum(r["padded_tokens"] for r in ranks)
            per_step.append(m)
        keys = sorted({k for m in per_step for k in m if not k.endswith("_sum")})
        metrics = {k: float(np.mean([m.get(k, 0.0) for m in per_step])) for k in keys}
        secs = time.perf_counter() - t0
        drifts = [o["drift"] for o in outs if o.get("drift")]
        count = sum(d["count"] for d in drifts)
        if count:
            metrics["rollout/logprob_diff_mean"] = sum(d["sum"] for d in drifts) / count
            metrics["rollout/logprob_diff_max"] = max(d["max"] for d in drifts)
        metrics.update(reduce_rollout_is([p for o in outs for p in o.get("rollout_is", [])]))
        metrics.update(
            {
                "actor/lr": outs[0]["lr"],
                "actor/optimizer_steps": float(len(steps)),
                "actor/micro_batches": float(sum(len(st["per_rank"][0]) for st in steps)),
                "actor/train_tokens": float(real),
                "actor/padding_frac": float(1.0 - real / padded) if padded else 0.0,
                "timing/update_s": secs,
                "perf/train_tokens_per_s": float(real) / max(secs, 1e-9),
            }
        )
        if keep_policy:
            return metrics, _assemble([o["policy"] for o in outs], batch)
        return metrics

    # ------------------------------------------------------------------ colocated

    def offload(self) -> dict:
        """Colocated: every rank's training state to host memory (Learner.offload); summary."""
        res = self.call_all("offload")
        return {
            "learner/offload_s": max(r["seconds"] for r in res),
            "learner/offloaded_gib": sum(r["moved_bytes"] for r in res) / 2**30,
            "learner/device_gib_after_offload": max(r["device_bytes_after"] for r in res) / 2**30,
        }

    def reload(self) -> dict:
        """Colocated: every rank's training state back on its device; summary."""
        res = self.call_all("reload")
        return {
            "learner/reload_s": max(r["seconds"] for r in res),
            "learner/device_gib": max(r["device_bytes"] for r in res) / 2**30,
        }

    def gpu_ids(self) -> list:
        """The GPU id of every rank (None on CPU), in rank order."""
        return self.call_all("gpu_id")

    def save_hf(self, path: str) -> str:
        self.call_all("save_hf", str(path))
        return str(path)

    def save_checkpoint(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.call_all("save_checkpoint", str(directory))

    def load_checkpoint(self, directory: str) -> None:
        self.call_all("load_checkpoint", str(directory))

    # ------------------------------------------------------------------ introspection

    def shard_info(self) -> list[dict]:
        return list(self.shards)

    def memory(self) -> list[dict]:
        return self.call_all("memory")
