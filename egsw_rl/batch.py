"""The records that travel between actors. Plain dataclasses of numpy arrays and lists so Ray
serialises them cheaply (numpy goes zero-copy through the object store)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Completion:
    """One sampled completion, as a generation worker returns it.

    Arrays have one entry per completion token (length T = len(token_ids)), float32:
    `logprobs` is the sampled token's logprob under the distribution actually sampled from
    (vLLM processed_logprobs, after the sampling temperature); `entropy` is the next-token entropy in nats,
    exact or a top-k estimate as `rollout.entropy_estimator` says (docs/algorithms.md, section 11),
    and `tail_mass` the probability outside the returned top-k (0 for the exact entropy).
    """

    prompt_index: int  # position of the prompt in the batch given to generate()
    sample_index: int  # j in 0..G-1
    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    logprobs: np.ndarray
    entropy: np.ndarray
    tail_mass: np.ndarray
    finish_reason: str  # "stop" | "length"
    version: int  # weight version that generated it


@dataclass
class TrainBatch:
    """What the learner group receives: N sequences and per-token tensors aligned with the
    completion tokens, right-padded to T = the longest completion.

    `advantages`, `weights`, `mask` are the only algorithm inputs: the
    learner knows nothing about EGSW. `global_tokens` / `global_seqs` are the whole batch's
    loss normalisers, so gradients do not depend on how the batch is split over ranks and
    micro-batches.
    """

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    advantages: np.ndarray | None = None  # [N, T] float32
    weights: np.ndarray | None = None  # [N, T] float32
    mask: np.ndarray | None = None  # [N, T] bool
    old_logprobs: np.ndarray | None = None  # [N, T] float32
    ref_logprobs: np.ndarray | None = None  # [N, T] float32
    # vLLM's logprobs of the same tokens: without old_logprobs the update compares its own
    # (same weights) with them, the per-step check of the weight sync
    rollout_logprobs: np.ndarray | None = None  # [N, T] float32
    global_tokens: float | None = None
    global_seqs: float | None = None

    def __len__(self) -> int:
        return len(self.completion_ids)


def split_shares(n: int, k: int) -> list[tuple[int, int]]:
    """[start, end) of k contiguous slices of n items, sizes differing by at most one, larger
    first; slices past n are empty (start == end)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    base, extra = divmod(max(0, int(n)), k)
    out, start = [], 0
    for i in range(k):
        size = base + (1 if i < extra else 0)
        out.append((start, start + size))
        start += size
    return out
