"""The on-paper colocated estimate beside the split one (python -m egsw_rl.bench --paper)."""

import pytest

from egsw_rl.bench import colocated_estimate, colocated_table, main, paper_estimate
from egsw_rl.placement import learner_resident_bytes


def test_colocated_runs_every_phase_on_all_gpus_and_pays_the_hand_overs():
    split, co = paper_estimate(), colocated_estimate()
    assert co["generate_s"] == pytest.approx(split["generate_s"] / 2)  # 8 engines instead of 4
    assert co["update_s"] + co["logprobs_s"] == pytest.approx((split["update_s"] + split["logprobs_s"]) / 2)
    assert "broadcast_s" not in co["sync_parts"]  # same device: no broadcast
    parts = sum(co["sync_parts"].values()) + sum(co["handover_parts"].values())
    assert co["step_s"] == pytest.approx(co["generate_s"] + co["logprobs_s"] + co["update_s"] + parts)
    assert co["handover_parts"]["offload_reload_s"] == pytest.approx(2 * co["resident"]["total"] / 25e9)
    assert 1.9 < split["step_s"] / co["step_s"] < 2.0  # about half the step, minus the hand-overs


def test_resident_state_of_a_rank():
    r = learner_resident_bytes(8_000_000_000, 8)
    assert r["params_bf16"] == 2e9 and r["master_fp32"] == 4e9 and r["adam_fp32"] == 8e9
    assert r["total"] == pytest.approx(2e9 + 4e9 + 8e9 + 2e9 + 2e9)
    assert learner_resident_bytes(8_000_000_000, 8, reference=False)["total"] == pytest.approx(16e9)


def test_paper_prints_both_layouts(capsys, tmp_path):
    assert main(["--paper", "--out", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    assert "split (4 learner + 4 vLLM GPUs) vs colocated (8 GPUs" in out and "speed-up" in out
    assert "| step | 952 s | 480 s |" in colocated_table(paper_estimate(), colocated_estimate())
