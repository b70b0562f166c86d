"""The on-paper Qwen2.5-Math-7B step (`python -m egsw_rl.bench --paper`): parameter and tensor
counts, the buckets of a sync, the split estimate's arithmetic and the colocated one beside it."""

import pytest

from egsw_rl.bench import paper
from egsw_rl.placement import learner_resident_bytes


def test_qwen_math_7b_parameter_count_and_estimate():
    n = sum(paper.transformer_tensors(**paper.QWEN_MATH_7B))
    assert 7.5e9 < n < 7.7e9  # Qwen2.5-7B: 7.62 B parameters
    est = paper.paper_estimate()
    assert est["sync_bytes"] == 2 * n
    assert est["step_s"] == pytest.approx(
        est["generate_s"] + est["logprobs_s"] + est["update_s"] + est["sync_s"]
    )
    # sync is a rounding error next to the step on NVLink
    assert est["sync_s"] < 1.0 < est["generate_s"]
    # update FLOPs: (fwd + 2x bwd + recompute) = 4 forward passes with checkpointing
    assert est["update_flops"] == pytest.approx(4 * est["fwd_flops_per_token"] * est["train_tokens"])
    no_ckpt = paper.paper_estimate(gradient_checkpointing=False)
    assert no_ckpt["update_flops"] == pytest.approx(0.75 * est["update_flops"])
    assert "qwen_math_7b" in paper.paper_table(est)


def test_qwen_7b_tensors_and_buckets():
    tensors = paper.transformer_tensors(**paper.QWEN_MATH_7B)
    assert len(tensors) == 28 * 12 + 3  # q/k/v weights and biases, o, gate, up, down, 2 norms
    sizes = [2 * t for t in tensors]
    assert paper.bucket_count([10, 10, 10], 32) == 2  # each padded to 16 bytes: two a bucket
    assert paper.bucket_count(sizes, 1) == len(tensors)  # every tensor alone
    # the preset's 256 MiB: the embedding and the head (1.09 GB) and each layer's three MLP
    # matrices (136 MB each) cannot share, so far more than 15.2 GB / 256 MiB = 57 buckets
    assert paper.bucket_count(sizes, 256 * 2**20) > 57
    assert paper.bucket_count(sizes, 10**12) == 1


def test_paper_sync_is_link_time_plus_headers_and_layerwise_load():
    est = paper.paper_estimate(per_bucket_s=0.01, per_tensor_load_s=0.002)
    p, a = est["sync_parts"], est["assumptions"]
    assert est["sync_s"] == pytest.approx(sum(p.values()))
    assert p["gather_s"] + p["broadcast_s"] == pytest.approx(
        est["sync_bytes"] * (1.75) / (a["link_gb_s"] * 1e9)
    )
    assert p["header_s"] == pytest.approx(est["sync_buckets"] * 0.01)
    assert p["load_host_s"] == pytest.approx(339 * 0.002)
    assert p["load_device_s"] == pytest.approx(4 * est["sync_bytes"] / 3.35e12)
    # the old figure counted only the link and two HBM passes
    assert est["sync_link_only_s"] == pytest.approx(
        p["gather_s"] + p["broadcast_s"] + 2 * est["sync_bytes"] / 3.35e12
    )
    assert est["sync_s"] > est["sync_link_only_s"]
    # bigger buckets: fewer headers
    assert (
        paper.paper_estimate(bucket_mb=1024)["sync_parts"]["header_s"]
        < paper.paper_estimate()["sync_parts"]["header_s"]
    )
    assert est["step_s"] == pytest.approx(
        est["generate_s"] + est["logprobs_s"] + est["update_s"] + est["sync_s"]
    )
    assert "bucket headers" in paper.paper_table(est)


def test_colocated_runs_every_phase_on_all_gpus_and_pays_the_hand_overs():
    split, co = paper.paper_estimate(), paper.colocated_estimate()
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


def test_colocated_table_step_row():
    table = paper.colocated_table(paper.paper_estimate(), paper.colocated_estimate())
    assert "| step | 952 s | 480 s |" in table
