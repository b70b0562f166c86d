"""Token masks that remove tokens from the loss (ALGORITHMS.md sections 5 and 6).

Why: ClipB / ClipV (seed 003) drop the negative-update tokens that would collapse the entropy,
judged by the entropy discriminator S = p (H + log p) of the sampled token, following the
authors' released code (ALGORITHMS-notes.md 4.2, 4.3): population statistics over all valid
tokens of the whole batch. The 80/20 mask keeps only the high-entropy minority of tokens.
A dropped token leaves the mask, hence also the token-mean denominator.
"""

from __future__ import annotations

import torch
from torch import Tensor

from egsw_rl.algos import _checks as C
from egsw_rl.algos.registry import register_mask

__all__ = ["entropy_discriminator", "clipb_mask", "clipv_mask", "high_entropy_mask", "masked_quantile",
           "CLIPB_MU", "CLIPV_MU"]

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
        raise ValueError("sampled_logprobs [N, T] (log-prob of each sampled token) is required for ClipB/ClipV")
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
def clipb_mask(advantages: Tensor, sampled_logprobs: Tensor, entropy: Tensor, mask: Tensor, *,
               mu: float = CLIPB_MU) -> Tensor:
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
def clipv_mask(advantages: Tensor, sampled_logprobs: Tensor, entropy: Tensor, clipv_n: Tensor, mask: Tensor,
               *, mu: float = CLIPV_MU, max_frac: float = 1e-4) -> Tensor:
    """ClipV: with D = N - S, drop tokens with A <= 0 and D > mu * std(D) (population std, mean not
    subtracted). If more than max_frac of the valid tokens qualify, drop only the K = max(int(max_frac
    * n_valid), 1) qualifying tokens with the largest D. Keep all if std(D) < 1e-12.
    clipv_n: N = H sum p^2 + sum p^2 log p from the full logits (see clipv_stats_from_logits).
    """
    a, lp, h, m = _common(advantages, sampled_logprobs, entropy, mask)
    if clipv_n is None:
        raise ValueError("clipv_n [N, T] (from clipv_stats_from_logits, needs entropy_source=learner) is required for ClipV")
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
def masked_quantile(x: Tensor, mask: Tensor, q: float) -> Tensor:
    """q-quantile (linear interpolation, as torch.quantile) of x over the valid entries."""
    vals = x.detach()[C.mask2d(mask)].sort().values
    if vals.numel() == 0:
        return x.new_zeros(())
    pos = float(q) * (vals.numel() - 1)
    lo = int(pos)
    hi = min(lo + 1, vals.numel() - 1)
    return vals[lo] + (pos - lo) * (vals[hi] - vals[lo])


@torch.no_grad()
def high_entropy_mask(entropy: Tensor, mask: Tensor, *, rho: float = 0.2) -> Tensor:
    """80/20: keep tokens with H >= the (1 - rho) quantile of H over the valid tokens of the batch."""
    m = C.mask2d(mask)
    h = C.same_shape(C.tensor(entropy, "entropy", 2), m, "entropy")
    if not 0.0 < float(rho) <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho!r}")
    h = h.detach().to(C.work_dtype(h))
    tau = masked_quantile(h, m, 1.0 - float(rho))
    return m & (h >= tau)


@register_mask("none")
def _no_mask(advantages: Tensor, entropy: Tensor, mask: Tensor, **_: object) -> Tensor:
    return C.mask2d(mask).clone()


@register_mask("clipb")
def _clipb_registered(advantages: Tensor, entropy: Tensor, mask: Tensor, *, sampled_logprobs: Tensor | None = None,
                      mu: float | None = None, **_: object) -> Tensor:
    return clipb_mask(advantages, sampled_logprobs, entropy, mask, mu=CLIPB_MU if mu is None else mu)


@register_mask("clipv")
def _clipv_registered(advantages: Tensor, entropy: Tensor, mask: Tensor, *, sampled_logprobs: Tensor | None = None,
                      clipv_n: Tensor | None = None, mu: float | None = None, max_frac: float | None = None,
                      **_: object) -> Tensor:
    return clipv_mask(advantages, sampled_logprobs, entropy, clipv_n, mask, mu=CLIPV_MU if mu is None else mu,
                      max_frac=1e-4 if max_frac is None else max_frac)


@register_mask("high_entropy")
def _high_entropy_registered(advantages: Tensor, entropy: Tensor, mask: Tensor, *, rho: float | None = None,
                             **_: object) -> Tensor:
    return high_entropy_mask(entropy, mask, rho=0.2 if rho is None else rho)
