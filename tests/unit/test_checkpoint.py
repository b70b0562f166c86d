"""Checkpoint completeness: a partial or corrupted checkpoint is never resumed from."""

from egsw_rl import checkpoint


def make(run_dir, step, complete=True):
    path = checkpoint.step_dir(run_dir, step)
    (path / "learner").mkdir(parents=True)
    (path / "learner" / "model.pt").write_bytes(b"x" * (100 + step))
    checkpoint.write_state(path, {"step": step, "rng": checkpoint.rng_state()})
    if complete:
        checkpoint.mark_complete(path)
    return path


def test_latest_skips_partial_and_corrupted(tmp_path):
    make(tmp_path, 10)
    p20 = make(tmp_path, 20)
    make(tmp_path, 30, complete=False)  # killed mid-save
    assert checkpoint.latest(tmp_path) == p20
    (p20 / "learner" / "model.pt").write_bytes(b"x")  # truncated afterwards
    assert checkpoint.latest(tmp_path) == checkpoint.step_dir(tmp_path, 10)


def test_prune_keeps_newest_complete(tmp_path):
    for s in (10, 20, 30):
        make(tmp_path, s)
    make(tmp_path, 40, complete=False)
    checkpoint.prune(tmp_path, keep=2)
    left = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert left == ["step_00000020", "step_00000030", "step_00000040"]


def test_rng_roundtrip():
    import random

    import numpy as np
    import torch

    state = checkpoint.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    import json

    checkpoint.set_rng_state(json.loads(json.dumps(state, default=checkpoint._json_default)))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
