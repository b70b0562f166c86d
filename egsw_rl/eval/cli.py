"""Benchmark evaluation: `python -m egsw_rl.eval`.

    python -m egsw_rl.eval --model outputs/2025-01-01/12-00-00 --benchmarks math500,aime24,aime25
    python -m egsw_rl.eval --model smollm2 --benchmarks gsm8k --limit 50 --max-tokens 512
    python -m egsw_rl.eval --model Qwen/Qwen2.5-Math-7B --n 16 --k 1,8,16 --temperature 0.6 \\
        --top-p 0.95 --benchmarks math500,aime24,aime25,gpqa_diamond=/data/gpqa_diamond.csv --out eval/
    python -m egsw_rl.eval --compare runs/grpo_s*/eval runs/egsw_s*/eval   # mean ± std per label

Models: an HF folder, a hub name, "tiny" / "tiny_arith" / "smollm2" (`egsw_rl.models`), a run
directory (its newest complete checkpoint's `hf/` export) or one checkpoint directory. Several
models may be given; they are evaluated one after the other (one vLLM engine at a time).

Benchmarks: math500, aime24, aime25, gsm8k (local copies via `egsw_rl.data.load_problems`, else
the hub), gpqa_diamond (gated, never shipped: `gpqa_diamond=PATH` to a .csv / .jsonl / .parquet
with the original columns, or the hub when logged in), or NAME=PATH for any other problem file.

Prompt (`--prompt`): a template name of `egsw_rl.prompts`, the renderer training uses. A trained
run is evaluated with its own `rollout.prompt_template` unless `--prompt` names another; any
other model with `qwen_math` (Qwen2.5-Math's: the instruction "Please reason step by step, and
put your final answer within \\boxed{}." as the system turn). A problem whose prompt does not fit
the context beside `--max-tokens` is not generated: it is scored 0 with status
`overlong_prompt` and counted in the results. Each problem gets n samples; grading is `egsw_rl.rewards` (math-verify; GPQA by answer letter) in a
process pool with a per-sample timeout. Reported per benchmark: avg@n (mean accuracy over all
samples; with n=1 and temperature 0 that is greedy accuracy), pass@k (unbiased estimator) for
each k <= n, the fraction of completions with a \\boxed{} answer, status counts, response length
and throughput.

Outputs (`--out DIR`): results.json (one record per model), results.md (the EGSW paper's
Tables 1-2 layout: rows = models / runs, columns = benchmarks, accuracy in percent) and
samples.jsonl (every completion with its grade). For a run directory `--out` defaults to
`<run>/eval`.

For the trainer: `evaluate(generate_fn, benchmarks, n=..., ks=..., grader=...)` evaluates with
an already-running generator (see its docstring), `generator_fn(...)` adapts a `Generator` /
`GeneratorGroup`, and `eval_metrics(results)` gives the `eval/<benchmark>/accuracy` keys.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from egsw_rl import prompts

log = logging.getLogger(__name__)

RESULTS_FORMAT = 1
DEFAULT_BENCHMARKS = ("math500", "aime24", "aime25")
DISPLAY = {"math500": "MATH-500", "aime24": "AIME24", "aime25": "AIME25",
           "gpqa_diamond": "GPQA-D", "gsm8k": "GSM8K"}
PROMPTS = prompts.CHAT_TEMPLATES
OVERLONG = "overlong_prompt"  # a problem whose prompt does not fit: not generated, scored 0

# generate_fn(questions, n) -> one list of n completions per question; a completion is a str or
# an object with .text (and optionally .token_ids, .finish_reason, e.g. egsw_rl.batch.Completion).
GenerateFn = Callable[[Sequence[str], int], Sequence[Sequence[Any]]]


class EvalError(ValueError):
    pass


# ============================================================================ metrics


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k), the
    probability that k samples drawn without replacement from the n contain a correct one."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value). NaNs are dropped."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def fmt_pct(value: Optional[float], std: Optional[float] = None, digits: int = 1) -> str:
    """A fraction as a percentage, with '± std' when std is given (and there are >= 2 runs)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    s = f"{100 * value:.{digits}f}"
    if std is not None and not math.isnan(std):
        s += f" ± {100 * std:.{digits}f}"
    return s


# ============================================================================ prompts


def render_prompts(tokenizer, questions: Sequence[str], prompt: str = "qwen_math") -> list[str]:
    """Prompt strings for `questions`: `egsw_rl.prompts.render_prompts`, the renderer training
    uses, so a template name means the same text in both (qwen_math, qwen_math_user, chat, or a
    plain template containing {question})."""
    try:
        return prompts.render_prompts(tokenizer, questions, prompt)
    except prompts.PromptError as e:
        raise EvalError(f"--prompt: {e}") from None


