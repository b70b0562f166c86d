"""ClipB, ClipV (arXiv 2602.03392) and the 80/20 high-entropy mask (arXiv 2506.01939)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from egsw_rl.algos import (
    clipb_mask,
    clipv_mask,
    entropy_discriminator,
    high_entropy_mask,
    policy_loss,
    shape_batch,
)
from egsw_rl.config import AlgoConfig

F64 = torch.float64


def test_clipb_constructed_example():
    # 4 sequences x 30 tokens, all S = 0 (p = 1, H = 0) except three outliers with p = 1/e, H = 0:
    # S = -1/e. Population stats: mean = -3/(120e), std ~ 0.058; threshold -2.5 std ~ -0.145.
    n, t = 4, 30
    lp = torch.zeros(n, t, dtype=F64)
    h = torch.zeros(n, t, dtype=F64)
    for i, s in ((0, 3), (1, 5), (2, 7)):
        lp[i, s] = -1.0
    adv = torch.tensor([-1.0, 0.0, 2.0, -0.5], dtype=F64)
    mask = torch.ones(n, t, dtype=torch.bool)
    mask[3, 20:] = False
    out = clipb_mask(adv, lp, h, mask)
    expect = mask.clone()
    expect[0, 3] = False  # negative advantage and S far below the mean: dropped
    assert torch.equal(out, expect)  # A = 0 and A > 0 outliers are kept
    # identical S everywhere (std 0): nothing dropped
    assert torch.equal(clipb_mask(adv, torch.zeros(n, t), h, mask), mask)
    # a very large mu drops nothing
    assert torch.equal(clipb_mask(adv, lp, h, mask, mu=100.0), mask)


def _ref_clipb(adv, lp, h, mask, mu):
    vals = [
        (i, s, math.exp(lp[i, s].item()) * (h[i, s].item() + lp[i, s].item()))
        for i in range(mask.shape[0])
        for s in range(mask.shape[1])
        if mask[i, s]
    ]
    keep = mask.clone()
    if not vals:
        return keep
    mean = sum(v for *_, v in vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for *_, v in vals) / len(vals))
    if std < 1e-12:
        return keep
    for i, s, v in vals:
        a = adv[i].item() if adv.dim() == 1 else adv[i, s].item()
        if a < 0 and v - mean < -mu * std:
            keep[i, s] = False
    return keep


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 6),
    t=st.integers(1, 8),
    mu=st.sampled_from([0.5, 1.0, 2.5]),
    token_adv=st.booleans(),
)
def test_clipb_loop_reference(seed, n, t, mu, token_adv):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, t, generator=g) > 0.2
    lp = -torch.rand(n, t, generator=g, dtype=F64) * 5
    h = torch.rand(n, t, generator=g, dtype=F64) * 3
    adv = torch.randn(n, t, generator=g, dtype=F64) if token_adv else torch.randn(n, generator=g, dtype=F64)
    assert torch.equal(clipb_mask(adv, lp, h, mask, mu=mu), _ref_clipb(adv, lp, h, mask, mu))


def _clipv_setup():
    # 200 valid tokens with S = 0 (p = 1, H = 0); N chosen so D = N - S is 0 except outliers
    n, t = 4, 50
    lp = torch.zeros(n, t, dtype=F64)
    h = torch.zeros(n, t, dtype=F64)
    nn = torch.zeros(n, t, dtype=F64)
    for (i, s), d in zip(((0, 1), (1, 2), (2, 3)), (5.0, 6.0, 7.0)):
        nn[i, s] = d
    adv = torch.tensor([-1.0, 0.0, -2.0, 1.0], dtype=F64)
    return adv, lp, h, nn, torch.ones(n, t, dtype=torch.bool)


def test_clipv_constructed_example():
    adv, lp, h, nn, mask = _clipv_setup()
    # std(D) = sqrt(110/200 - 0.09^2) ~ 0.736; mu 8.5 -> threshold ~ 6.26: only D = 7 qualifies
    out = clipv_mask(adv, lp, h, nn, mask)
    expect = mask.clone()
    expect[2, 3] = False
    assert torch.equal(out, expect)
    # mu = 2 -> all three qualify (A = 0 included); max_frac 0.01 of 200 -> K = 2: the largest D go
    out = clipv_mask(adv, lp, h, nn, mask, mu=2.0, max_frac=0.01)
    expect = mask.clone()
    expect[1, 2] = expect[2, 3] = False
    assert torch.equal(out, expect)
    # no cap hit (3 <= 0.05 * 200): all three dropped
    out = clipv_mask(adv, lp, h, nn, mask, mu=2.0, max_frac=0.05)
    assert int((mask & ~out).sum()) == 3
    # tiny max_frac: K = max(int(0.02), 1) = 1
    out = clipv_mask(adv, lp, h, nn, mask, mu=2.0, max_frac=1e-4)
    assert (mask & ~out).nonzero().tolist() == [[2, 3]]
    # the same outliers under a positive advantage are kept
    assert torch.equal(clipv_mask(torch.ones(4, dtype=F64), lp, h, nn, mask, mu=2.0, max_frac=1.0), mask)
    # constant D: nothing dropped
    assert torch.equal(clipv_mask(adv, lp, h, torch.zeros_like(nn), mask, mu=0.0, max_frac=1.0), mask)


def test_entropy_discriminator_values():
    lp = torch.tensor([0.0, -1.0, math.log(0.5)], dtype=F64)
    h = torch.tensor([0.0, 2.0, math.log(2.0)], dtype=F64)
    torch.testing.assert_close(
        entropy_discriminator(lp, h), torch.tensor([0.0, math.exp(-1.0), 0.0], dtype=F64)
    )


def test_high_entropy_mask():
    h = torch.arange(12, dtype=F64).reshape(2, 6)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False  # valid values 0..9 (10 and 11 are padding)
    out = high_entropy_mask(h, mask)
    expect = torch.zeros(2, 6, dtype=torch.bool)
    expect[1, 2] = expect[1, 3] = True  # ceil(0.2 * 10) = 2 tokens: values 8 and 9
    assert torch.equal(out, expect)
    assert torch.equal(high_entropy_mask(h, mask, rho=1.0), mask)
    with pytest.raises(ValueError, match="rho"):
        high_entropy_mask(h, mask, rho=0.0)


def test_high_entropy_mask_keeps_ceil_rho_n_tokens_even_with_ties():
    # 7 valid tokens, rho 0.2: the released top-k keeps ceil(1.4) = 2. A quantile threshold with
    # ">=" would keep all four tied 5.0 tokens; the count must not depend on ties.
    h = torch.tensor([[5.0, 5.0, 1.0, 5.0], [5.0, 0.5, 2.0, 9.0]], dtype=F64)
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    out = high_entropy_mask(h, mask)
    assert int(out.sum()) == 2 and not bool((out & ~mask).any())
    assert bool((h[out] == 5.0).all())  # the two highest valid values (9.0 is padding)
    # 0.2 * 10 is 2.0000000000000004 in floating point: still 2 tokens, not 3
    assert int(high_entropy_mask(torch.arange(10.0)[None], torch.ones(1, 10, dtype=torch.bool)).sum()) == 2
    assert int(high_entropy_mask(h, torch.zeros_like(mask)).sum()) == 0


def test_high_entropy_mask_denominator_is_the_kept_tokens():
    """Released convention of arXiv 2506.01939 (verl's token-mean over response_mask * top
    mask): the token-mean policy-gradient loss averages over the kept tokens only."""
    gen = torch.Generator().manual_seed(3)
    h = torch.rand(4, 5, generator=gen, dtype=F64)
    mask = torch.ones(4, 5, dtype=torch.bool)
    adv = torch.randn(4, 1, generator=gen, dtype=F64).expand(4, 5)
    algo = AlgoConfig(weighting="none", token_mask="high_entropy", rho=0.2)
    kept = shape_batch(torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=F64), h, mask, algo, group_size=2)[2]
    assert int(kept.sum()) == 4
    lp = torch.zeros(4, 5, dtype=F64, requires_grad=True)
    loss, _ = policy_loss(lp, lp.detach(), adv, kept, agg="token_mean")
    # ratio 1: l_pg = -A on every kept token, divided by the 4 kept tokens (not the 20 valid)
    assert loss.item() == pytest.approx(-adv[kept].sum().item() / 4, rel=1e-12)


def test_bad_arguments():
    adv, lp, h, nn, mask = _clipv_setup()
    with pytest.raises(ValueError, match="sampled_logprobs"):
        clipb_mask(adv, None, h, mask)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clipv_n"):
        clipv_mask(adv, lp, h, None, mask)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="entropy"):
        clipb_mask(adv, lp, h[:, :3], mask)
    with pytest.raises(ValueError, match="advantages"):
        clipb_mask(adv[:2], lp, h, mask)
