"""Several runs side by side: `python -m egsw_rl.compare` (training curves) and
`python -m egsw_rl.eval --compare` (final evaluation results).

    python -m egsw_rl.compare outputs/grpo_seed0 outputs/grpo_seed1 outputs/egsw_seed0 ... --out cmp/
    python -m egsw_rl.compare multirun/2025-01-01/12-00-00          # every run of a sweep
    python -m egsw_rl.compare runA runB --labels grpo,egsw --metrics reward/mean,egsw/ess_frac

Training curves: each run directory's `metrics.jsonl` (one JSON object per step) is read with
`egsw_rl.runlog.load_run`, together with `eval.jsonl` (the trainer's periodic evaluation,
including the step-0 row before training) when there is one. A directory without one is searched
(three levels deep) for run directories, so a Hydra multirun folder can be given as is.

Runs are grouped by label: `--labels` (one per run), else the value of `--label-key` in the
run's `config.yaml` (default `algo.name`), else the directory name. Outputs in `--out`
(default ./comparison):

- one PNG per metric (reward, accuracy, response length, entropy, plus periodic-eval accuracies
  `eval/<benchmark>/accuracy` when the runs logged them): one colour per label, every run a thin
  line, and for a label with several runs their mean over common steps with a ±std band;
- compare.md / compare.json: final and best values per run, and per label mean ± sample std
  over its runs (the table is also printed).

"final" is the mean of the values logged in the last `--final-window` steps (default 1: the last
value; a periodic eval, logged once in them, gives its last value); "best" is the maximum, for
metrics where higher is better (reward, accuracy); an eval accuracy also gets "before", its
step-0 value (before training).

Final results (`compare_results`, behind `python -m egsw_rl.eval --compare`): the records of
`python -m egsw_rl.eval` (results.json), or a run's last periodic-eval row, grouped by label,
mean ± sample std per benchmark in the layout of `egsw_rl.eval.tables`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from egsw_rl.eval.tables import columns, markdown_table, metric_of
from egsw_rl.runlog import Run, load_run, mean_std, metric_specs, plot, read_metrics, run_label

SHORT = {
    "reward/mean": "reward",
    "reward/accuracy": "accuracy",
    "response_length/mean": "length",
    "entropy/mean": "entropy",
}


class CompareError(ValueError):
    """A user error of comparison (a missing run, a label count that does not match): one line."""


# ============================================================================ training curves


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
        nested = sorted(
            {m.parent for d in range(1, depth + 1) for m in p.glob("/".join(["*"] * d) + "/metrics.jsonl")}
        )
        if not nested:
            raise CompareError(
                f"{item}: no metrics.jsonl in it or in its subfolders (is it a run directory?)"
            )
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


def load_runs(
    paths: Sequence[str], *, labels: Sequence[str] | None = None, label_key: str = "algo.name"
) -> list[Run]:
    dirs = find_runs(paths)
    if labels is not None and len(labels) != len(dirs):
        raise CompareError(
            f"--labels gives {len(labels)} labels for {len(dirs)} runs ({', '.join(str(d) for d in dirs)})"
        )
    runs = []
    for i, (d, name) in enumerate(zip(dirs, _names(dirs))):
        run = load_run(d, name, labels[i] if labels is not None else run_label(d, label_key))
        if run is None:
            raise CompareError(f"{d}/metrics.jsonl has no rows")
        runs.append(run)
    return runs


def run_summary(run: Run, key: str, higher_better: bool | None, final_window: int = 1) -> dict | None:
    """final: the mean of the values logged in the run's last `final_window` steps (a periodic
    eval logged once in them counts once); first: the first value (an eval's step-0 row, before
    training); best: the max (min) when higher (lower) is better."""
    steps, vals = run.series(key)
    if not vals:
        return None
    last = int(run.rows[-1].get("step", steps[-1])) if run.rows else steps[-1]
    tail = [v for s, v in zip(steps, vals) if s > last - max(1, final_window)] or vals[-1:]
    out = {
        "final": sum(tail) / len(tail),
        "first": vals[0],
        "first_step": steps[0],
        "last_step": steps[-1],
        "points": len(vals),
    }
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
        entry: dict = {
            "label": r.label,
            "path": str(r.path),
            "steps": int(r.rows[-1].get("step", len(r.rows))) if r.rows else 0,
        }
        for key, _, hb in specs:
            s = run_summary(r, key, hb, final_window)
            if s is not None:
                entry[key] = s
        per_run[r.name] = entry
    per_label: dict[str, dict] = {}
    for r in runs:
        per_label.setdefault(r.label, {"runs": []})["runs"].append(r.name)
    for _lab, agg in per_label.items():
        for key, _, _ in specs:
            members = [per_run[n][key] for n in agg["runs"] if key in per_run[n]]
            if not members:
                continue
            agg[key] = {}
            for which in ("first", "final", "best"):
                vals = [m[which] for m in members if which in m]
                if vals:
                    m, s = mean_std(vals)
                    agg[key][which] = {"mean": m, "std": s, "count": len(vals)}
    return {"runs": per_run, "labels": per_label}


def _fmt(key: str, v: float | None, std: float | None = None) -> str:
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
        if key.startswith("eval/"):  # evaluated before the first step: before -> final
            cols.append((key, "first", f"{short} before"))
        cols.append((key, "final", f"{short} final"))
        if hb is not None:
            cols.append((key, "best", f"{short} best"))
    return cols


def markdown(summary: dict, specs, final_window: int = 1) -> str:
    cols = _columns(specs)
    head = ["Run", "Label", "Steps"] + [c[2] for c in cols]
    sep = "|" + "|".join(["---", "---", "---:"] + ["---:"] * len(cols)) + "|"
    window = f" (final = mean over the last {final_window} steps)" if final_window > 1 else ""
    lines = ["Per run" + window, "", "| " + " | ".join(head) + " |", sep]
    for name, r in summary["runs"].items():
        cells = [_fmt(k, r.get(k, {}).get(which)) for k, which, _ in cols]
        lines.append("| " + " | ".join([name, r["label"], str(r["steps"])] + cells) + " |")
    head = ["Label", "Runs"] + [c[2] for c in cols]
    lines += [
        "",
        "Per label: mean ± sample std over its runs",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---", "---:"] + ["---:"] * len(cols)) + "|",
    ]
    for lab, agg in summary["labels"].items():
        cells = []
        for k, which, _ in cols:
            c = agg.get(k, {}).get(which)
            cells.append("–" if c is None else _fmt(k, c["mean"], c["std"] if c["count"] > 1 else None))
        lines.append("| " + " | ".join([lab, str(len(agg["runs"]))] + cells) + " |")
    return "\n".join(lines)


def compare_runs(
    paths: Sequence[str],
    out: Path | None = None,
    *,
    labels: Sequence[str] | None = None,
    label_key: str = "algo.name",
    metrics: Sequence[str] | None = None,
    smooth: int = 1,
    final_window: int = 1,
) -> tuple[str, dict, list[Path]]:
    """Load, summarise, plot; returns (markdown, summary, png paths). Writes into `out` if given."""
    runs = load_runs(paths, labels=labels, label_key=label_key)
    specs = metric_specs(runs, metrics)
    summary = summarise(runs, specs, final_window)
    md = markdown(summary, specs, final_window)
    pngs: list[Path] = []
    if out is not None:
        out = Path(out)
        pngs = plot(runs, specs, out, smooth)
        write_comparison(out, md, summary)
    return md, summary, pngs


def write_comparison(out: Path, md: str, summary: dict) -> None:
    """compare.md and compare.json in `out` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(md + "\n")
    (out / "compare.json").write_text(json.dumps(summary, indent=1))


