"""Rollout importance correction: vLLM did not sample from the learner's old policy.

Why: the engine's kernels differ from the learner's (bf16 on GPU makes it worse), and
`trainer.overlap` samples with the previous weights, so the tokens come from pi_vllm while the
PPO ratio is taken against pi_old (the learner's logprobs of the weights that are meant to have
sampled them). Each token's policy-gradient term is therefore re-weighted by the importance
ratio rho = pi_old / pi_vllm, bounded so that a token vLLM found far likelier than the learner
does cannot dominate the batch:

- tis (truncated importance sampling): w = min(rho, cap);
- mis (masked importance sampling): w = rho where rho <= cap, 0 beyond it (the token keeps its
  place in the aggregation's denominator but contributes no gradient).

Token level, upper cap only, rho from the logprobs of the sampled tokens: the definition of
TRL's `vllm_importance_sampling_cap` (`token_truncate` / `token_mask`) and of verl's rollout IS
(`rollout_is_level=token`, `truncate` / `mask`); OpenRLHF's truncated IS is the `tis` form.
The weights are detached: they scale the gradient, they are not differentiated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from egsw_rl.algos import _checks as C
from egsw_rl.algos.loss import LOG_RATIO_CLAMP

__all__ = ["ROLLOUT_CORRECTIONS", "rollout_is_weights", "reduce_rollout_is"]

ROLLOUT_CORRECTIONS = ("none", "tis", "mis")


@torch.no_grad()
def rollout_is_weights(
    old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, *, mode: str = "tis", cap: float = 2.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token weights [N, T] for the policy-gradient term (0 outside `mask`), and the
    statistics of the raw ratio rho = exp(old - rollout) over the valid tokens as 0-d tensors:
    `sum`, `count`, `max`, `min` and `clipped` (tokens with rho > cap: truncated by tis, zeroed
    by mis). mode `none` gives weights 1 and still measures rho. Combine micro-batches with
    `reduce_rollout_is`."""
    C.choice(mode, "mode", ROLLOUT_CORRECTIONS)
    if not float(cap) >= 1.0:
        raise ValueError(
            f"cap must be >= 1 (a cap below 1 would cut tokens the two policies agree on), got {cap!r}"
        )
    m = C.mask2d(mask)
    old = C.same_shape(C.tensor(old_logprobs, "old_logprobs", 2), m, "old_logprobs").detach()
    roll = C.same_shape(C.tensor(rollout_logprobs, "rollout_logprobs", 2), m, "rollout_logprobs").detach()
    dt = C.work_dtype(old, roll)
    rho = (old.to(dt) - roll.to(dt)).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()
    over = m & (rho > float(cap))
    if mode == "tis":
        w = rho.clamp_max(float(cap))
    elif mode == "mis":
        w = torch.where(over, 0.0, rho)
    else:
        w = torch.ones_like(rho)
    w = torch.where(m, w, 0.0)
    inf = torch.tensor(float("inf"), dtype=dt, device=rho.device)
    stats = {
        "sum": torch.where(m, rho, 0.0).sum(),
        "count": m.sum().to(dt),
        "max": torch.where(m, rho, -inf).max() if m.any() else torch.zeros((), dtype=dt, device=rho.device),
        "min": torch.where(m, rho, inf).min() if m.any() else torch.zeros((), dtype=dt, device=rho.device),
        "clipped": over.sum().to(dt),
    }
    return w, stats


def reduce_rollout_is(parts: Iterable[Mapping[str, Tensor | float]]) -> dict[str, float]:
    """`rollout_is_weights` statistics of several micro-batches (or ranks) -> the logged
    rollout_is/{mean,max,min,clipped_frac} over all their valid tokens (empty -> {})."""
    total = count = clipped = 0.0
    hi, lo = float("-inf"), float("inf")
    for p in parts:
        n = float(p["count"])
        if n == 0:
            continue
        total += float(p["sum"])
        count += n
        clipped += float(p["clipped"])
        hi, lo = max(hi, float(p["max"])), min(lo, float(p["min"]))
    if count == 0:
        return {}
    return {
        "rollout_is/mean": total / count,
        "rollout_is/max": hi,
        "rollout_is/min": lo,
        "rollout_is/clipped_frac": clipped / count,
    }
