"""How a batch is cut for the learner group: pure logic, no torch, no Ray (unit-tested).

A batch of N sequences goes to R ranks, then into micro-batches on each rank:

- `shard_by_tokens`: sequences are dealt to ranks so that token counts (the compute) balance,
  longest first, each to the rank with the fewest tokens so far (LPT scheduling).
- `micro_batches_by_tokens`: on one rank, sequences sorted by length (longest first) are packed
  into micro-batches whose *padded* size (rows x longest row) stays within a token budget, so
  each micro-batch holds sequences of similar length and padding stays low. A sequence longer
  than the budget gets a micro-batch of its own.
- `equalize`: with ZeRO-3 every forward and backward all-gathers parameters on all ranks, so all
  ranks must run the same number of micro-batches; short ranks get empty micro-batches (a
  1-token masked forward with zero loss).
- `mini_batch_split`: PPO-style optimizer steps per batch (`algo.mini_batches`): contiguous
  parts (whole prompt groups), visited in a seeded random order per epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "shard_by_tokens",
    "micro_batches_by_tokens",
    "equalize",
    "mini_batch_split",
    "padding_stats",
    "StepPlan",
    "plan_pass",
]


def shard_by_tokens(lengths: Sequence[int], num_ranks: int) -> list[list[int]]:
    """Deal sequence indices to `num_ranks` ranks balancing the sum of lengths (LPT greedy).

    Longest first, each to the rank with the fewest tokens (ties: fewer sequences, then lower
    rank). Within a rank the indices are returned in ascending order.
    """
    if num_ranks < 1:
        raise ValueError(f"num_ranks must be >= 1, got {num_ranks}")
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    loads = [0] * num_ranks
    counts = [0] * num_ranks
    shards: list[list[int]] = [[] for _ in range(num_ranks)]
    for i in order:
        r = min(range(num_ranks), key=lambda k: (loads[k], counts[k], k))
        shards[r].append(i)
        loads[r] += int(lengths[i])
        counts[r] += 1
    return [sorted(s) for s in shards]


def micro_batches_by_tokens(indices: Sequence[int], lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Length-sorted micro-batches whose padded size rows * max_len is at most `budget`.

    `lengths` is indexed by the values in `indices` (global sequence ids). Longest first, so the
    first row of each micro-batch is its longest and a new row fits if (rows + 1) * first <= budget.
    """
    if budget < 1:
        raise ValueError(f"token budget must be >= 1, got {budget}")
    order = sorted(indices, key=lambda i: (-int(lengths[i]), i))
    out: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        if cur and (len(cur) + 1) * int(lengths[cur[0]]) > budget:
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def equalize(per_rank: list[list[list[int]]]) -> list[list[list[int]]]:
    """Pad every rank's micro-batch list with empty micro-batches to the longest list."""
    n = max((len(p) for p in per_rank), default=0)
    return [list(p) + [[] for _ in range(n - len(p))] for p in per_rank]


def mini_batch_split(n: int, mini_batches: int, *, seed: int | None) -> list[list[int]]:
    """Split range(n) into `mini_batches` contiguous near-equal parts (the driver orders sequences
    prompt by prompt, so when mini_batches divides the number of prompts each part holds whole
    groups); with a seed the parts come in a seeded random order."""
    if mini_batches < 1:
        raise ValueError(f"mini_batches must be >= 1, got {mini_batches}")
    if mini_batches > max(n, 1):
        raise ValueError(f"algo.mini_batches={mini_batches} exceeds the {n} sequences of the batch")
    parts = [[int(i) for i in part] for part in np.array_split(np.arange(n), mini_batches)]
    if seed is not None:
        order = np.random.default_rng(seed).permutation(len(parts))
        parts = [parts[k] for k in order]
    return parts


def padding_stats(micro: Sequence[Sequence[int]], lengths: Sequence[int]) -> tuple[int, int]:
    """(real tokens, padded tokens) of a list of micro-batches (right padding to the longest)."""
    real = padded = 0
    for mb in micro:
        if not mb:
            continue
        ls = [int(lengths[i]) for i in mb]
        real += sum(ls)
        padded += len(ls) * max(ls)
    return real, padded


@dataclass
class StepPlan:
    """One optimizer step: the sequences it covers and, per rank, its micro-batches."""

    seqs: list[int]
    per_rank: list[list[list[int]]] = field(default_factory=list)


def plan_pass(
    lengths: Sequence[int],
    subset: Sequence[int],
    num_ranks: int,
    budget: int,
) -> list[list[list[int]]]:
    """Shard `subset` over ranks by tokens, cut each shard into micro-batches, equalise counts."""
    sub_lengths = [int(lengths[i]) for i in subset]
    shards_local = shard_by_tokens(sub_lengths, num_ranks)
    shards = [[int(subset[j]) for j in s] for s in shards_local]
    return equalize([micro_batches_by_tokens(s, lengths, budget) for s in shards])