# ============================================================================ grading


class Grader:
    """Grades completions with `egsw_rl.rewards`: one `RewardPool` per task ("math", "choice"),
    started on first use. Accuracy is read from the status ("correct"), never from the score, so
    any reward scheme grades the same.

    `scorers` replaces the pools by objects with `.score(texts, golds, choices) -> (results,
    metrics)`: a `RewardPool`, an `actors.reward.RewardWorkerPool`, or a Ray actor handle of one
    (`.score.remote` is detected) — e.g. the trainer's reward actor for periodic eval."""

    def __init__(self, workers: int = 2, timeout_s: float = 10.0, *, scorers: Optional[Mapping[str, Any]] = None,
                 **reward_options) -> None:
        self.workers, self.timeout_s = workers, timeout_s
        self.reward_options = dict(reward_options)
        self._own: dict[str, Any] = {}
        self._scorers: dict[str, Any] = dict(scorers or {})

    def _scorer(self, task: str):
        if task in self._scorers:
            return self._scorers[task]
        from egsw_rl.rewards import RewardPool

        opts = dict(self.reward_options)
        opts["task"] = task
        pool = RewardPool(workers=self.workers, timeout_s=self.timeout_s, **opts)
        self._own[task] = self._scorers[task] = pool
        return pool

    def __call__(self, texts: Sequence[str], golds: Sequence[str],
                 choices: Optional[Sequence[Optional[Sequence[str]]]] = None, *, task: str = "math") -> list:
        if not texts:
            return []
        scorer = self._scorer(task)
        method = scorer.score
        if hasattr(method, "remote"):  # a Ray actor handle
            import ray

            results, _ = ray.get(method.remote(list(texts), list(golds), choices))
        else:
            results, _ = method(list(texts), list(golds), choices)
        return list(results)

    def close(self) -> None:
        for pool in self._own.values():
            pool.close()
        for task in list(self._own):
            self._scorers.pop(task, None)
        self._own.clear()

    def __enter__(self) -> "Grader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ============================================================================ evaluate


@dataclass
class BenchmarkResult:
    name: str
    problems: int
    n: int
    accuracy: float  # avg@n: mean over problems and samples
    pass_at_k: dict[str, float]  # {"pass@1": ..., "pass@8": ...}
    boxed_rate: float  # fraction of completions whose answer came from a \boxed{}
    status: dict[str, int]
    mean_response_tokens: Optional[float] = None
    truncated_frac: Optional[float] = None  # finish_reason == "length"
    tokens: Optional[int] = None
    generate_s: float = 0.0
    grade_s: float = 0.0
    tokens_per_s: Optional[float] = None
    per_problem_correct: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def _text(c) -> str:
    return c if isinstance(c, str) else str(getattr(c, "text", c))


