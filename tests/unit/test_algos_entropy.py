"""Top-k entropy estimators and exact entropy helpers (docs/algorithms.md, section 11)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from egsw_rl.algos import clipv_stats_from_logits, entropy_from_logits, topk_entropy, topk_tail_mass
from egsw_rl.algos.entropy import entropy_from_logprobs

NEG_INF = float("-inf")


def _lp(*ps: float) -> torch.Tensor:
    return torch.tensor([math.log(p) if p > 0 else NEG_INF for p in ps], dtype=torch.float64)


def test_hand_case_exact_when_tail_is_one_token():
    # p = (0.5, 0.25, 0.25), top-2: the tail is one token of mass 0.25 = p_k, so H_LB is exact.
    top = _lp(0.5, 0.25)
    h_true = 1.5 * math.log(2.0)
    assert topk_tail_mass(top).item() == pytest.approx(0.25, abs=1e-15)
    assert topk_entropy(top).item() == pytest.approx(h_true, abs=1e-12)
    assert topk_entropy(top, method="renorm").item() == pytest.approx(
        math.log(0.75) + math.log(2.0) / 0.75, abs=1e-12
    )
    assert topk_entropy(top, method="upper_bound", vocab_size=3).item() == pytest.approx(h_true, abs=1e-12)
    # a larger vocabulary only raises the upper bound: 0.25 * log((10 - 2) / 0.25)
    ub = math.log(2.0) + 0.25 * math.log(8 / 0.25)
    assert topk_entropy(top, method="upper_bound", vocab_size=10).item() == pytest.approx(ub, abs=1e-12)


def test_lower_bound_uses_tail_mass_when_larger_than_head_bound():
    # p_k = 0.5, R = 0.1: max(-log R, -log p_k) = -log 0.1
    top = _lp(0.4, 0.5)
    h_head = -(0.4 * math.log(0.4) + 0.5 * math.log(0.5))
    assert topk_entropy(top).item() == pytest.approx(h_head + 0.1 * -math.log(0.1), abs=1e-12)


def test_minus_inf_entries_are_ignored():
    top = _lp(0.7, 0.3, 0.0)
    h_true = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))
    for method in ("lower_bound", "renorm"):
        assert topk_entropy(top, method=method).item() == pytest.approx(h_true, abs=1e-12)
    assert topk_entropy(top, method="upper_bound", vocab_size=50).item() == pytest.approx(h_true, abs=1e-12)
    assert topk_tail_mass(top).item() == pytest.approx(0.0, abs=1e-12)
    empty = torch.full((2, 3), NEG_INF)
    for method in ("lower_bound", "renorm"):
        out = topk_entropy(empty, method=method)
        assert torch.isfinite(out).all() and out.shape == (2,)


def test_tail_mass_clamped_non_negative():
    top = _lp(0.6, 0.5)  # head mass 1.1 from rounding upstream
    assert topk_tail_mass(top).item() == 0.0
    assert math.isfinite(topk_entropy(top).item())


def test_dtypes_and_shapes():
    x = torch.log_softmax(torch.randn(2, 3, 7, dtype=torch.float64), -1).topk(4, -1).values
    assert topk_entropy(x).dtype == torch.float64 and topk_entropy(x).shape == (2, 3)
    assert topk_entropy(x.half()).dtype == torch.float32
    assert topk_entropy(x.bfloat16(), method="renorm").dtype == torch.float32


def test_bad_arguments():
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="method"):
        topk_entropy(x, method="exact")
    with pytest.raises(ValueError, match="vocab_size"):
        topk_entropy(x, method="upper_bound")
    with pytest.raises(ValueError, match="topk_logprobs"):
        topk_entropy([0.1, 0.2])  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None)
@given(vocab=st.integers(2, 60), k=st.integers(1, 64), scale=st.floats(0.1, 8.0), seed=st.integers(0, 10_000))
def test_bounds_order_on_random_distributions(vocab, k, scale, seed):
    g = torch.Generator().manual_seed(seed)
    logp = torch.log_softmax(torch.randn(5, vocab, generator=g, dtype=torch.float64) * scale, -1)
    h_true = -(logp.exp() * logp).sum(-1)
    top = logp.topk(min(k, vocab), -1).values
    renorm = topk_entropy(top, method="renorm")
    lb = topk_entropy(top)
    ub = topk_entropy(top, method="upper_bound", vocab_size=vocab)
    tol = 1e-10
    assert (renorm <= lb + tol).all()
    assert (lb <= h_true + tol).all()
    assert (h_true <= ub + tol).all()
    if k >= vocab:
        torch.testing.assert_close(lb, h_true, atol=1e-10, rtol=0)
        torch.testing.assert_close(ub, h_true, atol=1e-10, rtol=0)
        torch.testing.assert_close(renorm, h_true, atol=1e-10, rtol=0)


def _loop_entropy_and_n(z: torch.Tensor) -> tuple[float, float]:
    zs = [float(v) for v in z]
    mx = max(zs)
    ex = [math.exp(v - mx) for v in zs]
    tot = sum(ex)
    ps = [e / tot for e in ex]
    h = -sum(p * math.log(p) for p in ps if p > 0)
    n = h * sum(p * p for p in ps) + sum(p * p * math.log(p) for p in ps if p > 0)
    return h, n


def test_exact_entropy_and_clipv_stats_against_loop():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 11, dtype=torch.float64) * 3
    h = entropy_from_logits(logits, chunk_size=5)
    h2, n = clipv_stats_from_logits(logits.float(), chunk_size=2)
    assert h.dtype == torch.float32 and n.dtype == torch.float32 and h.shape == (3, 4)
    for i in range(3):
        for t in range(4):
            rh, rn = _loop_entropy_and_n(logits[i, t])
            assert h[i, t].item() == pytest.approx(rh, abs=1e-5)
            assert h2[i, t].item() == pytest.approx(rh, abs=1e-5)
            assert n[i, t].item() == pytest.approx(rn, abs=1e-5)


def test_exact_entropy_is_differentiable_and_bf16_ok():
    logits = torch.randn(4, 9, requires_grad=True)
    entropy_from_logits(logits.bfloat16(), chunk_size=3).sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    _, n = clipv_stats_from_logits(logits)
    assert not n.requires_grad


def test_entropy_from_logprobs_is_the_learners_entropy_of_the_same_distribution():
    """What the engine computes from vLLM's processed logprobs equals what the learner computes
    from its logits (same arithmetic after log_softmax), and the loop's value."""
    torch.manual_seed(1)
    logits = torch.randn(3, 4, 11) * 3
    h = entropy_from_logprobs(torch.log_softmax(logits, -1))
    assert h.dtype == torch.float32 and h.shape == (3, 4)
    assert torch.equal(h, entropy_from_logits(logits))
    for i in range(3):
        for t in range(4):
            assert h[i, t].item() == pytest.approx(_loop_entropy_and_n(logits[i, t].double())[0], abs=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
def test_entropy_from_logprobs_is_the_same_in_chunks_of_rows(chunk_size):
    """The engine hook bounds its temporaries by chunks of rows: any chunking, the same values."""
    torch.manual_seed(3)
    lp = torch.log_softmax(torch.randn(2, 5, 40) * 2, -1)
    torch.testing.assert_close(
        entropy_from_logprobs(lp, chunk_size=chunk_size), entropy_from_logprobs(lp), atol=1e-6, rtol=0
    )
    assert entropy_from_logprobs(lp[:0]).shape == (0, 5)


def test_entropy_from_logprobs_skips_masked_tokens_and_keeps_nan():
    """-inf entries (a sampler's top-k / top-p mask) have probability zero: the entropy is that
    of the kept tokens renormalised, as vLLM samples them; a NaN row stays NaN (bad logits must
    not read as a confident token)."""
    torch.manual_seed(2)
    logits = torch.randn(5, 30, dtype=torch.float64)
    kept = logits.topk(7, -1)
    masked = torch.full_like(logits, NEG_INF).scatter(-1, kept.indices, kept.values)
    h = entropy_from_logprobs(torch.log_softmax(masked, -1))
    torch.testing.assert_close(h, entropy_from_logits(kept.values), atol=1e-6, rtol=0)
    # the same from the masked logits themselves (the V2 engine hook's input), no NaN
    torch.testing.assert_close(entropy_from_logits(masked), h, atol=1e-6, rtol=0)
    one_hot = torch.tensor([[0.0, NEG_INF, NEG_INF]])
    assert entropy_from_logprobs(one_hot).item() == 0.0
    assert entropy_from_logits(one_hot).item() == 0.0
    assert torch.isnan(entropy_from_logprobs(torch.tensor([[float("nan"), -1.0]]))).all()
    with pytest.raises(ValueError, match="logprobs"):
        entropy_from_logprobs([0.1])  # type: ignore[arg-type]


@settings(max_examples=30, deadline=None)
@given(vocab=st.integers(2, 60), k=st.integers(1, 64), scale=st.floats(0.1, 8.0), seed=st.integers(0, 10_000))
def test_exact_entropy_lies_between_the_topk_bounds(vocab, k, scale, seed):
    """The engine's exact entropy in fp32 between the fp32 top-k lower and upper bounds of the
    same logprobs (the bounds the estimators give from the head of this very distribution)."""
    g = torch.Generator().manual_seed(seed)
    logp = torch.log_softmax(torch.randn(5, vocab, generator=g) * scale, -1)
    h = entropy_from_logprobs(logp)
    top = logp.topk(min(k, vocab), -1).values
    tol = 1e-5 * (1 + h.abs())
    assert (topk_entropy(top) <= h + tol).all()
    assert (h <= topk_entropy(top, method="upper_bound", vocab_size=vocab) + tol).all()
