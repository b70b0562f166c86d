"""The clipped policy-gradient loss every method shares.

Why: algorithms only change three tensors (advantages A, weights W, mask M'); this one loss
consumes them, so the learner holds no algorithm logic. Aggregations:

- seq_mean_token_mean (GRPO): sum_i (1/|o_i|) sum_t x_it / n_seqs
- token_mean (DAPO):          sum_it x_it / n_tokens
- seq_mean_token_sum_norm (Dr.GRPO): sum_it x_it / (norm_constant * n_seqs), norm_constant = the
  generation budget (max new tokens); the extra 1/n_seqs follows Dr.GRPO/TRL
  (sum / (B * max_completion_length)) so the scale does not grow with the batch.

|o_i| counts the tokens of M' (after any token mask); n_seqs counts every row, empty or not.
Micro-batching: pass the WHOLE batch's n_tokens / n_seqs (`loss_normalizers`) as
global_tokens / global_seqs; each micro-batch loss is then its exact share of the whole-batch loss
and the losses (and gradients) of the micro-batches sum to the whole-batch ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from egsw_rl.algos import _checks as C

__all__ = ["AGGREGATIONS", "agg_loss", "loss_normalizers", "policy_loss", "k3_kl", "reduce_loss_metrics"]

AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")
LOG_RATIO_CLAMP = 20.0

# metrics that are additive over micro-batches (loss shares) vs token sums that need a count
_ADDITIVE = ("actor/loss", "actor/pg_loss", "actor/kl_loss", "actor/entropy_loss", "actor/tokens")
_MEANS = {
    "actor/clip_frac": "actor/clip_frac_sum",
    "actor/approx_kl": "actor/approx_kl_sum",
    "actor/ratio_mean": "actor/ratio_sum",
    "actor/ref_kl": "actor/ref_kl_sum",
    "actor/entropy": "actor/entropy_sum",
}


def loss_normalizers(mask: Tensor, agg: str = "seq_mean_token_mean") -> dict[str, int]:
    """Whole-batch normalisers: global_tokens = valid tokens of M', global_seqs = rows (python ints)."""
    C.choice(agg, "agg", AGGREGATIONS)
    m = C.mask2d(mask)
    return {"global_tokens": int(m.sum()), "global_seqs": int(m.shape[0])}


def agg_loss(
    x: Tensor,
    mask: Tensor,
    agg: str = "seq_mean_token_mean",
    *,
    norm_constant: float | None = None,
    global_tokens: int | float | Tensor | None = None,
    global_seqs: int | float | Tensor | None = None,
) -> Tensor:
    """Aggregate per-token values x[N, T] over mask[N, T] (see the module docstring)."""
    C.choice(agg, "agg", AGGREGATIONS)
    m = C.mask2d(mask)
    C.same_shape(x, m, "x")
    xm = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
    if agg == "token_mean":
        den = m.sum() if global_tokens is None else global_tokens
        return xm.sum() / _clamp1(den, x)
    seqs = m.shape[0] if global_seqs is None else global_seqs
    if agg == "seq_mean_token_mean":
        per_seq = xm.sum(dim=1) / m.sum(dim=1).clamp_min(1).to(x.dtype)
        return per_seq.sum() / _clamp1(seqs, x)
    if norm_constant is None or not float(norm_constant) > 0:
        raise ValueError(
            "norm_constant (the generation budget, > 0) is required for agg='seq_mean_token_sum_norm', "
            f"got {norm_constant!r}"
        )
    return xm.sum() / (float(norm_constant) * _clamp1(seqs, x))