def evaluate(generate_fn: GenerateFn, benchmarks: Mapping[str, Sequence], *, n: int = 1,
             ks: Iterable[int] = (1,), grader: Optional[Grader] = None, batch_size: Optional[int] = None,
             samples_out: Optional[list] = None,
             progress: Optional[Callable[[str], None]] = None,
             too_long: Optional[Callable[[Sequence[str]], Sequence[bool]]] = None) -> dict[str, BenchmarkResult]:
    """Evaluate with any generator: `{benchmark name: BenchmarkResult}`.

    generate_fn(questions, n): for each question (the raw problem text) a list of n completions,
        each a str or an object with `.text` (plus `.token_ids` / `.finish_reason` when available,
        as `egsw_rl.batch.Completion` has: lengths and truncation are then reported too).
        Rendering the prompt is the generate_fn's business (see `generator_fn`).
    benchmarks: {name: [egsw_rl.data.Problem, ...]}; a problem with `choices` is graded by letter.
    n: samples per problem; ks: pass@k values to report (those > n are skipped).
    grader: a `Grader` (default: a fresh one, closed on return).
    batch_size: questions per generate_fn call (default: all of a benchmark at once).
    samples_out: a list to append one dict per graded completion to (benchmark, id, sample, gold,
        status, parsed, boxed, text).
    too_long(questions): True for each question whose prompt does not fit the context; those are
        not generated, and their n samples score 0 with status `overlong_prompt`.

    The trainer's periodic eval (metrics `eval/<benchmark>/accuracy`):

        gen = generator_fn(self.generators, render=None, temperature=0.0, max_tokens=1024)
        res = evaluate(gen, {"math500": problems}, grader=Grader(scorers={"math": self.rewarder}))
        metrics.update(eval_metrics(res))
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ks = sorted({int(k) for k in ks if 1 <= int(k) <= n}) or [1]
    own = grader is None
    grader = grader or Grader()
    out: dict[str, BenchmarkResult] = {}
    try:
        for name, problems in benchmarks.items():
            problems = list(problems)
            if not problems:
                raise EvalError(f"benchmark {name}: no problems")
            t0 = time.perf_counter()
            over = set(i for i, flag in enumerate(too_long([p.question for p in problems])) if flag) \
                if too_long else set()
            if over and progress:
                progress(f"{name}: {len(over)} of {len(problems)} prompts do not fit the context: "
                         f"scored 0 as {OVERLONG}")
            todo = [i for i in range(len(problems)) if i not in over]
            comps: list[list] = [[""] * n for _ in problems]
            step = batch_size or max(1, len(todo))
            for s in range(0, len(todo), step):
                chunk = todo[s:s + step]
                got = list(generate_fn([problems[i].question for i in chunk], n))
                if len(got) != len(chunk) or any(len(g) != n for g in got):
                    raise EvalError(f"generate_fn returned {[len(g) for g in got]} completions for "
                                    f"{len(chunk)} questions x n={n}")
                for i, g in zip(chunk, got):
                    comps[i] = list(g)
                if progress:
                    progress(f"{name}: generated {min(s + step, len(todo))}/{len(todo)} problems")
            gen_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            results: list = [None] * (len(problems) * n)
            for i in over:
                for j in range(n):
                    results[i * n + j] = _overlong_result()
            for task in ("math", "choice"):
                idx = [i for i, p in enumerate(problems)
                       if (task == "choice") == bool(p.choices) and i not in over]
                if not idx:
                    continue
                flat = [(i, j) for i in idx for j in range(n)]
                graded = grader([_text(comps[i][j]) for i, j in flat], [problems[i].answer for i, _ in flat],
                                [problems[i].choices for i, _ in flat] if task == "choice" else None,
                                task=task)
                for (i, j), r in zip(flat, graded):
                    results[i * n + j] = r
            grade_s = time.perf_counter() - t1
            out[name] = _summarise(name, problems, comps, results, n, ks, gen_s, grade_s)
            if samples_out is not None:
                for i, p in enumerate(problems):
                    for j in range(n):
                        r = results[i * n + j]
                        samples_out.append({"benchmark": name, "id": p.id, "sample": j, "gold": p.answer,
                                            "status": r.status, "parsed": r.parsed, "boxed": r.boxed,
                                            "text": _text(comps[i][j])})
            if progress:
                b = out[name]
                progress(f"{name}: avg@{n} {fmt_pct(b.accuracy)}% over {b.problems} problems "
                         f"(boxed {fmt_pct(b.boxed_rate)}%, {gen_s:.1f} s generation, {grade_s:.1f} s grading)")
    finally:
        if own:
            grader.close()
    return out


def _overlong_result():
    from egsw_rl.rewards import RewardResult

    return RewardResult(0.0, OVERLONG, None, False, "prompt longer than the context allows")


def _summarise(name, problems, comps, results, n, ks, gen_s, grade_s) -> BenchmarkResult:
    from egsw_rl.rewards import STATUSES

    correct = [sum(results[i * n + j].status == "correct" for j in range(n)) for i in range(len(problems))]
    status = {s: 0 for s in (*STATUSES, OVERLONG)}
    for r in results:
        status[r.status] = status.get(r.status, 0) + 1
    flat = [c for row in comps for c in row]
    lengths = [len(c.token_ids) for c in flat if getattr(c, "token_ids", None) is not None]
    reasons = [c.finish_reason for c in flat if getattr(c, "finish_reason", None) is not None]
    tokens = sum(lengths) if lengths else None
    return BenchmarkResult(
        name=name, problems=len(problems), n=n,
        accuracy=statistics.fmean(c / n for c in correct),
        pass_at_k={f"pass@{k}": statistics.fmean(pass_at_k(n, c, k) for c in correct) for k in ks},
        boxed_rate=statistics.fmean(1.0 if r.boxed else 0.0 for r in results),
        status=status,
        mean_response_tokens=statistics.fmean(lengths) if lengths else None,
        truncated_frac=statistics.fmean(r == "length" for r in reasons) if reasons else None,
        tokens=tokens, generate_s=gen_s, grade_s=grade_s,
        tokens_per_s=(tokens / gen_s) if tokens and gen_s > 0 else None,
        per_problem_correct=correct)


def eval_metrics(results: Mapping[str, BenchmarkResult], prefix: str = "eval") -> dict[str, float]:
    """Flat metrics for metrics.jsonl / wandb: eval/<benchmark>/accuracy, .../pass@k, .../boxed_rate,
    .../response_length (when known), and eval/mean/accuracy over benchmarks."""
    m: dict[str, float] = {}
    for name, r in results.items():
        m[f"{prefix}/{name}/accuracy"] = r.accuracy
        for key, v in r.pass_at_k.items():
            m[f"{prefix}/{name}/{key}"] = v
        m[f"{prefix}/{name}/boxed_rate"] = r.boxed_rate
        if r.mean_response_tokens is not None:
            m[f"{prefix}/{name}/response_length"] = r.mean_response_tokens
        if r.status.get(OVERLONG):
            m[f"{prefix}/{name}/{OVERLONG}"] = r.status[OVERLONG] / r.n
    if results:
        m[f"{prefix}/mean/accuracy"] = statistics.fmean(r.accuracy for r in results.values())
    return m


def generator_fn(generator, *, render: Optional[Callable[[Sequence[str]], list[str]]] = None,
                 **sampling) -> GenerateFn:
    """A generate_fn over an `actors.generator.Generator` or `GeneratorGroup` (both have
    `render` and `generate(prompts, n, **overrides)`). `render` turns questions into prompt
    strings (default: the generator's own, i.e. its `rollout.prompt_template`; for the paper's
    prompt: `functools.partial(render_prompts, tokenizer, prompt="qwen_math")`). `sampling` are
    per-call overrides (temperature, top_p, top_k, max_tokens, stop); logprobs default to 0."""
    sampling.setdefault("logprobs", 0)

    def fn(questions: Sequence[str], n: int) -> list[list]:
        prompts = (render or generator.render)(list(questions))
        comps = generator.generate(prompts, n=n, **sampling)
        out: list[list] = [[] for _ in questions]
        for c in comps:
            out[c.prompt_index].append(c)
        for row in out:
            row.sort(key=lambda c: c.sample_index)
        return out

    return fn


# ============================================================================ benchmarks


def _parse_benchmarks(spec: str, gpqa: Optional[str]) -> list[tuple[str, Optional[str]]]:
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


def load_benchmark(name: str, path: Optional[str] = None, *, limit: Optional[int] = None, seed: int = 0) -> list:
    """Problems of one benchmark (first `limit` of them). `path` overrides where a named set is
    read from; GPQA-Diamond files (.csv as published, .jsonl, .parquet) keep its original columns
    (Question, Correct Answer, Incorrect Answer 1-3) and are graded by letter, options shuffled
    per row with `seed`."""
    from egsw_rl.data import SOURCES, load_problems

    choice = name.startswith("gpqa")
    if path is None:
        if name not in SOURCES and not Path(name).exists():
            known = ", ".join(k for k in SOURCES if k != "simplerl_8k")
            raise EvalError(f"unknown benchmark {name!r}: use one of {known}, or NAME=PATH")
        try:
            problems, _ = load_problems(name, seed=seed, max_samples=limit)
        except ValueError as e:
            if not choice:
                raise
            raise EvalError(f"{e}\nGPQA-Diamond is gated and never shipped: pass its file with "
                            "--gpqa PATH (or gpqa_diamond=PATH), or log in to the hub") from None
    else:
        p = Path(path).expanduser()
        if not p.exists():
            raise EvalError(f"benchmark {name}: no such file {p}")
        kw: dict[str, Any] = {}
        if choice:
            kw = dict(question_key="Question", answer_key="Correct Answer", answer_format="choice")
        elif name in SOURCES:
            src = SOURCES[name]
            kw = dict(question_key=src.question_key, answer_key=src.answer_key, answer_format=src.answer_format)
        with tempfile.TemporaryDirectory() as tmp:
            if p.suffix.lower() == ".csv":
                p = _csv_to_jsonl(p, Path(tmp))
            problems, _ = load_problems(str(p), seed=seed, max_samples=limit, **kw)
    return problems[:limit] if limit else problems


# ============================================================================ models


@dataclass
class ModelSpec:
    spec: str  # as given
    path: str  # the local model folder (a hub id resolved through the HF cache)
    name: str  # row label in tables (unique-ish)
    label: str  # group label for --compare (algo name for runs)
    run_dir: Optional[str] = None
    step: Optional[int] = None


def _run_config(run_dir: Path) -> dict:
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        return {}
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(OmegaConf.load(cfg_file), resolve=False) or {}
    except Exception as e:  # a hand-edited or foreign file: labels fall back to the folder name
        log.warning("could not read %s: %s", cfg_file, e)
        return {}


def _dotted(cfg: dict, key: str):
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def run_label(run_dir: Path, key: str = "algo.name") -> str:
    """The run's group label: the config value at `key` (default the algorithm name)."""
    value = _dotted(_run_config(Path(run_dir)), key)
    return str(value) if value is not None else Path(run_dir).name


