"""Where a run's numbers go: metrics.jsonl (one JSON object a step), wandb, a progress bar with a
summary line a step, and PNG plots at the end."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional


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


class RunLogger:
    def __init__(self, run_dir: Path, *, total_steps: int, wandb_cfg=None, config: Optional[dict] = None,
                 progress_bar: bool = True, start_step: int = 0):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self.total_steps = total_steps
        self._wandb = None
        if wandb_cfg is not None and wandb_cfg.mode != "disabled":
            import wandb

            self._wandb = wandb.init(
                project=wandb_cfg.project, entity=wandb_cfg.entity, name=wandb_cfg.name,
                group=wandb_cfg.group, tags=list(wandb_cfg.tags), mode=wandb_cfg.mode,
                dir=str(self.run_dir), config=config, resume="allow",
                id=self._wandb_id(), settings=wandb.Settings(silent=True),
            )
        self._bar = None
        if progress_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                             file=sys.stderr, desc="egsw_rl")

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
    parts = [f"reward={row.get('reward/mean', float('nan')):.3f}",
             f"acc={row.get('reward/accuracy', float('nan')):.3f}"]
    if row.get("perf/tokens_per_s") is not None:
        parts.append(f"tok/s={row['perf/tokens_per_s']:.0f}")
    return " ".join(parts)


def summary_line(row: dict, total_steps: int) -> str:
    def f(key, fmt="{:.3f}"):
        v = row.get(key)
        return "-" if v is None else fmt.format(v)

    return (f"step {row['step']}/{total_steps} | reward {f('reward/mean')} acc {f('reward/accuracy')}"
            f" | len {f('response_length/mean', '{:.1f}')} | H {f('entropy/mean')}"
            f" | ess {f('egsw/ess_frac', '{:.2f}')} | loss {f('loss', '{:.4f}')}"
            f" | gnorm {f('grad_norm', '{:.3f}')} | vLLM gap {f('rollout/logprob_diff_max', '{:.1e}')}"
            f" | {f('timing/step_s', '{:.1f}')} s")


def plot_run(run_dir: Path) -> list[Path]:
    """The run's curves as PNGs in <run_dir>/plots (the comparison tool's plots for one run):
    reward, accuracy, response length, entropy, EGSW ESS, and eval accuracies when logged."""
    from egsw_rl.compare import CompareError, load_runs, metric_specs, plot

    try:
        runs = load_runs([str(run_dir)])
    except CompareError:  # no rows yet: nothing to draw
        return []
    return plot(runs, metric_specs(runs), Path(run_dir) / "plots")


class Timer:
    """with timer("generate"): ... accumulates seconds into timer.times["timing/generate_s"]."""

    def __init__(self):
        self.times: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Span:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                key = f"timing/{name}_s"
                timer.times[key] = timer.times.get(key, 0.0) + time.perf_counter() - self.t0

        return _Span()
