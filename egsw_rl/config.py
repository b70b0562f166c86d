"""The typed schema of every run, and the checks that refuse a bad one before any actor starts.

Hydra composes YAML from `egsw_rl/conf/` on top of these dataclasses (registered as structured
configs), so an unknown key or a wrong type fails at composition with the key's full name.
Each section's `errors()` checks its own keys' values, next to its fields; `RunConfig.errors`
adds the rules that span sections (ClipV needs the learner's entropy, B x G splits into
mini-batches, ...); `validate(cfg)` runs them all and raises one ConfigError listing every
failure. Each key has one home: sampling temperature is `rollout.temperature`, EGSW's P is
`algo.temperature`; the allowed method names are the registries in `egsw_rl/algos/`, the reward
options are `RewardOptions` (egsw_rl/rewards/types.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, get_type_hints

from omegaconf import OmegaConf

from egsw_rl.rewards.types import ANSWER_FORMATS, DEFAULT_TIMEOUT_S, RewardOptions


class ConfigError(ValueError):
    """A run configuration that cannot work; the message names the key."""


def _choices(prefix: str, section: Any, allowed: Mapping[str, Iterable]) -> list[str]:
    """One message per key of `section` whose value is not among its allowed values."""
    out = []
    for key, values in allowed.items():
        value, values = getattr(section, key), list(values)
        if value not in values:
            out.append(f"{prefix}.{key}={value!r}: allowed values are {', '.join(map(str, values))}")
    return out


def _bounds(
    prefix: str, section: Any, positive: Iterable[str] = (), non_negative: Iterable[str] = ()
) -> list[str]:
    out = []
    for keys, strict in ((positive, True), (non_negative, False)):
        for key in keys:
            value = getattr(section, key)
            if value is None or (value <= 0 if strict else value < 0):
                out.append(f"{prefix}.{key}={value!r}: must be {'> 0' if strict else '>= 0'}")
    return out


@dataclass
class ModelConfig:
    # An HF model folder or hub name; "tiny" builds the offline random test model on the spot.
    path: str = "tiny"
    tokenizer: str | None = None
    # auto = bfloat16 on GPU, float32 on CPU (vLLM CPU and gloo training are fp32 here).
    dtype: str = "auto"
    trust_remote_code: bool = False

    def errors(self) -> list[str]:
        return _choices("model", self, {"dtype": ("auto", "float32", "bfloat16", "float16")})


@dataclass
class RolloutConfig:
    num_generators: int = 1
    tensor_parallel_size: int = 1
    cpus_per_generator: float = 1.0
    gpu_memory_utilization: float = 0.5
    # CPU only: KV cache size in GiB (vLLM's VLLM_CPU_KVCACHE_SPACE); a fraction of RAM fails here.
    cpu_kvcache_gib: float = 1.0
    max_model_len: int = 1024
    enforce_eager: bool = True
    # Where vLLM's engine core runs: false = in the generator actor's process (a fixed seed
    # reproduces the same tokens; CPU presets, tests), true = in a child process (the frontend's
    # output processing overlaps the device's steps; GPU presets). Sets VLLM_ENABLE_V1_MULTIPROCESSING.
    engine_multiprocessing: bool = False
    seed: int = 0
    # Sampling. n is G, the group size.
    n: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    # The per-token entropy the generators return: exact (computed by vLLM's sampler over the
    # whole vocabulary) | lower_bound | renorm | upper_bound (top-k estimates from `logprobs`
    # candidates a token; docs/algorithms.md, section 11)
    entropy_estimator: str = "exact"
    logprobs: int = 20  # k, the top-k estimators' candidates per token (unused by exact)
    # qwen_math | qwen_math_user | chat | a plain template with {question} (egsw_rl/prompts.py);
    # evaluation renders with the same function
    prompt_template: str = "qwen_math"
    # A prompt longer than max_model_len - max_tokens: drop (training rows left out at load time,
    # eval problems scored overlong_prompt) | truncate_left | error (refused before the run)
    overlong_prompt: str = "drop"

    def errors(self) -> list[str]:
        from egsw_rl.algos import TOPK_METHODS

        errors = _choices(
            "rollout",
            self,
            {
                "entropy_estimator": ("exact", *TOPK_METHODS),
                "overlong_prompt": ("drop", "truncate_left", "error"),
            },
        )
        errors += _bounds(
            "rollout",
            self,
            positive=("num_generators", "tensor_parallel_size", "max_tokens", "max_model_len"),
            non_negative=("logprobs",),
        )
        if self.temperature <= 0:
            errors.append(
                f"rollout.temperature={self.temperature}: sampling temperature must "
                "be > 0 (greedy sampling gives no group variance to learn from)"
            )
        if self.n < 2:
            errors.append(
                f"rollout.n={self.n}: GRPO-family advantages need a group of G >= 2 completions per prompt"
            )
        if self.max_tokens >= self.max_model_len:
            errors.append(
                f"rollout.max_tokens={self.max_tokens} leaves no room for the prompt "
                f"in rollout.max_model_len={self.max_model_len}"
            )
        return errors


@dataclass
class LearnerConfig:
    num_ranks: int = 2
    num_nodes: int = 1
    gpus_per_node: int = 0  # 0 on CPU; on GPU the ranks per node
    cpus_per_rank: float = 1.0
    offload_params: bool = False
    offload_optimizer: bool = False
    gradient_checkpointing: bool = False
    # Micro-batches are formed by token budget over length-sorted sequences, not by count.
    micro_batch_tokens: int = 4096
    logprob_chunk_tokens: int = 1024  # rows of [tokens, vocab] logits alive at once
    lr: float = 1e-6
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    lr_schedule: str = "constant"  # constant | cosine
    warmup_steps: int = 0
    sync_bucket_mb: int = 256
    # Weight push to the generators. shm: every rank writes its ZeRO-3 shards straight into one
    # shared-memory buffer the engines load from (CPU, everything on one node); group: gathered
    # buckets broadcast over a gloo / NCCL process group; auto: shm where it applies.
    sync_transport: str = "auto"  # auto | shm | group
    # Extra DeepSpeed keys merged over the generated config (advanced users).
    deepspeed: dict[str, Any] = field(default_factory=dict)

    def errors(self) -> list[str]:
        errors = _choices(
            "learner",
            self,
            {"lr_schedule": ("constant", "cosine"), "sync_transport": ("auto", "shm", "group")},
        )
        return errors + _bounds(
            "learner",
            self,
            positive=(
                "num_ranks",
                "num_nodes",
                "micro_batch_tokens",
                "logprob_chunk_tokens",
                "lr",
                "sync_bucket_mb",
            ),
        )


@dataclass
class AlgoConfig:
    """One flat section: every key is documented and swept as `algo.<name>` (README "Algorithms").
    The three selectors name registered functions (egsw_rl/algos/registry.py: the registries are
    the list of allowed names); each function receives, by name, the fields it declares. `alpha`
    / `temperature` are EGSW's, `alpha1` / `alpha2` GTPO's, `beta` the KL coefficient of the
    shared loss, `beta1` / `beta2` GRPO-S's."""

    name: str = "egsw"
    advantage: str = "grpo"  # a registered advantage: grpo | dr_grpo | batch_std | gtpo | grpo_s
    weighting: str = "egsw"  # a registered weighting: egsw | none
    token_mask: str = "none"  # a registered mask: none | clipb | clipv | high_entropy
    # EGSW (arXiv 2503.22456; docs/algorithms.md, section 3); temperature is EGSW's P, not the
    # sampling temperature.
    alpha: float = 0.2
    temperature: float = 1.0
    granularity: str = "step"  # step | trajectory
    normalize_over: str = "batch"  # batch | group
    entropy_norm: str = "log_vocab"  # log_vocab | none
    trajectory_entropy: str = "mean"  # mean | sum
    rescale: bool = True
    entropy_source: str = "rollout"  # rollout (the generators', rollout.entropy_estimator) | learner
    # The shared update (docs/algorithms.md, section 1).
    clip_low: float = 0.2
    clip_high: float = 0.2
    beta: float = 0.0
    agg: str = "seq_mean_token_mean"  # seq_mean_token_mean | token_mean | seq_mean_token_sum_norm
    norm_constant: float | None = None  # Dr.GRPO's constant; default rollout.max_tokens
    entropy_coef: float = 0.0
    ppo_epochs: int = 1
    mini_batches: int = 1
    # GTPO / GRPO-S (arXiv 2508.04349; docs/algorithms.md, section 4)
    alpha1: float = 1.0
    alpha2: float = 0.1
    beta1: float = 1.0
    beta2: float = 0.1
    zscore: str = "separate"  # separate | joint | scale_only
    # ClipB / ClipV (arXiv 2602.03392) / 80-20 (arXiv 2506.01939); docs/algorithms.md, sections 5, 7
    mu: float | None = None  # None: the selected mask's own default (algos/masks.py)
    max_frac: float = 1e-4
    rho: float = 0.2
    # DAPO (arXiv 2503.14476; docs/algorithms.md, section 8)
    dynamic_sampling: bool = False
    max_gen_batches: int = 10
    overlong_shaping: bool = False
    # L_cache; L_max is rollout.max_tokens. None = 20% of it (DAPO: 4096 of 20480).
    overlong_cache: int | None = None
    # Rollout importance correction: re-weight each token's policy-gradient term by
    # pi_learner_old / pi_vllm. none | tis (min(ratio, cap)) | mis (0 beyond the cap).
    rollout_correction: str = "none"
    rollout_correction_cap: float = 2.0

    def errors(self) -> list[str]:
        # the registries fill when egsw_rl.algos is imported (torch, seconds): only when checking
        from egsw_rl import algos
        from egsw_rl.algos.egsw import ENTROPY_NORMS, GRANULARITIES, NORMALIZE_OVER, TRAJECTORY_ENTROPY

        errors = _choices(
            "algo",
            self,
            {"advantage": algos.ADVANTAGES, "weighting": algos.WEIGHTS, "token_mask": algos.MASKS},
        )
        named = not errors
        errors += _choices(
            "algo",
            self,
            {
                "granularity": GRANULARITIES,
                "normalize_over": NORMALIZE_OVER,
                "entropy_norm": ENTROPY_NORMS,
                "trajectory_entropy": TRAJECTORY_ENTROPY,
                "agg": algos.AGGREGATIONS,
                "zscore": algos.ZSCORE_MODES,
                "entropy_source": ("rollout", "learner"),
                "rollout_correction": algos.ROLLOUT_CORRECTIONS,
            },
        )
        errors += _bounds(
            "algo",
            self,
            positive=("ppo_epochs", "mini_batches", "max_gen_batches"),
            non_negative=("alpha", "beta", "clip_low", "clip_high", "entropy_coef"),
        )
        if self.temperature <= 0:
            errors.append(f"algo.temperature={self.temperature}: EGSW's P must be > 0")
        if self.rollout_correction_cap < 1:
            errors.append(
                f"algo.rollout_correction_cap={self.rollout_correction_cap}: must be >= 1 "
                "(a cap below 1 cuts tokens the two policies agree on)"
            )
        for m in algos.selected(self) if named else ():
            if m.learner_entropy and self.entropy_source != "learner":
                errors.append(
                    f"algo.{m.kind}={m.name} needs the full-vocabulary N from the learner: set "
                    "algo.entropy_source=learner (the rollout returns the entropy only)"
                )
        return errors

    def rollout_entropy_users(self) -> list[str]:
        """`algo.<selector>=<name>` of each selected (registered) method that reads the rollout's
        entropy: none with entropy_source=learner."""
        if self.entropy_source != "rollout":
            return []
        from egsw_rl import algos

        chosen = [
            table[name]
            for table, name in (
                (algos.WEIGHTS, self.weighting),
                (algos.ADVANTAGES, self.advantage),
                (algos.MASKS, self.token_mask),
            )
            if name in table
        ]
        return [f"algo.{m.kind}={m.name}" for m in chosen if m.entropy and not m.learner_entropy]