def resolve_model(spec: str, label: Optional[str] = None) -> ModelSpec:
    """Model spec -> the folder to load, as `model.path` resolves in training
    (`egsw_rl.models.locate_model`): a run directory (newest complete checkpoint's hf/), a
    checkpoint directory (its hf/), an HF folder, a built-in name, or a hub repo id (from the
    Hugging Face cache)."""
    from egsw_rl.models import ModelNotFoundError, locate_model

    try:
        m = locate_model(spec, key="--model")
    except ModelNotFoundError as e:
        raise EvalError(str(e)) from None
    if m.kind == "run":
        return ModelSpec(spec, str(m.path), f"{m.run_dir.name}@{m.step}", label or run_label(m.run_dir),
                         run_dir=str(m.run_dir), step=m.step)
    if m.kind == "checkpoint":
        run = m.run_dir
        ckpt = m.path.parent
        return ModelSpec(spec, str(m.path), f"{run.name}@{m.step}" if run is not None else ckpt.name,
                         label or (run_label(run) if run is not None else ckpt.name),
                         run_dir=str(run) if run is not None else None, step=m.step)
    if m.kind == "folder":
        return ModelSpec(spec, str(m.path), m.path.name, label or m.path.name)
    return ModelSpec(spec, str(m.path), spec, label or spec)  # built-in name or hub repo id


