"""Which model to evaluate and with which prompt.

`resolve_model` turns `--model` into the folder to load, as `model.path` resolves in training
(`egsw_rl.models.locate_model`), plus the row name and group label of the results; a trained run
is evaluated with the prompt template it was trained with (`prompt_for`), rendered by the one
renderer training uses (`render_prompts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from egsw_rl import prompts
from egsw_rl.eval.loop import EvalError
from egsw_rl.runlog import config_value, run_config, run_label


@dataclass
class ModelSpec:
    spec: str  # as given
    path: str  # the local model folder (a hub id resolved through the HF cache)
    name: str  # row label in tables (unique-ish)
    label: str  # group label for --compare (algo name for runs)
    run_dir: str | None = None
    step: int | None = None


def resolve_model(spec: str, label: str | None = None) -> ModelSpec:
    """Model spec -> the folder to load, as `model.path` resolves in training
    (`egsw_rl.models.locate_model`): a run directory (newest complete checkpoint's hf/), a
    checkpoint directory (its hf/), an HF folder, a built-in name, or a hub repo id (from the
    Hugging Face cache)."""
    from egsw_rl.models import ModelNotFoundError, locate_model

    try:
        m = locate_model(spec, key="--model")
    except ModelNotFoundError as e:
        raise EvalError(str(e)) from None
    if m.kind == "run":
        return ModelSpec(
            spec,
            str(m.path),
            f"{m.run_dir.name}@{m.step}",
            label or run_label(m.run_dir),
            run_dir=str(m.run_dir),
            step=m.step,
        )
    if m.kind == "checkpoint":
        run = m.run_dir
        ckpt = m.path.parent
        return ModelSpec(
            spec,
            str(m.path),
            f"{run.name}@{m.step}" if run is not None else ckpt.name,
            label or (run_label(run) if run is not None else ckpt.name),
            run_dir=str(run) if run is not None else None,
            step=m.step,
        )
    if m.kind == "folder":
        return ModelSpec(spec, str(m.path), m.path.name, label or m.path.name)
    return ModelSpec(spec, str(m.path), spec, label or spec)  # built-in name or hub repo id


def prompt_for(model: ModelSpec, requested: str | None) -> str:
    """--prompt, else the template the run was trained with, else qwen_math."""
    if requested:
        return requested
    if model.run_dir:
        trained = config_value(run_config(Path(model.run_dir)), "rollout.prompt_template")
        if trained:
            return str(trained)
    return "qwen_math"


def render_prompts(tokenizer, questions: Sequence[str], prompt: str = "qwen_math") -> list[str]:
    """Prompt strings for `questions`: `egsw_rl.prompts.render_prompts`, the renderer training
    uses, so a template name means the same text in both (qwen_math, qwen_math_user, chat, or a
    plain template containing {question})."""
    try:
        return prompts.render_prompts(tokenizer, questions, prompt)
    except prompts.PromptError as e:
        raise EvalError(f"--prompt: {e}") from None
