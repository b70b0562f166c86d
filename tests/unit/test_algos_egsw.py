"""EGSW weights and diagnostics (arXiv 2503.22456; docs/algorithms.md, section 3)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from egsw_rl.algos import AGGREGATIONS, egsw_diagnostics, egsw_weights, group_advantages, policy_loss

F64 = torch.float64


def _batch(seed: int, b: int, g: int, t: int):
    gen = torch.Generator().manual_seed(seed)
    n = b * g
    lengths = torch.randint(0, t + 1, (n,), generator=gen)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    rewards = torch.randint(0, 2, (n,), generator=gen).to(F64)
    adv = group_advantages(rewards, group_size=g)
    ent = torch.rand(n, t, generator=gen, dtype=F64) * 4
    ent = torch.where(mask, ent, torch.full_like(ent, float("nan")))  # padding may hold garbage
    return adv, ent, mask


def _ref(adv, ent, mask, *, g, alpha, p, gran, over, norm, vocab, traj, rescale):
    n, t = mask.shape
    hn = [
        [
            (ent[i, s].item() / math.log(vocab) if norm == "log_vocab" else ent[i, s].item())
            if mask[i, s]
            else 0.0
            for s in range(t)
        ]
        for i in range(n)
    ]
    sets = [list(range(n))] if over == "batch" else [list(range(k * g, (k + 1) * g)) for k in range(n // g)]
    w = [[0.0] * t for _ in range(n)]
    for members in sets:
        if gran == "step":
            for s in range(t):
                act = [i for i in members if mask[i, s]]
                sc = {i: (adv[i].item() + alpha * hn[i][s]) / p for i in act}
                if not act:
                    continue
                mx = max(sc.values())
                z = sum(math.exp(v - mx) for v in sc.values())
                for i in act:
                    w[i][s] = math.exp(sc[i] - mx) / z * (len(act) if rescale else 1)
        else:
            act = [i for i in members if mask[i].any()]
            sc = {}
            for i in act:
                ln = int(mask[i].sum())
                tot = sum(hn[i])
                sc[i] = (adv[i].item() + alpha * (tot if traj == "sum" else tot / ln)) / p
            if not act:
                continue
            mx = max(sc.values())
            z = sum(math.exp(v - mx) for v in sc.values())
            for i in act:
                for s in range(t):
                    if mask[i, s]:
                        w[i][s] = math.exp(sc[i] - mx) / z * (len(act) if rescale else 1)
    return torch.tensor(w, dtype=F64)


OPTS = dict(
    gran=st.sampled_from(["step", "trajectory"]),
    over=st.sampled_from(["batch", "group"]),
    norm=st.sampled_from(["log_vocab", "none"]),
    traj=st.sampled_from(["mean", "sum"]),
    rescale=st.booleans(),
)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    b=st.integers(1, 3),
    g=st.integers(1, 4),
    t=st.integers(1, 5),
    alpha=st.floats(0.0, 1.0),
    p=st.floats(0.2, 3.0),
    **OPTS,
)
def test_against_loop_reference_and_sums(seed, b, g, t, alpha, p, gran, over, norm, traj, rescale):
    adv, ent, mask = _batch(seed, b, g, t)
    kw = dict(
        alpha=alpha,
        temperature=p,
        granularity=gran,
        normalize_over=over,
        entropy_norm=norm,
        vocab_size=50,
        trajectory_entropy=traj,
        rescale=rescale,
    )
    w = egsw_weights(adv, ent, mask, group_size=g, **kw)
    ref = _ref(
        adv,
        ent,
        mask,
        g=g,
        alpha=alpha,
        p=p,
        gran=gran,
        over=over,
        norm=norm,
        vocab=50,
        traj=traj,
        rescale=rescale,
    )
    torch.testing.assert_close(w, ref, atol=1e-12, rtol=1e-12)
    assert torch.all(w[~mask] == 0)
    assert not w.requires_grad and torch.isfinite(w).all()
    # sums over each normalisation set: |S_t| (or #non-empty sequences) with rescale, else 1
    n = mask.shape[0]
    size = n if over == "batch" else g
    for k in range(n // size):
        rows = slice(k * size, (k + 1) * size)
        wm, mm = w[rows], mask[rows]
        if gran == "step":
            for s in range(t):
                cnt = int(mm[:, s].sum())
                if cnt:
                    assert wm[:, s].sum().item() == pytest.approx(cnt if rescale else 1.0, rel=1e-12)
        else:
            seq_w = wm.amax(dim=1)
            cnt = int(mm.any(dim=1).sum())
            if cnt:
                assert seq_w.sum().item() == pytest.approx(cnt if rescale else 1.0, rel=1e-12)


def test_hand_values_step_batch():
    adv = torch.tensor([1.0, -1.0], dtype=F64)
    ent = torch.tensor([[0.0, 2.0], [0.0, 9.0]], dtype=F64)
    mask = torch.tensor([[True, True], [True, False]])
    w = egsw_weights(adv, ent, mask, group_size=2, alpha=0.5, temperature=1.0, entropy_norm="none")
    e, ei = math.e, 1 / math.e
    expect = torch.tensor([[2 * e / (e + ei), 1.0], [2 * ei / (e + ei), 0.0]], dtype=F64)
    torch.testing.assert_close(w, expect, atol=1e-15, rtol=0)
    w1 = egsw_weights(
        adv, ent, mask, group_size=2, alpha=0.5, temperature=1.0, entropy_norm="none", rescale=False
    )
    torch.testing.assert_close(w1, torch.tensor([[e / (e + ei), 1.0], [ei / (e + ei), 0.0]], dtype=F64))
    # log_vocab normalisation: Hn = H / log V; alpha = log V makes it identical to raw nats with alpha = 1
    wv = egsw_weights(adv, ent, mask, group_size=2, alpha=math.log(7), vocab_size=7)
    wr = egsw_weights(adv, ent, mask, group_size=2, alpha=1.0, entropy_norm="none")
    torch.testing.assert_close(wv, wr)


def test_alpha_zero_gives_advantage_only_weights():
    adv, ent, mask = _batch(3, 2, 4, 6)
    other = torch.rand_like(ent) * 10
    kw = dict(group_size=4, alpha=0.0, temperature=0.7, vocab_size=100)
    w = egsw_weights(adv, ent, mask, **kw)
    torch.testing.assert_close(w, egsw_weights(adv, other, mask, **kw))
    torch.testing.assert_close(w, egsw_weights(adv, torch.zeros_like(ent), mask, **kw))
    # full-length sequences: softmax of A / P over the batch, times N
    full = torch.ones(8, 3, dtype=torch.bool)
    wf = egsw_weights(adv, torch.rand(8, 3, dtype=F64), full, **kw)
    expect = torch.softmax(adv / 0.7, 0) * 8
    torch.testing.assert_close(wf, expect[:, None].expand(8, 3), atol=1e-12, rtol=0)


@pytest.mark.parametrize("agg", AGGREGATIONS)
@pytest.mark.parametrize("gran", ["step", "trajectory"])
def test_large_temperature_reproduces_grpo_loss(agg, gran):
    adv, ent, mask = _batch(11, 3, 4, 7)
    ent = torch.nan_to_num(ent)
    n, t = mask.shape
    gen = torch.Generator().manual_seed(5)
    old = -torch.rand(n, t, generator=gen, dtype=F64) * 3
    base = old + 0.3 * torch.randn(n, t, generator=gen, dtype=F64)
    w = egsw_weights(
        adv, ent, mask, group_size=4, alpha=0.3, temperature=1e9, granularity=gran, vocab_size=50
    )
    lp1, lp2 = base.clone().requires_grad_(), base.clone().requires_grad_()
    kw = dict(agg=agg, norm_constant=t)
    l1, _ = policy_loss(lp1, old, adv, mask, weights=w, **kw)
    l2, _ = policy_loss(lp2, old, adv, mask, weights=None, **kw)
    l1.backward()
    l2.backward()
    assert l1.item() == pytest.approx(l2.item(), rel=1e-7, abs=1e-12)
    torch.testing.assert_close(lp1.grad, lp2.grad, rtol=1e-7, atol=1e-12)
    # P = inf is exactly uniform
    winf = egsw_weights(
        adv, ent, mask, group_size=4, temperature=float("inf"), granularity=gran, vocab_size=50
    )
    assert torch.equal(winf, mask.to(F64))


def test_bad_arguments():
    adv, ent, mask = _batch(0, 2, 2, 3)
    ent = torch.nan_to_num(ent)
    with pytest.raises(ValueError, match="vocab_size"):
        egsw_weights(adv, ent, mask, group_size=2)
    with pytest.raises(ValueError, match="granularity"):
        egsw_weights(adv, ent, mask, group_size=2, granularity="token", entropy_norm="none")
    with pytest.raises(ValueError, match="normalize_over"):
        egsw_weights(adv, ent, mask, group_size=2, normalize_over="prompt", entropy_norm="none")
    with pytest.raises(ValueError, match="entropy_norm"):
        egsw_weights(adv, ent, mask, group_size=2, entropy_norm="max")
    with pytest.raises(ValueError, match="temperature"):
        egsw_weights(adv, ent, mask, group_size=2, temperature=0.0, entropy_norm="none")
    with pytest.raises(ValueError, match="group_size"):
        egsw_weights(adv, ent, mask, group_size=3, entropy_norm="none")
    with pytest.raises(ValueError, match="entropy"):
        egsw_weights(adv, ent[:, :2], mask, group_size=2, entropy_norm="none")
    with pytest.raises(ValueError, match="advantages"):
        egsw_weights(adv[:3], ent, mask, group_size=2, entropy_norm="none")
    bad = ent.clone()
    bad[mask] = float("inf")
    if mask.any():
        with pytest.raises(ValueError, match="entropy"):
            egsw_weights(adv, bad, mask, group_size=2, entropy_norm="none")


def test_diagnostics():
    mask = torch.tensor([[True, True], [True, False], [True, True], [False, False]])
    uni = mask.to(F64)
    d = egsw_diagnostics(uni, mask, group_size=2, normalize_over="group")
    assert (
        d["egsw/weight_max"] == 1.0
        and d["egsw/weight_min"] == 1.0
        and d["egsw/ess_frac"] == pytest.approx(1.0)
    )
    # batch, step: column 0 has |S_0| = 3 with weights (3, 0, 0) -> ESS 1 -> 1/3; column 1 (2, _, 0) -> 1/2
    w = torch.tensor([[3.0, 2.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], dtype=F64)
    d = egsw_diagnostics(w, mask)
    assert d["egsw/ess_frac"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert d["egsw/ess_frac_min"] == pytest.approx(1 / 3)
    assert d["egsw/weight_max"] == 3.0 and d["egsw/weight_min"] == 0.0
    # trajectory: per-sequence weights (1.5, 1.5, 0) over 3 non-empty sequences -> ESS 2 -> 2/3
    wt = torch.tensor([[1.5, 1.5], [1.5, 0.0], [0.0, 0.0], [0.0, 0.0]], dtype=F64)
    assert egsw_diagnostics(wt, mask, granularity="trajectory")["egsw/ess_frac"] == pytest.approx(2 / 3)
