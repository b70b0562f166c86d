"""Model names that resolve to a local folder without a hub: "tiny" (random test model built on
the spot), "tiny_arith" (the tiny model after a short arithmetic warm-up, the embedded default's
starting point) and "smollm2" (SmolLM2-135M-Instruct converted from the GGUF shipped on PyPI). Any
other value is passed through: an HF folder or a hub name."""

from __future__ import annotations


def resolve_model_path(path: str) -> str:
    if path == "tiny":
        from egsw_rl.testing import tiny_model

        return str(tiny_model())
    if path == "tiny_arith":
        from egsw_rl.models.arithmetic import ensure_warm_model

        return str(ensure_warm_model())
    if path == "smollm2":
        from egsw_rl.models.smollm2 import ensure_converted

        return str(ensure_converted())
    return path


def vocab_size(model_path: str) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(model_path).vocab_size)
