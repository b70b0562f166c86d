"""The prompt budget: which problems fit max_model_len - max_tokens, and what each policy does."""

import json

import pytest
from omegaconf import OmegaConf

from egsw_rl.data import DataError, load_run_data
from egsw_rl.prompts import PromptError, encode_prompts, fit_to_budget, render_prompts


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def _lengths(tok, questions, template="qwen_math"):
    return [len(x) for x in encode_prompts(tok, render_prompts(tok, questions, template), template)]


def test_fit_counts_the_rendered_prompt_against_the_budget(tok):
    qs = ["What is 1 + 1?", "What is " + "1 + " * 200 + "1?", "What is 2 + 2?"]
    n = _lengths(tok, qs)
    budget = max(n[0], n[2])  # the short ones fit exactly, the long one does not
    fit = fit_to_budget(tok, qs, "qwen_math", budget, "drop")
    assert fit.kept == [0, 2] and fit.overlong == [(1, n[1])] and fit.longest == n[1]
    assert f"1 of 3 prompts longer than the {budget}-token budget" in fit.report("x")
    assert fit_to_budget(tok, qs, "qwen_math", budget, "truncate_left").kept == [0, 1, 2]
    with pytest.raises(PromptError, match="rollout.overlong_prompt=drop"):
        fit_to_budget(tok, qs, "qwen_math", budget, "error")
    with pytest.raises(PromptError, match="no room"):
        fit_to_budget(tok, qs, "qwen_math", 0)


def _cfg(train, eval_sets, policy, max_model_len, max_tokens):
    return OmegaConf.create(
        {
            "data": {
                "train": str(train),
                "split": "train",
                "question_key": "question",
                "answer_key": "answer",
                "answer_format": "auto",
                "max_samples": None,
                "eval": [str(e) for e in eval_sets],
                "eval_samples": 10,
            },
            "rollout": {
                "max_model_len": max_model_len,
                "max_tokens": max_tokens,
                "prompt_template": "qwen_math",
                "overlong_prompt": policy,
            },
            "trainer": {"seed": 0},
        }
    )


def test_run_data_drops_long_training_rows_once_and_marks_long_eval_problems(tok, tmp_path, caplog):
    long_q = "What is " + "1 + " * 200 + "1?"
    rows = [{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(6)]
    rows.insert(3, {"question": long_q, "answer": "201"})
    train, ev = tmp_path / "train.jsonl", tmp_path / "ev.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ev.write_text(
        json.dumps({"question": long_q, "answer": "201"})
        + "\n"
        + json.dumps({"question": "What is 3 + 4?", "answer": "7"})
        + "\n"
    )
    short = max(_lengths(tok, [r["question"] for r in rows if r["question"] != long_q]))
    caplog.set_level("WARNING")
    data = load_run_data(_cfg(train, [ev], "drop", 64 + short, 64), tok)
    assert [p.answer for p in data.train] == ["1", "2", "3", "4", "5", "6"] and data.dropped_overlong == 1
    assert data.eval_overlong["ev"] == {long_q} and len(data.eval_sets["ev"]) == 2
    assert len(data.reports) == 2 and "1 rows left out" in data.reports[0]
    assert sum("prompt" in r.message and "budget" in r.message for r in caplog.records) == 2

    with pytest.raises(PromptError, match="1 of 7 prompts longer"):
        load_run_data(_cfg(train, [], "error", 64 + short, 64), tok)
    kept = load_run_data(_cfg(train, [ev], "truncate_left", 64 + short, 64), tok)
    assert len(kept.train) == 7 and kept.eval_overlong["ev"] == set()
    with pytest.raises(DataError, match="no problem fits"):
        load_run_data(_cfg(train, [], "drop", 64 + 5, 64), tok)
