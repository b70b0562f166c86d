"""The step and overlap sub-benchmarks' arithmetic: the overhead of a step, the medians after
the warm-up, the overlap speed-up."""

import pytest

from egsw_rl.bench import step


def test_overhead_is_step_minus_the_five_phases(step_row):
    r = step_row(1, extra=0.25)
    assert step.step_overhead(r) == pytest.approx(0.25)
    # shaping is driver work: part of the overhead, not a phase
    assert "shape" not in step.PHASES


def test_overhead_in_overlap_mode_counts_only_the_wait_for_generation(step_row):
    r = step_row(1, gen=1.0, extra=0.1)
    r["timing/generate_wait_s"] = 0.3
    r["timing/step_s"] = 0.3 + 0.1 + 0.0 + 2.0 + 0.5 + 0.1  # the 1.0 s ran in the previous step
    assert step.step_overhead(r) == pytest.approx(0.1)


def test_step_breakdown_medians_after_warmup(step_row):
    rows = [step_row(1, gen=9.0, extra=5.0)] + [step_row(s, gen=g) for s, g in [(2, 1.0), (3, 2.0), (4, 3.0)]]
    s = step.step_breakdown(rows, warmup=1)
    assert s["steps"] == 3 and s["warmup"] == 1
    assert s["generate_s"] == 2.0  # the warm-up step's 9 s is left out
    assert s["overhead_s"] == pytest.approx(0.2)
    assert s["step_s"] == pytest.approx(2.0 + 0.1 + 2.0 + 0.5 + 0.2)
    assert s["overhead_frac"] == pytest.approx(0.2 / 4.8)
    assert s["gen_tokens_per_s"] == pytest.approx(300 / 2.0)
    assert s["train_tokens_per_s"] == pytest.approx(1800 / 2.0)
    assert s["steps_per_s"] == pytest.approx(1 / s["step_s"])
    with pytest.raises(ValueError):
        step.step_breakdown([], 0)


def test_overlap_summary_speedup_and_lag(step_row):
    off = step.step_breakdown([step_row(s) for s in range(1, 4)], 0)
    on = step.step_breakdown([step_row(s, gen=0.0, **{"policy_lag/mean": 1.0}) for s in range(1, 4)], 0)
    o = step.overlap_summary(off, on)
    assert o["speedup"] == pytest.approx(off["step_s"] / on["step_s"])
    assert o["policy_lag_on"] == 1.0 and o["policy_lag_off"] == 0.0
    # own devices: max(generate 1.0, reward 0.1 + update 2.0 + overhead 0.2) + sync 0.5
    assert o["ideal_speedup_own_devices"] == pytest.approx(3.8 / (2.3 + 0.5))