# ============================================================================ final results


def load_records(item: str) -> list[dict]:
    """Eval records from a results.json, a directory holding one (an --out dir), a run directory
    (`<run>/eval/results.json`, else the last periodic-eval row of its metrics.jsonl / eval.jsonl)."""
    p = Path(item).expanduser()
    candidates = [p] if p.is_file() else [p / "results.json", p / "eval" / "results.json"]
    for c in candidates:
        if c.is_file():
            try:
                data = json.loads(c.read_text())
            except json.JSONDecodeError as e:
                raise CompareError(f"{c}: not valid JSON ({e.msg})") from None
            recs = data.get("results") if isinstance(data, dict) else None
            if not isinstance(recs, list):
                raise CompareError(f"{c}: not an egsw_rl.eval results file (no 'results' list)")
            for r in recs:
                r.setdefault("source", str(c))
            return recs
    if p.is_dir() and ((p / "metrics.jsonl").exists() or (p / "eval.jsonl").exists()):
        rec = _record_from_metrics(p)
        if rec is not None:
            return [rec]
    raise CompareError(
        f"{item}: no eval results (results.json, eval/results.json or "
        f"eval/<benchmark>/accuracy rows in metrics.jsonl); "
        f"run `python -m egsw_rl.eval --model {item}` first"
    )


