"""Token masks that remove tokens from the loss.

Why: ClipB / ClipV (arXiv 2602.03392) drop the negative-update tokens that would collapse the
entropy, judged by the entropy discriminator S = p (H + log p) of the sampled token, following
the authors' released code: population statistics over all valid tokens of the whole batch.
The 80/20 mask ("Beyond the 80/20 Rule", arXiv 2506.01939) keeps only the high-entropy
minority of tokens.

A dropped token leaves the mask, hence also the token-mean denominator. For the 80/20 mask that
is the released implementation's convention (github.com/Shenzhi-Wang/Beyond-the-80-20-Rule-RLVR,
built on verl): its `compute_policy_loss_vanilla` aggregates the policy-gradient term with
`loss_mask = response_mask * entropy_top_mask`, and verl's `token-mean` is a masked mean, so the
denominator counts the selected tokens only (the paper's formula divides by all tokens, a
gradient rho times smaller). With `algo.beta = 0` and no entropy bonus, the recipe the paper
trains with, our loss is the released one; our KL and entropy-bonus terms share the filtered
mask, where the release aggregates them over every response token.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from egsw_rl.algos import _checks as C
from egsw_rl.algos.registry import register_mask

__all__ = ["entropy_discriminator", "clipb_mask", "clipv_mask", "high_entropy_mask", "CLIPB_MU", "CLIPV_MU"]

CLIPB_MU = 2.5
CLIPV_MU = 8.5
_TINY_STD = 1e-12


def _pop_stats(x: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and population std of x over the valid entries (n clamped to >= 1)."""
    n = m.sum().clamp_min(1).to(x.dtype)
    xs = torch.where(m, x, 0.0)
    mean = xs.sum() / n
    dev = torch.where(m, x - mean, 0.0)
    return mean, ((dev * dev).sum() / n).sqrt()


def _common(advantages: Tensor, sampled_logprobs: Tensor | None, entropy: Tensor, mask: Tensor):
    m = C.mask2d(mask)
    a = C.per_token(advantages, m)
    if sampled_logprobs is None:
        raise ValueError(
            "sampled_logprobs [N, T] (log-prob of each sampled token) is required for ClipB/ClipV"
        )
    lp = C.same_shape(C.tensor(sampled_logprobs, "sampled_logprobs", 2), m, "sampled_logprobs")
    h = C.same_shape(C.tensor(entropy, "entropy", 2), m, "entropy")
    return a, lp, h, m


@torch.no_grad()
def entropy_discriminator(sampled_logprobs: Tensor, entropy: Tensor) -> Tensor:
    """S = p (H + log p) of the sampled token (fp32, or fp64 if an input is fp64)."""
    dt = C.work_dtype(sampled_logprobs, entropy)
    lp = sampled_logprobs.detach().to(dt)
    return lp.exp() * (entropy.detach().to(dt) + lp)


@torch.no_grad()
def clipb_mask(
    advantages: Tensor, sampled_logprobs: Tensor, entropy: Tensor, mask: Tensor, *, mu: float = CLIPB_MU
) -> Tensor:
    """ClipB: drop tokens with A < 0 and S - mean(S) < -mu * std(S); keep all if std(S) < 1e-12."""
    a, lp, h, m = _common(advantages, sampled_logprobs, entropy, mask)
    s = entropy_discriminator(lp, h)
    s = torch.where(m, s, 0.0)
    mean, std = _pop_stats(s, m)
    if not bool(m.any()) or float(std) < _TINY_STD:
        return m.clone()
    drop = m & (a < 0) & (s - mean < -float(mu) * std)
    return m & ~drop


