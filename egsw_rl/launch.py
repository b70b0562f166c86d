"""`python -m egsw_rl.launch [conf=PRESET] [key=value ...]`: compose the config with Hydra, refuse
a bad one, connect to Ray (the cluster when RAY_ADDRESS is set or under `ray job submit`, else a
local Ray on loopback), and run the trainer. Nothing else lives here."""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from egsw_rl.checkpoint import CheckpointError
from egsw_rl.config import ConfigError, RunConfig, resolve_device, validate
from egsw_rl.data import DataError
from egsw_rl.models import ModelNotFoundError
from egsw_rl.placement import PlacementError
from egsw_rl.prompts import PromptError

ConfigStore.instance().store(name="run_schema", node=RunConfig)
log = logging.getLogger("egsw_rl")


def worker_env(cfg) -> dict:
    from egsw_rl.actors.vllm_logs import LEVEL_ENV

    env = {"TOKENIZERS_PARALLELISM": "false", LEVEL_ENV: cfg.logger.level}
    for key in (
        "EGSW_RL_CACHE",
        "EGSW_RL_DATA",
        "WANDB_MODE",
        "HF_HUB_OFFLINE",
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_ENDPOINT",
    ):
        if os.environ.get(key):
            env[key] = os.environ[key]
    # Under `ray job submit` the job's runtime env already reaches every actor, and Ray refuses a
    # ray.init that names one of its variables again: add only what the job did not set.
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    taken = set((job.get("runtime_env") or {}).get("env_vars") or {})
    return {k: v for k, v in env.items() if k not in taken}


def connect_ray(cfg, device: str):
    """Join the cluster the job was submitted to, or start a private local Ray on 127.0.0.1.
    Locally the logical CPU count is raised to what the actors ask for: on a 2-core laptop the
    generator, reward actor and learner ranks take turns rather than refusing to schedule."""
    import ray

    if ray.is_initialized():
        return False
    env = {"env_vars": worker_env(cfg)}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env=env, log_to_driver=True)
        return False
    from egsw_rl.placement import local_cpus, make_plan

    ray.init(
        address="local",
        num_cpus=local_cpus(make_plan(cfg, device)),
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env=env,
        log_to_driver=True,
    )
    return True


def check_run_dir(run_dir: Path) -> None:
    """Under `ray job submit` the driver runs in Ray's temporary copy of --working-dir, which is
    deleted with the job: a run directory inside it would lose the checkpoints."""
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:  # set by Ray for a job's driver
        return
    where = str(Path(run_dir).resolve())
    if "runtime_resources" in where or "working_dir_files" in where:
        raise ConfigError(
            f"hydra.run.dir resolves to {where}, inside Ray's temporary copy of the job's "
            "working directory, which is deleted when the job ends: set hydra.run.dir (and "
            "hydra.sweep.dir for -m) to an absolute path on persistent storage every node "
            "mounts, e.g. hydra.run.dir=/shared/runs/qwen7b"
        )


def prepare_rehearsal(cfg) -> None:
    """`rehearsal=cpu`: the tiny Qwen2 goes into an offline Hugging Face cache under
    rehearsal.repo_id (the rehearsal's model.path), and this process and every actor (through
    worker_env) are pointed at that cache, so the run loads its model by hub id as the preset
    does on a cluster. Runs before transformers is imported: huggingface_hub reads these once."""
    r = cfg.rehearsal
    if r.name == "none":
        return
    from egsw_rl import testing

    hf_home = testing.rehearsal_hf_home(r.hf_home)
    os.environ.update(HF_HOME=str(hf_home), HF_HUB_CACHE=str(hf_home / "hub"), HF_HUB_OFFLINE="1")
    snapshot = testing.populate_hf_cache(testing.tiny_model(), r.repo_id, hf_home)
    swapped = [
        f"{k}={OmegaConf.select(cfg, k)}" for k in testing.rehearsal_keys(r.name) if k != "rehearsal.name"
    ]
    print(
        f"egsw_rl: this is a rehearsal (rehearsal={r.name}): the preset with only these keys replaced: "
        f"{', '.join(swapped)}; {r.repo_id} is a tiny Qwen2 in the offline Hugging Face cache {hf_home} "
        f"(HF_HUB_OFFLINE=1, snapshot {snapshot})",
        flush=True,
    )


