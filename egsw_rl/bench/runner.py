"""What the sub-benchmarks share: a preset's config and prompts as the trainer sees them, the
model a preset or a name stands for, and `Bench`, which holds one invocation's options, starts
Ray and runs the real trainer (`egsw_rl.launch.run`), each run once.

Nothing heavy is imported at module level: the peer sub-benchmark's child process (TRL, a
colocated vLLM) imports this module and must not bring Ray with it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from egsw_rl.bench.step import step_breakdown

# (warm-up, measured) trainer steps by preset: [full run, --quick]
DEFAULT_COUNTS = {"tiny_cpu": [(2, 10), (2, 6)], "smollm2_cpu": [(1, 2), (1, 2)]}
BENCH_OVERRIDES = (
    "trainer.save_every=0",
    "data.eval=[]",
    "logger.wandb.mode=disabled",
    "logger.progress_bar=false",
    "logger.plots=false",
)
# the model (a `model_dir` kind) of each preset, for the sub-benchmarks that start actors on a model
# alone (sync, learner); any other --presets name is taken as a kind or a folder itself
MODELS = {"tiny_cpu": "tiny", "smollm2_cpu": "smollm2"}


def compose(preset: str, overrides: Sequence[str] = ()):
    """The egsw_rl config of a preset (plus overrides), as `python -m egsw_rl.launch` builds it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    import egsw_rl.launch  # noqa: F401  (registers the structured schema)

    GlobalHydra.instance().clear()
    with initialize_config_module("egsw_rl.conf", version_base="1.3"):
        return hydra_compose("config", overrides=[f"conf={preset}", *overrides])


def workload(cfg, steps: int) -> dict:
    """The prompts (rendered) and golds of the first `steps` batches, in the order egsw_rl's
    trainer draws them, plus the knobs both trainers share."""
    from transformers import AutoTokenizer

    from egsw_rl.actors.generator import render_prompts
    from egsw_rl.data import PromptSampler, load_problems
    from egsw_rl.models import resolve_model_path

    problems, _ = load_problems(
        cfg.data.train,
        split=cfg.data.split,
        question_key=cfg.data.question_key,
        answer_key=cfg.data.answer_key,
        answer_format=cfg.data.answer_format,
        max_samples=cfg.data.max_samples,
        seed=cfg.trainer.seed,
    )
    sampler = PromptSampler(
        len(problems), cfg.data.batch_size, seed=cfg.trainer.seed, shuffle=cfg.data.shuffle
    )
    chosen = [problems[i] for _ in range(steps) for i in sampler.next_indices()]
    path = resolve_model_path(cfg.model.path)
    tok = AutoTokenizer.from_pretrained(cfg.model.tokenizer or path)
    prompts = render_prompts(tok, [p.question for p in chosen], cfg.rollout.prompt_template)
    return {
        "model_path": path,
        "prompts": prompts,
        "golds": [p.answer for p in chosen],
        "batch_size": int(cfg.data.batch_size),
        "G": int(cfg.rollout.n),
        "max_tokens": int(cfg.rollout.max_tokens),
        "temperature": float(cfg.rollout.temperature),
        "lr": float(cfg.learner.lr),
        "beta": float(cfg.algo.beta),
        "steps": int(steps),
        "seed": int(cfg.trainer.seed),
    }


def model_dir(kind: str) -> str:
    """A model folder by kind: tiny | medium (~25M) | large (~140M random Qwen2) | smollm2 | an HF
    folder or hub id."""
    from egsw_rl.testing import tiny_model

    if kind == "tiny":
        return str(tiny_model())
    if kind == "medium":
        return str(
            tiny_model(
                hidden_size=512,
                num_layers=8,
                num_heads=8,
                num_kv_heads=2,
                intermediate_size=1408,
                vocab_size=4096,
            )
        )
    if kind == "large":
        return str(
            tiny_model(
                hidden_size=1024,
                num_layers=12,
                num_heads=16,
                num_kv_heads=4,
                intermediate_size=2816,
                vocab_size=4096,
            )
        )
    from egsw_rl.models import resolve_model_path

    return resolve_model_path(kind)


