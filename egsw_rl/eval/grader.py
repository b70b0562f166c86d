"""The evaluator's grader: `egsw_rl.rewards` pools started on first use, or scorers handed in
(the trainer passes its reward actor, so periodic eval grades exactly as training does)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class Grader:
    """Grades completions with `egsw_rl.rewards`: one `RewardPool` per task ("math", "choice"),
    started on first use. Accuracy is read from the status ("correct"), never from the score, so
    any reward scheme grades the same.

    `scorers` replaces the pools by objects with `.score(texts, golds, choices) -> (results,
    metrics)`: a `RewardPool`, an `actors.reward.RewardWorkerPool`, or a Ray actor handle of one
    (`.score.remote` is detected) — e.g. the trainer's reward actor for periodic eval."""

    def __init__(
        self,
        workers: int = 2,
        timeout_s: float = 10.0,
        *,
        scorers: Mapping[str, Any] | None = None,
        **reward_options,
    ) -> None:
        self.workers, self.timeout_s = workers, timeout_s
        self.reward_options = dict(reward_options)
        self._own: dict[str, Any] = {}
        self._scorers: dict[str, Any] = dict(scorers or {})

    def _scorer(self, task: str):
        if task in self._scorers:
            return self._scorers[task]
        from egsw_rl.rewards import RewardPool

        opts = dict(self.reward_options)
        opts["task"] = task
        pool = RewardPool(workers=self.workers, timeout_s=self.timeout_s, **opts)
        self._own[task] = self._scorers[task] = pool
        return pool

    def __call__(
        self,
        texts: Sequence[str],
        golds: Sequence[str],
        choices: Sequence[Sequence[str] | None] | None = None,
        *,
        task: str = "math",
    ) -> list:
        if not texts:
            return []
        scorer = self._scorer(task)
        method = scorer.score
        if hasattr(method, "remote"):  # a Ray actor handle
            import ray

            results, _ = ray.get(method.remote(list(texts), list(golds), choices))
        else:
            results, _ = method(list(texts), list(golds), choices)
        return list(results)

    def close(self) -> None:
        for pool in self._own.values():
            pool.close()
        for task in list(self._own):
            self._scorers.pop(task, None)
        self._own.clear()

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
