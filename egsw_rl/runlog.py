"""A run directory's records: what the trainer writes there and how it is read back.

Written during a run: metrics.jsonl (one JSON object a step), wandb, a progress bar with a summary
line a step, and PNG plots of the curves at the end (`RunLogger`). Read back by the driver on
resume, by `launch`'s sweep summary, by `egsw_rl.bench` and by the comparison tools:
`read_metrics`, the run's label from its config.yaml (`run_label`), its curves (`load_run`, `Run`)
and their plots (`plot`, also used by `egsw_rl.compare` for several runs side by side).

This module imports nothing else of egsw_rl, so every other module may import it (it was
`egsw_rl.logging`, a name that shadowed the standard library's `logging`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl rows; a torn last line (killed mid-write) is ignored."""
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value) over runs. NaNs are dropped."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


# ============================================================================ the run's config


def run_config(run_dir: Path) -> dict:
    """The run's config.yaml as a plain dict ({} when there is none or it cannot be read)."""
    cfg_file = Path(run_dir) / "config.yaml"
    if not cfg_file.is_file():
        return {}
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(OmegaConf.load(cfg_file), resolve=False) or {}
    except Exception as e:  # a hand-edited or foreign file: labels fall back to the folder name
        log.warning("could not read %s: %s", cfg_file, e)
        return {}


def config_value(cfg: dict, key: str):
    """The value at a dotted key (`algo.name`) of a plain config dict, None when absent."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def run_label(run_dir: Path, key: str = "algo.name") -> str:
    """The run's group label: the config value at `key` (default the algorithm name)."""
    value = config_value(run_config(Path(run_dir)), key)
    return str(value) if value is not None else Path(run_dir).name


# ============================================================================ curves


# (key, title, higher is better?) — "best" is only defined for the first kind.
DEFAULT_METRICS = [
    ("reward/mean", "reward", True),
    ("reward/accuracy", "accuracy", True),
    ("response_length/mean", "response length (tokens)", None),
    ("entropy/mean", "entropy (nats)", None),
    ("egsw/ess_frac", "EGSW effective sample size (fraction)", None),
]


@dataclass
class Run:
    path: Path
    name: str
    label: str
    rows: list[dict] = field(default_factory=list)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric, skipping steps that did not log it (or logged null)."""
        steps, vals = [], []
        for r in self.rows:
            v = r.get(key)
            if v is None or not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v):
                continue
            steps.append(int(r.get("step", len(steps) + 1)))
            vals.append(float(v))
        return steps, vals


def load_run(run_dir: Path, name: str, label: str) -> Run | None:
    """One run's rows in step order, or None when its metrics.jsonl has none yet.

    The trainer's periodic eval also goes to eval.jsonl, with the step-0 (before training) row.
    Rows of one step are merged (an eval row may come apart from the training row); a resumed run
    that re-logged a step overrides the earlier values."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    if not rows:
        return None
    rows = read_metrics(run_dir / "eval.jsonl") + rows
    by_step: dict[int, dict] = {}
    for j, r in enumerate(rows):
        by_step.setdefault(int(r.get("step", j + 1)), {}).update(r)
    return Run(run_dir, name, label, [by_step[s] for s in sorted(by_step)])


def metric_specs(
    runs: Sequence[Run], keys: Sequence[str] | None = None
) -> list[tuple[str, str, bool | None]]:
    """The metrics to show: `keys` if given, else the defaults plus any eval/<bench>/accuracy."""
    known = {k: (t, b) for k, t, b in DEFAULT_METRICS}
    if keys:
        out = []
        for k in keys:
            higher = True if k.endswith(("accuracy", "reward/mean")) or "pass@" in k else None
            t, b = known.get(k, (k, higher))
            out.append((k, t, b))
        return out
    specs = list(DEFAULT_METRICS)
    evals = sorted(
        {k for r in runs for row in r.rows for k in row if k.startswith("eval/") and k.endswith("/accuracy")}
    )
    specs += [(k, k.replace("/", " ", 1), True) for k in evals]
    return specs