class Bench:
    """What the sub-benchmarks of one invocation share: its options, Ray, and the real trainer's
    runs, cached, so `sync` reuses the `steps` runs and the peer comparison egsw_rl's step
    times. Each sub-benchmark is a function of it (`step.steps_bench(bench)`, ...)."""

    def __init__(
        self,
        workdir: Path,
        *,
        quick: bool,
        presets: Sequence[str],
        steps: int | None,
        warmup: int | None,
        peer_steps: int | None,
        peer_warmup: int,
        peer_timeout_s: float,
        extra: Sequence[str] = (),
        echo: Callable[[str], None] = print,
    ):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.quick = quick
        self.presets = list(presets)
        self.steps, self.warmup = steps, warmup
        self.peer_steps, self.peer_warmup, self.peer_timeout_s = peer_steps, peer_warmup, peer_timeout_s
        self.echo = echo
        self.extra = list(extra)
        self._runs: dict[tuple, dict] = {}
        self._ray_started = False

    def counts(self, preset: str) -> tuple[int, int]:
        """(warm-up, measured) trainer steps: --warmup / --steps, else by preset (a SmolLM2 step
        takes minutes on a few CPU cores)."""
        w, s = DEFAULT_COUNTS.get(preset, DEFAULT_COUNTS["tiny_cpu"])[self.quick]
        return (self.warmup if self.warmup is not None else w, self.steps if self.steps is not None else s)

    def ray(self) -> None:
        import ray

        if ray.is_initialized():
            return
        from egsw_rl.launch import worker_env

        # the workers' environment as a run of the first preset sets it (logger.level and all)
        env = {"env_vars": worker_env(compose(self.presets[0] if self.presets else "tiny_cpu"))}
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], runtime_env=env, log_to_driver=False)
        else:
            # logical slots: a run's generator (2), learner ranks and reward actor, as launch counts them,
            # plus headroom for the learner sub-benchmark's own groups
            ray.init(
                address="local",
                num_cpus=max(os.cpu_count() or 1, 8),
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                runtime_env=env,
                log_to_driver=False,
            )
            self._ray_started = True

    def close(self) -> None:
        if self._ray_started:
            import ray

            ray.shutdown()

    def trained(self, preset: str, overrides: Sequence[str] = ()) -> dict | None:
        """The trainer run `train` made of this preset and overrides, if it made one."""
        return self._runs.get((preset, tuple(overrides)))

    def train(self, preset: str, overrides: Sequence[str] = ()) -> dict:
        """Run the real trainer for warmup + steps steps; {"rows", "summary", "run_dir", ...}."""
        key = (preset, tuple(overrides))
        if key in self._runs:
            return self._runs[key]
        from egsw_rl.launch import run
        from egsw_rl.runlog import read_metrics

        warmup, steps = self.counts(preset)
        total = warmup + steps
        name = preset + "".join("_" + o.replace("=", "-").replace(".", "_") for o in overrides)
        run_dir = self.workdir / f"{name}_{time.strftime('%H%M%S')}"
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg = compose(preset, [*BENCH_OVERRIDES, f"trainer.total_steps={total}", *self.extra, *overrides])
        self.ray()
        self.echo(f"[bench] {preset} {' '.join(overrides)}: {total} steps ({warmup} warm-up) in {run_dir}")
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        run(cfg, run_dir)
        rows = read_metrics(run_dir / "metrics.jsonl")
        res = {
            "preset": preset,
            "overrides": list(overrides),
            "run_dir": str(run_dir),
            "wall_s": time.perf_counter() - t0,
            "load_avg_start": load0,
            "load_avg_end": os.getloadavg()[0],
            "rows": rows,
            "warmup": warmup,
            "summary": step_breakdown(rows, warmup),
        }
        self._runs[key] = res
        return res
