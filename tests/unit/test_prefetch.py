"""Prefetcher (trainer.overlap) and the Timer it reports to: pure bookkeeping around a real
PromptSampler, with a generate function that blocks until the test lets it finish."""

from __future__ import annotations

import threading

from egsw_rl.data import PromptSampler
from egsw_rl.prefetch import Prefetcher
from egsw_rl.runlog import Timer


def test_timer_adds_external_seconds_and_reports_named_phases():
    timer = Timer("logprobs")
    with timer("generate"):
        pass
    timer.add("generate", 2.0)
    timer.add("reward", 0.5)
    assert timer.times["timing/logprobs_s"] == 0.0  # named, never run: still reported
    assert 2.0 <= timer.times["timing/generate_s"] < 2.5
    assert timer.times["timing/reward_s"] == 0.5
    try:
        with timer("update"):
            raise ValueError
    except ValueError:
        pass
    assert "timing/update_s" in timer.times  # a failed phase is timed too


def test_prefetcher_owns_the_batch_in_flight_and_the_sampler_state_before_it():
    sampler = PromptSampler(10, 3, seed=0, shuffle=True)
    release = threading.Event()
    calls = []

    def draw():
        return [f"p{i}" for i in sampler.next_indices()], 7

    def generate(problems, seed):
        calls.append((problems, seed))
        release.wait(10)
        return [p + "!" for p in problems]

    pre = Prefetcher(draw, generate, sampler)
    try:
        assert pre.take(Timer()) is None  # nothing started: nothing handed out
        pre.wait()
        before = sampler.state_dict()
        pre.start()
        assert sampler.state_dict() != before
        assert pre.sampler_state() == before  # the batch in flight was never trained on
        release.set()
        pre.wait()
        timer = Timer()
        problems, completions = pre.take(timer)
        assert completions == [p + "!" for p in problems] and calls == [(problems, 7)]
        assert timer.times["timing/generate_s"] >= 0 and "timing/generate_wait_s" in timer.times
        assert pre.sampler_state() == sampler.state_dict()  # taken: the current state again
        assert pre.take(Timer()) is None
    finally:
        pre.close()
