"""The evaluation loop: generate n samples per problem, grade them, summarise per benchmark.

`evaluate(generate_fn, benchmarks, ...)` works with any generator: the CLI's own vLLM engine
(`egsw_rl.eval.cli`) and the trainer's running generator group (periodic eval) alike, through
`generator_fn`. Rendering prompts is the generate_fn's business, grading the `Grader`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from egsw_rl.eval.grader import Grader
from egsw_rl.eval.scores import OVERLONG, BenchmarkResult, summarise
from egsw_rl.eval.tables import fmt_pct

# generate_fn(questions, n) -> one list of n completions per question; a completion is a str or
# an object with .text (and optionally .token_ids, .finish_reason, e.g. egsw_rl.batch.Completion).
GenerateFn = Callable[[Sequence[str], int], Sequence[Sequence[Any]]]


class EvalError(ValueError):
    """A user error of evaluation (a bad flag, benchmark or model): one line, no traceback."""


def _text(c) -> str:
    return c if isinstance(c, str) else str(getattr(c, "text", c))


def evaluate(
    generate_fn: GenerateFn,
    benchmarks: Mapping[str, Sequence],
    *,
    n: int = 1,
    ks: Iterable[int] = (1,),
    grader: Grader | None = None,
    batch_size: int | None = None,
    samples_out: list | None = None,
    progress: Callable[[str], None] | None = None,
    too_long: Callable[[Sequence[str]], Sequence[bool]] | None = None,
) -> dict[str, BenchmarkResult]:
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
            over = (
                set(i for i, flag in enumerate(too_long([p.question for p in problems])) if flag)
                if too_long
                else set()
            )
            if over and progress:
                progress(
                    f"{name}: {len(over)} of {len(problems)} prompts do not fit the context: "
                    f"scored 0 as {OVERLONG}"
                )
            todo = [i for i in range(len(problems)) if i not in over]
            comps: list[list] = [[""] * n for _ in problems]
            step = batch_size or max(1, len(todo))
            for s in range(0, len(todo), step):
                chunk = todo[s : s + step]
                got = list(generate_fn([problems[i].question for i in chunk], n))
                if len(got) != len(chunk) or any(len(g) != n for g in got):
                    raise EvalError(
                        f"generate_fn returned {[len(g) for g in got]} completions for "
                        f"{len(chunk)} questions x n={n}"
                    )
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
                idx = [
                    i
                    for i, p in enumerate(problems)
                    if (task == "choice") == bool(p.choices) and i not in over
                ]
                if not idx:
                    continue
                flat = [(i, j) for i in idx for j in range(n)]
                graded = grader(
                    [_text(comps[i][j]) for i, j in flat],
                    [problems[i].answer for i, _ in flat],
                    [problems[i].choices for i, _ in flat] if task == "choice" else None,
                    task=task,
                )
                for (i, j), r in zip(flat, graded):
                    results[i * n + j] = r
            grade_s = time.perf_counter() - t1
            out[name] = summarise(name, problems, comps, results, n, ks, gen_s, grade_s)
            if samples_out is not None:
                for i, p in enumerate(problems):
                    for j in range(n):
                        r = results[i * n + j]
                        samples_out.append(
                            {
                                "benchmark": name,
                                "id": p.id,
                                "sample": j,
                                "gold": p.answer,
                                "status": r.status,
                                "parsed": r.parsed,
                                "boxed": r.boxed,
                                "text": _text(comps[i][j]),
                            }
                        )
            if progress:
                b = out[name]
                progress(
                    f"{name}: avg@{n} {fmt_pct(b.accuracy)}% over {b.problems} problems "
                    f"(boxed {fmt_pct(b.boxed_rate)}%, {gen_s:.1f} s generation, "
                    f"{grade_s:.1f} s grading)"
                )
    finally:
        if own:
            grader.close()
    return out


def _overlong_result():
    from egsw_rl.rewards import RewardResult

    return RewardResult(0.0, OVERLONG, None, False, "prompt longer than the context allows")


def generator_fn(
    generator, *, render: Callable[[Sequence[str]], list[str]] | None = None, **sampling
) -> GenerateFn:
    """A generate_fn over an `actors.generator.Generator` or `GeneratorGroup` (both have
    `render` and `generate(prompts, n, **overrides)`). `render` turns questions into prompt
    strings (default: the generator's own, i.e. its `rollout.prompt_template`; for Qwen2.5-Math's
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
