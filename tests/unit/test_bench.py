"""The pure parts of `python -m egsw_rl.bench`: medians, the overhead arithmetic, summaries, table
formatting, the JSON document and the on-paper estimate. Nothing here starts Ray or times anything."""

import json
import math

import pytest

from egsw_rl import bench


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


def test_median_ignores_nan_and_none():
    assert bench.median([3, 1, 2]) == 2
    assert bench.median([1.0, float("nan"), None, 3.0]) == 2.0
    assert math.isnan(bench.median([]))


def test_measured_drops_warmup_in_step_order_but_never_everything():
    rows = [{"step": s} for s in (3, 1, 2)]
    assert [r["step"] for r in bench.measured(rows, 1)] == [2, 3]
    assert [r["step"] for r in bench.measured(rows, 5)] == [1, 2, 3]


def test_overhead_is_step_minus_the_five_phases():
    r = _row(1, extra=0.25)
    assert bench.step_overhead(r) == pytest.approx(0.25)
    # shaping is driver work: part of the overhead, not a phase
    assert "shape" not in bench.PHASES


def test_overhead_in_overlap_mode_counts_only_the_wait_for_generation():
    r = _row(1, gen=1.0, extra=0.1)
    r["timing/generate_wait_s"] = 0.3
    r["timing/step_s"] = 0.3 + 0.1 + 0.0 + 2.0 + 0.5 + 0.1  # the 1.0 s ran in the previous step
    assert bench.step_overhead(r) == pytest.approx(0.1)


def test_step_breakdown_medians_after_warmup():
    rows = [_row(1, gen=9.0, extra=5.0)] + [_row(s, gen=g) for s, g in [(2, 1.0), (3, 2.0), (4, 3.0)]]
    s = bench.step_breakdown(rows, warmup=1)
    assert s["steps"] == 3 and s["warmup"] == 1
    assert s["generate_s"] == 2.0  # the warm-up step's 9 s is left out
    assert s["overhead_s"] == pytest.approx(0.2)
    assert s["step_s"] == pytest.approx(2.0 + 0.1 + 2.0 + 0.5 + 0.2)
    assert s["overhead_frac"] == pytest.approx(0.2 / 4.8)
    assert s["gen_tokens_per_s"] == pytest.approx(300 / 2.0)
    assert s["train_tokens_per_s"] == pytest.approx(1800 / 2.0)
    assert s["steps_per_s"] == pytest.approx(1 / s["step_s"])
    with pytest.raises(ValueError):
        bench.step_breakdown([], 0)


def test_sync_summary_ratio_to_memcpy_and_gloo():
    rows = [_row(s, sync=0.5) for s in range(1, 4)]
    s = bench.sync_summary(rows, 1, memcpy_bytes_per_s=4.0e6, gloo_bytes_per_s=1.0e7)
    assert s["bytes_per_s"] == pytest.approx(2.0e6)
    assert s["ratio_to_memcpy"] == pytest.approx(0.5)
    assert s["ratio_to_gloo"] == pytest.approx(0.2)
    assert s["send_s"] == 0.2 and s["load_s"] == 0.1
    assert "ratio_to_gloo" not in bench.sync_summary(rows, 1, 4.0e6)


def test_overlap_summary_speedup_and_lag():
    off = bench.step_breakdown([_row(s) for s in range(1, 4)], 0)
    on = bench.step_breakdown([_row(s, gen=0.0, **{"policy_lag/mean": 1.0}) for s in range(1, 4)], 0)
    o = bench.overlap_summary(off, on)
    assert o["speedup"] == pytest.approx(off["step_s"] / on["step_s"])
    assert o["policy_lag_on"] == 1.0 and o["policy_lag_off"] == 0.0
    # own devices: max(generate 1.0, reward 0.1 + update 2.0 + overhead 0.2) + sync 0.5
    assert o["ideal_speedup_own_devices"] == pytest.approx(3.8 / (2.3 + 0.5))


