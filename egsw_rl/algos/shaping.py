"""One call from plain tensors to the (A, W, M') triple the loss consumes .

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
from egsw_rl.algos.egsw import egsw_diagnostics
from egsw_rl.algos.registry import get_advantage, get_mask, get_weighting

__all__ = ["shape_batch", "SHAPE_PARAMS", "PASSTHROUGH_PARAMS"]

# algorithm parameters (config keys) that shape_batch forwards to the selected functions
SHAPE_PARAMS = frozenset({
    "alpha", "temperature", "granularity", "normalize_over", "entropy_norm", "trajectory_entropy", "rescale",
    "mu", "max_frac", "rho", "alpha1", "alpha2", "beta1", "beta2", "zscore",
})
# other `algo.*` config keys: accepted and ignored, so a driver may pass the whole algo section
PASSTHROUGH_PARAMS = frozenset({
    "name", "entropy_source", "clip_low", "clip_high", "beta", "agg", "norm_constant", "entropy_coef",
    "ppo_epochs", "mini_batches", "dynamic_sampling", "max_gen_batches", "overlong_shaping", "overlong_cache",
    "rollout_correction", "rollout_correction_cap",
})


@torch.no_grad()
def shape_batch(
    rewards: Tensor,
    entropy: Tensor,
    mask: Tensor,
    *,
    group_size: int,
    advantage: str = "grpo",
    weighting: str = "none",
    token_mask: str = "none",
    sampled_logprobs: Tensor | None = None,
    clipv_n: Tensor | None = None,
    vocab_size: int | None = None,
    **params: Any,
) -> tuple[Tensor, Tensor, Tensor, dict[str, float]]:
    """(A[N, T], W[N, T], M'[N, T] bool, metrics) for one whole batch; A and W are 0 outside M'.

    params: the config keys in SHAPE_PARAMS (unknown keys raise ValueError; PASSTHROUGH_PARAMS
    are ignored). Metrics are python floats: groups/all_equal_frac, entropy/mean, adv/*,
    mask/dropped_frac, mask/dropped_tokens, tokens/valid and egsw/* when weighting == "egsw".
    """
    unknown = set(params) - SHAPE_PARAMS - PASSTHROUGH_PARAMS
    if unknown:
        raise ValueError(f"unknown shape_batch params {sorted(unknown)}; known: {sorted(SHAPE_PARAMS)}")
    m = C.mask2d(mask)
    r = C.tensor(rewards, "rewards", 1)
    if r.shape[0] != m.shape[0]:
        raise ValueError(f"rewards must have N={m.shape[0]} entries (rows of mask), got {r.shape[0]}")
    h = C.same_shape(C.tensor(entropy, "entropy", 2), m, "entropy").detach()
    g = C.group_size(m.shape[0], group_size)
    adv_fn, mask_fn, w_fn = get_advantage(advantage), get_mask(token_mask), get_weighting(weighting)
    kw = {k: v for k, v in params.items() if k in SHAPE_PARAMS}

    a = adv_fn(r, h, m, group_size=g, **kw)
    m2 = mask_fn(a, h, m, sampled_logprobs=sampled_logprobs, clipv_n=clipv_n, **kw)
    a = torch.where(m2, a, 0.0)
    w = w_fn(a, h, m2, group_size=g, vocab_size=vocab_size, **kw).to(a.dtype)
    w = torch.where(m2, w, 0.0)

    n_valid = int(m.sum())
    n_kept = int(m2.sum())
    hv = h[m].to(torch.float64)
    av = a[m2].to(torch.float64)
    metrics: dict[str, float] = {
        "groups/all_equal_frac": float(all_equal_groups(r, group_size=g).to(torch.float64).mean()) if r.numel() else 0.0,
        "tokens/valid": float(n_valid),
        "mask/dropped_tokens": float(n_valid - n_kept),
        "mask/dropped_frac": (n_valid - n_kept) / n_valid if n_valid else 0.0,
        "entropy/mean": float(hv.mean()) if hv.numel() else 0.0,
        "adv/mean": float(av.mean()) if av.numel() else 0.0,
        "adv/abs_mean": float(av.abs().mean()) if av.numel() else 0.0,
        "adv/max": float(av.max()) if av.numel() else 0.0,
        "adv/min": float(av.min()) if av.numel() else 0.0,
    }
    if weighting == "egsw":
        metrics.update(egsw_diagnostics(w, m2, group_size=g, normalize_over=kw.get("normalize_over", "batch"),
                                        granularity=kw.get("granularity", "step")))
    return a, w, m2, metrics
