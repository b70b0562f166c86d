"""Rewards: pure graders (math-verify) and a process pool with hard per-sample timeouts.

from egsw_rl.rewards import math_reward, RewardResult, parse_gold
math_reward(r"... so the answer is $\\boxed{\\frac{\\pi}{2}}$", r"\\frac{\\pi}{2}").score  # 1.0
"""

from egsw_rl.rewards.grading import choice_reward, grade, gsm8k_gold, math_reward, parse_gold
from egsw_rl.rewards.pool import RewardPool
from egsw_rl.rewards.types import STATUSES, RewardOptions, RewardResult

__all__ = [
    "RewardOptions",
    "RewardPool",
    "RewardResult",
    "STATUSES",
    "choice_reward",
    "grade",
    "gsm8k_gold",
    "math_reward",
    "parse_gold",
]
