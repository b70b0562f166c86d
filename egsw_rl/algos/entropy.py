"""Per-token entropy: exact values from full distributions, top-k estimates from a head.

Why: EGSW, GTPO, 80/20 and ClipB/ClipV all need the old policy's next-token entropy H_{i,t}.
The generation workers compute it exactly inside vLLM's sampler, from the log-probabilities it
samples from (`entropy_from_logprobs`, one reduction over the vocabulary a token; the default,
rollout.entropy_estimator=exact), or estimate it from the top-k logprobs alone, head plus tail
mass (`topk_entropy`). The learner computes it exactly from its own full logits, chunk by chunk,
together with ClipV's N statistic. The estimators are ordered H_renorm <= H_LB <= H_true <= H_UB
(see `topk_entropy`; why the bounds hold: docs/algorithms.md, section 11).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "TOPK_METHODS",
    "topk_entropy",
    "topk_tail_mass",
    "entropy_from_logits",
    "entropy_from_logprobs",
    "clipv_stats_from_logits",
]

TOPK_METHODS = ("lower_bound", "renorm", "upper_bound")


def _as_float(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError(f"{name} must have at least one dimension [..., k], got shape {tuple(x.shape)}")
    # fp64 stays fp64; fp32 stays fp32; half/bf16 (and ints) are upcast to fp32.
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _head(topk_logprobs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(H_head, M, R, log p_k, k) for [..., k] logprobs; -inf (and NaN) entries are dropped."""
    lp = _as_float(topk_logprobs, "topk_logprobs")
    valid = torch.isfinite(lp)
    lp0 = torch.where(valid, lp, torch.zeros_like(lp))
    p = torch.where(valid, lp0.exp(), torch.zeros_like(lp))
    h_head = -(p * lp0).sum(-1)
    m = p.sum(-1)
    r = (1.0 - m).clamp_min(0.0)
    big = torch.full_like(lp, float("inf"))
    log_pk = torch.where(valid, lp0, big).amin(-1)
    log_pk = torch.where(torch.isfinite(log_pk), log_pk, torch.zeros_like(log_pk))  # no entry at all
    k = valid.sum(-1).to(lp.dtype)
    return h_head, m, r, log_pk, k


def topk_tail_mass(topk_logprobs: Tensor) -> Tensor:
    """Tail mass R = max(0, 1 - sum_j exp(l_j)) over the finite entries of [..., k] logprobs."""
    return _head(topk_logprobs)[2]


def topk_entropy(
    topk_logprobs: Tensor, *, method: str = "lower_bound", vocab_size: int | None = None
) -> Tensor:
    """Entropy estimate (nats) from de-duplicated top-k logprobs [..., k] -> [...].

    method:
      lower_bound  H_head + R * max(-log R, -log p_k)   (default; exact when R = 0)
      renorm       log M + H_head / M                   (entropy of the renormalised head)
      upper_bound  H_head + R * log((|V| - k) / R)      (needs vocab_size; never below lower_bound)
    Entries equal to -inf are missing (e.g. processed logprobs outside top-p) and are ignored.
    """
    if method not in TOPK_METHODS:
        raise ValueError(f"method must be one of {TOPK_METHODS}, got {method!r}")
    h_head, m, r, log_pk, k = _head(topk_logprobs)
    neg_rlogr = -torch.special.xlogy(r, r)
    lb = h_head + torch.maximum(neg_rlogr, -r * log_pk)
    if method == "lower_bound":
        return lb
    if method == "renorm":
        safe_m = torch.where(m > 0, m, torch.ones_like(m))
        h = torch.where(m > 0, safe_m.log() + h_head / safe_m, torch.zeros_like(m))
        return h.clamp_min(0.0)
    if vocab_size is None or int(vocab_size) < 1:
        raise ValueError(f"vocab_size must be a positive int for method='upper_bound', got {vocab_size!r}")
    n_tail = float(vocab_size) - k
    tail = torch.where(n_tail >= 1, r * n_tail.clamp_min(1.0).log() + neg_rlogr, torch.zeros_like(r))
    return torch.maximum(h_head + tail, lb)


