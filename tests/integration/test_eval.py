"""`python -m egsw_rl.eval` end to end on the tiny model (a real vLLM engine, the real grader
pool) over 5 problems of each local benchmark, given as a run directory; then both comparison
tools on two tiny runs: `eval --compare` (one run evaluated here, one with periodic-eval rows in
its metrics.jsonl) and `python -m egsw_rl.compare` (training curves)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCHMARKS = ["math500", "aime24", "aime25", "gsm8k"]


def make_run(root: Path, name: str, algo: str, model_dir: Path, rewards, extra_rows=()) -> Path:
    """A run directory as the trainer leaves it: config.yaml, metrics.jsonl and one complete
    checkpoint whose hf/ export is the tiny model."""
    from egsw_rl.checkpoint import mark_complete, step_dir

    run = root / name
    ckpt = step_dir(run, len(rewards))
    shutil.copytree(model_dir, ckpt / "hf")
    mark_complete(ckpt)
    (run / "config.yaml").write_text(f"algo:\n  name: {algo}\nmodel:\n  path: tiny\ntrainer:\n  seed: 0\n")
    with (run / "metrics.jsonl").open("w") as f:
        for step, r in enumerate(rewards, 1):
            f.write(
                json.dumps(
                    {
                        "step": step,
                        "reward/mean": r,
                        "reward/accuracy": r,
                        "response_length/mean": 20.0 + step,
                        "entropy/mean": 2.0 - 0.1 * step,
                    }
                )
                + "\n"
            )
        for row in extra_rows:
            f.write(json.dumps(row) + "\n")
    return run


def run_cli(module: str, *args: str, timeout: float = 85) -> subprocess.CompletedProcess:
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, f"{module} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


def test_eval_on_tiny_run_then_compare(tiny_model_dir, tmp_path):
    run_a = make_run(tmp_path, "tiny_grpo", "grpo", tiny_model_dir, [0.1, 0.2, 0.3])
    run_b = make_run(
        tmp_path,
        "tiny_egsw",
        "egsw",
        tiny_model_dir,
        [0.2, 0.3, 0.5],
        extra_rows=[
            {
                "step": 3,
                "reward/mean": 0.5,
                "eval/math500/accuracy": 0.2,
                "eval/aime24/accuracy": 0.0,
                "eval/aime25/accuracy": 0.0,
                "eval/gsm8k/accuracy": 0.4,
            }
        ],
    )
    t0 = time.perf_counter()
    proc = run_cli(
        "egsw_rl.eval",
        "--model",
        str(run_a),
        "--benchmarks",
        ",".join(BENCHMARKS),
        "--limit",
        "5",
        "--max-tokens",
        "24",
        "--seed",
        "0",
    )
    elapsed = time.perf_counter() - t0
    out = run_a / "eval"  # default output folder of a run directory
    data = json.loads((out / "results.json").read_text())
    [rec] = data["results"]
    assert rec["label"] == "grpo" and rec["name"] == "tiny_grpo@3" and rec["step"] == 3
    assert rec["model_path"].endswith("checkpoints/step_00000003/hf")
    assert list(rec["benchmarks"]) == BENCHMARKS
    for b in BENCHMARKS:
        r = rec["benchmarks"][b]
        assert r["problems"] == 5 and r["n"] == 1
        assert r["pass_at_k"]["pass@1"] == pytest.approx(r["accuracy"])
        assert sum(r["status"].values()) == 5
        assert r["status"]["timeout"] == 0 and r["status"]["error"] == 0
        assert 0 < r["mean_response_tokens"] <= 24
    t = rec["timing"]
    assert t["engine_start_s"] > 0 and t["tokens"] > 0 and t["tokens_per_s"] > 0
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 20 and {s["benchmark"] for s in samples} == set(BENCHMARKS)
    for b in BENCHMARKS:  # the reported numbers are the written grades, aggregated
        statuses = [s["status"] for s in samples if s["benchmark"] == b]
        r = rec["benchmarks"][b]
        assert r["accuracy"] == pytest.approx(statuses.count("correct") / 5)
        assert {k: v for k, v in r["status"].items() if v} == {k: statuses.count(k) for k in set(statuses)}
    table = (out / "results.md").read_text()
    assert "| Model | MATH-500 | AIME24 | AIME25 | GSM8K | Avg. |" in table
    assert "| tiny_grpo@3 |" in table
    assert "| tiny_grpo@3 |" in proc.stdout  # also printed
    print(
        f"eval CLI on the tiny model, 4 x 5 problems: {elapsed:.1f} s wall; engine start "
        f"{t['engine_start_s']:.1f} s, {t['tokens']} tokens at {t['tokens_per_s']:.0f} tokens/s"
    )

    # eval --compare: one run with an eval folder, one with periodic-eval rows only
    proc = run_cli("egsw_rl.eval", "--compare", str(run_a), str(run_b), "--out", str(tmp_path / "cmp_eval"))
    lines = proc.stdout.splitlines()
    assert "| Method | MATH-500 | AIME24 | AIME25 | GSM8K | Avg. | Runs |" in lines
    assert "| egsw | 20.0 | 0.0 | 0.0 | 40.0 | 15.0 | 1 |" in lines
    assert any(line.startswith("| grpo |") for line in lines)
    summary = json.loads((tmp_path / "cmp_eval" / "compare.json").read_text())
    assert set(summary["groups"]) == {"grpo", "egsw"}

    # training curves
    proc = run_cli("egsw_rl.compare", str(run_a), str(run_b), "--out", str(tmp_path / "cmp_train"))
    for png in (
        "reward_mean.png",
        "reward_accuracy.png",
        "response_length_mean.png",
        "entropy_mean.png",
        "eval_math500_accuracy.png",
    ):
        assert (tmp_path / "cmp_train" / png).stat().st_size > 1000, png
    assert "| tiny_grpo | grpo | 3 | 0.300 | 0.300 |" in proc.stdout
    assert "| egsw | 1 | 0.500 | 0.500 |" in proc.stdout


def test_eval_accuracy_is_the_fraction_graded_correct(tmp_path):
    """The warmed-up tiny model answers some arithmetic right (greedy): the reported accuracy is
    the share of samples whose extracted answer equals the gold, and it is not 0."""
    from egsw_rl.data import arithmetic_problems

    problems = tmp_path / "arith.jsonl"
    problems.write_text(
        "".join(
            json.dumps({"question": p.question, "answer": p.answer}) + "\n"
            for p in arithmetic_problems(12, seed=0)
        )
    )
    run_cli(
        "egsw_rl.eval",
        "--model",
        "tiny_arith",
        "--benchmarks",
        f"arith={problems}",
        "--prompt",
        "chat",
        "--max-tokens",
        "16",
        "--out",
        str(tmp_path / "out"),
        timeout=300,
    )
    r = json.loads((tmp_path / "out" / "results.json").read_text())["results"][0]["benchmarks"]["arith"]
    samples = [json.loads(x) for x in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    right = sum(s["parsed"] is not None and s["parsed"].strip() == s["gold"] for s in samples)
    assert len(samples) == r["problems"] == 12
    assert r["accuracy"] == pytest.approx(right / 12) and right > 0
    assert r["status"]["correct"] == right