@dataclass
class DataConfig:
    # A shipped set (egsw_rl.data.SOURCES), a generated one from a seed, no files needed
    # (egsw_rl.data.GENERATED: arithmetic, the embedded default; arith_chain; word_problems; with
    # _heldout for the held-out split), a local .jsonl / .json / .parquet path, or a hub data set.
    train: str = "arithmetic"
    split: str = "train"
    question_key: str = "question"
    answer_key: str = "answer"
    answer_format: str = "auto"  # auto | latex | gsm8k | aime | choice
    max_samples: int | None = None
    batch_size: int = 8  # B prompts per step; B x G sequences
    shuffle: bool = True
    eval: list[str] = field(default_factory=list)  # benchmark names or paths for periodic eval
    eval_samples: int = 32

    def errors(self) -> list[str]:
        return _choices("data", self, {"answer_format": ANSWER_FORMATS}) + _bounds(
            "data", self, positive=("batch_size",)
        )


# RewardOptions' public fields: the grading options (its private test hook is no config key)
_REWARD_OPTIONS = [f for f in fields(RewardOptions) if not f.name.startswith("_")]


def _reward_errors(self) -> list[str]:
    errors = _bounds("reward", self, positive=("timeout_s", "num_actors"))
    workers = self.workers
    if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        errors.append(f"reward.workers={workers!r}: must be an integer >= 1 or auto")
    try:  # the grading options check themselves where they are defined
        RewardOptions.build(**{f.name: getattr(self, f.name) for f in _REWARD_OPTIONS})
    except ValueError as e:
        errors.append(str(e))
    return errors


