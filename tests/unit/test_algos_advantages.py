"""Outcome advantages and DAPO helpers (GRPO arXiv 2402.03300, Dr.GRPO 2503.20783, DAPO 2503.14476)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from egsw_rl.algos import all_equal_groups, dynamic_sampling_keep, group_advantages, overlong_penalty


def _ref(rewards: list[float], g: int, mode: str, eps: float = 1e-6) -> list[float]:
    out = []
    n = len(rewards)
    batch_mean = sum(rewards) / n
    batch_std = math.sqrt(sum((r - batch_mean) ** 2 for r in rewards) / (n - 1)) if n > 1 else 0.0
    for b in range(n // g):
        grp = rewards[b * g : (b + 1) * g]
        mean = sum(grp) / g
        std = math.sqrt(sum((r - mean) ** 2 for r in grp) / (g - 1)) if g > 1 else 0.0
        for r in grp:
            if mode == "dr_grpo":
                out.append(r - mean)
            elif mode == "grpo":
                out.append(0.0 if g == 1 else (r - mean) / (std + eps))
            else:
                out.append(0.0 if n == 1 else (r - mean) / (batch_std + eps))
    return out


def test_hand_values():
    r = torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.float64)
    a = group_advantages(r, group_size=4)
    # group 1: mean 0.25, unbiased std 0.5
    expect = [0.75 / (0.5 + 1e-6)] + [-0.25 / (0.5 + 1e-6)] * 3 + [0.0] * 4
    torch.testing.assert_close(a, torch.tensor(expect, dtype=torch.float64), atol=1e-15, rtol=0)
    d = group_advantages(r, group_size=4, mode="dr_grpo")
    torch.testing.assert_close(d, torch.tensor([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0], dtype=torch.float64))
    b = group_advantages(r, group_size=4, mode="batch_std")
    std = math.sqrt(sum((x - 0.625) ** 2 for x in r.tolist()) / 7)
    assert b[0].item() == pytest.approx(0.75 / (std + 1e-6), abs=1e-14)
    assert all_equal_groups(r, group_size=4).tolist() == [False, True]
    assert dynamic_sampling_keep(r, group_size=4).tolist() == [True, False]


@pytest.mark.parametrize("mode", ["grpo", "dr_grpo", "batch_std"])
def test_all_equal_group_is_exactly_zero_in_fp32(mode):
    # 0.1 is not exact in fp32: its group mean differs from it by rounding, which grpo's
    # 1/(std + 1e-6) would blow up to |A| ~ 1e-2
    r = torch.tensor([0.1] * 8 + [0.0, 1.0] * 4, dtype=torch.float32)
    a = group_advantages(r, group_size=8, mode=mode)
    assert torch.equal(a[:8], torch.zeros(8))
    assert a[8:].abs().min() > 0.1


def test_group_of_one_gives_zero():
    r = torch.tensor([1.0, 0.0, 3.0])
    for mode in ("grpo", "dr_grpo", "batch_std"):
        assert torch.equal(group_advantages(r, group_size=1, mode=mode), torch.zeros(3))
    assert group_advantages(torch.tensor([2.0]), group_size=1, mode="batch_std").item() == 0.0


@settings(max_examples=30, deadline=None)
@given(
    g=st.integers(1, 5),
    b=st.integers(1, 4),
    mode=st.sampled_from(["grpo", "dr_grpo", "batch_std"]),
    data=st.data(),
)
def test_against_loop_reference(g, b, mode, data):
    rewards = data.draw(st.lists(st.sampled_from([0.0, 1.0, -1.0, 0.5]), min_size=g * b, max_size=g * b))
    a = group_advantages(torch.tensor(rewards, dtype=torch.float64), group_size=g, mode=mode)
    torch.testing.assert_close(
        a, torch.tensor(_ref(rewards, g, mode), dtype=torch.float64), atol=1e-12, rtol=1e-12
    )


def test_fp32_default_and_bad_inputs():
    assert group_advantages(torch.tensor([1, 0, 1, 1]), group_size=2).dtype == torch.float32
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(6), group_size=4)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(6), group_size=0)
    with pytest.raises(ValueError, match="rewards"):
        group_advantages(torch.zeros(2, 3), group_size=3)
    with pytest.raises(ValueError, match="mode"):
        group_advantages(torch.zeros(4), group_size=2, mode="ppo")


def test_overlong_penalty():
    lengths = torch.tensor([10, 12, 14, 16, 17])
    out = overlong_penalty(lengths, max_len=16, cache_len=4)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, -0.5, -1.0, -1.0]))
    hard = overlong_penalty(lengths, max_len=16, cache_len=0)
    torch.testing.assert_close(hard, torch.tensor([0.0, 0.0, 0.0, 0.0, -1.0]))
    with pytest.raises(ValueError, match="cache_len"):
        overlong_penalty(lengths, max_len=16, cache_len=20)
    with pytest.raises(ValueError, match="max_len"):
        overlong_penalty(lengths, max_len=0, cache_len=0)
