"""Pure-torch algorithm code (ALGORITHMS.md): advantages, weights, masks, loss, entropy.

No Ray, no I/O, no imports from the rest of egsw_rl: the learner only consumes the tensors
these functions return.
"""

from egsw_rl.algos.entropy import (
    TOPK_METHODS,
    clipv_stats_from_logits,
    entropy_from_logits,
    topk_entropy,
    topk_tail_mass,
)

__all__ = [
    "TOPK_METHODS",
    "clipv_stats_from_logits",
    "entropy_from_logits",
    "topk_entropy",
    "topk_tail_mass",
]
