"""Overlap mode (trainer.overlap): batch k+1 is drawn, and generated in a background thread,
while batch k trains, so it samples with the weights before update k (one step off-policy,
corrected by the recomputed old logprobs and, if chosen, TIS / MIS; docs/architecture.md).

`Prefetcher` owns the batch in flight and the sampler state a checkpoint records: the batch in
flight was never trained on, so a resumed run draws it again. With nothing started it hands out
nothing, so the trainer's loop reads the same with overlap on or off.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from typing import Any

from egsw_rl.data import Problem, PromptSampler
from egsw_rl.runlog import Timer


class Prefetcher:
    """draw() -> (problems, seed) takes the next batch off `sampler`; generate(problems, seed)
    samples it on the engines and returns what the trainer takes (its completions and their
    scoring jobs: grading starts in the background too)."""

    def __init__(
        self,
        draw: Callable[[], tuple[list[Problem], int]],
        generate: Callable[[list[Problem], int], Any],
        sampler: PromptSampler,
    ):
        self._draw, self._generate, self._sampler = draw, generate, sampler
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="generate")
        self._inflight: tuple[list[Problem], concurrent.futures.Future] | None = None
        self._sampler_before: dict | None = None

    def start(self) -> None:
        """Draw the next batch and start generating it."""
        self._sampler_before = self._sampler.state_dict()
        problems, seed = self._draw()
        self._inflight = (problems, self._pool.submit(self._timed, problems, seed))

    def _timed(self, problems: list[Problem], seed: int) -> tuple[Any, float]:
        t0 = time.perf_counter()
        generated = self._generate(problems, seed)
        return generated, time.perf_counter() - t0

    def take(self, timer: Timer) -> tuple[list[Problem], Any] | None:
        """The batch in flight, (problems, what generate returned), once generated (None if
        there is none). The wait shows as timing/generate_wait_s, its generation time as
        timing/generate_s."""
        if self._inflight is None:
            return None
        (problems, future), self._inflight, self._sampler_before = self._inflight, None, None
        with timer("generate_wait"):
            generated, seconds = future.result()
        timer.add("generate", seconds)
        return problems, generated

    def wait(self) -> None:
        """Until the batch in flight is generated: an engine never loads weights mid-batch."""
        if self._inflight is not None:
            self._inflight[1].result()

    def sampler_state(self) -> dict:
        """The sampler state to checkpoint: before the batch in flight, if one is."""
        return self._sampler_before or self._sampler.state_dict()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
