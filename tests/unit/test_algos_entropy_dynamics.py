"""The entropy-dynamics predictor (arXiv 2602.03392, Theorems 3.2 and 3.3) against finite
differences on constructed logits, where the logits themselves are the parameters."""

import math

import pytest
import torch

from egsw_rl.algos import clipv_stats_from_logits, policy_loss
from egsw_rl.algos.entropy_dynamics import (
    entropy_dynamics_metrics,
    loss_coefficients,
    predicted_entropy_change,
)


def _entropy(z):
    # fp64 throughout: the changes measured here are ~1e-6 of H (the project's kernels are fp32)
    logp = torch.log_softmax(z.double(), -1)
    return -(logp.exp() * logp).sum(-1)


def _h_and_n(z):
    """H and N = E_{j~p}[S_j] in fp64; the fp32 kernel must agree (checked once below)."""
    logp = torch.log_softmax(z.double(), -1)
    p = logp.exp()
    h = -(p * logp).sum(-1)
    n = h * (p * p).sum(-1) + (p * p * logp).sum(-1)
    h32, n32 = clipv_stats_from_logits(z)
    assert torch.allclose(h32.double(), h, atol=1e-5) and torch.allclose(n32.double(), n, atol=1e-5)
    return h, n


def test_single_logit_raise_changes_entropy_by_minus_eps_s():
    # Theorem 3.2: dH = -eps * S_k, S_k = p_k (H + log p_k)
    torch.manual_seed(0)
    z = torch.randn(40, dtype=torch.float64) * 2
    p, h = torch.softmax(z, -1), _entropy(z)
    eps = 1e-5
    for k in (int(p.argmax()), int(p.argmin())):
        s = p[k] * (h + p[k].log())
        dz = torch.zeros_like(z)
        dz[k] = eps
        assert float(_entropy(z + dz) - h) == pytest.approx(float(-eps * s), rel=1e-3)
    # the sign cases: raising the likeliest token (p > exp(-H)) lowers H, a rare one raises it
    top, rare = int(p.argmax()), int(p.argmin())
    assert float(p[top]) > math.exp(-float(h)) > float(p[rare])
    assert float(p[top] * (h + p[top].log())) > 0 > float(p[rare] * (h + p[rare].log()))


def _tabular_step(z, tokens, adv, mask, weights, agg, lr):
    """One gradient-descent step of size lr on our policy loss, the logits being the parameters."""
    z = z.clone().requires_grad_(True)
    lp = torch.log_softmax(z, -1).gather(-1, tokens[..., None]).squeeze(-1)
    norm = dict(
        global_tokens=float(mask.sum()), global_seqs=float(mask.shape[0]), norm_constant=float(mask.shape[1])
    )
    loss, _ = policy_loss(lp, lp.detach(), adv, mask, weights=weights, agg=agg, **norm)
    loss.backward()
    return (z - lr * z.grad).detach(), lp.detach(), norm


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_prediction_matches_a_small_step_of_the_real_loss(agg):
    # Theorem 3.3 through the project's own loss, weights and aggregation: per token, the entropy
    # change of a small step equals -lr c W A (S - N) to first order.
    torch.manual_seed(1)
    N, T, V = 4, 6, 30
    z = torch.randn(N, T, V, dtype=torch.float64) * 1.5
    tokens = torch.distributions.Categorical(logits=z).sample()
    mask = torch.ones(N, T, dtype=torch.bool)
    mask[1, 4:] = False
    mask[3, 2:] = False
    adv = torch.tensor([1.2, -0.7, 0.4, -1.5], dtype=torch.float64)
    weights = torch.rand(N, T, dtype=torch.float64) + 0.5
    lr = 1e-4
    z_after, lp, norm = _tabular_step(z, tokens, adv, mask, weights, agg, lr)
    h_before, n_before = _h_and_n(z)
    measured = torch.where(mask, _entropy(z_after) - h_before, 0.0)
    c = loss_coefficients(mask, agg, **norm)
    pred = predicted_entropy_change(lp, h_before, n_before, adv, c, mask, lr=lr, weights=weights)
    assert torch.allclose(pred[mask], measured[mask], rtol=2e-3, atol=1e-12)
    assert float(pred[mask].abs().min()) > 0  # every valid token has a first-order change
    assert torch.all(pred[~mask] == 0)
    m = entropy_dynamics_metrics(pred, measured, adv, mask)
    assert m["token_corr"] > 0.999
    assert m["predicted_delta"] == pytest.approx(m["measured_delta"], rel=2e-3)


def test_loss_coefficients_are_the_aggregations_weights():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    c = loss_coefficients(mask, "seq_mean_token_mean", global_seqs=2)
    assert torch.allclose(c, torch.tensor([[1 / 6, 1 / 6, 1 / 6, 0], [1 / 2, 0, 0, 0]], dtype=torch.float64))
    c = loss_coefficients(mask, "token_mean", global_tokens=8)  # the whole batch's count, not this slice's
    assert torch.allclose(c[mask], torch.full((4,), 1 / 8, dtype=torch.float64))


def test_discriminator_sign_cases_by_advantage():
    # one position, V = 3: p = (0.7, 0.2, 0.1). The likely token has S > E[S], the rare one S < E[S].
    z = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64).log()
    h, n = _h_and_n(z[None, None])
    lp = torch.log_softmax(z, -1)
    s = lp.exp() * (h.item() + lp)
    assert float(s[0]) > float(n) > float(s[2])
    mask = torch.ones(4, 1, dtype=torch.bool)
    # rows: (likely, A>0) (rare, A>0) (likely, A<0) (rare, A<0)
    sampled = torch.stack([lp[0], lp[2], lp[0], lp[2]])[:, None]
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    c = torch.ones(4, 1, dtype=torch.float64)
    pred = predicted_entropy_change(sampled, h.expand(4, 1), n.expand(4, 1), adv, c, mask, lr=0.1)
    # reinforcing the likely token or penalising the rare one sharpens the distribution (H falls);
    # reinforcing the rare one or penalising the likely one flattens it (H rises)
    assert pred[:, 0].sign().tolist() == [-1.0, 1.0, 1.0, -1.0]
    m = entropy_dynamics_metrics(pred, torch.zeros_like(pred), adv, mask)
    assert m["decrease_frac"] == 0.5
    assert m["decrease_frac_pos_adv"] == 0.5 and m["decrease_frac_neg_adv"] == 0.5
    assert m["token_corr"] == 0.0  # a constant measurement has no correlation


def test_masked_tokens_and_empty_batches():
    mask = torch.zeros(2, 3, dtype=torch.bool)
    zeros = torch.zeros(2, 3)
    pred = predicted_entropy_change(zeros, zeros, zeros, torch.ones(2), zeros.double(), mask, lr=1.0)
    assert torch.all(pred == 0)
    m = entropy_dynamics_metrics(pred, zeros, torch.ones(2), mask)
    assert m == {
        "predicted_delta": 0.0,
        "measured_delta": 0.0,
        "token_corr": 0.0,
        "decrease_frac": 0.0,
        "decrease_frac_pos_adv": 0.0,
        "decrease_frac_neg_adv": 0.0,
    }
    with pytest.raises(ValueError, match="expected_s"):
        predicted_entropy_change(zeros, zeros, torch.zeros(2, 2), torch.ones(2), zeros, mask, lr=1.0)
