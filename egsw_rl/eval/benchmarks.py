"""Benchmarks by name or file: the problems `evaluate` runs.

math500, aime24, aime25, gsm8k ship inside the package (`egsw_rl.data`; a copy in
`$EGSW_RL_DATA` takes precedence); gpqa_diamond is gated and never shipped (`--gpqa PATH` or
`gpqa_diamond=PATH` to the published CSV, graded by answer letter); NAME=PATH adds any problem file.
"""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path
from typing import Any

from egsw_rl.eval.loop import EvalError

DEFAULT_BENCHMARKS = ("math500", "aime24", "aime25")


def parse_benchmarks(spec: str, gpqa: str | None) -> list[tuple[str, str | None]]:
    items = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        name, _, path = part.partition("=")
        items.append((name.strip(), path.strip() or None))
    if gpqa:
        items = [(n, p) for n, p in items if n != "gpqa_diamond"] + [("gpqa_diamond", gpqa)]
    if not items:
        raise EvalError("--benchmarks is empty")
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        raise EvalError(f"--benchmarks names a benchmark twice: {names}")
    return items


def _csv_to_jsonl(path: Path, tmpdir: Path) -> Path:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = tmpdir / (path.stem + ".jsonl")
    with out.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return out


def load_benchmark(name: str, path: str | None = None, *, limit: int | None = None, seed: int = 0) -> list:
    """Problems of one benchmark (first `limit` of them). `path` overrides where a named set is
    read from; GPQA-Diamond files (.csv as published, .jsonl, .parquet) keep its original columns
    (Question, Correct Answer, Incorrect Answer 1-3) and are graded by letter, options shuffled
    per row with `seed`."""
    from egsw_rl.data import GENERATED, SOURCES, load_problems

    choice = name.startswith("gpqa")
    if path is None:
        generated = name.removesuffix("_heldout") in GENERATED
        if name not in SOURCES and not generated and not Path(name).exists():
            known = [k for k in SOURCES if k != "simplerl_8k"] + [f"{g}_heldout" for g in GENERATED]
            raise EvalError(f"unknown benchmark {name!r}: use one of {', '.join(known)}, or NAME=PATH")
        try:
            problems, _ = load_problems(name, seed=seed, max_samples=limit)
        except ValueError as e:
            if not choice:
                raise
            raise EvalError(
                f"{e}\nGPQA-Diamond is gated and never shipped: pass its file with "
                "--gpqa PATH (or gpqa_diamond=PATH), or log in to the hub"
            ) from None
    else:
        p = Path(path).expanduser()
        if not p.exists():
            raise EvalError(f"benchmark {name}: no such file {p}")
        kw: dict[str, Any] = {}
        if choice:
            kw = dict(question_key="Question", answer_key="Correct Answer", answer_format="choice")
        elif name in SOURCES:
            src = SOURCES[name]
            kw = dict(
                question_key=src.question_key, answer_key=src.answer_key, answer_format=src.answer_format
            )
        with tempfile.TemporaryDirectory() as tmp:
            if p.suffix.lower() == ".csv":
                p = _csv_to_jsonl(p, Path(tmp))
            problems, _ = load_problems(str(p), seed=seed, max_samples=limit, **kw)
    return problems[:limit] if limit else problems
