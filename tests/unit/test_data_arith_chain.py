"""The multi-step arithmetic task of `conf=tiny_methods`: seeded, correct, its held-out expressions
never in training (nor in the warm-up, which draws from the training split), and the warm-up
settings of the embedded default unchanged by it."""

from __future__ import annotations

import re

from egsw_rl.data import arithmetic_chain_problems, load_problems
from egsw_rl.models import arithmetic


def _value(question: str) -> int:
    tokens = re.fullmatch(r"What is (.*)\?", question).group(1).split()
    value = int(tokens[0])
    for op, x in zip(tokens[1::2], tokens[2::2]):
        value = value + int(x) if op == "+" else value - int(x)
    return value


def test_chain_is_seeded_and_correct():
    a = arithmetic_chain_problems(200, seed=3)
    assert a == arithmetic_chain_problems(200, seed=3) and a != arithmetic_chain_problems(200, seed=4)
    for p in a:
        assert len(p.question.split()) == 2 + 5  # "What is" + three operands, two operators
        assert str(_value(p.question)) == p.answer
    assert any(int(p.answer) < 0 for p in a) and any("-" in p.question for p in a)
    assert len(arithmetic_chain_problems(50, terms=4)[0].question.split()) == 2 + 7


def test_chain_heldout_never_in_training_or_warmup():
    train = {p.question for p in arithmetic_chain_problems(20000, seed=0)}
    test = {p.question for p in arithmetic_chain_problems(2000, seed=0, split="test")}
    warm = {p.question for p in arithmetic.warmup_problems(arithmetic.CHAIN_SETTINGS)}
    assert not train & test and not warm & test
    every = {p.question for p in arithmetic_chain_problems(20000, seed=0, split="all")}
    assert 0.1 < len(test) / len(every) < 0.3  # about a fifth of the expressions held out
    got, skipped = load_problems("arith_chain_heldout", max_samples=64, seed=1)
    assert skipped == 0 and len(got) == 64 and not {p.question for p in got} & (train | warm)


def test_chain_warmup_always_boxes_and_default_unchanged():
    assert arithmetic.CHAIN_SETTINGS["boxed_frac"] == 1.0
    # the embedded default's cache key comes from SETTINGS: it must not move with this task
    assert "task" not in arithmetic.SETTINGS and arithmetic.SETTINGS["boxed_frac"] == 0.5
    assert arithmetic.warmup_problems(arithmetic.SETTINGS)[0].question.count(" ") == 4  # "What is a + b?"