def _record_from_metrics(run_dir: Path) -> dict | None:
    rows = [
        r
        for name in ("metrics.jsonl", "eval.jsonl")
        for r in read_metrics(run_dir / name)
        if any(k.startswith("eval/") for k in r)
    ]
    rows.sort(key=lambda r: r.get("step", 0))  # stable: eval.jsonl's copy of a step comes last
    if not rows:
        return None
    last = rows[-1]
    benches: dict[str, dict] = {}
    for k, v in last.items():
        parts = k.split("/")
        if len(parts) == 3 and parts[0] == "eval" and parts[1] != "mean" and v is not None:
            b = benches.setdefault(parts[1], {"pass_at_k": {}})
            if parts[2] == "accuracy":
                b["accuracy"] = v
            elif parts[2].startswith("pass@"):
                b["pass_at_k"][parts[2]] = v
    benches = {b: r for b, r in benches.items() if "accuracy" in r}
    if not benches:
        return None
    return {
        "name": f"{run_dir.name}@{last.get('step')}",
        "label": run_label(run_dir),
        "run_dir": str(run_dir),
        "step": last.get("step"),
        "benchmarks": benches,
        "source": str(run_dir / "metrics.jsonl"),
    }


def compare_results(
    items: Sequence[str],
    *,
    labels: Sequence[str] | None = None,
    metric: str = "accuracy",
    label_key: str | None = None,
) -> tuple[str, dict]:
    """Group eval records by label and give mean ± std (sample std over the group's records) per
    benchmark. `labels` (one per item) override the stored labels; `label_key` re-derives them
    from each run's config.yaml (e.g. 'algo.name'). Returns (markdown, summary dict)."""
    if labels is not None and len(labels) != len(items):
        raise CompareError(f"--labels gives {len(labels)} labels for {len(items)} inputs")
    groups: dict[str, list[dict]] = {}
    for i, item in enumerate(items):
        for rec in load_records(item):
            lab = rec.get("label") or rec.get("name") or Path(item).name
            if label_key and rec.get("run_dir"):
                lab = run_label(Path(rec["run_dir"]), label_key)
            if labels is not None:
                lab = labels[i]
            groups.setdefault(lab, []).append(rec)
    benchmarks = columns([r for g in groups.values() for r in g])
    rows, summary = [], {}
    for lab, recs in groups.items():
        cells, summ = {}, {}
        for b in benchmarks:
            vals = [metric_of(r["benchmarks"][b], metric) for r in recs if b in r.get("benchmarks", {})]
            vals = [v for v in vals if v is not None]
            if not vals:
                continue
            m, s = mean_std(vals)
            cells[b] = (m, s if len(vals) > 1 else None)
            summ[b] = {"mean": m, "std": s, "count": len(vals), "values": vals}
        rows.append((lab, cells))
        summary[lab] = {"runs": [r.get("name") for r in recs], "benchmarks": summ}
    counts = {lab: str(len(recs)) for lab, recs in groups.items()}
    what = "avg@n accuracy" if metric == "accuracy" else metric
    md = f"{what} (%), mean ± sample std over the runs of each label\n\n" + markdown_table(
        rows, benchmarks, first="Method", extra=counts, extra_name="Runs"
    )
    return md, {"metric": metric, "groups": summary}


# ============================================================================ command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m egsw_rl.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories or sweep folders")
    p.add_argument(
        "--out", default="comparison", help="where PNGs, compare.md, compare.json go (default %(default)s)"
    )
    p.add_argument("--labels", help="comma-separated label per run (after sweep folders are expanded)")
    p.add_argument(
        "--label-key", default="algo.name", help="config.yaml key to label runs by (default %(default)s)"
    )
    p.add_argument(
        "--metrics", help="comma-separated metric keys (default: reward, accuracy, length, entropy, eval/*)"
    )
    p.add_argument("--smooth", type=int, default=1, help="moving-average window for the curves")
    p.add_argument(
        "--final-window",
        type=int,
        default=1,
        help="final = mean of the values of the last W steps (an eval's last value)",
    )
    args = p.parse_args(argv)
    try:
        md, _, pngs = compare_runs(
            args.runs,
            Path(args.out),
            labels=[s.strip() for s in args.labels.split(",")] if args.labels else None,
            label_key=args.label_key,
            metrics=[s.strip() for s in args.metrics.split(",")] if args.metrics else None,
            smooth=args.smooth,
            final_window=args.final_window,
        )
    except CompareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(md)
    print(f"\nwrote {len(pngs)} plots, compare.md and compare.json to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
