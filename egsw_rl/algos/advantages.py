"""Outcome advantages from scalar rewards.

Why: every method starts from a group-relative advantage; these are the GRPO (DeepSeekMath, arXiv 2402.03300),
Dr.GRPO (arXiv 2503.20783, no std) and batch-std variants. Rewards are ordered group by group: completion j of
prompt b sits at index b * G + j.
"""

from __future__ import annotations

import torch
from torch import Tensor

from egsw_rl.algos import _checks as C
from egsw_rl.algos.registry import register_advantage

__all__ = ["ADVANTAGE_MODES", "group_advantages", "all_equal_groups"]

ADVANTAGE_MODES = ("grpo", "dr_grpo", "batch_std")


def _rewards(rewards: Tensor, group_size: int) -> tuple[Tensor, int]:
    r = C.tensor(rewards, "rewards", 1)
    g = C.group_size(r.shape[0], group_size)
    return r.to(C.work_dtype(r)), g


@torch.no_grad()
def group_advantages(rewards: Tensor, *, group_size: int, mode: str = "grpo", eps: float = 1e-6) -> Tensor:
    """Sequence advantages A[N] from rewards[N].

    grpo:      (R - mean_g R) / (std_g R + eps), unbiased std over the group; a group of 1 gives 0.
    dr_grpo:   R - mean_g R.
    batch_std: (R - mean_g R) / (std_batch R + eps), unbiased std of all N rewards (0 if N = 1).
    """
    C.choice(mode, "mode", ADVANTAGE_MODES)
    r, g = _rewards(rewards, group_size)
    if r.numel() == 0:
        return r.clone()
    grouped = r.view(-1, g)
    # an all-equal group has no signal; its mean is not exact in floating point (ten 0.1s do not
    # average to 0.1 in fp32), and the rounding divided by std + eps would leave A ~ 1e-2
    equal = grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True)
    centred = torch.where(equal, 0.0, grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)
    if mode == "dr_grpo":
        return centred
    if mode == "grpo":
        if g == 1:
            return torch.zeros_like(r)
        std = grouped.std(dim=1, unbiased=True, keepdim=True).expand(-1, g).reshape(-1)
        return centred / (std + eps)
    if r.numel() == 1:
        return torch.zeros_like(r)
    return centred / (r.std(unbiased=True) + eps)


@torch.no_grad()
def all_equal_groups(rewards: Tensor, *, group_size: int) -> Tensor:
    """Bool [B]: True for groups whose rewards are all equal (no GRPO policy gradient)."""
    r, g = _rewards(rewards, group_size)
    grouped = r.view(-1, g)
    return grouped.amax(dim=1) == grouped.amin(dim=1)


def _make(mode: str):
    def fn(rewards: Tensor, entropy: Tensor | None, mask: Tensor, *, group_size: int) -> Tensor:
        return group_advantages(rewards, group_size=group_size, mode=mode)

    fn.__name__ = f"{mode}_advantages"
    fn.__doc__ = f"Registry adapter: `{mode}` sequence advantages A[N] (shape_batch spreads them on tokens)."
    return fn


for _mode in ADVANTAGE_MODES:
    register_advantage(_mode)(_make(_mode))
