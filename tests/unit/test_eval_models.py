"""Which model and prompt `python -m egsw_rl.eval` uses (egsw_rl.eval.models): run and checkpoint
directories, the one prompt renderer training and evaluation share, a run's own template."""

from __future__ import annotations

import pytest

from egsw_rl.eval.loop import EvalError
from egsw_rl.eval.models import ModelSpec, prompt_for, render_prompts, resolve_model
from egsw_rl.runlog import run_label


def test_one_renderer_for_training_and_evaluation(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from egsw_rl import prompts
    from egsw_rl.actors import generator

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    for name in ("qwen_math", "qwen_math_user", "chat", "Question: {question}\\boxed{}"):
        assert (
            render_prompts(tok, ["What is 1+1?"], name)
            == prompts.render_prompts(tok, ["What is 1+1?"], name)
            == generator.render_prompts(tok, ["What is 1+1?"], name)
        ), name
    [s] = render_prompts(tok, ["Q"], "qwen_math")  # Qwen2.5-Math's: the instruction is the system turn
    assert s.index("<|im_start|>system\nPlease reason") < s.index("<|im_start|>user\nQ<|im_end|>")
    [u] = render_prompts(tok, ["What is 1+1?"], "qwen_math_user")  # SimpleRL-Zoo's: in the user turn
    assert (
        "<|im_start|>user\nWhat is 1+1?\nPlease reason step by step, and put your final answer "
        "within \\boxed{}.<|im_end|>"
    ) in u and u.endswith("<|im_start|>assistant\n")
    assert render_prompts(tok, ["Q"], "Question: {question}\\boxed{}") == ["Question: Q\\boxed{}"]
    with pytest.raises(EvalError):
        render_prompts(tok, ["Q"], "no placeholder")
    # a trained run is evaluated with the template it was trained with, unless told otherwise
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("rollout:\n  prompt_template: qwen_math_user\n")
    spec = ModelSpec("x", str(tiny_model_dir), "x", "x", run_dir=str(run))
    assert prompt_for(spec, None) == "qwen_math_user"
    assert prompt_for(spec, "chat") == "chat"
    assert prompt_for(ModelSpec("m", "m", "m", "m"), None) == "qwen_math"


def test_resolve_model_run_and_checkpoint(tmp_path):
    from egsw_rl.checkpoint import mark_complete, step_dir

    run = tmp_path / "run"
    for step, complete in [(5, True), (10, True), (15, False)]:
        hf = step_dir(run, step) / "hf"
        hf.mkdir(parents=True)
        (hf / "config.json").write_text("{}")
        if complete:
            mark_complete(step_dir(run, step))
    (run / "config.yaml").write_text("algo:\n  name: egsw\ntrainer:\n  seed: 2\n")
    m = resolve_model(str(run))
    assert m.path == str(step_dir(run, 10) / "hf") and m.step == 10
    assert m.label == "egsw" and m.name == "run@10" and m.run_dir == str(run)
    c = resolve_model(str(step_dir(run, 5)), label="mine")
    assert c.path == str(step_dir(run, 5) / "hf") and c.step == 5 and c.label == "mine"
    assert run_label(run, "trainer.seed") == "2"
    plain = tmp_path / "hfmodel"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    assert resolve_model(str(plain)).path == str(plain)
    empty = tmp_path / "empty_run"
    (empty / "checkpoints").mkdir(parents=True)
    with pytest.raises(EvalError, match="no complete checkpoint"):
        resolve_model(str(empty))
