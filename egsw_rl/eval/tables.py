"""Result tables in Markdown, laid out like the EGSW paper's Tables 1-2 (arXiv 2503.22456):
rows = models / runs / labels, columns = benchmarks (+ Avg.), accuracy in percent."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

DISPLAY = {
    "math500": "MATH-500",
    "aime24": "AIME24",
    "aime25": "AIME25",
    "gpqa_diamond": "GPQA-D",
    "gsm8k": "GSM8K",
}


def fmt_pct(value: float | None, std: float | None = None, digits: int = 1) -> str:
    """A fraction as a percentage, with '± std' when std is given (and there are >= 2 runs)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    s = f"{100 * value:.{digits}f}"
    if std is not None and not math.isnan(std):
        s += f" ± {100 * std:.{digits}f}"
    return s


def columns(records: Sequence[Mapping], benchmarks: Sequence[str] | None = None) -> list[str]:
    """The benchmark columns of some results records: the paper's order first, then as they come."""
    if benchmarks:
        return list(benchmarks)
    seen: list[str] = []
    for r in records:
        for b in r.get("benchmarks", {}):
            if b not in seen:
                seen.append(b)
    order = list(DISPLAY)
    return sorted(seen, key=lambda b: (order.index(b) if b in order else len(order), seen.index(b)))


def metric_of(bench: Mapping, metric: str) -> float | None:
    """`accuracy` (avg@n) or `pass@k` of one benchmark record; None when absent."""
    if metric in ("accuracy", "avg"):
        return bench.get("accuracy")
    return bench.get("pass_at_k", {}).get(metric)


def markdown_table(
    rows: Sequence[tuple[str, Mapping[str, tuple[float, float | None]]]],
    benchmarks: Sequence[str],
    *,
    first: str = "Model",
    average: bool = True,
    extra: Mapping[str, str] | None = None,
    extra_name: str = "",
) -> str:
    """Rows = models / runs / labels, columns = benchmarks (+ Avg.), cells in percent. A cell is
    (mean, std or None); a missing benchmark is '–'. The average is over the benchmarks a row
    has, and only shown when it has all of them."""
    head = [first] + [DISPLAY.get(b, b) for b in benchmarks]
    avg = average and len(benchmarks) > 1
    if avg:
        head.append("Avg.")
    if extra is not None:
        head.append(extra_name)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + [":---:"] * (len(head) - 1)) + "|"]
    for name, cells in rows:
        vals = [fmt_pct(*cells[b]) if b in cells else "–" for b in benchmarks]
        if avg:
            means = [cells[b][0] for b in benchmarks if b in cells]
            full = len(means) == len(benchmarks) and all(m is not None and not math.isnan(m) for m in means)
            vals.append(fmt_pct(statistics.fmean(means)) if full else "–")
        if extra is not None:
            vals.append(extra.get(name, ""))
        lines.append("| " + " | ".join([name] + vals) + " |")
    return "\n".join(lines)


def results_markdown(records: Sequence[Mapping], metric: str = "accuracy") -> str:
    """The table of one eval invocation: one row per model record."""
    if not records:
        return ""
    benchmarks = columns(records)
    rows = []
    for r in records:
        cells = {}
        for b, res in r["benchmarks"].items():
            v = metric_of(res, metric)
            if v is not None:
                cells[b] = (v, None)
        rows.append((r["name"], cells))
    s = records[0]["settings"]
    what = f"avg@{s['n']}" if metric == "accuracy" else metric
    sampling = "greedy" if s["temperature"] == 0 else f"temperature {s['temperature']}, top-p {s['top_p']}"
    caption = f"{what} (%), {sampling}, max {s['max_tokens']} new tokens, prompt {s['prompt']}" + (
        f", first {s['limit']} problems per benchmark" if s.get("limit") else ""
    )
    return caption + "\n\n" + markdown_table(rows, benchmarks)
