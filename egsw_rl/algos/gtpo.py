"""GTPO and GRPO-S: entropy-shaped token / sequence rewards (arXiv 2508.04349).

Why: GTPO moves credit inside a group towards high-entropy tokens of correct answers and
towards confident (low-entropy) tokens of wrong answers, then z-scores the shaped token rewards
into token advantages A[N, T]. GRPO-S does the same per sequence with the mean entropy.

Sets: O+ = {R > 0}, O- = the rest, per group. The entropy ratios are normalised over the group's
O+ (O-) sequences with a valid token at position t. Entropy is detached and clamped to
>= `entropy_floor` (1e-3) before any 1/H.

Equation numbers are the paper's (arXiv 2508.04349) as independent reimplementations of it state
them; docs/algorithms.md, section 4, says what is reconstructed and why `zscore` exists.
"""

from __future__ import annotations

import torch
from torch import Tensor

from egsw_rl.algos import _checks as C
from egsw_rl.algos.registry import register_advantage

__all__ = ["gtpo_token_rewards", "gtpo_advantages", "grpo_s_rewards", "grpo_s_advantages", "ZSCORE_MODES"]

ZSCORE_MODES = ("separate", "joint", "scale_only")


def _inputs(rewards: Tensor, entropy: Tensor, mask: Tensor, group_size: int, floor: float):
    m = C.mask2d(mask)
    r = C.tensor(rewards, "rewards", 1)
    if r.shape[0] != m.shape[0]:
        raise ValueError(f"rewards must have N={m.shape[0]} entries (rows of mask), got {r.shape[0]}")
    h = C.same_shape(C.tensor(entropy, "entropy", 2), m, "entropy")
    g = C.group_size(m.shape[0], group_size)
    if not float(floor) > 0:
        raise ValueError(f"entropy_floor must be > 0, got {floor!r}")
    dt = C.work_dtype(r, h)
    h = torch.where(m, h.detach().to(dt), 1.0).clamp_min(float(floor))
    return r.detach().to(dt), h, m, g, dt


def _spread(score: Tensor, sel: Tensor, g: int) -> Tensor:
    """score / (its sum over the group's selected rows) * (their count), per position of the
    rows [N, ...] in groups of g consecutive rows; a position no row selects gives 0."""
    s = torch.where(sel, score, 0.0).reshape(-1, g, *score.shape[1:])
    cnt = sel.reshape(s.shape).sum(dim=1, keepdim=True).to(score.dtype)
    tot = s.sum(dim=1, keepdim=True)
    return (s / torch.where(tot > 0, tot, torch.ones_like(tot)) * cnt).reshape(score.shape)


@torch.no_grad()
def gtpo_token_rewards(
    rewards: Tensor,
    entropy: Tensor,
    mask: Tensor,
    *,
    group_size: int,
    alpha1: float = 1.0,
    alpha2: float = 0.1,
    entropy_floor: float = 1e-3,
) -> Tensor:
    """Shaped token rewards [N, T] (arXiv 2508.04349 Eq. 3 for O+, Eq. 5 for O-; 0 on padding).

    O+: alpha1 * R_i + alpha2 * d_t * H_it / sum_{O+_t} H
    O-: -alpha1     - alpha2 * h_t * (1/H_it) / sum_{O-_t} (1/H)
    so sum over O+_t is alpha1 * sum R + alpha2 * d_t (its Prop. 2.2) and over O-_t
    -(alpha1 + alpha2) h_t.
    """
    r, h, m, g, _ = _inputs(rewards, entropy, mask, group_size, entropy_floor)
    pos = m & (r > 0)[:, None]
    neg = m & ~(r > 0)[:, None]

    zero = 0.0  # python scalars keep the tensor dtype and device in torch.where
    rt_pos = float(alpha1) * r[:, None] + float(alpha2) * _spread(h, pos, g)
    rt_neg = -float(alpha1) - float(alpha2) * _spread(1.0 / h, neg, g)
    return torch.where(pos, rt_pos, torch.where(neg, rt_neg, zero))


def _zscore(x: Tensor, sel: Tensor, k: int, *, center: bool, eps: float) -> Tensor:
    """Standardise x over the selected entries of each of k row blocks (unbiased std); 0 if <= 1 entry."""
    xv, sv = x.reshape(k, -1), sel.reshape(k, -1)
    dt = x.dtype
    cnt = sv.sum(dim=1, keepdim=True).to(dt)
    xs = torch.where(sv, xv, 0.0)
    mean = xs.sum(dim=1, keepdim=True) / cnt.clamp_min(1)
    dev = torch.where(sv, xv - mean, 0.0)
    std = ((dev * dev).sum(dim=1, keepdim=True) / (cnt - 1).clamp_min(1)).sqrt()
    if center:
        out = dev / (std + eps)
    else:  # scale only: a constant set (std ~ 0) is left unscaled instead of blown up by 1/eps
        out = xs / torch.where(std > eps, std + eps, torch.ones_like(std))
    out = torch.where(sv & (cnt > 1), out, 0.0)
    return out.reshape(x.shape)


