"""`model.path` -> a model folder on this machine, the same way for every part that opens a model
(learner, reference model, vLLM engine, weight-sync check, evaluation, the driver's vocab size).

Accepted, tried in this order:
  1. a built-in name: "tiny", "tiny_arith", "smollm2" (built or converted locally, cached);
  2. an existing local path: a run directory (its newest complete checkpoint's `hf/` export), a
     checkpoint directory (its `hf/`), or a Hugging Face model folder (has `config.json`);
  3. a hub repo id ("Qwen/Qwen2.5-Math-7B"): the snapshot in the standard Hugging Face cache
     (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`). The cache is looked
     at first, so a populated cache never touches the network; a missing or incomplete snapshot
     is downloaded unless `HF_HUB_OFFLINE=1`.

The driver hands actors `model.path` with hub ids left as ids (`portable_model_path`): each actor
resolves the id on its own node, against that node's cache or a shared `HF_HOME`. A snapshot path
resolved on the driver would name a file on the driver's disk.
"""

from __future__ import annotations

import glob
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

BUILTIN = ("tiny", "tiny_arith", "tiny_arith_chain", "smollm2")
# What a model folder needs here: config, tokenizer (json / sentencepiece / tiktoken / merges),
# chat template, safetensors weights, and the code of trust_remote_code models. Repos often carry
# the same weights a second time as .bin / .pth / .gguf: never fetched.
META_PATTERNS = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.py"]
WEIGHT_PATTERNS = ["*.safetensors"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_TRUE = {"1", "on", "yes", "true"}


class ModelNotFoundError(FileNotFoundError):
    """`model.path` names no usable model on this node; the message says what was tried."""


@dataclass
class ResolvedModel:
    path: Path  # a local Hugging Face model folder
    kind: str  # builtin | folder | run | checkpoint | hub
    run_dir: Path | None = None  # run and checkpoint kinds: the run directory, when known
    step: int | None = None  # run and checkpoint kinds: the checkpoint's step


# ----------------------------------------------------------------------------- environment


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as the environment names it now (huggingface_hub reads its
    constants once, at import)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def hub_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def looks_like_repo_id(spec: str) -> bool:
    return bool(_REPO_ID.match(spec)) and ".." not in spec


# ----------------------------------------------------------------------------- run / checkpoint


def _step_of(ckpt: Path) -> int | None:
    try:
        return int(ckpt.name.split("_")[-1])
    except ValueError:
        return None


def _is_run_dir(p: Path) -> bool:
    return (p / "checkpoints").is_dir() or (
        (p / "metrics.jsonl").exists() and not (p / "config.json").exists()
    )


def _from_local(p: Path, key: str, spec: str) -> ResolvedModel:
    from egsw_rl.checkpoint import is_complete, latest

    p = p.absolute()
    if p.is_dir() and _is_run_dir(p):
        ckpt = latest(p)
        if ckpt is None or not (ckpt / "hf" / "config.json").exists():
            raise ModelNotFoundError(
                f"{key}={spec!r}: run directory {p} has no complete checkpoint with an hf/ "
                "export (trainer.save_every > 0 writes them)"
            )
        return ResolvedModel(ckpt / "hf", "run", run_dir=p, step=_step_of(ckpt))
    if p.is_dir() and (p / "hf" / "config.json").exists():
        if (p / "COMPLETE").exists() and not is_complete(p):
            import logging

            logging.getLogger(__name__).warning("checkpoint %s does not match its COMPLETE listing", p)
        run = p.parent.parent if p.parent.name == "checkpoints" else None
        return ResolvedModel(p / "hf", "checkpoint", run_dir=run, step=_step_of(p))
    if p.is_dir() and (p / "config.json").exists():
        return ResolvedModel(p, "folder")
    what = "a file" if p.exists() and not p.is_dir() else "a directory without config.json"
    raise ModelNotFoundError(
        f"{key}={spec!r}: {p} is {what}; expected a Hugging Face model folder, a run "
        "directory or a checkpoint directory"
    )


# ----------------------------------------------------------------------------- hub cache


def _snapshot_problem(folder: Path, weights: bool) -> str | None:
    """Why a snapshot folder cannot serve as a model folder (None when it can)."""
    if not (folder / "config.json").is_file():
        return "no config.json"
    if not weights:
        return None
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError) as e:
            return f"unreadable model.safetensors.index.json ({e})"
        missing = [s for s in shards if not (folder / s).is_file()]
        return f"weights missing: {missing[:3]}{' ...' if len(missing) > 3 else ''}" if missing else None
    if not glob.glob(str(folder / "*.safetensors")):
        return "no *.safetensors weights"
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def _from_hub(repo_id: str, *, weights: bool, key: str, spec: str, tried: list[str]) -> ResolvedModel:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = hub_cache_dir()
    offline = hub_offline()
    patterns = META_PATTERNS + (WEIGHT_PATTERNS if weights else [])
    where = f"Hugging Face cache {cache}"
    cached_problem = "no snapshot for revision main"
    try:
        folder = Path(
            snapshot_download(repo_id, cache_dir=str(cache), local_files_only=True, allow_patterns=patterns)
        )
        cached_problem = _snapshot_problem(folder, weights)
        if cached_problem is None:
            return ResolvedModel(folder, "hub")
        cached_problem = f"snapshot {folder} is incomplete: {cached_problem}"
    except LocalEntryNotFoundError:
        pass
    except Exception as e:  # an interrupted download (IncompleteSnapshotError), a broken ref
        cached_problem = f"{type(e).__name__}: {_first_line(e)}"
    tried.append(f"{where}: {cached_problem}")
    if offline:
        tried.append("no download: HF_HUB_OFFLINE=1")
    else:
        try:
            folder = Path(snapshot_download(repo_id, cache_dir=str(cache), allow_patterns=patterns))
            problem = _snapshot_problem(folder, weights)
            if problem is None:
                return ResolvedModel(folder, "hub")
            tried.append(f"download into {cache}: the repo's snapshot has {problem}")
        except Exception as e:  # no network, unknown or gated repo, disk full
            tried.append(f"download into {cache}: {type(e).__name__}: {_first_line(e)}")
    raise ModelNotFoundError(
        f"{key}={spec!r} could not be resolved on node {socket.gethostname()}; tried: "
        + "; ".join(tried)
        + f". Fix: put the model in this node's cache (`hf download {repo_id}` with network, "
        f"or point HF_HOME / HF_HUB_CACHE at a shared cache that has it), or set {key} to a local folder."
    )