def run(cfg: DictConfig, run_dir: Path) -> dict:
    from egsw_rl.placement import assign, free_resources, make_plan
    from egsw_rl.preflight import cheap_checks

    device = resolve_device(cfg.trainer.device)
    prepare_rehearsal(cfg)
    # imported after the rehearsal's HF_HOME is set: the trainer's imports load huggingface_hub,
    # which reads it once
    from egsw_rl.trainer import Trainer

    cheap_checks(cfg)  # the config, the model's context and chat template: before Ray starts
    check_run_dir(run_dir)
    started_local = connect_ray(cfg, device)
    try:
        if device == "cuda":
            import ray

            validate(cfg, available_gpus=int(ray.cluster_resources().get("GPU", 0)))
        # every actor's resources against what the cluster's nodes offer: seconds, not a
        # placement group that waits forever
        plan = make_plan(cfg, device)
        nodes = free_resources()
        assign(plan, nodes)  # the trainer reserves it and logs where everything went
        if len(nodes) > 1:  # learner ranks write checkpoints on their nodes, the driver reads them
            from egsw_rl.preflight import run_dir_check

            shared = run_dir_check(cfg, run_dir)
            if not shared.ok:
                raise ConfigError(f"{shared.detail}: set {shared.fix}")
    except BaseException:
        if started_local:
            import ray

            ray.shutdown()
        raise
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    trainer = Trainer(cfg, run_dir)
    try:
        return trainer.fit()
    except Exception as e:
        import ray.exceptions

        if isinstance(
            e,
            (
                ray.exceptions.RayActorError,
                ray.exceptions.ActorDiedError,
                ray.exceptions.WorkerCrashedError,
                ray.exceptions.NodeDiedError,
            ),
        ):
            from egsw_rl import checkpoint

            last = checkpoint.latest(run_dir)
            print(
                f"egsw_rl: an actor died at step {trainer.step} ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}). "
                + (
                    f"The run's checkpoints are kept; the latest complete one is {last}. Continue "
                    f"with: python -m egsw_rl.launch <same overrides> hydra.run.dir={run_dir} "
                    "resume=auto"
                    if last
                    else "No checkpoint had been written yet."
                ),
                file=sys.stderr,
                flush=True,
            )
        raise
    finally:
        trainer.shutdown()
        if started_local:
            import ray

            ray.shutdown()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if cfg.logger.level == "debug":  # Hydra has configured the root logger already
        logging.getLogger().setLevel(logging.DEBUG)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    preset = HydraConfig.get().runtime.choices.get("conf")
    log.info("run directory %s (preset %s)", run_dir, preset)
    try:
        last = run(cfg, run_dir)
    except (
        ConfigError,
        DataError,
        CheckpointError,
        PromptError,
        ModelNotFoundError,
        PlacementError,
    ) as e:  # the user's to fix: no traceback
        print(f"egsw_rl: {e}", file=sys.stderr)
        sys.exit(2)
    (run_dir / "final_metrics.json").write_text(json.dumps(last, indent=1, default=str))
    return last.get("reward/mean")


class SweepSummary(Callback):
    """After a multirun, one table over its runs: the overrides and the final / best metrics."""

    KEYS = ("reward/mean", "reward/accuracy", "response_length/mean", "entropy/mean", "egsw/ess_frac")

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        write_sweep_summary(Path(config.hydra.sweep.dir))


def write_sweep_summary(sweep_dir: Path) -> Path | None:
    from egsw_rl.runlog import read_metrics

    rows = []
    for run in sorted(p for p in sweep_dir.iterdir() if (p / "metrics.jsonl").exists()):
        metrics = read_metrics(run / "metrics.jsonl")
        overrides_file = run / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.load(overrides_file) if overrides_file.exists() else []
        row = {"run": run.name, "overrides": " ".join(overrides), "steps": len(metrics)}
        for key in SweepSummary.KEYS:
            values = [m[key] for m in metrics if m.get(key) is not None]
            row[f"final {key}"] = values[-1] if values else None
            row[f"best {key}"] = max(values) if values else None
        rows.append(row)
    if not rows:
        return None
    with (sweep_dir / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cols = list(rows[0])

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))

    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    (sweep_dir / "summary.md").write_text("\n".join(md) + "\n")
    print((sweep_dir / "summary.md").read_text())
    return sweep_dir / "summary.md"


if __name__ == "__main__":
    main()
