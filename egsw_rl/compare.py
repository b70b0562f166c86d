"""Training curves of several runs side by side: `python -m egsw_rl.compare`.

    python -m egsw_rl.compare outputs/grpo_seed0 outputs/grpo_seed1 outputs/egsw_seed0 ... --out cmp/
    python -m egsw_rl.compare multirun/2025-01-01/12-00-00          # every run of a sweep
    python -m egsw_rl.compare runA runB --labels grpo,egsw --metrics reward/mean,egsw/ess_frac

Each run directory's `metrics.jsonl` (one JSON object per step) is read with
`egsw_rl.logging.read_metrics`, together with `eval.jsonl` (the trainer's periodic evaluation,
including the step-0 row before training) when there is one. A directory without one is searched (three levels deep) for run
directories, so a Hydra multirun folder can be given as is.

Runs are grouped by label: `--labels` (one per run), else the value of `--label-key` in the
run's `config.yaml` (default `algo.name`), else the directory name. Outputs in `--out`
(default ./comparison):

- one PNG per metric (reward, accuracy, response length, entropy, plus periodic-eval accuracies
  `eval/<benchmark>/accuracy` when the runs logged them): one colour per label, every run a thin
  line, and for a label with several runs their mean over common steps with a ±std band;
- compare.md / compare.json: final and best values per run, and per label mean ± sample std
  over its runs (the table is also printed).

"final" is the mean of the last `--final-window` logged values (default 1: the last value);
"best" is the maximum, for metrics where higher is better (reward, accuracy).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from egsw_rl.eval import mean_std, run_label

# (key, title, higher is better?) — "best" is only defined for the first kind.
DEFAULT_METRICS = [
    ("reward/mean", "reward", True),
    ("reward/accuracy", "accuracy", True),
    ("response_length/mean", "response length (tokens)", None),
    ("entropy/mean", "entropy (nats)", None),
    ("egsw/ess_frac", "EGSW effective sample size (fraction)", None),
]
SHORT = {"reward/mean": "reward", "reward/accuracy": "accuracy", "response_length/mean": "length",
         "entropy/mean": "entropy"}


class CompareError(ValueError):
    pass


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


def find_runs(paths: Sequence[str], depth: int = 3) -> list[Path]:
    """Run directories (holding metrics.jsonl) among `paths`, expanding sweep folders."""
    found: list[Path] = []
    for item in paths:
        p = Path(item).expanduser()
        if not p.exists():
            raise CompareError(f"{item}: no such directory")
        if (p / "metrics.jsonl").is_file():
            found.append(p)
            continue
        if p.is_file() and p.name == "metrics.jsonl":
            found.append(p.parent)
            continue
        nested = sorted({m.parent for d in range(1, depth + 1) for m in p.glob("/".join(["*"] * d) + "/metrics.jsonl")})
        if not nested:
            raise CompareError(f"{item}: no metrics.jsonl in it or in its subfolders (is it a run directory?)")
        found += nested
    seen, out = set(), []
    for p in found:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            out.append(p)
    return out


def _names(paths: Sequence[Path]) -> list[str]:
    """Short distinct names: the folder name, with parents added while two runs share it."""
    for depth in range(1, 6):
        names = ["/".join(p.resolve().parts[-depth:]) for p in paths]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def load_runs(paths: Sequence[str], *, labels: Optional[Sequence[str]] = None,
              label_key: str = "algo.name") -> list[Run]:
    from egsw_rl.logging import read_metrics

    dirs = find_runs(paths)
    if labels is not None and len(labels) != len(dirs):
        raise CompareError(f"--labels gives {len(labels)} labels for {len(dirs)} runs "
                           f"({', '.join(str(d) for d in dirs)})")
    runs = []
    for i, (d, name) in enumerate(zip(dirs, _names(dirs))):
        rows = read_metrics(d / "metrics.jsonl")
        if not rows:
            raise CompareError(f"{d}/metrics.jsonl has no rows")
        # The trainer's periodic eval also goes to eval.jsonl, with the step-0 (before training) row.
        rows = read_metrics(d / "eval.jsonl") + rows
        # Rows of one step are merged (an eval row may come apart from the training row); a
        # resumed run that re-logged a step overrides the earlier values. Then in step order.
        by_step: dict[int, dict] = {}
        for j, r in enumerate(rows):
            by_step.setdefault(int(r.get("step", j + 1)), {}).update(r)
        rows = [by_step[s] for s in sorted(by_step)]
        runs.append(Run(d, name, labels[i] if labels is not None else run_label(d, label_key), rows))
    return runs


def metric_specs(runs: Sequence[Run], keys: Optional[Sequence[str]] = None) -> list[tuple[str, str, Optional[bool]]]:
    """The metrics to show: `keys` if given, else the defaults plus any eval/<bench>/accuracy."""
    known = {k: (t, b) for k, t, b in DEFAULT_METRICS}
    if keys:
        out = []
        for k in keys:
            t, b = known.get(k, (k, True if k.endswith(("accuracy", "reward/mean")) or "pass@" in k else None))
            out.append((k, t, b))
        return out
    specs = list(DEFAULT_METRICS)
    evals = sorted({k for r in runs for row in r.rows for k in row
                    if k.startswith("eval/") and k.endswith("/accuracy")})
    specs += [(k, k.replace("/", " ", 1), True) for k in evals]
    return specs


def run_summary(run: Run, key: str, higher_better: Optional[bool], final_window: int = 1) -> Optional[dict]:
    steps, vals = run.series(key)
    if not vals:
        return None
    w = max(1, min(final_window, len(vals)))
    out = {"final": sum(vals[-w:]) / w, "last_step": steps[-1], "points": len(vals)}
    if higher_better is not None:
        best = max(vals) if higher_better else min(vals)
        out["best"] = best
        out["best_step"] = steps[vals.index(best)]
    return out


def summarise(runs: Sequence[Run], specs, final_window: int = 1) -> dict:
    """{"runs": {name: {"label", "steps", metric: {final, best, ...}}},
        "labels": {label: {"runs": [...], metric: {"final": {mean, std, count}, "best": {...}}}}}"""
    per_run: dict[str, dict] = {}
    for r in runs:
        entry: dict = {"label": r.label, "path": str(r.path),
                       "steps": int(r.rows[-1].get("step", len(r.rows))) if r.rows else 0}
        for key, _, hb in specs:
            s = run_summary(r, key, hb, final_window)
            if s is not None:
                entry[key] = s
        per_run[r.name] = entry
    per_label: dict[str, dict] = {}
    for r in runs:
        per_label.setdefault(r.label, {"runs": []})["runs"].append(r.name)
    for lab, agg in per_label.items():
        for key, _, hb in specs:
            members = [per_run[n][key] for n in agg["runs"] if key in per_run[n]]
            if not members:
                continue
            agg[key] = {}
            for which in ("final", "best"):
                vals = [m[which] for m in members if which in m]
                if vals:
                    m, s = mean_std(vals)
                    agg[key][which] = {"mean": m, "std": s, "count": len(vals)}
    return {"runs": per_run, "labels": per_label}


def _fmt(key: str, v: Optional[float], std: Optional[float] = None) -> str:
    if v is None or math.isnan(v):
        return "–"
    digits = 1 if "length" in key else 3
    s = f"{v:.{digits}f}"
    if std is not None and not math.isnan(std):
        s += f" ± {std:.{digits}f}"
    return s


def _columns(specs) -> list[tuple[str, str, str]]:
    cols = []
    for key, _, hb in specs:
        short = SHORT.get(key, key)
        cols.append((key, "final", f"{short} final"))
        if hb is not None:
            cols.append((key, "best", f"{short} best"))
    return cols


def markdown(summary: dict, specs, final_window: int = 1) -> str:
    cols = _columns(specs)
    head = ["Run", "Label", "Steps"] + [c[2] for c in cols]
    sep = "|" + "|".join(["---", "---", "---:"] + ["---:"] * len(cols)) + "|"
    lines = ["Per run" + (f" (final = mean of the last {final_window} values)" if final_window > 1 else ""), "",
             "| " + " | ".join(head) + " |", sep]
    for name, r in summary["runs"].items():
        cells = [_fmt(k, r.get(k, {}).get(which)) for k, which, _ in cols]
        lines.append("| " + " | ".join([name, r["label"], str(r["steps"])] + cells) + " |")
    head = ["Label", "Runs"] + [c[2] for c in cols]
    lines += ["", "Per label: mean ± sample std over its runs", "",
              "| " + " | ".join(head) + " |", "|" + "|".join(["---", "---:"] + ["---:"] * len(cols)) + "|"]
    for lab, agg in summary["labels"].items():
        cells = []
        for k, which, _ in cols:
            c = agg.get(k, {}).get(which)
            cells.append("–" if c is None else _fmt(k, c["mean"], c["std"] if c["count"] > 1 else None))
        lines.append("| " + " | ".join([lab, str(len(agg["runs"]))] + cells) + " |")
    return "\n".join(lines)


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
    """One PNG per metric in out_dir; returns the paths written."""
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
                ax.plot(s, v, color=colors[lab], lw=0.8 if many else 1.6, alpha=0.35 if many else 1.0,
                        label=None if many else f"{lab} ({r.name})" if len(labels) < len(runs) else lab)
            if many:
                common = sorted(set.intersection(*[set(s) for _, s, _ in group]))
                if common:
                    at = [dict(zip(s, v)) for _, s, v in group]
                    stats = [mean_std([a[t] for a in at]) for t in common]
                    m = [x[0] for x in stats]
                    sd = [x[1] for x in stats]
                    ax.plot(common, m, color=colors[lab], lw=2.0, label=f"{lab} (mean of {len(group)})")
                    ax.fill_between(common, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)],
                                    color=colors[lab], alpha=0.15, lw=0)
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


def compare_runs(paths: Sequence[str], out: Optional[Path] = None, *, labels: Optional[Sequence[str]] = None,
                 label_key: str = "algo.name", metrics: Optional[Sequence[str]] = None, smooth: int = 1,
                 final_window: int = 1) -> tuple[str, dict, list[Path]]:
    """Load, summarise, plot; returns (markdown, summary, png paths). Writes into `out` if given."""
    runs = load_runs(paths, labels=labels, label_key=label_key)
    specs = metric_specs(runs, metrics)
    summary = summarise(runs, specs, final_window)
    md = markdown(summary, specs, final_window)
    pngs: list[Path] = []
    if out is not None:
        out = Path(out)
        pngs = plot(runs, specs, out, smooth)
        (out / "compare.md").write_text(md + "\n")
        (out / "compare.json").write_text(json.dumps(summary, indent=1))
    return md, summary, pngs


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m egsw_rl.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories or sweep folders")
    p.add_argument("--out", default="comparison", help="where PNGs, compare.md, compare.json go (default %(default)s)")
    p.add_argument("--labels", help="comma-separated label per run (after sweep folders are expanded)")
    p.add_argument("--label-key", default="algo.name", help="config.yaml key to label runs by (default %(default)s)")
    p.add_argument("--metrics", help="comma-separated metric keys (default: reward, accuracy, length, entropy, eval/*)")
    p.add_argument("--smooth", type=int, default=1, help="moving-average window for the curves")
    p.add_argument("--final-window", type=int, default=1, help="final = mean of the last W values")
    args = p.parse_args(argv)
    try:
        md, _, pngs = compare_runs(
            args.runs, Path(args.out), labels=[s.strip() for s in args.labels.split(",")] if args.labels else None,
            label_key=args.label_key, metrics=[s.strip() for s in args.metrics.split(",")] if args.metrics else None,
            smooth=args.smooth, final_window=args.final_window)
    except CompareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(md)
    print(f"\nwrote {len(pngs)} plots, compare.md and compare.json to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