# ============================================================================ tables


def _cols(records: Sequence[Mapping], benchmarks: Optional[Sequence[str]] = None) -> list[str]:
    if benchmarks:
        return list(benchmarks)
    seen: list[str] = []
    for r in records:
        for b in r.get("benchmarks", {}):
            if b not in seen:
                seen.append(b)
    order = list(DISPLAY)
    return sorted(seen, key=lambda b: (order.index(b) if b in order else len(order), seen.index(b)))


def metric_of(bench: Mapping, metric: str) -> Optional[float]:
    """`accuracy` (avg@n) or `pass@k` of one benchmark record; None when absent."""
    if metric in ("accuracy", "avg"):
        return bench.get("accuracy")
    return bench.get("pass_at_k", {}).get(metric)


def markdown_table(rows: Sequence[tuple[str, Mapping[str, tuple[float, Optional[float]]]]],
                   benchmarks: Sequence[str], *, first: str = "Model", average: bool = True,
                   extra: Optional[Mapping[str, str]] = None, extra_name: str = "") -> str:
    """Rows = models / runs / labels, columns = benchmarks (+ Avg.), cells in percent: the EGSW
    paper's Tables 1-2 layout. A cell is (mean, std or None); a missing benchmark is '–'. The
    average is over the benchmarks a row has, and only shown when it has all of them."""
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
    benchmarks = _cols(records)
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
    caption = (f"{what} (%), {sampling}, max {s['max_tokens']} new tokens, prompt {s['prompt']}"
               + (f", first {s['limit']} problems per benchmark" if s.get("limit") else ""))
    return caption + "\n\n" + markdown_table(rows, benchmarks)


# ============================================================================ compare


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
                raise EvalError(f"{c}: not valid JSON ({e.msg})") from None
            recs = data.get("results") if isinstance(data, dict) else None
            if not isinstance(recs, list):
                raise EvalError(f"{c}: not an egsw_rl.eval results file (no 'results' list)")
            for r in recs:
                r.setdefault("source", str(c))
            return recs
    if p.is_dir() and ((p / "metrics.jsonl").exists() or (p / "eval.jsonl").exists()):
        rec = _record_from_metrics(p)
        if rec is not None:
            return [rec]
    raise EvalError(f"{item}: no eval results (results.json, eval/results.json or eval/<benchmark>/accuracy "
                    f"rows in metrics.jsonl); run `python -m egsw_rl.eval --model {item}` first")


