"""One call from plain tensors to the (A, W, M') triple the loss consumes.

Why: the driver should not know algorithm internals. It passes rewards, per-token entropy and
mask (plus the sampled-token logprobs / ClipV's N when a mask needs them) for the WHOLE batch,
before any micro-batch split, and gets back advantages A[N, T], weights W[N, T], the filtered
mask M'[N, T] and float metrics. Order: advantage -> token mask -> weighting, so EGSW's sets S_t
only contain the tokens that remain in the loss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from egsw_rl.algos import _checks as C
from egsw_rl.algos.advantages import all_equal_groups
from egsw_rl.algos.registry import selected

__all__ = ["shape_batch"]


@torch.no_grad()
def shape_batch(
    rewards: Tensor,
    entropy: Tensor,
    mask: Tensor,
    algo: Any,
    *,
    group_size: int,
    sampled_logprobs: Tensor | None = None,
    clipv_n: Tensor | None = None,
    vocab_size: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, dict[str, float]]:
    """(A[N, T], W[N, T], M'[N, T] bool, metrics) for one whole batch; A and W are 0 outside M'.

    algo: the run's algo config (`config.AlgoConfig`, or anything with its attributes):
    `advantage`, `token_mask` and `weighting` select the registered methods, and each method
    receives the fields it declares (registry.py). Metrics are python floats:
    groups/all_equal_frac, entropy/mean, adv/*, mask/dropped_frac, mask/dropped_tokens,
    tokens/valid and the weighting's diagnostics (egsw/* for EGSW).
    """
    m = C.mask2d(mask)
    r = C.tensor(rewards, "rewards", 1)
    if r.shape[0] != m.shape[0]:
        raise ValueError(f"rewards must have N={m.shape[0]} entries (rows of mask), got {r.shape[0]}")
    h = C.same_shape(C.tensor(entropy, "entropy", 2), m, "entropy").detach()
    g = C.group_size(m.shape[0], group_size)
    adv, tok_mask, weighting = selected(algo)
    w_params = weighting.params(algo)

    # a sequence advantage A[N] holds for each of its tokens
    a = C.per_token(adv.fn(r, h, m, group_size=g, **adv.params(algo)), m)
    m2 = tok_mask.fn(a, h, m, sampled_logprobs=sampled_logprobs, clipv_n=clipv_n, **tok_mask.params(algo))
    a = torch.where(m2, a, 0.0)
    w = weighting.fn(a, h, m2, group_size=g, vocab_size=vocab_size, **w_params).to(a.dtype)
    w = torch.where(m2, w, 0.0)

    n_valid = int(m.sum())
    n_kept = int(m2.sum())
    hv = h[m].to(torch.float64)
    av = a[m2].to(torch.float64)
    metrics: dict[str, float] = {
        "groups/all_equal_frac": float(all_equal_groups(r, group_size=g).to(torch.float64).mean())
        if r.numel()
        else 0.0,
        "tokens/valid": float(n_valid),
        "mask/dropped_tokens": float(n_valid - n_kept),
        "mask/dropped_frac": (n_valid - n_kept) / n_valid if n_valid else 0.0,
        "entropy/mean": float(hv.mean()) if hv.numel() else 0.0,
        "adv/mean": float(av.mean()) if av.numel() else 0.0,
        "adv/abs_mean": float(av.abs().mean()) if av.numel() else 0.0,
        "adv/max": float(av.max()) if av.numel() else 0.0,
        "adv/min": float(av.min()) if av.numel() else 0.0,
    }
    if weighting.diagnostics is not None:
        metrics.update(weighting.diagnostics(w, m2, group_size=g, **w_params))
    return a, w, m2, metrics
