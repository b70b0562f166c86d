"""Registry and shape_batch: from plain tensors to (A, W, M')."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from egsw_rl.algos import (
    ADVANTAGES,
    MASKS,
    WEIGHTS,
    clipb_mask,
    egsw_weights,
    get_advantage,
    get_mask,
    get_weighting,
    group_advantages,
    gtpo_advantages,
    loss_normalizers,
    policy_loss,
    register_advantage,
    shape_batch,
)

F64 = torch.float64


def _batch(seed: int = 0, b: int = 3, g: int = 4, t: int = 6):
    gen = torch.Generator().manual_seed(seed)
    n = b * g
    lengths = torch.randint(1, t + 1, (n,), generator=gen)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    rewards = torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 1, 0, 1, 0, 0], dtype=F64)[:n]
    ent = torch.rand(n, t, generator=gen, dtype=F64) * 3
    lp = -torch.rand(n, t, generator=gen, dtype=F64) * 3
    return rewards, ent, mask, lp


def test_registry_names():
    assert set(ADVANTAGES) == {"grpo", "dr_grpo", "batch_std", "gtpo", "grpo_s"}
    assert set(MASKS) == {"none", "clipb", "clipv", "high_entropy"}
    assert set(WEIGHTS) == {"none", "egsw"}
    with pytest.raises(ValueError, match="advantage"):
        get_advantage("ppo")
    with pytest.raises(ValueError, match="token_mask"):
        get_mask("clipc")
    with pytest.raises(ValueError, match="weighting"):
        get_weighting("softmax")
    with pytest.raises(ValueError, match="already registered"):
        register_advantage("grpo")(lambda *a, **k: None)


def test_plain_grpo():
    r, h, m, _ = _batch()
    a, w, m2, met = shape_batch(r, h, m, group_size=4)
    torch.testing.assert_close(a, group_advantages(r, group_size=4)[:, None] * m)
    assert torch.equal(m2, m) and torch.equal(w, m.to(w.dtype))
    assert met["groups/all_equal_frac"] == pytest.approx(1 / 3)
    assert met["mask/dropped_frac"] == 0.0 and met["tokens/valid"] == float(m.sum())
    assert met["entropy/mean"] == pytest.approx(h[m].mean().item())
    assert all(isinstance(v, float) for v in met.values())


def test_egsw_composition_matches_direct_call():
    r, h, m, _ = _batch()
    params = dict(alpha=0.3, temperature=0.8, granularity="step", normalize_over="group", entropy_norm="log_vocab",
                  trajectory_entropy="mean", rescale=True)
    a, w, m2, met = shape_batch(r, h, m, group_size=4, weighting="egsw", vocab_size=1000, **params)
    direct = egsw_weights(group_advantages(r, group_size=4), h, m, group_size=4, vocab_size=1000, **params)
    torch.testing.assert_close(w, direct)
    for key in ("egsw/weight_max", "egsw/weight_min", "egsw/ess_frac"):
        assert key in met
    assert 0 < met["egsw/ess_frac"] <= 1


def test_gtpo_with_clipb_and_egsw():
    r, h, m, lp = _batch(2)
    a, w, m2, met = shape_batch(r, h, m, group_size=4, advantage="gtpo", token_mask="clipb", weighting="egsw",
                                sampled_logprobs=lp, entropy_norm="none", mu=0.5)
    a_ref = gtpo_advantages(r, h, m, group_size=4)
    m_ref = clipb_mask(a_ref, lp, h, m, mu=0.5)
    assert torch.equal(m2, m_ref)
    assert met["mask/dropped_tokens"] == float((m & ~m_ref).sum()) > 0
    torch.testing.assert_close(a, a_ref * m_ref)
    torch.testing.assert_close(w, egsw_weights(a, h, m_ref, group_size=4, entropy_norm="none"))
    assert torch.all(w[~m2] == 0) and torch.all(a[~m2] == 0)


def test_clipv_and_high_entropy_through_shape_batch():
    r, h, m, lp = _batch(3)
    n_stat = torch.zeros_like(h)
    n_stat[0, 0] = n_stat[1, 0] = 50.0
    _, _, m2, met = shape_batch(r, h, m, group_size=4, token_mask="clipv", sampled_logprobs=lp, clipv_n=n_stat,
                                advantage="dr_grpo", mu=2.0, max_frac=0.5)
    # row 0 has A > 0 (reward 1 in a mixed group): kept; row 1 (A < 0) loses its outlier token only
    expect = m.clone()
    expect[1, 0] = False
    assert torch.equal(m2, expect) and met["mask/dropped_tokens"] == 1.0
    _, _, m3, met3 = shape_batch(r, h, m, group_size=4, token_mask="high_entropy", rho=0.25)
    assert met3["mask/dropped_frac"] == pytest.approx(1 - m3.sum().item() / m.sum().item())
    assert 0.7 <= met3["mask/dropped_frac"] <= 0.8
    with pytest.raises(ValueError, match="clipv_n"):
        shape_batch(r, h, m, group_size=4, token_mask="clipv", sampled_logprobs=lp)
    with pytest.raises(ValueError, match="sampled_logprobs"):
        shape_batch(r, h, m, group_size=4, token_mask="clipb")


def test_bad_arguments():
    r, h, m, _ = _batch()
    with pytest.raises(ValueError, match="alhpa"):
        shape_batch(r, h, m, group_size=4, alhpa=0.1)
    with pytest.raises(ValueError, match="advantage"):
        shape_batch(r, h, m, group_size=4, advantage="reinforce")
    with pytest.raises(ValueError, match="group_size"):
        shape_batch(r, h, m, group_size=5)
    with pytest.raises(ValueError, match="rewards"):
        shape_batch(r[:5], h, m, group_size=4)
    with pytest.raises(ValueError, match="entropy"):
        shape_batch(r, h[:, :2], m, group_size=4)
    with pytest.raises(ValueError, match="vocab_size"):
        shape_batch(r, h, m, group_size=4, weighting="egsw")


def test_accepts_the_whole_algo_config_section():
    """A driver may pass the whole algo section: the shaping keys take effect, the others
    (loss, sampling, DAPO, rollout-correction keys) are ignored."""
    from egsw_rl.config import AlgoConfig

    r, h, m, _ = _batch()
    cfg = dataclasses.asdict(AlgoConfig())
    a, w, m2, _ = shape_batch(r, h, m, group_size=4, vocab_size=1000, **cfg)
    want = shape_batch(r, h, m, group_size=4, vocab_size=1000, advantage="grpo", weighting="egsw",
                       token_mask="none", alpha=0.2, temperature=1.0, granularity="step",
                       normalize_over="batch", entropy_norm="log_vocab", rescale=True)
    for got, exp in zip((a, w, m2), want[:3]):
        assert torch.equal(got, exp)
    passthrough = dict(cfg, clip_low=0.9, beta=0.5, agg="token_mean", rollout_correction="tis",
                       dynamic_sampling=True, entropy_source="learner")
    assert torch.equal(shape_batch(r, h, m, group_size=4, vocab_size=1000, **passthrough)[1], w)
    sharper = shape_batch(r, h, m, group_size=4, vocab_size=1000, **dict(cfg, temperature=0.1))[1]
    assert (sharper - w)[m].abs().max().item() > 1e-3  # EGSW's P reaches the weights


def test_unreachable_params_are_refused():
    r, h, m, _ = _batch()
    for key in ("zscore_over", "entropy_floor", "eps"):
        with pytest.raises(ValueError, match=key):
            shape_batch(r, h, m, group_size=4, advantage="gtpo", **{key: 1e-3})


def test_end_to_end_micro_batches_match_whole_batch():
    r, h, m, lp = _batch(4)
    a, w, m2, _ = shape_batch(r, h, m, group_size=4, advantage="grpo", weighting="egsw", token_mask="high_entropy",
                              entropy_norm="none", rho=0.5)
    new = (lp + 0.1 * torch.randn_like(lp)).requires_grad_()
    for agg in ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"):
        whole, _ = policy_loss(new, lp, a, m2, weights=w, agg=agg, norm_constant=6)
        norms = loss_normalizers(m2, agg)
        parts = sum(policy_loss(new[i:i + 5], lp[i:i + 5], a[i:i + 5], m2[i:i + 5], weights=w[i:i + 5], agg=agg,
                                norm_constant=6, **norms)[0] for i in range(0, 12, 5))
        assert parts.item() == pytest.approx(whole.item(), rel=1e-12, abs=1e-14)