# reward.*: every grading option of RewardOptions (egsw_rl/rewards/types.py, the one home of their
# names, types, defaults, meaning and checks) and where grading runs.
RewardConfig = make_dataclass(
    "RewardConfig",
    [
        # grading processes per reward actor: a number, or auto (from the CPUs Ray reports on the
        # actor's node minus what the run's other bundles reserve there: actors/reward.auto_workers)
        ("workers", Any, field(default=2)),
        ("timeout_s", float, field(default=DEFAULT_TIMEOUT_S)),
        ("num_actors", int, field(default=1)),  # reward actors; each scores a contiguous slice of every batch
        *((f.name, get_type_hints(RewardOptions)[f.name], field(default=f.default)) for f in _REWARD_OPTIONS),
    ],
    namespace={"errors": _reward_errors},
)
RewardConfig.__module__ = __name__


@dataclass
class WandbConfig:
    mode: str = "offline"  # online | offline | disabled
    project: str = "egsw_rl"
    entity: str | None = None
    name: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)

    def errors(self) -> list[str]:
        return _choices("logger.wandb", self, {"mode": ("online", "offline", "disabled")})


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    progress_bar: bool = True
    plots: bool = True
    # info: a progress line and a summary a step, vLLM's known-benign reload lines filtered;
    # debug: everything, vLLM at DEBUG too
    level: str = "info"

    def errors(self) -> list[str]:
        return self.wandb.errors() + _choices("logger", self, {"level": ("info", "debug")})