def _smooth(vals: list[float], window: int) -> list[float]:
    if window <= 1:
        return vals
    out, acc = [], 0.0
    for i, v in enumerate(vals):
        acc += v
        if i >= window:
            acc -= vals[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot(runs: Sequence[Run], specs, out_dir: Path, smooth: int = 1) -> list[Path]:
    """One PNG per metric in out_dir: one colour per label, every run a thin line, and for a label
    with several runs their mean over common steps with a ±std band. Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    labels = list(dict.fromkeys(r.label for r in runs))
    colors = {lab: plt.get_cmap("tab10")(i % 10) for i, lab in enumerate(labels)}
    paths = []
    for key, title, _ in specs:
        series = [(r, *r.series(key)) for r in runs]
        series = [(r, s, v) for r, s, v in series if v]
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.8))
        for lab in labels:
            group = [(r, s, _smooth(v, smooth)) for r, s, v in series if r.label == lab]
            if not group:
                continue
            many = len(group) > 1
            for r, s, v in group:
                ax.plot(
                    s,
                    v,
                    color=colors[lab],
                    lw=0.8 if many else 1.6,
                    alpha=0.35 if many else 1.0,
                    label=None if many else f"{lab} ({r.name})" if len(labels) < len(runs) else lab,
                )
            if many:
                common = sorted(set.intersection(*[set(s) for _, s, _ in group]))
                if common:
                    at = [dict(zip(s, v)) for _, s, v in group]
                    stats = [mean_std([a[t] for a in at]) for t in common]
                    m = [x[0] for x in stats]
                    sd = [x[1] for x in stats]
                    ax.plot(common, m, color=colors[lab], lw=2.0, label=f"{lab} (mean of {len(group)})")
                    ax.fill_between(
                        common,
                        [a - b for a, b in zip(m, sd)],
                        [a + b for a, b in zip(m, sd)],
                        color=colors[lab],
                        alpha=0.15,
                        lw=0,
                    )
        ax.set_xlabel("step")
        ax.set_title(title + (f" (moving average {smooth})" if smooth > 1 else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / (key.replace("/", "_") + ".png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_run(run_dir: Path) -> list[Path]:
    """The run's curves as PNGs in <run_dir>/plots (what `egsw_rl.compare` draws, for one run):
    reward, accuracy, response length, entropy, EGSW ESS, and eval accuracies when logged."""
    run_dir = Path(run_dir)
    run = load_run(run_dir, run_dir.resolve().name, run_label(run_dir))
    if run is None:  # no rows yet: nothing to draw
        return []
    paths = plot([run], metric_specs([run]), run_dir / "plots")
    dynamics = plot_entropy_dynamics(run, run_dir / "plots")
    return paths + ([dynamics] if dynamics else [])


def plot_entropy_dynamics(run: Run, out_dir: Path) -> Path | None:
    """trainer.entropy_dynamics: the predicted (first-order) against the measured entropy change
    of every step, and both over the steps, with their correlation across steps in the title."""
    steps, predicted = run.series("entropy_dynamics/predicted_delta")
    at = dict(zip(*run.series("entropy_dynamics/measured_delta")))
    pairs = [(s, p, at[s]) for s, p in zip(steps, predicted) if s in at]
    if len(pairs) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    s, p, m = (np.array(x, dtype=float) for x in zip(*pairs))
    corr = float(np.corrcoef(p, m)[0, 1]) if p.std() > 0 and m.std() > 0 else float("nan")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.scatter(p, m, c=s, cmap="viridis", s=14)
    left.axhline(0, color="grey", lw=0.5)
    left.axvline(0, color="grey", lw=0.5)
    left.set_xlabel("predicted entropy change (first order)")
    left.set_ylabel("measured entropy change")
    left.set_title(f"{run.label}: per step, correlation {corr:.2f}")
    right.plot(s, m, label="measured", lw=1.4)
    scale = float(np.abs(m).max() / np.abs(p).max()) if np.abs(p).max() > 0 else 1.0
    right.plot(s, p * scale, label=f"predicted x {scale:.3g}", lw=1.0, alpha=0.8)
    right.axhline(0, color="grey", lw=0.5)
    right.set_xlabel("step")
    right.legend()
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "entropy_dynamics.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ============================================================================ writing


class RunLogger:
    def __init__(
        self,
        run_dir: Path,
        *,
        total_steps: int,
        wandb_cfg=None,
        config: dict | None = None,
        progress_bar: bool = True,
        start_step: int = 0,
    ):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self.total_steps = total_steps
        self._wandb = None
        if wandb_cfg is not None and wandb_cfg.mode != "disabled":
            import wandb

            self._wandb = wandb.init(
                project=wandb_cfg.project,
                entity=wandb_cfg.entity,
                name=wandb_cfg.name,
                group=wandb_cfg.group,
                tags=list(wandb_cfg.tags),
                mode=wandb_cfg.mode,
                dir=str(self.run_dir),
                config=config,
                resume="allow",
                id=self._wandb_id(),
                settings=wandb.Settings(silent=True),
            )
        self._bar = None
        if progress_bar:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_steps,
                initial=start_step,
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
                desc="egsw_rl",
            )

    def _wandb_id(self) -> str:
        # One wandb run per run directory, so a resumed run continues the same curves.
        id_file = self.run_dir / "wandb_id.txt"
        if id_file.exists():
            return id_file.read_text().strip()
        import uuid

        run_id = uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        return run_id

    def log(self, metrics: dict[str, Any]) -> None:
        row = {k: _plain(v) for k, v in metrics.items()}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        if self._wandb is not None:
            self._wandb.log(row, step=int(row["step"]))
        line = summary_line(row, self.total_steps)
        if self._bar is not None:
            self._bar.set_postfix_str(_postfix(row), refresh=False)
            self._bar.update(1)
            self._bar.write(line)
        else:
            print(line, flush=True)

    def close(self, plots: bool = True) -> None:
        if self._bar is not None:
            self._bar.close()
        if plots:
            paths = plot_run(self.run_dir)
            if self._wandb is not None and paths:
                import wandb

                self._wandb.log({f"plots/{p.stem}": wandb.Image(str(p)) for p in paths})
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _postfix(row: dict) -> str:
    parts = [
        f"reward={row.get('reward/mean', float('nan')):.3f}",
        f"acc={row.get('reward/accuracy', float('nan')):.3f}",
    ]
    if row.get("perf/tokens_per_s") is not None:
        parts.append(f"tok/s={row['perf/tokens_per_s']:.0f}")
    return " ".join(parts)


def summary_line(row: dict, total_steps: int) -> str:
    def f(key, fmt="{:.3f}"):
        v = row.get(key)
        return "-" if v is None else fmt.format(v)

    return (
        f"step {row['step']}/{total_steps} | reward {f('reward/mean')} acc {f('reward/accuracy')}"
        f" | len {f('response_length/mean', '{:.1f}')} | H {f('entropy/mean')}"
        f" | ess {f('egsw/ess_frac', '{:.2f}')} | loss {f('loss', '{:.4f}')}"
        f" | gnorm {f('grad_norm', '{:.3f}')} | vLLM gap {f('rollout/logprob_diff_max', '{:.1e}')}"
        f" | {f('timing/step_s', '{:.1f}')} s"
    )


class Timer:
    """with timer("generate"): ... accumulates seconds into timer.times["timing/generate_s"];
    timer.add("generate", s) adds seconds measured elsewhere (a background thread, an actor).
    Phases named at construction are reported even when they did not run (0 s)."""

    def __init__(self, *always: str):
        self.times: dict[str, float] = {f"timing/{name}_s": 0.0 for name in always}

    def add(self, name: str, seconds: float) -> None:
        key = f"timing/{name}_s"
        self.times[key] = self.times.get(key, 0.0) + float(seconds)

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)