@register_advantage("gtpo", reads=("alpha1", "alpha2", "zscore"), entropy=True)
@torch.no_grad()
def gtpo_advantages(
    rewards: Tensor,
    entropy: Tensor,
    mask: Tensor,
    *,
    group_size: int,
    alpha1: float = 1.0,
    alpha2: float = 0.1,
    zscore: str = "separate",
    entropy_floor: float = 1e-3,
    eps: float = 1e-6,
) -> Tensor:
    """GTPO token advantages A[N, T] (arXiv 2508.04349 Eq. 6), 0 on padding.

    zscore: separate (O+ tokens and O- tokens each standardised over the whole batch, as the
    reimplementations of docs/algorithms.md, section 4, whiten them) | joint (one mean/std over
    the union of O+ and O- tokens of each group, which keeps the sign split whenever alpha1
    dominates) | scale_only (O+ and O- divided by their own batch std, no mean subtraction, so
    signs are kept).
    A group of size 1 gives 0, as in GRPO.
    """
    C.choice(zscore, "zscore", ZSCORE_MODES)
    rt = gtpo_token_rewards(
        rewards,
        entropy,
        mask,
        group_size=group_size,
        alpha1=alpha1,
        alpha2=alpha2,
        entropy_floor=entropy_floor,
    )
    m = C.mask2d(mask)
    if group_size == 1 or m.numel() == 0:
        return torch.zeros_like(rt)
    if zscore == "joint":
        return _zscore(rt, m, m.shape[0] // group_size, center=True, eps=eps)
    pos = m & (C.tensor(rewards, "rewards", 1) > 0)[:, None]
    neg = m & ~pos
    center = zscore == "separate"
    return _zscore(rt, pos, 1, center=center, eps=eps) + _zscore(rt, neg, 1, center=center, eps=eps)


@torch.no_grad()
def grpo_s_rewards(
    rewards: Tensor,
    entropy: Tensor,
    mask: Tensor,
    *,
    group_size: int,
    beta1: float = 1.0,
    beta2: float = 0.1,
    entropy_floor: float = 1e-3,
) -> Tensor:
    """Shaped sequence rewards rh[N] from the mean (clamped) token entropy Hbar_i of each sequence.

    O+: beta1 * R_i + beta2 * n * Hbar_i / sum_{O+} Hbar;
    O-: -beta1 - beta2 * m * (1/Hbar_j) / sum_{O-} 1/Hbar.
    An empty sequence has Hbar = entropy_floor.
    """
    r, h, m, g, dt = _inputs(rewards, entropy, mask, group_size, entropy_floor)
    lengths = m.sum(dim=1)
    hbar = torch.where(
        lengths > 0, (h * m).sum(dim=1) / lengths.clamp_min(1), torch.full_like(r, float(entropy_floor))
    )
    hbar = hbar.clamp_min(float(entropy_floor))
    pos = r > 0
    rh_pos = float(beta1) * r + float(beta2) * _spread(hbar, pos, g)
    rh_neg = -float(beta1) - float(beta2) * _spread(1.0 / hbar, ~pos, g)
    return torch.where(pos, rh_pos, rh_neg)


@register_advantage("grpo_s", reads=("beta1", "beta2"), entropy=True)
@torch.no_grad()
def grpo_s_advantages(
    rewards: Tensor,
    entropy: Tensor,
    mask: Tensor,
    *,
    group_size: int,
    beta1: float = 1.0,
    beta2: float = 0.1,
    entropy_floor: float = 1e-3,
    eps: float = 1e-6,
) -> Tensor:
    """GRPO-S sequence advantages A[N]: group z-score (unbiased std) of the shaped rewards rh."""
    rh = grpo_s_rewards(
        rewards, entropy, mask, group_size=group_size, beta1=beta1, beta2=beta2, entropy_floor=entropy_floor
    )
    if group_size == 1:
        return torch.zeros_like(rh)
    grouped = rh.view(-1, group_size)
    std = grouped.std(dim=1, unbiased=True, keepdim=True)
    return ((grouped - grouped.mean(dim=1, keepdim=True)) / (std + eps)).reshape(-1)
