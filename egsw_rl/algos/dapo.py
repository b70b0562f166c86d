"""DAPO's batch-level pieces (arXiv 2503.14476).

Why: dynamic sampling drops prompt groups whose answers are all right or all wrong (no
GRPO signal; the driver keeps generating until the batch is full), and overlong reward shaping
penalises completions that run into the generation budget. Clip-Higher and token-mean live in
the loss. The filter looks at correctness, not at the shaped reward: DAPO keeps a group when
0 < #correct < G, so an all-wrong group whose lengths differ inside the overlong window (shaped
rewards 0, -0.3, -0.7, -1) is still dropped.
"""

from __future__ import annotations

import torch
from torch import Tensor

from egsw_rl.algos import _checks as C
from egsw_rl.algos.advantages import all_equal_groups

__all__ = ["dynamic_sampling_keep", "overlong_penalty"]


@torch.no_grad()
def dynamic_sampling_keep(correct: Tensor, *, group_size: int) -> Tensor:
    """Bool [B]: True for groups whose correctness varies (some completions right, some wrong).
    correct: bool (or 0/1) [N], group by group: index b covers rows b*G..b*G+G-1."""
    c = C.tensor(correct, "correct", 1)
    if c.is_floating_point() and not bool(((c == 0) | (c == 1)).all()):
        raise ValueError("correct must be boolean (or 0/1): pass correctness, not the (shaped) reward")
    return ~all_equal_groups(c.to(torch.float32), group_size=group_size)


@torch.no_grad()
def overlong_penalty(lengths: Tensor, *, max_len: int, cache_len: int) -> Tensor:
    """Reward term added for length |y| (float [N]): 0 if |y| <= L_max - L_cache,
    ((L_max - L_cache) - |y|) / L_cache inside the cache window, -1 beyond L_max.
    cache_len = 0 gives a hard -1 only for |y| > L_max."""
    ln = C.tensor(lengths, "lengths", 1)
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be a positive int, got {max_len!r}")
    if isinstance(cache_len, bool) or not isinstance(cache_len, int) or not 0 <= cache_len <= max_len:
        raise ValueError(f"cache_len must be an int in [0, max_len={max_len}], got {cache_len!r}")
    y = ln.to(torch.float64)
    start = max_len - cache_len
    soft = (start - y) / cache_len if cache_len > 0 else torch.zeros_like(y)
    out = torch.where(
        y <= start, torch.zeros_like(y), torch.where(y <= max_len, soft, torch.full_like(y, -1.0))
    )
    return out.to(C.work_dtype(ln) if ln.is_floating_point() else torch.float32)
