"""The peer sub-benchmark's summary of a TRL run (its result, or the error it ended with)."""

import math

from egsw_rl.bench.peer import peer_summary


def test_peer_summary_ratio_and_recorded_failure():
    ok = peer_summary(
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
    bad = peer_summary(
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