def _record_from_metrics(run_dir: Path) -> Optional[dict]:
    from egsw_rl.logging import read_metrics

    rows = [r for name in ("metrics.jsonl", "eval.jsonl") for r in read_metrics(run_dir / name)
            if any(k.startswith("eval/") for k in r)]
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
    return {"name": f"{run_dir.name}@{last.get('step')}", "label": run_label(run_dir), "run_dir": str(run_dir),
            "step": last.get("step"), "benchmarks": benches, "source": str(run_dir / "metrics.jsonl")}


def compare(items: Sequence[str], *, labels: Optional[Sequence[str]] = None, metric: str = "accuracy",
            label_key: Optional[str] = None) -> tuple[str, dict]:
    """Group eval records by label and give mean ± std (sample std over the group's records) per
    benchmark. `labels` (one per item) override the stored labels; `label_key` re-derives them
    from each run's config.yaml (e.g. 'algo.name'). Returns (markdown, summary dict)."""
    if labels is not None and len(labels) != len(items):
        raise EvalError(f"--labels gives {len(labels)} labels for {len(items)} inputs")
    groups: dict[str, list[dict]] = {}
    for i, item in enumerate(items):
        for rec in load_records(item):
            lab = rec.get("label") or rec.get("name") or Path(item).name
            if label_key and rec.get("run_dir"):
                lab = run_label(Path(rec["run_dir"]), label_key)
            if labels is not None:
                lab = labels[i]
            groups.setdefault(lab, []).append(rec)
    benchmarks = _cols([r for g in groups.values() for r in g])
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
    md = (f"{what} (%), mean ± sample std over the runs of each label\n\n"
          + markdown_table(rows, benchmarks, first="Method", extra=counts, extra_name="Runs"))
    return md, {"metric": metric, "groups": summary}


# ============================================================================ command line


def _settings(args) -> dict:
    return {"n": args.n, "ks": args.ks, "temperature": args.temperature, "top_p": args.top_p,
            "top_k": args.top_k, "max_tokens": args.max_tokens, "prompt": args.prompt, "seed": args.seed,
            "limit": args.limit, "extraction": args.extraction,
            "fallback_last_number": args.fallback_last_number}