@dataclass
class TrainerConfig:
    total_steps: int = 20
    save_every: int = 10
    keep_checkpoints: int = 2
    eval_every: int = 0  # 0 = never during training
    overlap: bool = False  # one-step off-policy: generate batch k+1 while training on batch k
    # log the step's predicted (first-order) and measured entropy change, entropy_dynamics/*:
    # one extra learner forward a step (docs/algorithms.md, "Entropy dynamics")
    entropy_dynamics: bool = False
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    # split: learner ranks and vLLM engines on their own devices; colocated: every device carries a
    # learner rank and an engine worker, which take turns (egsw_rl/placement.py, README "Learners")
    placement: str = "split"

    def errors(self) -> list[str]:
        errors = _choices(
            "trainer", self, {"device": ("auto", "cpu", "cuda"), "placement": ("split", "colocated")}
        )
        return errors + _bounds(
            "trainer", self, positive=("total_steps",), non_negative=("save_every", "eval_every")
        )


@dataclass
class RehearsalConfig:
    # none | cpu. `rehearsal=cpu` (egsw_rl/conf/rehearsal/cpu.yaml) runs a preset on CPU with only
    # its hardware and size keys replaced; launch places the tiny Qwen2 in an offline Hugging Face
    # cache under repo_id, which the rehearsal's model.path names, so the model loads by hub id.
    name: str = "none"
    repo_id: str = "egsw-rl-rehearsal/tiny-qwen2"
    # HF_HOME of that cache; None: rehearsal/hf under $EGSW_RL_CACHE (default ~/.cache/egsw_rl).
    # Several nodes: a path every node mounts.
    hf_home: str | None = None

    def errors(self) -> list[str]:
        return _choices("rehearsal", self, {"name": ("none", "cpu")})


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    rehearsal: RehearsalConfig = field(default_factory=RehearsalConfig)
    # none | auto (latest valid checkpoint in the run directory) | a checkpoint path
    resume: str = "none"

    def errors(self, available_gpus: int | None = None) -> list[str]:
        """Every section's own errors, then the rules that involve several sections."""
        errors = []
        for section in (
            self.model,
            self.rollout,
            self.learner,
            self.algo,
            self.data,
            self.reward,
            self.logger,
            self.trainer,
            self.rehearsal,
        ):
            errors += section.errors()
        rollout, learner, algo = self.rollout, self.learner, self.algo
        device = resolve_device(self.trainer.device)

        users = algo.rollout_entropy_users()
        if rollout.entropy_estimator != "exact" and rollout.logprobs < 1 and users:
            errors.append(
                f"rollout.logprobs=0 gives rollout.entropy_estimator={rollout.entropy_estimator} "
                "no candidates to estimate from; set rollout.logprobs >= 1, "
                "rollout.entropy_estimator=exact or algo.entropy_source=learner"
            )
        if rollout.top_p < 1.0 or rollout.top_k not in (-1, 0):
            # vLLM's processed logprobs (the rollout's entropy, exact or top-k) then describe the
            # truncated distribution, and the learner's entropy (the bonus differentiates it) the
            # untruncated one: neither is the other's.
            if algo.entropy_coef > 0:
                users.append(f"algo.entropy_coef={algo.entropy_coef}")
            if users:
                errors.append(
                    f"rollout.top_p={rollout.top_p} / rollout.top_k={rollout.top_k} "
                    f"truncate the sampling distribution, but {', '.join(users)} use(s) its "
                    "entropy: sample with top_p=1, top_k=-1 (or use "
                    "algo.entropy_source=learner for the shaping)"
                )
        n_seqs = self.data.batch_size * rollout.n
        if algo.mini_batches < 1:  # refused by AlgoConfig.errors
            pass
        elif n_seqs % algo.mini_batches:
            errors.append(
                f"algo.mini_batches={algo.mini_batches} must divide data.batch_size x "
                f"rollout.n = {n_seqs} sequences"
            )
        elif self.data.batch_size % algo.mini_batches:
            errors.append(
                f"algo.mini_batches={algo.mini_batches} must divide data.batch_size="
                f"{self.data.batch_size} so each optimizer step sees whole groups"
            )
        if learner.sync_transport == "shm" and device == "cuda":
            errors.append("learner.sync_transport=shm moves CPU tensors; on GPU use group (NCCL) or auto")
        if n_seqs < learner.num_ranks:
            errors.append(
                f"learner.num_ranks={learner.num_ranks} exceeds the {n_seqs} sequences "
                "of a batch (data.batch_size x rollout.n)"
            )
        if (
            algo.overlong_shaping
            and algo.overlong_cache is not None
            and not 0 < algo.overlong_cache < rollout.max_tokens
        ):
            errors.append(f"algo.overlong_cache={algo.overlong_cache} must be in (0, rollout.max_tokens)")

        from egsw_rl.placement import colocation_errors

        errors += colocation_errors(self, device)
        if device == "cuda":
            need = learner.num_ranks
            if learner.gpus_per_node and learner.gpus_per_node * learner.num_nodes < need:
                errors.append(
                    f"learner.num_ranks={need} is more than learner.num_nodes x "
                    f"learner.gpus_per_node = {learner.gpus_per_node * learner.num_nodes}"
                )
            if self.trainer.placement == "split":  # colocated engines use the learner ranks' GPUs
                need += rollout.num_generators * rollout.tensor_parallel_size
            if available_gpus is not None and need > available_gpus:
                errors.append(
                    f"learner.num_ranks + rollout.num_generators x rollout.tensor_parallel_size"
                    f" = {need} GPUs, but the cluster has {available_gpus}"
                )
        elif learner.gpus_per_node:
            errors.append(
                f"learner.gpus_per_node={learner.gpus_per_node} on device {device}: set it to 0 on CPU"
            )
        return errors


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype != "auto":
        return dtype
    return "bfloat16" if device == "cuda" else "float32"


def validate(cfg, *, available_gpus: int | None = None) -> None:
    """Refuse a configuration that cannot work, naming the key and what is allowed.
    Runs before any actor starts. `cfg`: the composed (structured) config, or a RunConfig."""
    run = cfg if isinstance(cfg, RunConfig) else OmegaConf.to_object(cfg)
    errors = run.errors(available_gpus)
    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))
