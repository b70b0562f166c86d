"""The reward actor: a thin Ray wrapper around `egsw_rl.rewards.RewardPool`.

    from egsw_rl.actors.reward import RewardActor
    actor = RewardActor.options(num_cpus=cfg.reward.workers).remote(
        workers=cfg.reward.workers, timeout_s=cfg.reward.timeout_s, scheme=cfg.reward.scheme, ...)
    results, metrics = ray.get(actor.score.remote(completions, golds))

The pool's worker processes are children of the actor process (forkserver), killed with it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import ray

from egsw_rl.rewards.pool import RewardPool
from egsw_rl.rewards.types import RewardResult


class RewardWorkerPool:
    """Plain class (usable without Ray); `RewardActor` is its Ray actor form.

    Constructor: workers, timeout_s, then reward options (scheme, correct_score,
    wrong_boxed_score, no_box_score, format_penalty, extraction, fallback_last_number,
    answer_format, max_answer_chars, task). `num_actors` (how many of these actors the driver
    starts) is accepted and ignored, so the whole `reward` config section can be passed as is.
    """

    def __init__(self, workers: int = 2, timeout_s: float = 5.0, num_actors: Optional[int] = None,
                 **reward_options) -> None:
        self._pool = RewardPool(workers=workers, timeout_s=timeout_s, **reward_options)

    def score(self, completions: Sequence[str], golds: Sequence[str],
              choices: Optional[Sequence[Optional[Sequence[str]]]] = None) -> tuple[list[RewardResult], dict]:
        return self._pool.score(list(completions), list(golds), choices)

    def worker_pids(self) -> list[int]:
        return self._pool.worker_pids()

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        self._pool.close()


RewardActor = ray.remote(RewardWorkerPool)
