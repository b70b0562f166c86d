"""A run whose data has prompts longer than the budget (max_model_len - max_tokens): the training
rows are left out at load time and reported once, the step-0 evaluation scores the over-long
problem `overlong_prompt` and the run goes on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
LONG = "What is " + "1 + " * 200 + "1?"


def test_overlong_prompts_are_dropped_from_training_and_scored_in_a_step0_eval(tmp_path):
    train, ev = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    rows = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(4) for b in range(3)]
    rows[5] = {"question": LONG, "answer": "201"}
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ev.write_text(
        json.dumps({"question": LONG, "answer": "201"})
        + "\n"
        + json.dumps({"question": "What is 2 + 2?", "answer": "4"})
        + "\n"
    )
    run = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "egsw_rl.launch",
            f"hydra.run.dir={run}",
            f"data.train={train}",
            f"data.eval=[{ev}]",
            "data.batch_size=4",
            "rollout.n=4",
            "rollout.max_tokens=16",
            "rollout.max_model_len=144",
            "trainer.total_steps=1",
            "trainer.save_every=0",
            "logger.plots=false",
            "logger.progress_bar=false",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stderr[-4000:]
    log = p.stdout + p.stderr
    assert "Failed to load weights" not in log  # vLLM's benign reload chatter is filtered
    # reported once each, at load time
    assert log.count("1 of 12 prompts longer than the 128-token budget") == 1, log[-3000:]
    assert log.count("1 rows left out") == 1
    assert log.count("data.eval held: 1 of 2 prompts longer than the 128-token budget") == 1
    rows = [json.loads(x) for x in (run / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    for r in rows:
        assert r["eval/held/overlong_prompt"] == 1  # one problem, not generated
        assert 0.0 <= r["eval/held/accuracy"] <= 0.5  # the over-long problem counts as unsolved
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["step"] == 1
