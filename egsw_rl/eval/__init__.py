"""Benchmark evaluation: `python -m egsw_rl.eval` (see `egsw_rl.eval.cli`) and the trainer's
periodic eval, one module per concern:

    scores.py      pass@k and avg@n, the per-benchmark record, the eval/<benchmark>/* metric keys
    loop.py        evaluate(generate_fn, benchmarks): generate, grade, summarise; generator_fn
    grader.py      Grader: egsw_rl.rewards pools, or the trainer's reward actor
    benchmarks.py  benchmarks by name or file (GPQA-Diamond's CSV included)
    models.py      --model to a folder, row name and label; the prompt a run was trained with
    tables.py      Markdown tables laid out like the EGSW paper's Tables 1-2 (arXiv 2503.22456)
    cli.py         the command line: one vLLM engine per model, results.json / results.md / samples.jsonl

For the trainer: `evaluate(generate_fn, benchmarks, n=..., ks=..., grader=...)` evaluates with
an already-running generator, `generator_fn(...)` adapts a `Generator` / `GeneratorGroup`, and
`eval_metrics(results)` gives the `eval/<benchmark>/accuracy` keys. Comparing the results of
several runs lives in `egsw_rl.compare`.
"""

from egsw_rl.eval.benchmarks import DEFAULT_BENCHMARKS, load_benchmark, parse_benchmarks
from egsw_rl.eval.grader import Grader
from egsw_rl.eval.loop import EvalError, GenerateFn, evaluate, generator_fn
from egsw_rl.eval.models import ModelSpec, prompt_for, render_prompts, resolve_model
from egsw_rl.eval.scores import OVERLONG, BenchmarkResult, eval_metrics, pass_at_k
from egsw_rl.eval.tables import fmt_pct, markdown_table, results_markdown

__all__ = [
    "DEFAULT_BENCHMARKS",
    "OVERLONG",
    "BenchmarkResult",
    "EvalError",
    "GenerateFn",
    "Grader",
    "ModelSpec",
    "eval_metrics",
    "evaluate",
    "fmt_pct",
    "generator_fn",
    "load_benchmark",
    "markdown_table",
    "parse_benchmarks",
    "pass_at_k",
    "prompt_for",
    "render_prompts",
    "resolve_model",
    "results_markdown",
]
