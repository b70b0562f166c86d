"""A run directory's records (egsw_rl.runlog): mean ± sample std over runs, the run's label from its
config.yaml, its merged rows, and the one-run plots the trainer draws at the end."""

from __future__ import annotations

import json
import math

import pytest

from egsw_rl import runlog


def test_mean_std_is_the_sample_std():
    m, s = runlog.mean_std([0.5, 0.6, 0.7])
    assert m == pytest.approx(0.6) and s == pytest.approx(0.1)  # sample std (ddof=1)
    assert runlog.mean_std([0.4]) == (0.4, 0.0)
    assert math.isnan(runlog.mean_std([])[0])


def test_load_run_merges_eval_rows_and_plot_run_draws_the_curves(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert runlog.plot_run(run) == []  # no rows yet: nothing to draw
    (run / "config.yaml").write_text("algo:\n  name: egsw\n")
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "reward/mean": 0.1 * s}) + "\n" for s in (1, 2)) + '{"step": 3, "rew'
    )  # torn last line
    (run / "eval.jsonl").write_text(
        json.dumps({"step": 0, "eval/gsm8k/accuracy": 0.2})
        + "\n"
        + json.dumps({"step": 2, "eval/gsm8k/accuracy": 0.3})
        + "\n"
    )
    assert runlog.run_label(run) == "egsw" and runlog.run_label(run, "trainer.seed") == "run"
    r = runlog.load_run(run, "run", "egsw")
    assert [row["step"] for row in r.rows] == [0, 1, 2]
    assert r.series("eval/gsm8k/accuracy") == ([0, 2], [0.2, 0.3])
    assert r.series("reward/mean") == ([1, 2], [0.1, 0.2])
    pngs = runlog.plot_run(run)
    assert {p.name for p in pngs} == {"reward_mean.png", "eval_gsm8k_accuracy.png"}
    assert all(p.parent == run / "plots" and p.stat().st_size > 1000 for p in pngs)


def test_plot_run_draws_entropy_dynamics_when_the_monitor_logged_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [
        {
            "step": s,
            "entropy_dynamics/predicted_delta": -1e-5 * s,
            "entropy_dynamics/measured_delta": -3e-4 * s + (1e-4 if s == 2 else 0.0),
        }
        for s in (1, 2, 3)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pngs = {p.name: p for p in runlog.plot_run(run)}
    assert "entropy_dynamics.png" in pngs and pngs["entropy_dynamics.png"].stat().st_size > 1000
    # without the monitor's keys there is no such figure
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/mean": 0.1}) + "\n")
    (run / "plots" / "entropy_dynamics.png").unlink()
    assert "entropy_dynamics.png" not in {p.name for p in runlog.plot_run(run)}