@torch.no_grad()
def clipv_mask(
    advantages: Tensor,
    sampled_logprobs: Tensor,
    entropy: Tensor,
    clipv_n: Tensor,
    mask: Tensor,
    *,
    mu: float = CLIPV_MU,
    max_frac: float = 1e-4,
) -> Tensor:
    """ClipV: with D = N - S, drop tokens with A <= 0 and D > mu * std(D) (population std, mean not
    subtracted). If more than max_frac of the valid tokens qualify, drop only the K = max(int(max_frac
    * n_valid), 1) qualifying tokens with the largest D. Keep all if std(D) < 1e-12.
    clipv_n: N = H sum p^2 + sum p^2 log p from the full logits (see clipv_stats_from_logits).
    """
    a, lp, h, m = _common(advantages, sampled_logprobs, entropy, mask)
    if clipv_n is None:
        raise ValueError(
            "clipv_n [N, T] (from clipv_stats_from_logits, needs entropy_source=learner) "
            "is required for ClipV"
        )
    nn = C.same_shape(C.tensor(clipv_n, "clipv_n", 2), m, "clipv_n")
    s = entropy_discriminator(lp, h)
    d = torch.where(m, nn.detach().to(s.dtype) - s, 0.0)
    _, std = _pop_stats(d, m)
    n_valid = int(m.sum())
    if n_valid == 0 or float(std) < _TINY_STD:
        return m.clone()
    cand = m & (a <= 0) & (d > float(mu) * std)
    n_cand = int(cand.sum())
    if n_cand > float(max_frac) * n_valid:
        k = max(int(float(max_frac) * n_valid), 1)
        if k < n_cand:
            scores = torch.where(cand, d, torch.full_like(d, float("-inf"))).reshape(-1)
            top = scores.topk(k).indices
            cand = torch.zeros_like(cand).reshape(-1).index_fill_(0, top, True).reshape(m.shape)
    return m & ~cand


@torch.no_grad()
def high_entropy_mask(entropy: Tensor, mask: Tensor, *, rho: float = 0.2) -> Tensor:
    """80/20: keep the ceil(rho * n) valid tokens of the batch with the highest entropy (n valid
    tokens; at least one), as the released implementation's `get_global_entropy_top_mask`
    does with a top-k over the flattened valid tokens (ties broken by `torch.topk`)."""
    m = C.mask2d(mask)
    h = C.same_shape(C.tensor(entropy, "entropy", 2), m, "entropy")
    if not 0.0 < float(rho) <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho!r}")
    n = int(m.sum())
    if n == 0:
        return m.clone()
    # 1e-9 absorbs float error in rho * n (0.2 * 10 is 2.0000000000000004)
    k = max(1, math.ceil(float(rho) * n - 1e-9))
    pos = m.reshape(-1).nonzero().squeeze(1)
    top = h.detach().reshape(-1)[pos].topk(k).indices
    out = torch.zeros(m.numel(), dtype=torch.bool, device=m.device)
    out[pos[top]] = True
    return out.reshape(m.shape)


# Adapters to the registry's mask signature. Each forwards only the config fields it declares
# (`reads`); a field left None (algo.mu) falls back to the mask function's own default.
@register_mask("none")
def _no_mask(advantages: Tensor, entropy: Tensor, mask: Tensor, **_: object) -> Tensor:
    return C.mask2d(mask).clone()


@register_mask("clipb", reads=("mu",), entropy=True)
def _clipb(
    advantages: Tensor,
    entropy: Tensor,
    mask: Tensor,
    *,
    sampled_logprobs: Tensor | None,
    clipv_n: Tensor | None,
    **reads: float,
) -> Tensor:
    return clipb_mask(advantages, sampled_logprobs, entropy, mask, **reads)


@register_mask("clipv", reads=("mu", "max_frac"), entropy=True, learner_entropy=True)
def _clipv(
    advantages: Tensor,
    entropy: Tensor,
    mask: Tensor,
    *,
    sampled_logprobs: Tensor | None,
    clipv_n: Tensor | None,
    **reads: float,
) -> Tensor:
    return clipv_mask(advantages, sampled_logprobs, entropy, clipv_n, mask, **reads)


@register_mask("high_entropy", reads=("rho",), entropy=True)
def _high_entropy(
    advantages: Tensor,
    entropy: Tensor,
    mask: Tensor,
    *,
    sampled_logprobs: Tensor | None,
    clipv_n: Tensor | None,
    **reads: float,
) -> Tensor:
    return high_entropy_mask(entropy, mask, **reads)
