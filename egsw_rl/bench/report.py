"""Tables and the JSON document of `python -m egsw_rl.bench`, and the facts of the machine.

Machine facts (CPUs, CPU model, memory, load average, library versions) go into the document's
`machine` entry and into one header line (`machine_line`), never into a table's title: a table
says what was measured, the header where.
"""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

# the sub-benchmarks, in the order a full run takes them (`--only` picks a subset)
SUITES = ("steps", "sync", "reward", "learner", "peer", "overlap", "generate")
SCHEMA = 1


def median(xs: Iterable[float]) -> float:
    """Median of the finite values; NaN when there are none."""
    vals = [float(x) for x in xs if x is not None and x == x]
    return float(statistics.median(vals)) if vals else float("nan")


def measured(rows: Sequence[dict], warmup: int) -> list[dict]:
    """The metrics rows after the warm-up steps (all of them if that would leave none)."""
    rows = sorted(rows, key=lambda r: r.get("step", 0))
    return list(rows[warmup:]) if len(rows) > warmup else list(rows)


def fmt(v: Any, digits: int = 3) -> str:
    """A table cell: floats to `digits` significant digits (thousands grouped), NaN/None blank."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v:
            return ""
        if v != 0 and (abs(v) >= 10**digits):
            return f"{v:,.0f}"
        return f"{v:.{digits}g}"
    return str(v)


def format_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table under a `### title` line; cells through `fmt`."""
    cells = [[fmt(c) for c in r] for r in rows]
    lines = [
        f"### {title}",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(lines) + "\n"


def human_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def cpu_model(cpuinfo: str | None = None) -> str | None:
    """The CPU's model name from /proc/cpuinfo (or the given text of it); else the platform's
    processor string, None when neither says."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or None


def machine_info() -> dict:
    """The machine a bench ran on: the document's `machine` entry."""
    info = {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg": list(os.getloadavg()),
    }
    try:
        import psutil

        info["mem_gib"] = psutil.virtual_memory().total / 2**30
    except ImportError:
        pass
    for mod in ("torch", "vllm", "deepspeed", "ray", "transformers", "trl"):
        try:
            info[f"{mod}_version"] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - not installed / broken: just not reported
            pass
    return info


def document(results: dict, *, quick: bool, argv: Sequence[str], info: dict | None = None) -> dict:
    """The JSON written by --out: schema version, the command, the machine, and one entry per
    sub-benchmark that ran ({"table": ..., "rows"/"summary": ...} or {"error": ...})."""
    unknown = sorted(set(results) - set(SUITES) - {"paper"})
    if unknown:
        raise ValueError(f"unknown sub-benchmark(s) {unknown}")
    return {
        "schema": SCHEMA,
        "command": "python -m egsw_rl.bench " + " ".join(argv),
        "quick": bool(quick),
        "machine": info if info is not None else machine_info(),
        "results": results,
    }


def load_tag(load: Sequence[float] | None = None) -> str:
    return "{:.1f} / {:.1f} / {:.1f}".format(*(load if load is not None else os.getloadavg()))


def machine_line(info: dict) -> str:
    """The one header line printed above the tables: where they were measured."""
    parts = [f"{info.get('cpus')} CPUs"]
    if info.get("cpu_model"):
        parts[0] += f" ({info['cpu_model']})"
    if info.get("mem_gib"):
        parts.append(f"{info['mem_gib']:.0f} GiB")
    if info.get("load_avg"):
        parts.append(f"load average {load_tag(info['load_avg'])}")
    versions = [
        f"{m} {info[f'{m}_version']}"
        for m in ("torch", "vllm", "deepspeed", "ray", "transformers", "trl")
        if info.get(f"{m}_version")
    ]
    if versions:
        parts.append(", ".join(versions))
    return "machine: " + "; ".join(parts)