def test_peer_summary_ratio_and_recorded_failure():
    ok = bench.peer_summary(
        2.0,
        {
            "mode": "hf",
            "warmup": 1,
            "step_s": [9.0, 4.0, 4.0],
            "generate_s": [5, 1, 1],
            "completion_len": [4, 5],
            "error": None,
        },
    )
    assert ok["step_s"] == 4.0 and ok["ours_over_peer"] == 0.5 and ok["generate_s"] == 1
    bad = bench.peer_summary(
        2.0,
        {
            "mode": "vllm",
            "warmup": 1,
            "step_s": [],
            "error": "AttributeError: 'Parameter' object has no attribute 'weight_loader'",
        },
    )
    assert bad["steps_done"] == 0 and math.isnan(bad["ours_over_peer"])
    assert "weight_loader" in bad["error"]


def test_fmt_and_format_table():
    assert bench.fmt(None) == "" and bench.fmt(float("nan")) == ""
    assert bench.fmt(0.123456) == "0.123"
    assert bench.fmt(12345.6) == "12,346"
    assert bench.fmt(3) == "3" and bench.fmt(True) == "yes" and bench.fmt("x") == "x"
    t = bench.format_table("T", ["a", "b"], [[1, 0.5], ["x", None]])
    lines = t.strip().splitlines()
    assert lines[0] == "### T"
    assert lines[2] == "| a | b |" and lines[3] == "|---|---|"
    assert lines[4] == "| 1 | 0.5 |" and lines[5] == "| x |  |"


def test_human_bytes():
    assert bench.human_bytes(1.84e6) == "1.84 MB"
    assert bench.human_bytes(5.13e8) == "513 MB"
    assert bench.human_bytes(1.5e10) == "15 GB"
    assert bench.human_bytes(12) == "12 B"


def test_document_structure_is_json_and_refuses_unknown_suites():
    steps = bench.step_breakdown([_row(s) for s in range(1, 4)], 1)
    doc = bench.document(
        {"steps": {"table": "t", "presets": {"tiny_cpu": steps}}},
        quick=True,
        argv=["--quick"],
        info={"cpus": 2, "load_avg": [1.0, 1.0, 1.0]},
    )
    assert doc["schema"] == bench.SCHEMA and doc["quick"] is True
    assert doc["command"] == "python -m egsw_rl.bench --quick"
    assert doc["machine"]["cpus"] == 2
    back = json.loads(json.dumps(doc))
    assert back["results"]["steps"]["presets"]["tiny_cpu"]["steps"] == 2
    with pytest.raises(ValueError):
        bench.document({"nope": {}}, quick=False, argv=[], info={})


def test_qwen_math_7b_parameter_count_and_estimate():
    n = bench.transformer_params(**bench.QWEN_MATH_7B)
    assert 7.5e9 < n < 7.7e9  # Qwen2.5-7B: 7.62 B parameters
    est = bench.paper_estimate()
    assert est["sync_bytes"] == 2 * n
    assert est["step_s"] == pytest.approx(
        est["generate_s"] + est["logprobs_s"] + est["update_s"] + est["sync_s"]
    )
    # sync is a rounding error next to the step on NVLink
    assert est["sync_s"] < 1.0 < est["generate_s"]
    # update FLOPs: (fwd + 2x bwd + recompute) = 4 forward passes with checkpointing
    assert est["update_flops"] == pytest.approx(4 * est["fwd_flops_per_token"] * est["train_tokens"])
    no_ckpt = bench.paper_estimate(gradient_checkpointing=False)
    assert no_ckpt["update_flops"] == pytest.approx(0.75 * est["update_flops"])
    assert "qwen_math_7b" in bench.paper_table(est)


def test_cli_rejects_unknown_suite(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--only", "steps,bogus"])
    assert "bogus" in capsys.readouterr().err


def test_cli_paper_only_writes_json(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert bench.main(["--paper", "--out", str(out)]) == 0
    assert "bytes per sync" in capsys.readouterr().out
    assert json.loads(out.read_text())["paper"]["params"] > 7e9
