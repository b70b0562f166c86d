"""GTPO / GRPO-S shaped rewards and advantages (arXiv 2508.04349)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from egsw_rl.algos import grpo_s_advantages, grpo_s_rewards, gtpo_advantages, gtpo_token_rewards

F64 = torch.float64


def _batch(seed: int, b: int, g: int, t: int, zero_entropy: bool = False):
    gen = torch.Generator().manual_seed(seed)
    n = b * g
    lengths = torch.randint(0, t + 1, (n,), generator=gen)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    rewards = torch.randint(0, 2, (n,), generator=gen).to(F64)
    ent = torch.rand(n, t, generator=gen, dtype=F64) * 3
    if zero_entropy:
        ent = ent * (torch.rand(n, t, generator=gen, dtype=F64) > 0.5)
    return rewards, ent, mask


def _ref_token_rewards(r, h, mask, g, a1, a2, floor=1e-3):
    n, t = mask.shape
    out = [[0.0] * t for _ in range(n)]
    for b in range(n // g):
        rows = range(b * g, (b + 1) * g)
        for s in range(t):
            pos = [i for i in rows if mask[i, s] and r[i] > 0]
            neg = [i for i in rows if mask[i, s] and not r[i] > 0]
            hh = {i: max(h[i, s].item(), floor) for i in pos + neg}
            for i in pos:
                out[i][s] = a1 * r[i].item() + a2 * hh[i] / sum(hh[k] for k in pos) * len(pos)
            for i in neg:
                out[i][s] = -a1 - a2 * (1 / hh[i]) / sum(1 / hh[k] for k in neg) * len(neg)
    return torch.tensor(out, dtype=F64)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    b=st.integers(1, 3),
    g=st.integers(1, 5),
    t=st.integers(1, 5),
    a1=st.sampled_from([1.0, 0.9]),
    a2=st.sampled_from([0.1, 0.5]),
    zero=st.booleans(),
)
def test_token_rewards_loop_reference_and_conservation(seed, b, g, t, a1, a2, zero):
    r, h, mask = _batch(seed, b, g, t, zero)
    rt = gtpo_token_rewards(r, h, mask, group_size=g, alpha1=a1, alpha2=a2)
    torch.testing.assert_close(rt, _ref_token_rewards(r, h, mask, g, a1, a2), atol=1e-12, rtol=1e-12)
    assert torch.all(rt[~mask] == 0) and torch.isfinite(rt).all()
    # arXiv 2508.04349 Prop. 2.2 on the raw token rewards: per group and position
    for k in range(b):
        rows = slice(k * g, (k + 1) * g)
        for s in range(t):
            pos = mask[rows, s] & (r[rows] > 0)
            neg = mask[rows, s] & ~(r[rows] > 0)
            d, hcnt = int(pos.sum()), int(neg.sum())
            sum_pos = rt[rows, s][pos].sum().item()
            sum_neg = rt[rows, s][neg].sum().item()
            assert sum_pos == pytest.approx(a1 * r[rows][pos].sum().item() + a2 * d, abs=1e-10)
            assert sum_neg == pytest.approx(-(a1 + a2) * hcnt, abs=1e-10)


def test_token_rewards_hand_values():
    r = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=F64)
    h = torch.tensor([[1.0, 2.0], [3.0, 0.0], [1.0, 0.5], [2.0, 0.0]], dtype=F64)
    mask = torch.tensor([[True, True], [True, False], [True, True], [True, True]])
    rt = gtpo_token_rewards(r, h, mask, group_size=4)
    # t=0: O+ H (1, 3): 1 + 0.1 * H/4 * 2; O- 1/H (1, 0.5): -1 - 0.1 * (1/H)/1.5 * 2
    assert rt[0, 0].item() == pytest.approx(1.05)
    assert rt[1, 0].item() == pytest.approx(1.15)
    assert rt[2, 0].item() == pytest.approx(-1 - 0.2 / 1.5)
    assert rt[3, 0].item() == pytest.approx(-1 - 0.1 / 1.5)
    # t=1: lone O+ token gets 1 + 0.1; O- has H (0.5, 0 -> clamped 1e-3): 1/H = (2, 1000)
    assert rt[0, 1].item() == pytest.approx(1.1)
    assert rt[1, 1].item() == 0.0
    assert rt[2, 1].item() == pytest.approx(-1 - 0.1 * 2 / 1002 * 2)
    assert rt[3, 1].item() == pytest.approx(-1 - 0.1 * 1000 / 1002 * 2)


def _zstats(x: torch.Tensor) -> tuple[float, float]:
    return x.mean().item(), x.std(unbiased=True).item()


def test_zscore_modes():
    r, h, mask = _batch(7, 3, 4, 6)
    r[0], r[1] = 1.0, 0.0  # both sets non-empty
    pos = mask & (r > 0)[:, None]
    neg = mask & ~pos
    rt = gtpo_token_rewards(r, h, mask, group_size=4)
    sep = gtpo_advantages(r, h, mask, group_size=4)
    for sel in (pos, neg):
        mean, std = _zstats(sep[sel])
        assert mean == pytest.approx(0.0, abs=1e-9) and std == pytest.approx(1.0, rel=1e-3)
        expect = (rt[sel] - rt[sel].mean()) / (rt[sel].std() + 1e-6)
        torch.testing.assert_close(sep[sel], expect)
    # joint: one mean / std over all valid tokens of each group (the union of its O+ and O-)
    joint = gtpo_advantages(r, h, mask, group_size=4, zscore="joint")
    for k in range(3):
        rows = slice(4 * k, 4 * k + 4)
        sel = mask[rows]
        vals = rt[rows][sel]
        expect = (vals - vals.mean()) / (vals.std() + 1e-6) if vals.numel() > 1 else torch.zeros_like(vals)
        torch.testing.assert_close(joint[rows][sel], expect, atol=1e-12, rtol=1e-12)
    # a batch-wide z-score would differ: the groups' means are not all equal here
    whole = (rt[mask] - rt[mask].mean()) / (rt[mask].std() + 1e-6)
    assert (joint[mask] - whole).abs().max().item() > 1e-3
    assert (joint[pos] > 0).all() and (joint[neg] < 0).all()  # alpha1 dominates: sign split kept
    scale = gtpo_advantages(r, h, mask, group_size=4, zscore="scale_only")
    torch.testing.assert_close(scale[pos], rt[pos] / (rt[pos].std() + 1e-6))
    assert (scale[pos] > 0).all() and (scale[neg] < 0).all()
    for a in (sep, joint, scale):
        assert torch.all(a[~mask] == 0)


def test_gtpo_edge_cases():
    r, h, mask = _batch(1, 2, 1, 4)
    assert torch.equal(gtpo_advantages(r, h, mask, group_size=1), torch.zeros_like(h))
    r = torch.tensor([0.0, 0.0], dtype=F64)
    h = torch.zeros(2, 3, dtype=F64)
    # all wrong, zero entropy (clamped to 1e-3): every token's reward is -1 - 0.1, so the
    # z-score has nothing to spread and gives 0 (rounding / eps, not a blown-up 0/eps)
    rt = gtpo_token_rewards(r, h, torch.ones(2, 3, dtype=torch.bool), group_size=2)
    torch.testing.assert_close(rt, torch.full((2, 3), -1.1, dtype=F64))
    for mode in ("separate", "joint"):
        a = gtpo_advantages(r, h, torch.ones(2, 3, dtype=torch.bool), group_size=2, zscore=mode)
        assert a.abs().max().item() < 1e-9
    with pytest.raises(ValueError, match="zscore"):
        gtpo_advantages(r, h, torch.ones(2, 3, dtype=torch.bool), group_size=2, zscore="whiten")
    with pytest.raises(ValueError, match="rewards"):
        gtpo_advantages(r[:1], h, torch.ones(2, 3, dtype=torch.bool), group_size=1)
    with pytest.raises(ValueError, match="group_size"):
        gtpo_advantages(r, h, torch.ones(2, 3, dtype=torch.bool), group_size=3)


def test_grpo_s_hand_values():
    r = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=F64)
    h = torch.tensor([[1.0, 1.0], [2.0, 4.0], [1.0, 1.0], [2.0, 2.0]], dtype=F64)
    mask = torch.tensor([[True, True], [True, True], [True, False], [True, True]])
    rh = grpo_s_rewards(r, h, mask, group_size=4)
    # Hbar = (1, 3, 1, 2): O+ 1 + 0.1 * Hbar/4 * 2; O- -1 - 0.1 * (1/Hbar)/1.5 * 2
    expect = [1.05, 1.15, -1 - 0.2 / 1.5, -1 - 0.1 / 1.5]
    torch.testing.assert_close(rh, torch.tensor(expect, dtype=F64))
    a = grpo_s_advantages(r, h, mask, group_size=4)
    mean = sum(expect) / 4
    std = math.sqrt(sum((x - mean) ** 2 for x in expect) / 3)
    torch.testing.assert_close(a, torch.tensor([(x - mean) / (std + 1e-6) for x in expect], dtype=F64))
    # all-correct group: non-zero advantages, sign follows entropy
    a2 = grpo_s_advantages(torch.ones(4, dtype=F64), h, mask, group_size=4)
    assert a2[1] > 0 and a2[0] < 0
    assert torch.equal(grpo_s_advantages(r, h, mask, group_size=1), torch.zeros(4, dtype=F64))
