"""From grades to numbers: pass@k, avg@n and the per-benchmark record (pure Python, no I/O).

A benchmark of P problems with n samples each reduces to the count c_i of correct samples per
problem. avg@n is the mean of c_i / n over problems (with n = 1 at temperature 0, the greedy
accuracy); pass@k is the unbiased estimator of the chance that k of the n samples, drawn without
replacement, hold a correct one, averaged over problems (Chen et al., arXiv 2107.03374).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

OVERLONG = "overlong_prompt"  # a problem whose prompt does not fit: not generated, scored 0


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


@dataclass
class BenchmarkResult:
    name: str
    problems: int
    n: int
    accuracy: float  # avg@n: mean over problems and samples
    pass_at_k: dict[str, float]  # {"pass@1": ..., "pass@8": ...}
    boxed_rate: float  # fraction of completions whose answer came from a \boxed{}
    status: dict[str, int]
    mean_response_tokens: float | None = None
    truncated_frac: float | None = None  # finish_reason == "length"
    tokens: int | None = None
    generate_s: float = 0.0
    grade_s: float = 0.0
    tokens_per_s: float | None = None
    per_problem_correct: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def summarise(
    name: str,
    problems: Sequence,
    comps: Sequence[Sequence[Any]],
    results: Sequence,
    n: int,
    ks: Sequence[int],
    gen_s: float,
    grade_s: float,
) -> BenchmarkResult:
    """One benchmark's record from its completions (`comps[i][j]`, sample j of problem i) and
    their grades (`results[i * n + j]`, each with `.status` and `.boxed`)."""
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
        name=name,
        problems=len(problems),
        n=n,
        accuracy=statistics.fmean(c / n for c in correct),
        pass_at_k={f"pass@{k}": statistics.fmean(pass_at_k(n, c, k) for c in correct) for k in ks},
        boxed_rate=statistics.fmean(1.0 if r.boxed else 0.0 for r in results),
        status=status,
        mean_response_tokens=statistics.fmean(lengths) if lengths else None,
        truncated_frac=statistics.fmean(r == "length" for r in reasons) if reasons else None,
        tokens=tokens,
        generate_s=gen_s,
        grade_s=grade_s,
        tokens_per_s=(tokens / gen_s) if tokens and gen_s > 0 else None,
        per_problem_correct=correct,
    )


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
