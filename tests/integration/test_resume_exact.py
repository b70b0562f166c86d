"""A resumed run is a continuation: stopped after step 3 with its last checkpoint at step 2, it
redoes step 3 and goes on exactly as the uninterrupted run did (fp32 on CPU): the same prompts,
completions, rewards and loss, the same weight version, and no rows of the redone step twice."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
ARGS = [
    "data.batch_size=4",
    "rollout.n=4",
    "rollout.max_tokens=16",
    "algo.beta=0.01",
    "trainer.save_every=2",
    "trainer.eval_every=1",
    "logger.plots=false",
    "logger.progress_bar=false",
]


def _launch(run: Path, *extra: str) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    p = subprocess.run(
        [sys.executable, "-m", "egsw_rl.launch", f"hydra.run.dir={run}", *ARGS, *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert p.returncode == 0, (p.stdout + p.stderr)[-5000:]


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_stop_and_resume_reproduces_the_uninterrupted_run(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    _launch(whole, "trainer.total_steps=4")
    _launch(cut, "trainer.total_steps=3")
    # the run "died" after step 3 before its checkpoint was complete: step 2's is the latest
    shutil.rmtree(cut / "checkpoints" / "step_00000003")
    _launch(cut, "trainer.total_steps=4", "resume=auto")

    a, b = _rows(whole / "metrics.jsonl"), _rows(cut / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4]  # step 3 once, from the resumed run
    for ra, rb in zip(a[2:], b[2:]):
        assert rb["version"] == ra["version"] == ra["step"]
        assert rb["policy_lag/mean"] == 0.0
        assert rb["reward/mean"] == ra["reward/mean"] and rb["reward/accuracy"] == ra["reward/accuracy"]
        assert abs(rb["loss"] - ra["loss"]) <= 1e-6, (ra["step"], ra["loss"], rb["loss"])
        assert rb["response_length/mean"] == ra["response_length/mean"]
    sa, sb = _rows(whole / "samples.jsonl"), _rows(cut / "samples.jsonl")
    assert [r["step"] for r in sb] == [1, 2, 3, 4]
    for ra, rb in zip(sa[2:], sb[2:]):
        assert rb["problem_ids"] == ra["problem_ids"]
        assert [e["completion"] for e in rb["examples"]] == [e["completion"] for e in ra["examples"]]
    ea, eb = _rows(whole / "eval.jsonl"), _rows(cut / "eval.jsonl")
    assert [r["step"] for r in eb] == [0, 1, 2, 3, 4]  # the redone step's row once
    assert eb[3:] == ea[3:]
