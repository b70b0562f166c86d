"""The shared clipped PG loss, aggregations and micro-batch exactness (docs/algorithms.md, section 1)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from egsw_rl.algos import AGGREGATIONS, k3_kl, loss_normalizers, policy_loss, reduce_loss_metrics

F64 = torch.float64


def _data(seed: int, n: int, t: int, token_adv: bool = False):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, t + 1, (n,), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    old = -torch.rand(n, t, generator=g, dtype=F64) * 4
    lp = old + 0.4 * torch.randn(n, t, generator=g, dtype=F64)
    ref = old + 0.3 * torch.randn(n, t, generator=g, dtype=F64)
    adv = torch.randn(n, t, generator=g, dtype=F64) if token_adv else torch.randn(n, generator=g, dtype=F64)
    w = torch.rand(n, t, generator=g, dtype=F64) * 2
    ent = torch.rand(n, t, generator=g, dtype=F64) * 3
    return lp, old, ref, adv, w, ent, mask


def _ref_loss(lp, old, ref, adv, w, ent, mask, *, clip_low, clip_high, beta, agg, norm_constant, c_ent):
    n, t = mask.shape
    per_tok = [[0.0] * t for _ in range(n)]
    for i in range(n):
        for s in range(t):
            if not mask[i, s]:
                continue
            a = adv[i, s].item() if adv.dim() == 2 else adv[i].item()
            r = math.exp(lp[i, s].item() - old[i, s].item())
            rc = min(max(r, 1 - clip_low), 1 + clip_high)
            pg = -min(r * a, rc * a) * w[i, s].item()
            d = ref[i, s].item() - lp[i, s].item()
            kl = math.exp(d) - d - 1
            per_tok[i][s] = pg + beta * kl - c_ent * ent[i, s].item()
    tot_tokens = int(mask.sum())
    if agg == "token_mean":
        return sum(map(sum, per_tok)) / max(tot_tokens, 1)
    if agg == "seq_mean_token_mean":
        return sum(sum(per_tok[i]) / max(int(mask[i].sum()), 1) for i in range(n)) / n
    return sum(map(sum, per_tok)) / (norm_constant * n)


def test_hand_values():
    mask = torch.tensor([[True]])
    old = torch.tensor([[-1.0]], dtype=F64)
    loss, m = policy_loss(old.clone(), old, torch.tensor([2.0], dtype=F64), mask)
    assert loss.item() == pytest.approx(-2.0)
    assert m["actor/clip_frac"].item() == 0.0 and m["actor/ratio_mean"].item() == pytest.approx(1.0)
    # ratio e^0.5 > 1.2 with A > 0: clipped at 1.2
    loss, m = policy_loss(old + 0.5, old, torch.tensor([2.0], dtype=F64), mask)
    assert loss.item() == pytest.approx(-2.4) and m["actor/clip_frac"].item() == 1.0
    # ratio e^0.5 with A < 0: unclipped branch is the max, -r A
    loss, m = policy_loss(old + 0.5, old, torch.tensor([-1.0], dtype=F64), mask)
    assert loss.item() == pytest.approx(math.exp(0.5)) and m["actor/clip_frac"].item() == 0.0
    # clip_high 0.28 (DAPO)
    loss, _ = policy_loss(old + 0.5, old, torch.tensor([1.0], dtype=F64), mask, clip_high=0.28)
    assert loss.item() == pytest.approx(-1.28)
    # k3: d = ref - lp
    d = torch.tensor([0.0, 1.0, -2.0, 100.0], dtype=F64)
    k = k3_kl(torch.zeros(4, dtype=F64), d)
    expect = [0.0, math.e - 2, math.exp(-2) + 1, math.exp(20) - 21]
    torch.testing.assert_close(k, torch.tensor(expect, dtype=F64))


def test_aggregation_hand_values():
    # two sequences: lengths 1 and 3, per-token loss = -A (ratio 1), A = (1, 2)
    mask = torch.tensor([[True, False, False], [True, True, True]])
    lp = torch.zeros(2, 3, dtype=F64)
    adv = torch.tensor([1.0, 2.0], dtype=F64)
    l_seq, _ = policy_loss(lp, lp, adv, mask, agg="seq_mean_token_mean")
    l_tok, _ = policy_loss(lp, lp, adv, mask, agg="token_mean")
    l_dr, _ = policy_loss(lp, lp, adv, mask, agg="seq_mean_token_sum_norm", norm_constant=4)
    assert l_seq.item() == pytest.approx(-(1 + 2) / 2)
    assert l_tok.item() == pytest.approx(-(1 + 6) / 4)
    assert l_dr.item() == pytest.approx(-(1 + 6) / (4 * 2))
    assert loss_normalizers(mask, "token_mean") == {"global_tokens": 4, "global_seqs": 2}


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 6),
    t=st.integers(1, 5),
    agg=st.sampled_from(AGGREGATIONS),
    beta=st.sampled_from([0.0, 0.04]),
    c_ent=st.sampled_from([0.0, 0.01]),
    token_adv=st.booleans(),
    clip_high=st.sampled_from([0.2, 0.28]),
)
def test_against_loop_reference(seed, n, t, agg, beta, c_ent, token_adv, clip_high):
    lp, old, ref, adv, w, ent, mask = _data(seed, n, t, token_adv)
    loss, _ = policy_loss(
        lp,
        old,
        adv,
        mask,
        weights=w,
        ref_logprobs=ref,
        beta=beta,
        agg=agg,
        norm_constant=7,
        entropy=ent,
        entropy_coef=c_ent,
        clip_high=clip_high,
    )
    expect = _ref_loss(
        lp,
        old,
        ref,
        adv,
        w,
        ent,
        mask,
        clip_low=0.2,
        clip_high=clip_high,
        beta=beta,
        agg=agg,
        norm_constant=7,
        c_ent=c_ent,
    )
    assert loss.item() == pytest.approx(expect, rel=1e-10, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 7),
    t=st.integers(1, 5),
    agg=st.sampled_from(AGGREGATIONS),
    data=st.data(),
)
def test_micro_batch_split_equals_whole_batch(seed, n, t, agg, data):
    lp, old, ref, adv, w, ent, mask = _data(seed, n, t, token_adv=seed % 2 == 0)
    # any partition of the rows into micro-batches (not necessarily contiguous)
    labels = data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    kw = dict(beta=0.05, agg=agg, norm_constant=6, entropy_coef=0.02)

    whole_lp = lp.clone().requires_grad_()
    whole_ent = ent.clone().requires_grad_()
    whole, wm = policy_loss(whole_lp, old, adv, mask, weights=w, ref_logprobs=ref, entropy=whole_ent, **kw)
    whole.backward()

    norms = loss_normalizers(mask, agg)
    part_lp = lp.clone().requires_grad_()
    part_ent = ent.clone().requires_grad_()
    total = torch.zeros((), dtype=F64)
    parts = []
    for lab in sorted(set(labels)):
        idx = torch.tensor([i for i in range(n) if labels[i] == lab])
        loss, m = policy_loss(
            part_lp[idx],
            old[idx],
            adv[idx],
            mask[idx],
            weights=w[idx],
            ref_logprobs=ref[idx],
            entropy=part_ent[idx],
            **kw,
            **norms,
        )
        loss.backward()
        total = total + loss.detach()
        parts.append(m)
    assert total.item() == pytest.approx(whole.item(), rel=1e-12, abs=1e-14)
    torch.testing.assert_close(part_lp.grad, whole_lp.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(part_ent.grad, whole_ent.grad, rtol=1e-12, atol=1e-14)
    red = reduce_loss_metrics(parts)
    for key in (
        "actor/loss",
        "actor/pg_loss",
        "actor/kl_loss",
        "actor/entropy_loss",
        "actor/clip_frac",
        "actor/approx_kl",
        "actor/ratio_mean",
        "actor/ref_kl",
        "actor/entropy",
        "actor/tokens",
    ):
        assert red[key] == pytest.approx(float(wm[key]), rel=1e-10, abs=1e-12), key


def test_metrics_are_detached_scalars_and_beta_zero_ignores_ref():
    lp, old, _, adv, w, ent, mask = _data(1, 4, 3)
    lp = lp.requires_grad_()
    loss, m = policy_loss(lp, old, adv, mask, ref_logprobs=None, beta=0.0, entropy=ent)
    assert loss.requires_grad
    for key, val in m.items():
        assert isinstance(val, torch.Tensor) and val.dim() == 0 and not val.requires_grad, key
    assert m["actor/kl_loss"].item() == 0.0 and m["actor/ref_kl"].item() == 0.0


def test_fp32_inputs_and_empty_mask():
    lp = torch.zeros(2, 3)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    for agg in AGGREGATIONS:
        loss, m = policy_loss(lp, lp, torch.ones(2), mask, agg=agg, norm_constant=3)
        assert loss.item() == 0.0 and loss.dtype == torch.float32 and m["actor/clip_frac"].item() == 0.0
    half, _ = policy_loss(lp.half(), lp.half(), torch.ones(2), mask | True)
    assert half.dtype == torch.float32


def test_bad_arguments():
    lp, old, ref, adv, w, ent, mask = _data(2, 4, 3)
    with pytest.raises(ValueError, match="agg"):
        policy_loss(lp, old, adv, mask, agg="sum")
    with pytest.raises(ValueError, match="norm_constant"):
        policy_loss(lp, old, adv, mask, agg="seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(lp, old, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="entropy"):
        policy_loss(lp, old, adv, mask, entropy_coef=0.1)
    with pytest.raises(ValueError, match="old_logprobs"):
        policy_loss(lp, old[:, :2], adv, mask)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(lp, old, adv[:3], mask)
    with pytest.raises(ValueError, match="weights"):
        policy_loss(lp, old, adv, mask, weights=w[:2])
    with pytest.raises(ValueError, match="logprobs"):
        policy_loss(lp[0], old, adv, mask)
    with pytest.raises(ValueError, match="agg"):
        loss_normalizers(mask, "mean")