# ----------------------------------------------------------------------------- the resolver


def locate_model(spec: str, *, weights: bool = True, key: str = "model.path") -> ResolvedModel:
    """`spec` (see the module docstring) -> a local model folder, with what kind of spec it was.
    `weights=False` needs only config and tokenizer files (a hub download then skips the
    weights). Raises ModelNotFoundError naming `key` and every place tried."""
    spec = str(spec)
    if spec == "tiny":
        from egsw_rl.testing import tiny_model

        return ResolvedModel(Path(tiny_model()), "builtin")
    if spec == "tiny_arith":
        from egsw_rl.models.arithmetic import ensure_warm_model

        return ResolvedModel(Path(ensure_warm_model()), "builtin")
    if spec == "tiny_arith_chain":
        from egsw_rl.models.arithmetic import ensure_chain_model

        return ResolvedModel(Path(ensure_chain_model()), "builtin")
    if spec == "smollm2":
        from egsw_rl.models.smollm2 import ensure_converted

        return ResolvedModel(Path(ensure_converted()), "builtin")
    if not spec.strip():
        raise ModelNotFoundError(f"{key} is empty: give a hub repo id, a model folder or a run directory")
    local = Path(spec).expanduser()
    if local.exists():
        return _from_local(local, key, spec)
    tried = [f"local path {local.absolute()}: does not exist"]
    if not looks_like_repo_id(spec):
        raise ModelNotFoundError(
            f"{key}={spec!r} could not be resolved on node {socket.gethostname()}; tried: "
            + "; ".join(tried)
            + " (and it is not a hub repo id of the form org/name)"
        )
    return _from_hub(spec, weights=weights, key=key, spec=spec, tried=tried)


def resolve_model(spec: str, *, weights: bool = True, key: str = "model.path") -> Path:
    """`spec` -> a local Hugging Face model folder on this node (see `locate_model`)."""
    return locate_model(spec, weights=weights, key=key).path


def portable_model_path(spec: str, *, key: str = "model.path") -> str:
    """What the driver hands to actors: hub repo ids stay ids (each actor resolves them on its own
    node); built-in names, run and checkpoint directories and folders become the absolute path of
    the model folder, which must then be on storage every node sees."""
    spec = str(spec)
    if spec not in BUILTIN and not Path(spec).expanduser().exists() and looks_like_repo_id(spec):
        return spec
    return str(resolve_model(spec, key=key))
