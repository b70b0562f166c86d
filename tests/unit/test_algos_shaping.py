"""Registry and shape_batch: from plain tensors to (A, W, M')."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from egsw_rl.algos import (
    ADVANTAGES,
    MASKS,
    WEIGHTS,
    clipb_mask,
    clipv_mask,
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
from egsw_rl.config import AlgoConfig

F64 = torch.float64


def algo(**fields) -> AlgoConfig:
    """The run's algo config with these fields; plain GRPO (no weighting) unless they say otherwise."""
    return AlgoConfig(**{"weighting": "none", **fields})


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
    # what each method takes from the config, and nothing else (no entropy_floor, eps, ...)
    reads = {m.name: m.reads for table in (ADVANTAGES, MASKS, WEIGHTS) for m in table.values() if m.reads}
    assert reads == {
        "gtpo": ("alpha1", "alpha2", "zscore"),
        "grpo_s": ("beta1", "beta2"),
        "clipb": ("mu",),
        "clipv": ("mu", "max_frac"),
        "high_entropy": ("rho",),
        "egsw": (
            "alpha",
            "temperature",
            "granularity",
            "normalize_over",
            "entropy_norm",
            "trajectory_entropy",
            "rescale",
        ),
    }


def test_plain_grpo():
    r, h, m, _ = _batch()
    a, w, m2, met = shape_batch(r, h, m, algo(), group_size=4)
    torch.testing.assert_close(a, group_advantages(r, group_size=4)[:, None] * m)
    assert torch.equal(m2, m) and torch.equal(w, m.to(w.dtype))
    assert met["groups/all_equal_frac"] == pytest.approx(1 / 3)
    assert met["mask/dropped_frac"] == 0.0 and met["tokens/valid"] == float(m.sum())
    assert met["entropy/mean"] == pytest.approx(h[m].mean().item())
    assert all(isinstance(v, float) for v in met.values())


def test_egsw_composition_matches_direct_call():
    r, h, m, _ = _batch()
    params = dict(
        alpha=0.3,
        temperature=0.8,
        granularity="step",
        normalize_over="group",
        entropy_norm="log_vocab",
        trajectory_entropy="mean",
        rescale=True,
    )
    a, w, m2, met = shape_batch(r, h, m, algo(weighting="egsw", **params), group_size=4, vocab_size=1000)
    direct = egsw_weights(group_advantages(r, group_size=4), h, m, group_size=4, vocab_size=1000, **params)
    torch.testing.assert_close(w, direct)
    for key in ("egsw/weight_max", "egsw/weight_min", "egsw/ess_frac"):
        assert key in met
    assert 0 < met["egsw/ess_frac"] <= 1


def test_gtpo_with_clipb_and_egsw():
    r, h, m, lp = _batch(2)
    a, w, m2, met = shape_batch(
        r,
        h,
        m,
        algo(advantage="gtpo", token_mask="clipb", weighting="egsw", entropy_norm="none", mu=0.5),
        group_size=4,
        sampled_logprobs=lp,
    )
    a_ref = gtpo_advantages(r, h, m, group_size=4)
    m_ref = clipb_mask(a_ref, lp, h, m, mu=0.5)
    assert torch.equal(m2, m_ref)
    assert met["mask/dropped_tokens"] == float((m & ~m_ref).sum()) > 0
    torch.testing.assert_close(a, a_ref * m_ref)
    torch.testing.assert_close(w, egsw_weights(a, h, m_ref, group_size=4, entropy_norm="none"))
    assert torch.all(w[~m2] == 0) and torch.all(a[~m2] == 0)


def test_mu_none_is_each_masks_own_default():
    """algo.mu = None (the config default) leaves ClipB / ClipV at the mask function's default;
    a set mu reaches the mask."""
    r, h, m, lp = _batch(2)
    n_stat = torch.rand_like(h) * 5
    a = group_advantages(r, group_size=4)[:, None].expand(m.shape)
    for name, want in (
        ("clipb", clipb_mask(a, lp, h, m)),
        ("clipv", clipv_mask(a, lp, h, n_stat, m, max_frac=0.5)),
    ):
        kw = dict(group_size=4, sampled_logprobs=lp, clipv_n=n_stat)
        got = shape_batch(r, h, m, algo(token_mask=name, mu=None, max_frac=0.5), **kw)[2]
        assert torch.equal(got, want)
        tight = shape_batch(r, h, m, algo(token_mask=name, mu=0.1, max_frac=0.5), **kw)[2]
        assert int(tight.sum()) < int(got.sum())


def test_clipv_and_high_entropy_through_shape_batch():
    r, h, m, lp = _batch(3)
    n_stat = torch.zeros_like(h)
    n_stat[0, 0] = n_stat[1, 0] = 50.0
    _, _, m2, met = shape_batch(
        r,
        h,
        m,
        algo(token_mask="clipv", advantage="dr_grpo", mu=2.0, max_frac=0.5),
        group_size=4,
        sampled_logprobs=lp,
        clipv_n=n_stat,
    )
    # row 0 has A > 0 (reward 1 in a mixed group): kept; row 1 (A < 0) loses its outlier token only
    expect = m.clone()
    expect[1, 0] = False
    assert torch.equal(m2, expect) and met["mask/dropped_tokens"] == 1.0
    _, _, m3, met3 = shape_batch(r, h, m, algo(token_mask="high_entropy", rho=0.25), group_size=4)
    assert met3["mask/dropped_frac"] == pytest.approx(1 - m3.sum().item() / m.sum().item())
    assert 0.7 <= met3["mask/dropped_frac"] <= 0.8
    with pytest.raises(ValueError, match="clipv_n"):
        shape_batch(r, h, m, algo(token_mask="clipv"), group_size=4, sampled_logprobs=lp)
    with pytest.raises(ValueError, match="sampled_logprobs"):
        shape_batch(r, h, m, algo(token_mask="clipb"), group_size=4)


