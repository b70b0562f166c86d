"""Evaluation arithmetic (egsw_rl.eval.scores, egsw_rl.eval.loop, egsw_rl.eval.grader): pass@k
against brute force, avg@n / pass@k through `evaluate` with a scripted generator and grader,
the eval/<benchmark>/* metric keys, and the real grader."""

from __future__ import annotations

import itertools
import statistics

import pytest

from egsw_rl.data import Problem
from egsw_rl.eval.grader import Grader
from egsw_rl.eval.loop import EvalError, evaluate, generator_fn
from egsw_rl.eval.scores import eval_metrics, pass_at_k
from egsw_rl.rewards import RewardResult


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of the k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_brute_force(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_special_values():
    assert pass_at_k(16, 4, 1) == pytest.approx(4 / 16)  # pass@1 is the sample accuracy
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 6, 5) == 1.0  # fewer than k wrong samples
    big = pass_at_k(1024, 3, 512)  # no overflow with large n
    assert 0.8 < big < 1.0
    for bad in [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


class ScriptedGrader:
    """Correct iff the completion text is 'right'; multiple choice iff choices were given."""

    def __init__(self):
        self.calls = []

    def __call__(self, texts, golds, choices=None, *, task="math"):
        self.calls.append((task, len(texts), choices is not None))
        return [
            RewardResult(
                1.0 if t == "right" else 0.0, "correct" if t == "right" else "wrong", t, boxed=t != "unboxed"
            )
            for t in texts
        ]

    def close(self):
        pass


def test_evaluate_avg_and_pass_at_k():
    # problem i gets (i+1) right answers out of n=4
    problems = [Problem(f"q{i}", "1", id=str(i)) for i in range(4)]

    def gen(questions, n):
        return [["right"] * (int(q[1:]) + 1) + ["wrong"] * (n - int(q[1:]) - 1) for q in questions]

    grader = ScriptedGrader()
    samples = []
    res = evaluate(
        gen, {"math500": problems}, n=4, ks=[1, 2, 4, 8], grader=grader, batch_size=3, samples_out=samples
    )
    r = res["math500"]
    assert r.problems == 4 and r.n == 4
    assert r.per_problem_correct == [1, 2, 3, 4]
    assert r.accuracy == pytest.approx((1 + 2 + 3 + 4) / 16)
    assert set(r.pass_at_k) == {"pass@1", "pass@2", "pass@4"}  # k > n dropped
    assert r.pass_at_k["pass@1"] == pytest.approx(r.accuracy)
    assert r.pass_at_k["pass@2"] == pytest.approx(
        statistics.fmean(brute_pass_at_k(4, c, 2) for c in (1, 2, 3, 4))
    )
    assert r.pass_at_k["pass@4"] == 1.0
    assert r.status["correct"] == 10 and r.status["wrong"] == 6
    assert len(samples) == 16 and samples[0]["benchmark"] == "math500" and samples[0]["status"] == "correct"
    assert r.mean_response_tokens is None  # plain strings: no token counts
    metrics = eval_metrics(res)
    assert metrics["eval/math500/accuracy"] == pytest.approx(10 / 16)
    assert metrics["eval/math500/pass@2"] == r.pass_at_k["pass@2"]
    assert metrics["eval/mean/accuracy"] == pytest.approx(10 / 16)


def test_evaluate_routes_choice_problems_and_counts_tokens():
    from types import SimpleNamespace

    problems = [Problem("m", "2"), Problem("c", "B", choices=("x", "y", "z", "w"))]

    def gen(questions, n):
        return [
            [
                SimpleNamespace(text="right", token_ids=[1, 2, 3], finish_reason="stop"),
                SimpleNamespace(text="unboxed", token_ids=[1], finish_reason="length"),
            ]
            for _ in questions
        ]

    grader = ScriptedGrader()
    r = evaluate(gen, {"mixed": problems}, n=2, grader=grader)["mixed"]
    assert sorted(grader.calls) == [("choice", 2, True), ("math", 2, False)]
    assert r.accuracy == 0.5
    assert r.boxed_rate == 0.5
    assert r.mean_response_tokens == 2.0 and r.truncated_frac == 0.5
    assert r.tokens == 8


def test_evaluate_rejects_wrong_sample_count():
    with pytest.raises(EvalError):
        evaluate(lambda qs, n: [["x"] for _ in qs], {"b": [Problem("q", "1")]}, n=2, grader=ScriptedGrader())


def test_generator_fn_groups_completions_by_prompt():
    from types import SimpleNamespace

    class FakeGen:
        def render(self, qs):
            return [f"<{q}>" for q in qs]

        def generate(self, prompts, n, **kw):
            assert kw["logprobs"] == 0 and kw["temperature"] == 0.0
            # deliberately out of order
            return [
                SimpleNamespace(prompt_index=b, sample_index=j, text=f"{p}{j}")
                for j in reversed(range(n))
                for b, p in enumerate(prompts)
            ]

    fn = generator_fn(FakeGen(), temperature=0.0)
    out = fn(["a", "b"], 2)
    assert [[c.text for c in row] for row in out] == [["<a>0", "<a>1"], ["<b>0", "<b>1"]]


def test_real_grader_math_and_choice():
    with Grader(workers=1, timeout_s=10.0) as g:
        res = g(["so \\boxed{\\frac{1}{2}}", "\\boxed{3}", "no answer here"], ["0.5", "4", "1"])
        assert [r.status for r in res] == ["correct", "wrong", "no_answer"]
        res = g(
            ["The answer is \\boxed{B}", "\\boxed{C}"], ["B", "B"], [("a", "b", "c", "d")] * 2, task="choice"
        )
        assert [r.status for r in res] == ["correct", "wrong"]


def test_a_prompt_that_does_not_fit_is_scored_overlong_not_generated():
    from egsw_rl.data import Problem

    asked = []

    def gen(questions, n):
        asked.extend(questions)
        return [[r"\boxed{2}"] * n for _ in questions]

    probs = [Problem("What is 1+1?", "2", id="a"), Problem("long " * 50, "2", id="b")]
    res = evaluate(gen, {"b": probs}, n=2, too_long=lambda qs: [len(q) > 100 for q in qs])["b"]
    assert asked == ["What is 1+1?"]
    assert res.status["overlong_prompt"] == 2 and res.status["correct"] == 2
    assert res.accuracy == 0.5 and res.per_problem_correct == [2, 0]
    assert eval_metrics({"b": res})["eval/b/overlong_prompt"] == 1
