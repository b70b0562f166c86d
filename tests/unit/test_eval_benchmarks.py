"""Benchmarks by name or file (egsw_rl.eval.benchmarks): --benchmarks parsing, the shipped sets,
GPQA-Diamond's published CSV graded by letter."""

from __future__ import annotations

import pytest

from egsw_rl.eval.benchmarks import load_benchmark, parse_benchmarks
from egsw_rl.eval.loop import EvalError


def test_parse_benchmarks():
    assert parse_benchmarks("math500, aime24", None) == [("math500", None), ("aime24", None)]
    assert parse_benchmarks("gsm8k,mine=/x/y.jsonl", "/g.csv") == [
        ("gsm8k", None),
        ("mine", "/x/y.jsonl"),
        ("gpqa_diamond", "/g.csv"),
    ]
    with pytest.raises(EvalError):
        parse_benchmarks("math500,math500", None)


def test_load_benchmarks_local_and_gpqa_csv(tmp_path):
    import csv

    math500 = load_benchmark("math500", limit=5)
    assert len(math500) == 5 and all(p.answer for p in math500)
    aime = load_benchmark("aime24")
    assert len(aime) == 30
    gsm = load_benchmark("gsm8k", limit=3)
    assert all(p.answer.replace("-", "").isdigit() for p in gsm)
    with pytest.raises(EvalError):
        load_benchmark("mystery_set")
    path = tmp_path / "gpqa_diamond.csv"
    cols = ["Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        for i in range(4):
            w.writerow(
                {
                    "Question": f"Which is right {i}?",
                    "Correct Answer": f"good{i}",
                    "Incorrect Answer 1": "bad1",
                    "Incorrect Answer 2": "bad2",
                    "Incorrect Answer 3": "bad3",
                }
            )
    gpqa = load_benchmark("gpqa_diamond", str(path))
    assert len(gpqa) == 4
    for i, p in enumerate(gpqa):
        assert p.choices is not None and p.choices["ABCD".index(p.answer)] == f"good{i}"
        assert f"({p.answer}) good{i}" in p.question


def test_generated_sets_are_benchmarks_by_name():
    """The held-out split of a generated training set evaluates by its data name, as in training's
    data.eval: the same problems, none of them from the training split."""
    from egsw_rl.data import GENERATED, load_problems

    for name in GENERATED:
        held = load_benchmark(f"{name}_heldout", limit=16)
        assert len(held) == 16
        assert [p.question for p in held] == [p.question for p in load_problems(f"{name}_heldout")[0][:16]]
        train = {p.question for p in load_problems(name, max_samples=4096)[0]}
        assert not train & {p.question for p in held}
    with pytest.raises(EvalError, match="word_problems_heldout"):
        load_benchmark("word_problem_heldout")
