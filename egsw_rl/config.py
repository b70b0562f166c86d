"""The typed schema of every run, and the checks that refuse a bad one before any actor starts.

Hydra composes YAML from `egsw_rl/conf/` on top of these dataclasses (registered as structured
configs), so an unknown key or a wrong type fails at composition with the key's full name.
`validate(cfg)` adds the cross-key rules (ClipV needs the learner's entropy, G >= 2, ...).
Each key has one home: sampling temperature is `rollout.temperature`, EGSW's P is
`algo.temperature`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from egsw_rl.rewards.types import DEFAULT_TIMEOUT_S


class ConfigError(ValueError):
    """A run configuration that cannot work; the message names the key."""


@dataclass
class ModelConfig:
    # An HF model folder or hub name; "tiny" builds the offline random test model on the spot.
    path: str = "tiny"
    tokenizer: Optional[str] = None
    # auto = bfloat16 on GPU, float32 on CPU (vLLM CPU and gloo training are fp32 here).
    dtype: str = "auto"
    trust_remote_code: bool = False


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
    logprobs: int = 20  # top-k per token for the entropy estimate (<= vLLM's max_logprobs)
    entropy_estimator: str = "lower_bound"  # lower_bound | renorm | upper_bound
    # qwen_math | qwen_math_user | chat | a plain template with {question} (egsw_rl/prompts.py);
    # evaluation renders with the same function
    prompt_template: str = "qwen_math"
    # A prompt longer than max_model_len - max_tokens: drop (training rows left out at load time,
    # eval problems scored overlong_prompt) | truncate_left | error (refused before the run)
    overlong_prompt: str = "drop"


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


@dataclass
class AlgoConfig:
    name: str = "egsw"
    advantage: str = "grpo"  # grpo | dr_grpo | batch_std | gtpo | grpo_s
    weighting: str = "egsw"  # egsw | none
    token_mask: str = "none"  # none | clipb | clipv | high_entropy
    # EGSW (arXiv 2503.22456; docs/algorithms.md, section 3); temperature is EGSW's P, not the
    # sampling temperature.
    alpha: float = 0.2
    temperature: float = 1.0
    granularity: str = "step"  # step | trajectory
    normalize_over: str = "batch"  # batch | group
    entropy_norm: str = "log_vocab"  # log_vocab | none
    trajectory_entropy: str = "mean"  # mean | sum
    rescale: bool = True
    entropy_source: str = "rollout"  # rollout (vLLM top-k estimate) | learner (exact)
    # The shared update (docs/algorithms.md, section 1).
    clip_low: float = 0.2
    clip_high: float = 0.2
    beta: float = 0.0
    agg: str = "seq_mean_token_mean"  # seq_mean_token_mean | token_mean | seq_mean_token_sum_norm
    norm_constant: Optional[float] = None  # Dr.GRPO's constant; default rollout.max_tokens
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
    mu: Optional[float] = None  # default 2.5 for clipb, 8.5 for clipv
    max_frac: float = 1e-4
    rho: float = 0.2
    # DAPO (arXiv 2503.14476; docs/algorithms.md, section 8)
    dynamic_sampling: bool = False
    max_gen_batches: int = 10
    overlong_shaping: bool = False
    # L_cache; L_max is rollout.max_tokens. None = 20% of it (DAPO: 4096 of 20480).
    overlong_cache: Optional[int] = None
    # Rollout importance correction: re-weight each token's policy-gradient term by
    # pi_learner_old / pi_vllm. none | tis (min(ratio, cap)) | mis (0 beyond the cap).
    rollout_correction: str = "none"
    rollout_correction_cap: float = 2.0


@dataclass
class DataConfig:
    # A local .jsonl / .json / .parquet path, or a hub dataset name; "arithmetic" generates
    # two-operand word problems from a seed (the embedded default, no files needed).
    train: str = "arithmetic"
    split: str = "train"
    question_key: str = "question"
    answer_key: str = "answer"
    answer_format: str = "auto"  # auto | latex | gsm8k | aime | choice
    max_samples: Optional[int] = None
    batch_size: int = 8  # B prompts per step; B x G sequences
    shuffle: bool = True
    eval: list[str] = field(default_factory=list)  # benchmark names or paths for periodic eval
    eval_samples: int = 32


@dataclass
class RewardConfig:
    scheme: str = "binary"  # binary | signed | format
    # grading processes per reward actor: a number, or auto (from the CPUs Ray reports on the
    # actor's node minus what the run's other bundles reserve there: actors/reward.auto_workers)
    workers: Any = 2
    timeout_s: float = DEFAULT_TIMEOUT_S
    num_actors: int = 1  # reward actors; each scores a contiguous slice of every batch
    correct_score: float = 1.0
    wrong_boxed_score: float = 0.0
    no_box_score: float = 0.0
    format_penalty: float = 0.0
    # boxed_then_latex: the last \boxed{}, else an anchored answer ("#### 42", "answer: 42");
    # boxed: only a box; boxed_then_any: also the last LaTeX span or number anywhere.
    extraction: str = "boxed_then_latex"
    # last-number fallback when no \boxed{} is written (small models rarely box unprompted)
    fallback_last_number: bool = False
    task: str = "math"  # math | choice (multiple choice graded by letter, GPQA)
    answer_format: str = "auto"  # how golds are written: auto | latex | gsm8k | aime | choice
    max_answer_chars: int = 1000  # a longer boxed answer is scored wrong without parsing


@dataclass
class WandbConfig:
    mode: str = "offline"  # online | offline | disabled
    project: str = "egsw_rl"
    entity: Optional[str] = None
    name: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    progress_bar: bool = True
    plots: bool = True
    # info: a progress line and a summary a step, vLLM's known-benign reload lines filtered;
    # debug: everything, vLLM at DEBUG too
    level: str = "info"


@dataclass
class TrainerConfig:
    total_steps: int = 20
    save_every: int = 10
    keep_checkpoints: int = 2
    eval_every: int = 0  # 0 = never during training
    overlap: bool = False  # one-step off-policy: generate batch k+1 while training on batch k
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    # split: learner ranks and vLLM engines on their own devices; colocated: every device carries a
    # learner rank and an engine worker, which take turns (egsw_rl/placement.py, README "Learners")
    placement: str = "split"


@dataclass
class RehearsalConfig:
    # none | cpu. `rehearsal=cpu` (egsw_rl/conf/rehearsal/cpu.yaml) runs a preset on CPU with only
    # its hardware and size keys replaced; launch places the tiny Qwen2 in an offline Hugging Face
    # cache under repo_id, which the rehearsal's model.path names, so the model loads by hub id.
    name: str = "none"
    repo_id: str = "egsw-rl-rehearsal/tiny-qwen2"
    # HF_HOME of that cache; None: rehearsal/hf under $EGSW_RL_CACHE (default ~/.cache/egsw_rl).
    # Several nodes: a path every node mounts.
    hf_home: Optional[str] = None


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


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype != "auto":
        return dtype
    return "bfloat16" if device == "cuda" else "float32"


_CHOICES = {
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "rollout.entropy_estimator": ("lower_bound", "renorm", "upper_bound"),
    "rollout.overlong_prompt": ("drop", "truncate_left", "error"),
    "learner.lr_schedule": ("constant", "cosine"),
    "learner.sync_transport": ("auto", "shm", "group"),
    "algo.advantage": ("grpo", "dr_grpo", "batch_std", "gtpo", "grpo_s"),
    "algo.weighting": ("egsw", "none"),
    "algo.token_mask": ("none", "clipb", "clipv", "high_entropy"),
    "algo.granularity": ("step", "trajectory"),
    "algo.normalize_over": ("batch", "group"),
    "algo.entropy_norm": ("log_vocab", "none"),
    "algo.trajectory_entropy": ("mean", "sum"),
    "algo.entropy_source": ("rollout", "learner"),
    "algo.agg": ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"),
    "algo.zscore": ("separate", "joint", "scale_only"),
    "algo.rollout_correction": ("none", "tis", "mis"),
    "data.answer_format": ("auto", "latex", "gsm8k", "aime", "choice"),
    "logger.wandb.mode": ("online", "offline", "disabled"),
    "logger.level": ("info", "debug"),
    "trainer.device": ("auto", "cpu", "cuda"),
    "trainer.placement": ("split", "colocated"),
    "rehearsal.name": ("none", "cpu"),
}


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def validate(cfg, *, available_gpus: int | None = None) -> None:
    """Refuse a configuration that cannot work, naming the key and what is allowed.
    Runs before any actor starts. `cfg` is the composed (structured) config."""
    errors: list[str] = []

    for key, allowed in _CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            errors.append(f"{key}={value!r}: allowed values are {', '.join(map(str, allowed))}")

    def positive(key, strict=True):
        value = _get(cfg, key)
        if value is None or (value <= 0 if strict else value < 0):
            errors.append(f"{key}={value!r}: must be {'> 0' if strict else '>= 0'}")

    for key in ("rollout.num_generators", "rollout.tensor_parallel_size", "rollout.max_tokens",
                "rollout.max_model_len", "learner.num_ranks", "learner.num_nodes",
                "learner.micro_batch_tokens", "learner.logprob_chunk_tokens", "learner.lr",
                "learner.sync_bucket_mb", "algo.ppo_epochs", "algo.mini_batches",
                "algo.max_gen_batches", "data.batch_size", "trainer.total_steps",
                "reward.timeout_s", "reward.num_actors"):
        positive(key)
    workers = cfg.reward.workers
    if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        errors.append(f"reward.workers={workers!r}: must be an integer >= 1 or auto")
    for key in ("algo.alpha", "algo.beta", "algo.clip_low", "algo.clip_high", "algo.entropy_coef",
                "trainer.save_every", "trainer.eval_every", "rollout.logprobs"):
        positive(key, strict=False)
    if cfg.algo.temperature <= 0:
        errors.append(f"algo.temperature={cfg.algo.temperature}: EGSW's P must be > 0")
    if cfg.rollout.temperature <= 0:
        errors.append(f"rollout.temperature={cfg.rollout.temperature}: sampling temperature must "
                      "be > 0 (greedy sampling gives no group variance to learn from)")

    if cfg.rollout.n < 2:
        errors.append(f"rollout.n={cfg.rollout.n}: GRPO-family advantages need a group of G >= 2 "
                      "completions per prompt")
    if cfg.algo.token_mask == "clipv" and cfg.algo.entropy_source != "learner":
        errors.append("algo.token_mask=clipv needs the full-vocabulary N from the learner: set "
                      "algo.entropy_source=learner (the rollout's top-k estimate cannot provide it)")
    if cfg.rollout.logprobs < 1 and cfg.algo.entropy_source == "rollout" and (
            cfg.algo.weighting == "egsw" or cfg.algo.advantage in ("gtpo", "grpo_s")
            or cfg.algo.token_mask in ("clipb", "high_entropy")):
        errors.append("rollout.logprobs=0 gives no entropy estimate; set rollout.logprobs >= 1 "
                      "or algo.entropy_source=learner")
    if cfg.rollout.top_p < 1.0 or cfg.rollout.top_k not in (-1, 0):
        # vLLM's top-k logprobs then describe the truncated distribution, and the learner's
        # entropy (the bonus differentiates it) the untruncated one: neither is the other's.
        users = [name for name, used in (
            ("algo.weighting=egsw", cfg.algo.weighting == "egsw"),
            (f"algo.advantage={cfg.algo.advantage}", cfg.algo.advantage in ("gtpo", "grpo_s")),
            (f"algo.token_mask={cfg.algo.token_mask}", cfg.algo.token_mask in ("clipb", "high_entropy")),
        ) if used and cfg.algo.entropy_source == "rollout"]
        if cfg.algo.entropy_coef > 0:
            users.append(f"algo.entropy_coef={cfg.algo.entropy_coef}")
        if users:
            errors.append(f"rollout.top_p={cfg.rollout.top_p} / rollout.top_k={cfg.rollout.top_k} "
                          f"truncate the sampling distribution, but {', '.join(users)} use(s) its "
                          "entropy: sample with top_p=1, top_k=-1 (or use "
                          "algo.entropy_source=learner for the shaping)")
    if cfg.algo.rollout_correction_cap < 1:
        errors.append(f"algo.rollout_correction_cap={cfg.algo.rollout_correction_cap}: must be >= 1 "
                      "(a cap below 1 cuts tokens the two policies agree on)")
    if cfg.rollout.max_tokens >= cfg.rollout.max_model_len:
        errors.append(f"rollout.max_tokens={cfg.rollout.max_tokens} leaves no room for the prompt "
                      f"in rollout.max_model_len={cfg.rollout.max_model_len}")
    n_seqs = cfg.data.batch_size * cfg.rollout.n
    if n_seqs % cfg.algo.mini_batches:
        errors.append(f"algo.mini_batches={cfg.algo.mini_batches} must divide data.batch_size x "
                      f"rollout.n = {n_seqs} sequences")
    elif cfg.data.batch_size % cfg.algo.mini_batches:
        errors.append(f"algo.mini_batches={cfg.algo.mini_batches} must divide data.batch_size="
                      f"{cfg.data.batch_size} so each optimizer step sees whole groups")
    if cfg.learner.sync_transport == "shm" and resolve_device(cfg.trainer.device) == "cuda":
        errors.append("learner.sync_transport=shm moves CPU tensors; on GPU use group (NCCL) or auto")
    if n_seqs < cfg.learner.num_ranks:
        errors.append(f"learner.num_ranks={cfg.learner.num_ranks} exceeds the {n_seqs} sequences "
                      "of a batch (data.batch_size x rollout.n)")
    if (cfg.algo.overlong_shaping and cfg.algo.overlong_cache is not None
            and not 0 < cfg.algo.overlong_cache < cfg.rollout.max_tokens):
        errors.append(f"algo.overlong_cache={cfg.algo.overlong_cache} must be in (0, rollout.max_tokens)")

    device = resolve_device(cfg.trainer.device)
    from egsw_rl.placement import colocation_errors

    errors += colocation_errors(cfg, device)
    if device == "cuda":
        need = cfg.learner.num_ranks
        if cfg.learner.gpus_per_node and cfg.learner.gpus_per_node * cfg.learner.num_nodes < need:
            errors.append(f"learner.num_ranks={need} is more than learner.num_nodes x "
                          f"learner.gpus_per_node = {cfg.learner.gpus_per_node * cfg.learner.num_nodes}")
        if cfg.trainer.placement == "split":  # colocated engines use the learner ranks' GPUs
            need += cfg.rollout.num_generators * cfg.rollout.tensor_parallel_size
        if available_gpus is not None and need > available_gpus:
            errors.append(f"learner.num_ranks + rollout.num_generators x rollout.tensor_parallel_size"
                          f" = {need} GPUs, but the cluster has {available_gpus}")
    elif cfg.learner.gpus_per_node:
        errors.append(f"learner.gpus_per_node={cfg.learner.gpus_per_node} on device {device}: "
                      "set it to 0 on CPU")

    # The reward options are checked where they are defined (one list of allowed values).
    from egsw_rl.rewards.types import RewardOptions

    options = {k: v for k, v in cfg.reward.items() if k not in ("workers", "timeout_s", "num_actors")}
    try:
        RewardOptions.build(**options)
    except ValueError as e:
        errors.append(str(e))

    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))
