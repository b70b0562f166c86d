"""Pure-torch algorithm code: advantages, weights, masks, loss, entropy.

No Ray, no I/O, no imports from the rest of egsw_rl: the learner only consumes the tensors
these functions return. Importing this package fills the registries (registry.py).
"""

from egsw_rl.algos.advantages import ADVANTAGE_MODES, all_equal_groups, group_advantages
from egsw_rl.algos.dapo import dynamic_sampling_keep, overlong_penalty
from egsw_rl.algos.egsw import egsw_diagnostics, egsw_weights, normalized_entropy
from egsw_rl.algos.entropy import (
    TOPK_METHODS,
    clipv_stats_from_logits,
    entropy_from_logits,
    topk_entropy,
    topk_tail_mass,
)
from egsw_rl.algos.gtpo import (
    ZSCORE_MODES,
    grpo_s_advantages,
    grpo_s_rewards,
    gtpo_advantages,
    gtpo_token_rewards,
)
from egsw_rl.algos.loss import (
    AGGREGATIONS,
    agg_loss,
    k3_kl,
    loss_normalizers,
    policy_loss,
    reduce_loss_metrics,
)
from egsw_rl.algos.masks import clipb_mask, clipv_mask, entropy_discriminator, high_entropy_mask
from egsw_rl.algos.registry import (
    ADVANTAGES,
    MASKS,
    WEIGHTS,
    Method,
    get_advantage,
    get_mask,
    get_weighting,
    register_advantage,
    register_mask,
    register_weighting,
    selected,
)
from egsw_rl.algos.rollout_correction import ROLLOUT_CORRECTIONS, reduce_rollout_is, rollout_is_weights
from egsw_rl.algos.shaping import shape_batch

__all__ = [
    "ADVANTAGES",
    "ADVANTAGE_MODES",
    "AGGREGATIONS",
    "MASKS",
    "Method",
    "ROLLOUT_CORRECTIONS",
    "TOPK_METHODS",
    "WEIGHTS",
    "ZSCORE_MODES",
    "agg_loss",
    "all_equal_groups",
    "clipb_mask",
    "clipv_mask",
    "clipv_stats_from_logits",
    "dynamic_sampling_keep",
    "egsw_diagnostics",
    "egsw_weights",
    "entropy_discriminator",
    "entropy_from_logits",
    "get_advantage",
    "get_mask",
    "get_weighting",
    "group_advantages",
    "grpo_s_advantages",
    "grpo_s_rewards",
    "gtpo_advantages",
    "gtpo_token_rewards",
    "high_entropy_mask",
    "k3_kl",
    "loss_normalizers",
    "normalized_entropy",
    "overlong_penalty",
    "policy_loss",
    "reduce_loss_metrics",
    "reduce_rollout_is",
    "register_advantage",
    "register_mask",
    "register_weighting",
    "rollout_is_weights",
    "selected",
    "shape_batch",
    "topk_entropy",
    "topk_tail_mass",
]
