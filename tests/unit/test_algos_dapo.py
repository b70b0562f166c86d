"""DAPO dynamic sampling (arXiv 2503.14476): which groups are kept, and the step's reward
metrics when several generation rounds were scored."""

from __future__ import annotations

import pytest
import torch

from egsw_rl.algos import dynamic_sampling_keep, overlong_penalty
from egsw_rl.rewards.types import RewardResult
from egsw_rl.trainer import merge_reward_metrics


def test_keep_groups_whose_correctness_varies_not_their_shaped_reward():
    # group 0: all wrong, lengths 8..16 in a 16-token budget with an 8-token cache window: the
    # shaped rewards (0 + penalty) are 0, -0.33, -0.67, -1, all different, yet nothing was solved
    lengths = torch.tensor([8, 11, 13, 16, 8, 8, 8, 8, 5, 6, 7, 8])
    shaped = overlong_penalty(lengths, max_len=16, cache_len=8) + torch.tensor(
        [0.0] * 4 + [1.0, 0, 0, 0] + [1.0] * 4
    )
    assert len(set(shaped[:4].tolist())) == 4
    correct = torch.tensor([False] * 4 + [True, False, False, False] + [True] * 4)
    assert dynamic_sampling_keep(correct, group_size=4).tolist() == [False, True, False]
    with pytest.raises(ValueError, match="correctness"):
        dynamic_sampling_keep(shaped, group_size=4)


def _res(status: str, score: float) -> RewardResult:
    return RewardResult(score=score, status=status)


def test_reward_metrics_of_several_rounds_average_what_they_name():
    # round 1 scored 8 completions (2 groups), round 2 scored 4 (1 group); the batch keeps 2 groups
    r1 = {
        "reward/latency_s": 0.5,
        "reward/correct_count": 3,
        "reward/wrong_count": 5,
        "reward/mean_score": 0.375,
        "reward/sample_p50_s": 0.02,
        "reward/sample_p99_s": 0.1,
        "reward/worker_restarts": 1,
    }
    r2 = {
        "reward/latency_s": 0.25,
        "reward/correct_count": 2,
        "reward/wrong_count": 2,
        "reward/mean_score": 0.5,
        "reward/sample_p50_s": 0.05,
        "reward/sample_p99_s": 0.4,
        "reward/worker_restarts": 0,
    }
    kept = [_res("correct", 1.0)] * 3 + [_res("wrong", 0.0)] * 5
    m = merge_reward_metrics([(r1, 8), (r2, 4)], kept)
    assert m["reward/correct_count"] == 3 and m["reward/wrong_count"] == 5  # the 8 trained on
    assert m["reward/mean_score"] == pytest.approx(3 / 8)  # <= 1, same set as reward/accuracy
    assert m["reward/latency_s"] == pytest.approx(0.75) and m["reward/worker_restarts"] == 1
    assert m["reward/sample_p50_s"] == pytest.approx((0.02 * 8 + 0.05 * 4) / 12)
    assert m["reward/sample_p99_s"] == pytest.approx((0.1 * 8 + 0.4 * 4) / 12)
    assert m["reward/sample_p99_s"] <= max(r1["reward/sample_p99_s"], r2["reward/sample_p99_s"])
    # one round: the actor's numbers, except that counts describe the kept completions
    one = merge_reward_metrics([(r1, 8)], kept)
    assert one == pytest.approx({**r1, "reward/mean_score": 3 / 8})
