"""The word problems of `conf=smollm2_cpu`: seeded, their gold the arithmetic the sentence
describes, every noun plural and every answer a whole number >= 1, and the held-out numbers never in
training whatever the wording."""

from __future__ import annotations

import re

import pytest

from egsw_rl.data import WORD_KINDS, DataError, load_problems, word_problems

# Each kind's sentence read back into its operands (the generator's templates, independently)
PATTERNS = {
    "add": (r"\w+ has (\d+) (\w+)\. \w+ gets (\d+) more \2\. How many \2 does \w+ have now\?", "a+b"),
    "sub": (r"\w+ has (\d+) (\w+)\. \w+ gives (\d+) \2 to \w+\. How many \2 does \w+ have left\?", "a-b"),
    "mul": (r"\w+ has (\d+) boxes\. Each box holds (\d+) (\w+)\. How many \3 does \w+ have in all\?", "a*b"),
    "add_sub": (
        r"\w+ has (\d+) (\w+)\. \w+ gets (\d+) more \2 and then gives (\d+) \2 to \w+\. "
        r"How many \2 does \w+ have now\?",
        "a+b-c",
    ),
}


def _read(question: str) -> tuple[str, tuple[int, ...], int]:
    """(kind, operands, value) of a question, by matching it against every kind's sentence."""
    for kind, (pattern, formula) in PATTERNS.items():
        m = re.fullmatch(pattern, question)
        if m:
            operands = tuple(int(g) for g in m.groups() if g.isdigit())
            return kind, operands, eval(formula, {}, dict(zip("abc", operands)))
    raise AssertionError(f"no template matches {question!r}")


def test_seeded_and_gold_is_the_arithmetic():
    every = tuple(WORD_KINDS)
    a = word_problems(300, seed=3, kinds=every)
    assert a == word_problems(300, seed=3, kinds=every) and a != word_problems(300, seed=4, kinds=every)
    seen = set()
    for p in a:
        kind, operands, value = _read(p.question)
        seen.add(kind)
        assert p.answer == str(value) and value >= 1, p
        assert min(operands) >= 2 and max(operands[:2]) <= 10, p  # "2 apples", never "1 apples"
        if kind == "add_sub":  # what is given away may exceed 10, never what there is
            assert operands[2] < operands[0] + operands[1], p
    assert seen == set(WORD_KINDS)


def test_default_kinds_and_limits():
    kinds = {_read(p.question)[0] for p in word_problems(200)}
    assert kinds == {"add", "sub", "add_sub"}  # multiplication only when asked for
    big = word_problems(200, max_operand=20, kinds=("add",))
    assert max(max(_read(p.question)[1]) for p in big) > 10
    with pytest.raises(DataError, match="choose from"):
        word_problems(5, kinds=("div",))


def test_heldout_numbers_never_in_training():
    key = lambda ps: {_read(p.question)[:2] for p in ps}  # noqa: E731  (kind, operands)
    every = tuple(WORD_KINDS)
    train = key(word_problems(20000, seed=0, kinds=every))
    test = key(word_problems(2000, seed=0, split="test", kinds=every))
    assert not train & test and len(test) > 50
    whole = key(word_problems(20000, seed=0, split="all", kinds=every))
    assert 0.1 < len(test) / len(whole) < 0.3  # about a fifth held out
    # the same held-out numbers whatever the seed: a run's training never sees another run's test
    assert not key(word_problems(20000, seed=1, kinds=every)) & test


def test_load_problems_names():
    train, skipped = load_problems("word_problems", max_samples=50, seed=2)
    test, _ = load_problems("word_problems_heldout", max_samples=50, seed=2)
    assert skipped == 0 and len(train) == len(test) == 50
    assert train == word_problems(50, seed=2) and test == word_problems(50, seed=2, split="test")
    assert {p.id.split("-")[1] for p in train} == {"train"} and {p.id.split("-")[1] for p in test} == {"test"}


def test_chat_boxed_prompt_asks_only_for_the_boxed_answer(tiny_model_dir):
    from transformers import AutoTokenizer

    from egsw_rl.prompts import CHAT_TEMPLATES, encode_prompts, render_prompts

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    [q] = [p.question for p in word_problems(1)]
    [s] = render_prompts(tok, [q], "chat_boxed")
    assert "chat_boxed" in CHAT_TEMPLATES  # rendered by the chat template, stops at its turn end
    assert f"<|im_start|>user\n{q}\nPut your final answer within \\boxed{{}}.<|im_end|>" in s
    assert "step by step" not in s and s.endswith("<|im_start|>assistant\n")
    assert encode_prompts(tok, [s], "chat_boxed") == [tok(s, add_special_tokens=False)["input_ids"]]
