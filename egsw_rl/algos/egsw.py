"""EGSW: entropy-guided sequence weighting (arXiv 2503.22456).

Why: EGSW reweights the policy gradient towards high-advantage, high-entropy sequences with a
temperature-scaled softmax over sequences, w = softmax((A + alpha * Hn) / P). The weights are a
detached data weight W[N, T] that the shared loss (docs/algorithms.md, section 1) multiplies into
the per-token PG term. With `rescale` the mean weight is 1, so P -> infinity gives GRPO exactly.

Normalisation sets: `batch` (all N sequences, the paper's Eq. 9 as written) or `group` (the G
completions of one prompt). Step granularity normalises at each position t over the sequences of
the set that have a valid token at t (S_t); trajectory granularity over the set's non-empty
sequences. What the paper fixes (Eqs. 6-10) and what it leaves open: docs/algorithms.md,
section 3.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from egsw_rl.algos import _checks as C
from egsw_rl.algos.registry import register_weighting

__all__ = ["egsw_weights", "egsw_diagnostics", "normalized_entropy"]

GRANULARITIES = ("step", "trajectory")
NORMALIZE_OVER = ("batch", "group")
ENTROPY_NORMS = ("log_vocab", "none")
TRAJECTORY_ENTROPY = ("mean", "sum")


def normalized_entropy(
    entropy: Tensor, *, entropy_norm: str = "log_vocab", vocab_size: int | None = None
) -> Tensor:
    """H / log|V| (`log_vocab`, in [0, 1]) or H unchanged (`none`)."""
    C.choice(entropy_norm, "entropy_norm", ENTROPY_NORMS)
    if entropy_norm == "none":
        return entropy
    if vocab_size is None or isinstance(vocab_size, bool) or int(vocab_size) < 2:
        raise ValueError(
            f"vocab_size (an int >= 2) is required for entropy_norm='log_vocab', got {vocab_size!r}"
        )
    return entropy / math.log(int(vocab_size))


def _set_view(x: Tensor, normalize_over: str, group_size: int) -> Tensor:
    """[N, ...] -> [K, S, ...]: K normalisation sets of S sequences each."""
    s = x.shape[0] if normalize_over == "batch" else group_size
    return x.reshape(-1, s, *x.shape[1:]) if x.shape[0] else x.reshape(0, max(s, 1), *x.shape[1:])


def _masked_softmax(scores: Tensor, valid: Tensor, rescale: bool) -> Tensor:
    """Softmax over dim 1 restricted to `valid`, max-subtracted; 0 where invalid or set empty."""
    neg = torch.full_like(scores, float("-inf"))
    filled = torch.where(valid, scores, neg)
    mx = filled.amax(dim=1, keepdim=True)
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    e = torch.where(valid, (filled - mx).exp(), torch.zeros_like(scores))
    den = e.sum(dim=1, keepdim=True)
    w = torch.where(den > 0, e / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(e))
    if rescale:
        w = w * valid.sum(dim=1, keepdim=True).to(w.dtype)
    return w


@torch.no_grad()
def egsw_weights(
    advantages: Tensor,
    entropy: Tensor,
    mask: Tensor,
    *,
    group_size: int,
    alpha: float = 0.2,
    temperature: float = 1.0,
    granularity: str = "step",
    normalize_over: str = "batch",
    entropy_norm: str = "log_vocab",
    vocab_size: int | None = None,
    trajectory_entropy: str = "mean",
    rescale: bool = True,
) -> Tensor:
    """EGSW weights W[N, T] (fp32, or fp64 if an input is fp64; detached; 0 on padding).

    advantages: [N] (or [N, T] token advantages; trajectory granularity then uses their masked
    mean per sequence). entropy: [N, T] nats of the old policy. `temperature` is EGSW's P.
    """
    m = C.mask2d(mask)
    h = C.same_shape(C.tensor(entropy, "entropy", 2), m, "entropy")
    a = C.per_token(advantages, m)
    g = C.group_size(m.shape[0], group_size)
    C.choice(granularity, "granularity", GRANULARITIES)
    C.choice(normalize_over, "normalize_over", NORMALIZE_OVER)
    C.choice(trajectory_entropy, "trajectory_entropy", TRAJECTORY_ENTROPY)
    p = float(temperature)
    if not p > 0:
        raise ValueError(f"temperature (EGSW's P) must be > 0, got {temperature!r}")
    dt = C.work_dtype(a, h)
    h = torch.where(m, h.to(dt), 0.0)
    if not bool(torch.isfinite(h).all()):
        raise ValueError("entropy has non-finite values at valid (mask=True) positions")
    hn = normalized_entropy(h, entropy_norm=entropy_norm, vocab_size=vocab_size)
    a = torch.where(m, a.to(dt), 0.0)
    alpha = float(alpha)

    if granularity == "step":
        scores = (a + alpha * hn) / p
        w = _masked_softmax(
            _set_view(scores, normalize_over, g), _set_view(m, normalize_over, g), bool(rescale)
        )
        return w.reshape(m.shape)

    lengths = m.sum(dim=1)
    nonempty = lengths > 0
    denom = lengths.clamp_min(1).to(dt)
    h_seq = hn.sum(dim=1) if trajectory_entropy == "sum" else hn.sum(dim=1) / denom
    a_seq = advantages.to(dt) if advantages.dim() == 1 else a.sum(dim=1) / denom
    scores = (a_seq + alpha * h_seq) / p
    w_seq = _masked_softmax(
        _set_view(scores, normalize_over, g), _set_view(nonempty, normalize_over, g), bool(rescale)
    )
    return w_seq.reshape(-1)[:, None] * m.to(dt)


@torch.no_grad()
def egsw_diagnostics(
    weights: Tensor,
    mask: Tensor,
    *,
    group_size: int | None = None,
    normalize_over: str = "batch",
    granularity: str = "step",
    **_: object,
) -> dict[str, float]:
    """Weight max / min / mean over valid tokens and the effective-sample-size fraction.

    ESS of a normalisation set = 1 / sum_i q_i^2 with q = w / sum(w) over the set (invariant to
    `rescale`), divided by the set size; `egsw/ess_frac` averages it over the sets (step: every
    (set, t) with |S_t| > 0; trajectory: every set with a non-empty sequence). Python floats.
    """
    m = C.mask2d(mask)
    w = C.same_shape(C.tensor(weights, "weights", 2), m, "weights").detach()
    C.choice(normalize_over, "normalize_over", NORMALIZE_OVER)
    C.choice(granularity, "granularity", GRANULARITIES)
    g = C.group_size(m.shape[0], group_size if normalize_over == "group" else max(m.shape[0], 1))
    dt = C.work_dtype(w)
    w = torch.where(m, w.to(dt), 0.0)
    out = {
        "egsw/weight_max": 0.0,
        "egsw/weight_min": 0.0,
        "egsw/weight_mean": 0.0,
        "egsw/ess_frac": 1.0,
        "egsw/ess_frac_min": 1.0,
    }
    if not bool(m.any()):
        return out
    vals = w[m]
    out["egsw/weight_max"] = float(vals.max())
    out["egsw/weight_min"] = float(vals.min())
    out["egsw/weight_mean"] = float(vals.mean())
    if granularity == "step":
        ws, vs = _set_view(w, normalize_over, g), _set_view(m, normalize_over, g)
    else:
        ws = _set_view(w.amax(dim=1, keepdim=True), normalize_over, g)
        vs = _set_view(m.any(dim=1, keepdim=True), normalize_over, g)
    size = vs.sum(dim=1).to(dt)
    tot = ws.sum(dim=1)
    live = (size > 0) & (tot > 0)
    q = ws / torch.where(tot > 0, tot, torch.ones_like(tot)).unsqueeze(1)
    ess = 1.0 / torch.where(live, (q * q).sum(dim=1), torch.ones_like(tot))
    frac = ess / size.clamp_min(1)
    if bool(live.any()):
        out["egsw/ess_frac"] = float(frac[live].mean())
        out["egsw/ess_frac_min"] = float(frac[live].min())
    return out


# The EGSW weighting is egsw_weights itself: it reads these algo config fields by name.
register_weighting(
    "egsw",
    reads=(
        "alpha",
        "temperature",
        "granularity",
        "normalize_over",
        "entropy_norm",
        "trajectory_entropy",
        "rescale",
    ),
    entropy=True,
    diagnostics=egsw_diagnostics,
)(egsw_weights)


@register_weighting("none")
def _no_weights(advantages: Tensor, entropy: Tensor, mask: Tensor, **_: object) -> Tensor:
    m = C.mask2d(mask)
    return m.to(C.work_dtype(advantages if isinstance(advantages, Tensor) else None))