def _rows(logits: Tensor, name: str) -> Tensor:
    if not isinstance(logits, Tensor) or logits.dim() < 1:
        raise ValueError(f"{name} must be a tensor [..., V]")
    return logits.reshape(-1, logits.shape[-1])


def entropy_from_logits(logits: Tensor, *, chunk_size: int = 256) -> Tensor:
    """Exact entropy (nats, fp32) of softmax(logits) over the last dim, [..., V] -> [...].

    Rows are processed `chunk_size` at a time so only one fp32 chunk of the vocabulary is
    materialised. Logits of -inf (a sampler's top-k / top-p mask) are tokens of probability zero.
    Differentiable (used for the entropy bonus); wrap in no_grad for a detached H. Apply the
    sampling temperature to the logits before calling.
    """
    flat = _rows(logits, "logits")
    out = []
    for chunk in flat.split(max(1, int(chunk_size)), dim=0):
        logp = torch.log_softmax(chunk.float(), dim=-1)
        out.append(_neg_plogp(logp))
    h = torch.cat(out) if out else flat.new_zeros(0, dtype=torch.float32)
    return h.reshape(logits.shape[:-1])


@torch.no_grad()
def entropy_from_logprobs(logprobs: Tensor, *, chunk_size: int = 256) -> Tensor:
    """Exact entropy (nats, fp32) of a distribution given by its log-probabilities over the last
    dim, [..., V] -> [...]: -sum_v p_v log p_v. Entries equal to -inf are tokens of probability
    zero (a sampler's top-k / top-p mask) and add nothing. For normalised input, e.g. vLLM's
    processed logprobs; the arithmetic of `entropy_from_logits` after its log_softmax, so the two
    agree to rounding on the same distribution. Detached; `chunk_size` rows at a time, so the
    temporaries stay one chunk of the vocabulary wide (in a GPU engine's sampler they come on top
    of the memory vLLM measured for its own)."""
    flat = _rows(logprobs, "logprobs")
    out = [_neg_plogp(chunk.float()) for chunk in flat.split(max(1, int(chunk_size)), dim=0)]
    h = torch.cat(out) if out else flat.new_zeros(0, dtype=torch.float32)
    return h.reshape(logprobs.shape[:-1])


def _neg_plogp(logp: Tensor) -> Tensor:
    """-sum_v p_v log p_v over the last dim of fp32 log-probabilities. exp(-inf) * -inf is NaN;
    the clamp makes it 0 * (most negative float) = -0 and leaves every finite entry (and a NaN
    from bad logits) as it is."""
    return -(logp.exp() * logp.clamp_min(torch.finfo(logp.dtype).min)).sum(-1)


@torch.no_grad()
def clipv_stats_from_logits(logits: Tensor, *, chunk_size: int = 256) -> tuple[Tensor, Tensor]:
    """(H, N) in fp32, detached, with N = H * sum_v p_v^2 + sum_v p_v^2 log p_v (full vocabulary).

    N = E_{v~p}[p_v (H + log p_v)] is ClipV's expected discriminator.
    """
    flat = _rows(logits, "logits")
    hs, ns = [], []
    for chunk in flat.split(max(1, int(chunk_size)), dim=0):
        logp = torch.log_softmax(chunk.float(), dim=-1)
        p = logp.exp()
        h = -(p * logp).sum(-1)
        p2 = p * p
        hs.append(h)
        ns.append(h * p2.sum(-1) + (p2 * logp).sum(-1))
    empty = flat.new_zeros(0, dtype=torch.float32)
    shape = logits.shape[:-1]
    h = torch.cat(hs) if hs else empty
    n = torch.cat(ns) if ns else empty
    return h.reshape(shape), n.reshape(shape)