def _clamp1(v: int | float | Tensor, like: Tensor) -> Tensor:
    return torch.as_tensor(v, dtype=like.dtype, device=like.device).clamp_min(1)


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = exp(d) - d - 1 with d = ref - logprobs clamped to [-20, 20] (per token)."""
    d = (ref_logprobs - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return d.exp() - d - 1.0


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    weights: Tensor | None = None,
    ref_logprobs: Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    beta: float = 0.0,
    agg: str = "seq_mean_token_mean",
    norm_constant: float | None = None,
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    global_tokens: int | float | Tensor | None = None,
    global_seqs: int | float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """L = AGG(W * l_pg, M') + beta * AGG(k3, M') - entropy_coef * AGG(H, M').

    l_pg = -min(r A, clip(r, 1 - clip_low, 1 + clip_high) A), r = exp(logprobs - old_logprobs)
    (log-ratio clamped to [-20, 20]). advantages: [N] or [N, T]; weights: [N, T] or None (= 1).
    Advantages, weights and old/ref logprobs are detached; gradient flows through `logprobs`
    (and `entropy` for the bonus). beta = 0 never touches ref_logprobs.

    Metrics: detached 0-d tensors. `actor/{loss,pg_loss,kl_loss,entropy_loss}` are this
    micro-batch's share of the loss (sum them over micro-batches); `actor/tokens` and the
    `*_sum` entries are sums over valid tokens; `actor/{clip_frac,approx_kl,ratio_mean,ref_kl,
    entropy}` are the micro-batch means. Use `reduce_loss_metrics` to combine micro-batches.
    """
    m = C.mask2d(mask)
    lp = C.same_shape(C.tensor(logprobs, "logprobs", 2), m, "logprobs")
    if not lp.is_floating_point():
        raise ValueError("logprobs must be a floating tensor")
    dt = torch.float64 if lp.dtype == torch.float64 else torch.float32
    lp = lp.to(dt)
    old = C.same_shape(C.tensor(old_logprobs, "old_logprobs", 2), m, "old_logprobs").detach().to(dt)
    adv = C.per_token(advantages, m).detach().to(dt)
    C.choice(agg, "agg", AGGREGATIONS)
    if not (float(clip_low) >= 0 and float(clip_high) >= 0):
        raise ValueError(f"clip_low and clip_high must be >= 0, got {clip_low!r}, {clip_high!r}")
    kw = dict(norm_constant=norm_constant, global_tokens=global_tokens, global_seqs=global_seqs)
    zero = torch.zeros((), dtype=dt, device=lp.device)

    log_ratio = (lp - old).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = log_ratio.exp()
    unclipped = -ratio * adv
    clipped = -ratio.clamp(1.0 - float(clip_low), 1.0 + float(clip_high)) * adv
    pg_tok = torch.maximum(unclipped, clipped)
    if weights is not None:
        w = C.same_shape(C.tensor(weights, "weights", 2), m, "weights").detach().to(dt)
        pg_tok = w * pg_tok
    pg = agg_loss(pg_tok, m, agg, **kw)
    loss = pg

    kl_loss, ref_kl_sum = zero, zero
    if float(beta) != 0.0:
        if ref_logprobs is None:
            raise ValueError("ref_logprobs is required when beta != 0")
        ref = C.same_shape(C.tensor(ref_logprobs, "ref_logprobs", 2), m, "ref_logprobs").detach().to(dt)
        kl_tok = k3_kl(lp, ref)
        kl_loss = float(beta) * agg_loss(kl_tok, m, agg, **kw)
        loss = loss + kl_loss
        ref_kl_sum = torch.where(m, kl_tok.detach(), zero).sum()

    ent_loss, ent_sum = zero, zero
    if entropy is not None:
        h = C.same_shape(C.tensor(entropy, "entropy", 2), m, "entropy").to(dt)
        ent_sum = torch.where(m, h.detach(), zero).sum()
        if float(entropy_coef) != 0.0:
            ent_loss = -float(entropy_coef) * agg_loss(h, m, agg, **kw)
            loss = loss + ent_loss
    elif float(entropy_coef) != 0.0:
        raise ValueError("entropy [N, T] (differentiable) is required when entropy_coef != 0")

    with torch.no_grad():
        n_tok = m.sum().to(dt)
        d_old = (old - lp.detach()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        sums = {
            "actor/clip_frac_sum": torch.where(m & (clipped > unclipped), 1.0, 0.0).to(dt).sum(),
            "actor/approx_kl_sum": torch.where(m, d_old.exp() - d_old - 1.0, zero).sum(),
            "actor/ratio_sum": torch.where(m, ratio.detach(), zero).sum(),
            "actor/ref_kl_sum": ref_kl_sum,
            "actor/entropy_sum": ent_sum,
        }
        metrics: dict[str, Tensor] = {
            "actor/loss": loss.detach(),
            "actor/pg_loss": pg.detach(),
            "actor/kl_loss": kl_loss.detach(),
            "actor/entropy_loss": ent_loss.detach(),
            "actor/tokens": n_tok,
            **sums,
        }
        for mean_key, sum_key in _MEANS.items():
            metrics[mean_key] = sums[sum_key] / n_tok.clamp_min(1)
    return loss, metrics


def reduce_loss_metrics(parts: Iterable[Mapping[str, Tensor | float]]) -> dict[str, float]:
    """Combine `policy_loss` metrics of micro-batches (sharing global normalisers) into floats:
    loss shares and sums are added, means are recomputed as sum / tokens."""
    acc: dict[str, float] = {}
    for part in parts:
        for key, val in part.items():
            if key in _ADDITIVE or key.endswith("_sum"):
                acc[key] = acc.get(key, 0.0) + float(val)
    n = max(acc.get("actor/tokens", 0.0), 1.0)
    for mean_key, sum_key in _MEANS.items():
        if sum_key in acc:
            acc[mean_key] = acc[sum_key] / n
    return acc
