"""The step and overlap sub-benchmarks' arithmetic: the overhead of a step, the medians after
the warm-up, the overlap speed-up."""

import pytest

from egsw_rl.bench import step


def _row(step, gen=1.0, rew=0.1, lp=0.0, upd=2.0, sync=0.5, extra=0.2, **kw):
    row = {
        "step": step,
        "timing/generate_s": gen,
        "timing/reward_s": rew,
        "timing/logprobs_s": lp,
        "timing/update_s": upd,
        "timing/sync_s": sync,
        "timing/shape_s": 0.01,
        "timing/step_s": gen + rew + lp + upd + sync + extra,
        "tokens/generated": 300,
        "actor/train_tokens": 1800.0,
        "actor/padding_frac": 0.1,
        "response_length/mean": 4.5,
        "policy_lag/mean": 0.0,
        "sync/bytes": 1.0e6,
        "sync/send_s": 0.2,
        "sync/load_s": 0.1,
        "sync/recv_s": 0.4,
    }
    row.update(kw)
    return row


def test_overhead_is_step_minus_the_five_phases():
    r = _row(1, extra=0.25)
    assert step.step_overhead(r) == pytest.approx(0.25)
    # shaping is driver work: part of the overhead, not a phase
    assert "shape" not in step.PHASES


def test_overhead_in_overlap_mode_counts_only_the_wait_for_generation():
    r = _row(1, gen=1.0, extra=0.1)
    r["timing/generate_wait_s"] = 0.3
    r["timing/step_s"] = 0.3 + 0.1 + 0.0 + 2.0 + 0.5 + 0.1  # the 1.0 s ran in the previous step
    assert step.step_overhead(r) == pytest.approx(0.1)


def test_step_breakdown_medians_after_warmup():
    rows = [_row(1, gen=9.0, extra=5.0)] + [_row(s, gen=g) for s, g in [(2, 1.0), (3, 2.0), (4, 3.0)]]
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


def test_overlap_summary_speedup_and_lag():
    off = step.step_breakdown([_row(s) for s in range(1, 4)], 0)
    on = step.step_breakdown([_row(s, gen=0.0, **{"policy_lag/mean": 1.0}) for s in range(1, 4)], 0)
    o = step.overlap_summary(off, on)
    assert o["speedup"] == pytest.approx(off["step_s"] / on["step_s"])
    assert o["policy_lag_on"] == 1.0 and o["policy_lag_off"] == 0.0
    # own devices: max(generate 1.0, reward 0.1 + update 2.0 + overhead 0.2) + sync 0.5
    assert o["ideal_speedup_own_devices"] == pytest.approx(3.8 / (2.3 + 0.5))