def _max_model_len(path: str, lengths: Sequence[int], max_tokens: int, requested: Optional[int]) -> int:
    """The engine's context: --max-model-len, else the longest prompt + --max-tokens, capped at the
    model's positions (prompts that then do not fit are scored `overlong_prompt`, not fatal)."""
    if requested:
        return requested
    need = max(lengths, default=0) + max_tokens + 8
    try:
        from transformers import AutoConfig

        limit = int(getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", 0) or 0)
    except Exception:
        limit = 0
    if limit and need > limit:
        if max_tokens >= limit:
            raise EvalError(f"--max-tokens {max_tokens} leaves no room for a prompt in the model's "
                            f"{limit} positions; lower --max-tokens")
        return limit
    return ((need + 63) // 64) * 64


def _prompt_for(model: "ModelSpec", requested: Optional[str]) -> str:
    """--prompt, else the template the run was trained with, else qwen_math."""
    if requested:
        return requested
    if model.run_dir:
        trained = _dotted(_run_config(Path(model.run_dir)), "rollout.prompt_template")
        if trained:
            return str(trained)
    return "qwen_math"


def evaluate_model(model: ModelSpec, problems: Mapping[str, list], args, grader: Grader,
                   samples_out: Optional[list] = None) -> dict:
    """One model: start a vLLM engine (egsw_rl.actors.generator.Generator, in this process),
    generate, grade; returns the results.json record."""
    from transformers import AutoTokenizer

    from egsw_rl.actors.generator import Generator
    from egsw_rl.config import ModelConfig, RolloutConfig, resolve_device

    device = resolve_device(args.device)
    tok = AutoTokenizer.from_pretrained(model.path, trust_remote_code=args.trust_remote_code)
    prompt = _prompt_for(model, args.prompt)
    rendered = {b: render_prompts(tok, [p.question for p in ps], prompt) for b, ps in problems.items()}
    length = {}
    for b, ps in problems.items():
        for p, ids in zip(ps, prompts.encode_prompts(tok, rendered[b], prompt)):
            length[p.question] = len(ids)
    max_len = _max_model_len(model.path, list(length.values()), args.max_tokens, args.max_model_len)
    budget = max_len - args.max_tokens
    enforce_eager = args.enforce_eager if args.enforce_eager is not None else device == "cpu"
    template = "chat" if prompt in PROMPTS else prompt  # chat: no extra special tokens
    rollout = RolloutConfig(num_generators=1, tensor_parallel_size=args.tensor_parallel_size,
                            gpu_memory_utilization=args.gpu_memory_utilization,
                            cpu_kvcache_gib=args.kv_cache_gib, max_model_len=max_len,
                            enforce_eager=enforce_eager, seed=args.seed, n=args.n,
                            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                            max_tokens=args.max_tokens, logprobs=0, prompt_template=template)
    t0 = time.perf_counter()
    gen = Generator(ModelConfig(path=model.path, dtype=args.dtype, trust_remote_code=args.trust_remote_code),
                    rollout, device)
    start_s = time.perf_counter() - t0
    print(f"[eval] {model.name}: vLLM engine up in {start_s:.1f} s ({model.path})", file=sys.stderr, flush=True)
    by_question = {}
    for b, ps in problems.items():
        for p, prompt in zip(ps, rendered[b]):
            by_question[p.question] = prompt
    try:
        fn = generator_fn(gen, render=lambda qs: [by_question[q] for q in qs])
        t1 = time.perf_counter()
        res = evaluate(fn, problems, n=args.n, ks=args.ks, grader=grader, batch_size=args.batch_size,
                       samples_out=samples_out, too_long=lambda qs: [length[q] > budget for q in qs],
                       progress=lambda m: print(f"[eval] {model.name}: {m}", file=sys.stderr, flush=True))
        total_s = time.perf_counter() - t1
    finally:
        gen.close()
    tokens = sum(r.tokens or 0 for r in res.values())
    gen_s = sum(r.generate_s for r in res.values())
    return {"name": model.name, "label": model.label, "model": model.spec, "model_path": model.path,
            "run_dir": model.run_dir, "step": model.step, "settings": {**_settings(args), "prompt": prompt,
                                                                         "max_model_len": max_len},
            "benchmarks": {b: r.to_json() for b, r in res.items()},
            "timing": {"engine_start_s": start_s, "eval_s": total_s, "generate_s": gen_s,
                       "tokens": tokens, "tokens_per_s": tokens / gen_s if gen_s else None,
                       "problems_per_s": sum(r.problems for r in res.values()) / total_s if total_s else None}}


def _int_list(s: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m egsw_rl.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", help="HF folder, hub name, tiny / smollm2, run directory or "
                   "checkpoint directory; several are evaluated one after the other")
    p.add_argument("--label", nargs="+", help="group label per --model (default: the run's algo.name, "
                   "else the model name); --compare groups by it")
    p.add_argument("--benchmarks", default=",".join(DEFAULT_BENCHMARKS),
                   help="comma-separated: math500, aime24, aime25, gsm8k, gpqa_diamond, or NAME=PATH "
                   "(default: %(default)s)")
    p.add_argument("--gpqa", help="GPQA-Diamond file (.csv as published / .jsonl / .parquet); adds gpqa_diamond")
    p.add_argument("--limit", type=int, default=None, help="first N problems per benchmark")
    p.add_argument("--n", type=int, default=1, help="samples per problem (default 1)")
    p.add_argument("--k", dest="ks", type=_int_list, default=None,
                   help="pass@k values, comma-separated (default: 1 and n)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=-1)
    p.add_argument("--max-tokens", type=int, default=3000, help="new tokens per completion (default %(default)s)")
    p.add_argument("--max-model-len", type=int, default=None, help="default: longest prompt + max-tokens")
    p.add_argument("--prompt", default=None, help="qwen_math, qwen_math_user, chat, or a template containing "
                   "{question} (default: a run's own rollout.prompt_template, else qwen_math)")
    p.add_argument("--extraction", default="boxed_then_latex", help="answer extraction of egsw_rl.rewards "
                   "(boxed | boxed_then_latex | boxed_then_any)")
    p.add_argument("--fallback-last-number", action="store_true", help="grade the last number when nothing "
                   "is boxed or anchored")
    p.add_argument("--seed", type=int, default=0, help="engine seed (and GPQA option shuffling)")
    p.add_argument("--batch-size", type=int, default=64, help="problems per generate call (progress is reported per call)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    p.add_argument("--kv-cache-gib", type=float, default=float(os.environ.get("VLLM_CPU_KVCACHE_SPACE", 1) or 1),
                   help="CPU only: KV cache size (default $VLLM_CPU_KVCACHE_SPACE or 1)")
    p.add_argument("--enforce-eager", dest="enforce_eager", action="store_true", default=None,
                   help="no CUDA graphs / torch.compile (default on CPU)")
    p.add_argument("--no-enforce-eager", dest="enforce_eager", action="store_false")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--reward-workers", type=int, default=2)
    p.add_argument("--reward-timeout", type=float, default=10.0, help="seconds per graded sample")
    p.add_argument("--out", help="write results.json, results.md, samples.jsonl here "
                   "(default for a run directory: <run>/eval)")
    p.add_argument("--no-samples", action="store_true", help="do not write samples.jsonl")
    p.add_argument("--compare", nargs="+", metavar="RESULTS_OR_RUN",
                   help="compare mode: results.json files, eval output dirs or run dirs; mean ± std per label")
    p.add_argument("--labels", help="compare mode: comma-separated label per input (default: stored labels)")
    p.add_argument("--label-key", help="compare mode: derive labels from each run's config.yaml key, e.g. algo.name")
    p.add_argument("--metric", default="accuracy", help="compare mode: accuracy (avg@n) or pass@k")
    return p


def _write(out: Path, records: list[dict], samples: Optional[list], metric_tables: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    payload = {"egsw_rl_eval": RESULTS_FORMAT, "results": records}
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.rename(out / "results.json")
    (out / "results.md").write_text(metric_tables + "\n")
    if samples is not None:
        with (out / "samples.jsonl").open("w", encoding="utf-8") as f:
            for s in samples:
                f.write(json.dumps(s) + "\n")


def _tables(records: list[dict], ks: Sequence[int]) -> str:
    parts = [results_markdown(records)]
    for k in ks:
        if k > 1:
            parts.append(results_markdown(records, f"pass@{k}"))
    return "\n\n".join(parts)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # The engine core runs in this process (no separate scheduler process to leave a core for);
    # without this vLLM CPU drops torch to one thread fewer than the cores (2 -> 1 here: measured
    # 19 vs 28 tokens/s on SmolLM2). An explicit OMP_NUM_THREADS wins.
    if hasattr(os, "sched_getaffinity"):
        os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.compare:
            labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
            md, summary = compare(args.compare, labels=labels, metric=args.metric, label_key=args.label_key)
            print(md)
            if args.out:
                out = Path(args.out)
                out.mkdir(parents=True, exist_ok=True)
                (out / "compare.md").write_text(md + "\n")
                (out / "compare.json").write_text(json.dumps(summary, indent=1))
            return 0
        if not args.model:
            raise EvalError("give --model (or --compare)")
        if args.n < 1:
            raise EvalError("--n must be >= 1")
        if args.n > 1 and args.temperature == 0:
            raise EvalError("--n > 1 with --temperature 0 draws the same greedy completion n times; "
                            "use --n 1, or sample (e.g. --temperature 0.6 --top-p 0.95)")
        if args.label and len(args.label) != len(args.model):
            raise EvalError(f"--label gives {len(args.label)} labels for {len(args.model)} models")
        args.ks = sorted({k for k in (args.ks or [1, args.n]) if 1 <= k <= args.n})
        models = [resolve_model(m, args.label[i] if args.label else None) for i, m in enumerate(args.model)]
        problems = {name: load_benchmark(name, path, limit=args.limit, seed=args.seed)
                    for name, path in _parse_benchmarks(args.benchmarks, args.gpqa)}
        out = Path(args.out) if args.out else (Path(models[0].run_dir) / "eval"
                                               if len(models) == 1 and models[0].run_dir else None)
        records: list[dict] = []
        samples: Optional[list] = None if args.no_samples or out is None else []
        with Grader(workers=args.reward_workers, timeout_s=args.reward_timeout, extraction=args.extraction,
                    fallback_last_number=args.fallback_last_number) as grader:
            for m in models:
                rec_samples: Optional[list] = [] if samples is not None else None
                rec = evaluate_model(m, problems, args, grader, rec_samples)
                if samples is not None:
                    samples += [dict(s, model=m.name) for s in rec_samples]
                records.append(rec)
                if out is not None:  # after each model, so a crash keeps what was done
                    _write(out, records, samples, _tables(records, args.ks))
        print(_tables(records, args.ks))
        for r in records:
            t = r["timing"]
            tps = f"{t['tokens_per_s']:.0f}" if t["tokens_per_s"] else "-"
            print(f"\n{r['name']}: engine start {t['engine_start_s']:.1f} s, eval {t['eval_s']:.1f} s, "
                  f"{t['tokens']} tokens generated at {tps} tokens/s", file=sys.stderr)
        if out is not None:
            print(f"\nwrote {out / 'results.json'} and {out / 'results.md'}", file=sys.stderr)
        return 0
    except Exception as e:
        from egsw_rl.data import DataError
        from egsw_rl.models.smollm2 import SmolLM2Unavailable

        if isinstance(e, (EvalError, DataError, SmolLM2Unavailable)):  # user errors: no traceback
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
