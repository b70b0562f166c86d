"""Before GPU time is spent: the preflight table, and what `launch` refuses before it starts
anything (a context the model does not have, a plan the cluster cannot hold)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _env(**kw):
    e = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    e.pop("RAY_ADDRESS", None)
    e.update(kw)
    return e


def _py(args, cwd, timeout=600, **env):
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_preflight_passes_the_default_and_names_the_missing_gpus_of_the_papers_preset(tmp_path):
    p = _py(["egsw_rl.preflight", "conf=tiny_cpu", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    lines = [x for x in p.stdout.splitlines() if x[:1] in "✓✗-"]
    assert lines and all(x.startswith("✓") for x in lines), p.stdout
    for name in (
        "config",
        "model context",
        "stop tokens",
        "training data",
        "placement",
        "run directory",
        "disk",
        "versions",
        "engine entropy hook",
        "wandb",
    ):
        assert any(x[2:].startswith(name) for x in lines), (name, p.stdout)
    assert not (tmp_path / "run").exists()  # the write probe leaves nothing behind

    p = _py(
        ["egsw_rl.preflight", "conf=qwen_math_7b", f"hydra.run.dir={tmp_path / 'q'}"],
        tmp_path,
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
    )
    assert p.returncode == 1, p.stdout + p.stderr[-3000:]
    out = p.stdout
    assert "The run needs 8 GPUs and the cluster has 0" in out
    assert "✗ model" in out and "Qwen/Qwen2.5-Math-7B" in out  # not in this machine's cache
    # every other check still reported
    for ok in (
        "✓ config",
        "✓ run directory",
        "✓ versions",
        "✓ engine entropy hook",
        "✓ no run-time op build",
        "✓ wandb",
    ):
        assert ok in out, (ok, out)
    assert "failed" in out.splitlines()[-1]


def test_launch_refuses_a_context_the_model_does_not_have_in_one_line(tmp_path):
    t0 = time.monotonic()
    p = _py(
        ["egsw_rl.launch", "model=tiny", "rollout.max_model_len=8192", f"hydra.run.dir={tmp_path}"],
        REPO,
        timeout=300,
    )
    assert p.returncode == 2, p.stderr[-3000:]
    err = [x for x in p.stderr.splitlines() if x.startswith("egsw_rl:")]
    assert len(err) == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert "rollout.max_model_len=8192" in err[0] and "2048 positions" in err[0]
    assert "Started a local Ray" not in p.stdout + p.stderr  # refused before Ray
    assert time.monotonic() - t0 < 120


def test_a_cluster_too_small_for_the_plan_is_refused_in_seconds(tmp_path, vh):
    """`ray start --head` on a 2-core machine offers 2 CPUs; tiny_cpu asks for 4.5."""
    e = _env(RAY_AUTH_MODE="disabled")
    e["PATH"] = str(Path(sys.executable).parent) + os.pathsep + e.get("PATH", "")
    with vh.ray_head(e, num_cpus=2) as (_, port):
        time.sleep(5)
        t0 = time.monotonic()
        p = subprocess.run(
            [sys.executable, "-m", "egsw_rl.launch", f"hydra.run.dir={tmp_path / 'run'}"],
            cwd=REPO,
            env=dict(e, RAY_ADDRESS=f"127.0.0.1:{port}"),
            capture_output=True,
            text=True,
            timeout=300,
        )
        elapsed = time.monotonic() - t0
        err = p.stderr
        assert p.returncode == 2, err[-3000:]
        assert "The run needs 4.5 CPUs and the cluster offers 2" in err and "--num-cpus=5" in err, err[-3000:]
        assert "2 learners x (1 CPU); 1 generator x (2 CPU); 1 reward x (0.5 CPU)" in err
        assert elapsed < 120  # not the 900 s a waiting placement group would take
