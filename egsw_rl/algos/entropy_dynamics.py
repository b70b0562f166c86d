"""First-order entropy dynamics of one policy-gradient step ("On the Entropy Dynamics in
Reinforcement Fine-Tuning of LLMs", arXiv 2602.03392; docs/algorithms.md, "Entropy dynamics").

The paper's discriminator of a token k under p = softmax(z) is S_k = p_k (H + log p_k). Raising
logit k by eps changes the entropy by dH = -eps S_k + O(eps^2) (its Theorem 3.2). A
policy-gradient step on the sampled token k with advantage A moves the logits of that position by
dz = eta A (e_k - p), and then (its Theorem 3.3)

    dH = -eta A (S_k - E_{j~p}[S_j]) + O(eta^2),   E_{j~p}[S_j] = H sum_j p_j^2 + sum_j p_j^2 log p_j

(the same N that ClipV thresholds, `clipv_stats_from_logits`). So a positive-advantage token
lowers the entropy when S_k is above its expectation, a negative-advantage one when it is below.

Here eta is the step each token's logits would take under plain gradient descent on our loss at
learning rate lr: eta_t = lr * c_t * W_t, where c_t = d loss / d (token t's term) is the loss
aggregation's coefficient (1/n_tokens for token_mean, 1/(|o_i| n_seqs) for seq_mean_token_mean,
...) and W_t the method's weight. The prediction treats the logits as the parameters, as the
paper's theorems do; a network and Adam rescale and mix the step, so compare its sign and its
correlation with the measured change, not its magnitude.
"""

from __future__ import annotations

import torch
from torch import Tensor

from egsw_rl.algos import _checks as C
from egsw_rl.algos.loss import agg_loss

__all__ = ["loss_coefficients", "predicted_entropy_change", "entropy_dynamics_metrics"]


def loss_coefficients(
    mask: Tensor,
    agg: str,
    *,
    norm_constant: float | None = None,
    global_tokens: float | None = None,
    global_seqs: float | None = None,
) -> Tensor:
    """c_t = d agg_loss / d x_t for every token (0 outside the mask): the aggregation is linear in
    x, so its gradient at any point is the per-token coefficient."""
    m = C.mask2d(mask)
    x = torch.zeros(m.shape, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        agg_loss(
            x, m, agg, norm_constant=norm_constant, global_tokens=global_tokens, global_seqs=global_seqs
        ).backward()
    return x.grad.detach()


@torch.no_grad()
def predicted_entropy_change(
    sampled_logprobs: Tensor,
    entropy: Tensor,
    expected_s: Tensor,
    advantages: Tensor,
    coefficients: Tensor,
    mask: Tensor,
    *,
    lr: float,
    weights: Tensor | None = None,
) -> Tensor:
    """dH_t = -lr * c_t * W_t * A_t * (S_t - N_t) per token ([N, T], 0 outside the mask).

    sampled_logprobs / entropy / expected_s (N) are the policy's before the step, on the full
    vocabulary; coefficients from `loss_coefficients`; advantages [N] or [N, T]."""
    m = C.mask2d(mask)
    lp = C.same_shape(C.tensor(sampled_logprobs, "sampled_logprobs", 2), m, "sampled_logprobs").double()
    h = C.same_shape(C.tensor(entropy, "entropy", 2), m, "entropy").double()
    n = C.same_shape(C.tensor(expected_s, "expected_s", 2), m, "expected_s").double()
    c = C.same_shape(C.tensor(coefficients, "coefficients", 2), m, "coefficients").double()
    a = C.per_token(advantages, m).double()
    w = torch.ones_like(c) if weights is None else C.same_shape(weights, m, "weights").double()
    s = lp.exp() * (h + lp)
    return torch.where(m, -float(lr) * c * w * a * (s - n), 0.0)


@torch.no_grad()
def entropy_dynamics_metrics(
    predicted: Tensor, measured: Tensor, advantages: Tensor, mask: Tensor
) -> dict[str, float]:
    """The step's summary, over the valid tokens of `mask`:

    predicted_delta / measured_delta: mean per-token entropy change, predicted (first order) and
    measured (after the update minus before); token_corr: their Pearson correlation across tokens;
    decrease_frac{,_pos_adv,_neg_adv}: share of tokens (all, A > 0, A < 0) whose predicted change
    is negative, i.e. whose update the discriminator says lowers the entropy."""
    m = C.mask2d(mask)
    p = C.same_shape(predicted, m, "predicted").double()[m]
    d = C.same_shape(measured, m, "measured").double()[m]
    a = C.per_token(advantages, m)[m]
    out = {
        "predicted_delta": float(p.mean()) if p.numel() else 0.0,
        "measured_delta": float(d.mean()) if d.numel() else 0.0,
        "token_corr": _corr(p, d),
    }
    for name, sel in (
        ("decrease_frac", torch.ones_like(a, dtype=torch.bool)),
        ("decrease_frac_pos_adv", a > 0),
        ("decrease_frac_neg_adv", a < 0),
    ):
        out[name] = float((p[sel] < 0).double().mean()) if bool(sel.any()) else 0.0
    return out


def _corr(x: Tensor, y: Tensor) -> float:
    if x.numel() < 2:
        return 0.0
    xc, yc = x - x.mean(), y - y.mean()
    den = (xc.square().sum() * yc.square().sum()).sqrt()
    return float((xc * yc).sum() / den) if float(den) > 0 else 0.0
