"""The reward part of `python -m egsw_rl.bench`: the on-paper grading estimate and the summary
of grading hidden behind generation (pure arithmetic over given rates and metrics rows)."""

from __future__ import annotations

import pytest

from egsw_rl.bench.reward import (
    hostile_batch,
    paper_reward_workers,
    reward_hidden_summary,
    reward_paper_estimate,
)


def test_paper_reward_workers_follow_the_preset_and_the_node():
    # qwen_math_7b: 2 actors, workers auto; 64 CPUs - (4 x 8 learner + 4 engines + 2 x 0.5) - 2 = 25
    assert paper_reward_workers(64) == [12, 12]
    assert paper_reward_workers(128) == [32, 32]  # capped
    assert paper_reward_workers(40) == [1, 1]


def test_reward_paper_estimate():
    est = reward_paper_estimate(50.0, [12, 12], step_s=950.0, completions=8192, engines=4)
    assert est["workers"] == 24 and est["scorings_per_s"] == pytest.approx(1200.0)
    assert est["all_s"] == pytest.approx(8192 / 1200)
    assert est["last_share_s"] == pytest.approx(2048 / 1200)
    assert est["before_s"] == pytest.approx(8192 / 100)
    assert est["all_frac"] == pytest.approx(est["all_s"] / (950 + est["all_s"]))
    assert est["last_share_frac"] < est["all_frac"] < 0.02 < est["before_frac"]


def test_reward_hidden_summary_medians_after_warmup():
    rows = [
        {
            "step": 1,
            "timing/reward_s": 9.0,
            "reward/latency_s": 9.0,
            "reward/hidden_frac": 0.0,
            "timing/generate_s": 5.0,
        }
    ]
    rows += [
        {
            "step": s,
            "timing/reward_s": 0.1 * s,
            "reward/latency_s": 1.0,
            "reward/hidden_frac": 1 - 0.1 * s,
            "timing/generate_s": 2.0,
        }
        for s in (2, 3, 4)
    ]
    out = reward_hidden_summary(rows, warmup=1)
    assert out["steps"] == 3
    assert out["reward_s"] == pytest.approx(0.3) and out["grading_s"] == 1.0
    assert out["reward_hidden_frac"] == pytest.approx(0.7) and out["generate_s"] == 2.0


def test_hostile_batch_pairs_every_completion_with_a_gold():
    comps, golds = hostile_batch()
    assert len(comps) == len(golds) == 10
    assert max(len(c) for c in comps) > 1_000_000  # the megabyte output
    assert any("__import__" in c for c in comps)
