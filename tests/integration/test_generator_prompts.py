"""Prompt rendering and encoding rules of the generation workers (no engine needed)."""

from __future__ import annotations

import pytest

from egsw_rl.actors.generator import BOXED_INSTRUCTION, Generator, render_prompts


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def make(tok, **kw):
    """A Generator with a tokenizer and a config but no engine: _encode needs only those."""
    from egsw_rl.config import RolloutConfig

    g = Generator.__new__(Generator)
    g.tokenizer = tok
    g.rcfg = RolloutConfig(**{"max_model_len": 64, "max_tokens": 16, **kw})
    return g


def test_chat_template(tok):
    (p,) = render_prompts(tok, ["What is 1 + 1?"], "chat")
    assert p == "<|im_start|>user\nWhat is 1 + 1?<|im_end|>\n<|im_start|>assistant\n"


def test_qwen_math_template(tok):
    (p,) = render_prompts(tok, ["What is 1 + 1?"], "qwen_math")
    assert p == (
        f"<|im_start|>system\n{BOXED_INSTRUCTION}<|im_end|>\n"
        "<|im_start|>user\nWhat is 1 + 1?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_plain_template_keeps_other_braces(tok):
    t = "Question: {question}\n" + BOXED_INSTRUCTION + "\nAnswer:"
    (p,) = render_prompts(tok, ["What is {x}?"], t)
    assert p == "Question: What is {x}?\n" + BOXED_INSTRUCTION + "\nAnswer:"
    with pytest.raises(ValueError, match="prompt template .no placeholder here.: use qwen_math"):
        render_prompts(tok, ["q"], "no placeholder here")


def test_chat_template_required(tok):
    import copy

    bare = copy.deepcopy(tok)
    bare.chat_template = None
    with pytest.raises(ValueError, match="needs a chat template"):
        render_prompts(bare, ["q"], "qwen_math")


def test_overlong_prompt_error_names_index_and_limit(tok):
    g = make(tok, max_model_len=128)
    ok = render_prompts(tok, ["short"], "qwen_math")[0]
    long = ok + " 1 +" * 100
    with pytest.raises(
        ValueError,
        match=r"prompt 2 has \d+ tokens, more than rollout.max_model_len - "
        r"rollout.max_tokens = 128 - 16 = 112",
    ):
        g._encode([ok, ok, long], 16)


def test_overlong_prompt_truncate_left(tok):
    g = make(tok, overlong_prompt="truncate_left")
    long = "What is " + " + ".join(["7"] * 100) + "?<|im_end|>\n<|im_start|>assistant\n"
    full = tok(long, add_special_tokens=False)["input_ids"]
    (ids,) = g._encode([long], 16)
    assert len(full) > 48 and len(ids) == 48
    assert ids == full[-48:]  # the end (the generation prompt) is kept


def test_empty_prompt_refused(tok):
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        make(tok)._encode([""], 16)