def test_bad_arguments():
    r, h, m, _ = _batch()
    with pytest.raises(TypeError, match="alhpa"):  # the config refuses a misspelt field
        algo(alhpa=0.1)
    with pytest.raises(ValueError, match="advantage"):
        shape_batch(r, h, m, algo(advantage="reinforce"), group_size=4)
    with pytest.raises(ValueError, match="group_size"):
        shape_batch(r, h, m, algo(), group_size=5)
    with pytest.raises(ValueError, match="rewards"):
        shape_batch(r[:5], h, m, algo(), group_size=4)
    with pytest.raises(ValueError, match="entropy"):
        shape_batch(r, h[:, :2], m, algo(), group_size=4)
    with pytest.raises(ValueError, match="vocab_size"):
        shape_batch(r, h, m, algo(weighting="egsw"), group_size=4)
    # a config without a field the selected method reads is refused by the field's name
    partial = SimpleNamespace(advantage="gtpo", token_mask="none", weighting="none", alpha1=1.0, alpha2=0.1)
    with pytest.raises(ValueError, match="algo.zscore"):
        shape_batch(r, h, m, partial, group_size=4)


def test_only_the_selected_methods_fields_take_effect():
    """Each method receives its own fields: the loss, sampling, DAPO and rollout-correction keys
    and the other methods' parameters do not reach the shaping; EGSW's P does."""
    r, h, m, _ = _batch()
    cfg = AlgoConfig()  # the default: EGSW on GRPO advantages
    a, w, m2, _ = shape_batch(r, h, m, cfg, group_size=4, vocab_size=1000)
    want = egsw_weights(
        group_advantages(r, group_size=4)[:, None] * m,
        h,
        m,
        group_size=4,
        vocab_size=1000,
        alpha=0.2,
        temperature=1.0,
        granularity="step",
        normalize_over="batch",
        entropy_norm="log_vocab",
        rescale=True,
    )
    assert torch.equal(w, want) and torch.equal(m2, m)
    others = dataclasses.replace(
        cfg,
        clip_low=0.9,
        beta=0.5,
        agg="token_mean",
        rollout_correction="tis",
        dynamic_sampling=True,
        entropy_source="learner",
        alpha1=5.0,
        beta1=3.0,
        mu=0.1,
        rho=0.5,
        zscore="joint",
    )
    assert torch.equal(shape_batch(r, h, m, others, group_size=4, vocab_size=1000)[1], w)
    sharp = dataclasses.replace(cfg, temperature=0.1)
    sharper = shape_batch(r, h, m, sharp, group_size=4, vocab_size=1000)[1]
    assert (sharper - w)[m].abs().max().item() > 1e-3  # EGSW's P reaches the weights


def test_unreachable_params_are_not_passed():
    """A config object carrying a pure function's internal keyword (entropy_floor, eps) does
    not reach it: a method receives only the fields it declares."""
    r, h, m, _ = _batch()
    base = shape_batch(r, h, m, algo(advantage="gtpo"), group_size=4)[0]
    for key in ("entropy_floor", "eps"):
        extra = SimpleNamespace(**dataclasses.asdict(algo(advantage="gtpo")), **{key: 10.0})
        assert torch.equal(shape_batch(r, h, m, extra, group_size=4)[0], base)


def test_end_to_end_micro_batches_match_whole_batch():
    r, h, m, lp = _batch(4)
    a, w, m2, _ = shape_batch(
        r,
        h,
        m,
        algo(advantage="grpo", weighting="egsw", token_mask="high_entropy", entropy_norm="none", rho=0.5),
        group_size=4,
    )
    new = (lp + 0.1 * torch.randn_like(lp)).requires_grad_()
    for agg in ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"):
        whole, _ = policy_loss(new, lp, a, m2, weights=w, agg=agg, norm_constant=6)
        norms = loss_normalizers(m2, agg)
        parts = sum(
            policy_loss(
                new[i : i + 5],
                lp[i : i + 5],
                a[i : i + 5],
                m2[i : i + 5],
                weights=w[i : i + 5],
                agg=agg,
                norm_constant=6,
                **norms,
            )[0]
            for i in range(0, 12, 5)
        )
        assert parts.item() == pytest.approx(whole.item(), rel=1e-12, abs=1e-14)


def test_config_defaults_are_the_functions_defaults():
    """A method's parameters are typed config fields (their run defaults) and keywords of a pure
    function (its API defaults): the two must agree. A field left None (algo.mu) means the
    function's own default."""
    import inspect

    from egsw_rl.algos import grpo_s_advantages, high_entropy_mask

    cfg = AlgoConfig()
    for fn in (gtpo_advantages, grpo_s_advantages, egsw_weights, clipb_mask, clipv_mask, high_entropy_mask):
        for name, p in inspect.signature(fn).parameters.items():
            if hasattr(cfg, name) and getattr(cfg, name) is not None:
                assert getattr(cfg, name) == p.default, (fn.__name__, name)
