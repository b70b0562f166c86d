"""Checkpoints: `<run_dir>/checkpoints/step_XXXXXXXX/` with the learners' DeepSpeed states
(`learner/`), an HF export of the policy (`hf/`), and `trainer_state.json` (step, data position,
RNG states, weight version).

A checkpoint counts only once `COMPLETE` is written, last, listing every file with its size; a
directory without it, or whose files no longer match it (a run killed mid-save, a disk that
filled up), is skipped and the previous checkpoint is used.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
MARKER = "COMPLETE"


class CheckpointError(RuntimeError):
    pass


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


def _listing(path: Path) -> dict[str, int]:
    return {
        str(p.relative_to(path)): p.stat().st_size
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


def mark_complete(path: Path) -> None:
    tmp = path / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"files": _listing(path)}, indent=0))
    tmp.rename(path / MARKER)


def is_complete(path: Path) -> bool:
    marker = path / MARKER
    if not marker.is_file():
        return False
    try:
        expected = json.loads(marker.read_text())["files"]
    except (json.JSONDecodeError, KeyError, OSError):
        return False
    return _listing(path) == expected


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, warning about every newer one that is not."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    for path in sorted(root.glob("step_*"), reverse=True):
        if is_complete(path):
            return path
        log.warning("checkpoint %s is incomplete or corrupted; falling back to an older one", path)
    return None


def rng_state() -> dict:
    import torch

    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state().tolist(),
    }


def set_rng_state(state: dict) -> None:
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def write_state(path: Path, state: dict) -> None:
    (path / "trainer_state.json").write_text(json.dumps(state, default=_json_default))


def read_state(path: Path) -> dict:
    return json.loads((path / "trainer_state.json").read_text())


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def prune(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; remove older and broken ones."""
    root = Path(run_dir) / "checkpoints"
    if keep <= 0 or not root.is_dir():
        return
    paths = sorted(root.glob("step_*"), reverse=True)
    complete = [p for p in paths if is_complete(p)]
    keep_set = set(complete[:keep])
    newest_complete = complete[0] if complete else None
    for p in paths:
        # an incomplete directory newer than the newest complete one may still be being written
        if p in keep_set or (newest_complete is not None and p > newest_complete):
            continue
        shutil.rmtree(p, ignore_errors=True)
