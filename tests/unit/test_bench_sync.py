"""The pure parts of the weight-sync benchmark and of the corrected on-paper sync estimate: the
per-bucket and per-tensor fits, the 7B's tensors and buckets, and the estimate's arithmetic."""

import math

import pytest

from egsw_rl import bench


def test_fit_line_recovers_slope_and_fixed_part():
    xs = [3, 40, 272]
    f = bench.fit_line(xs, [0.5 + 0.002 * x for x in xs])
    assert f["slope"] == pytest.approx(0.002) and f["fixed"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        bench.fit_line([5, 5], [1.0, 2.0])


def test_fit_load_separates_per_tensor_and_per_byte_costs():
    tensors, nbytes = [39, 272, 100], [1.8e6, 5.4e8, 1.0e8]
    secs = [1e-3 * t + 2e-9 * b for t, b in zip(tensors, nbytes)]
    f = bench.fit_load(tensors, nbytes, secs)
    assert f["per_tensor_s"] == pytest.approx(1e-3) and f["per_byte_s"] == pytest.approx(2e-9)
    with pytest.raises(ValueError):  # proportional models cannot tell the two apart
        bench.fit_load([10, 20], [1e6, 2e6], [0.1, 0.2])


def test_sync_push_summary_medians_of_the_split():
    pushes = [
        {
            "sync/total_s": t,
            "sync/gather_s": 0.1,
            "sync/transfer_s": 0.2,
            "sync/load_s": 0.3,
            "sync/other_s": t - 0.6,
            "sync/header_s": 0.01,
            "sync/buckets": 3.0,
        }
        for t in (1.0, 3.0, 2.0)
    ]
    s = bench.sync_push_summary(pushes)
    assert s["total_s"] == 2.0 and s["other_s"] == pytest.approx(1.4) and s["buckets"] == 3.0
    assert math.isnan(bench.sync_push_summary([{"sync/total_s": 1.0}])["gather_s"])  # shm: no split keys
    with pytest.raises(ValueError):
        bench.sync_push_summary([])


def test_qwen_7b_tensors_and_buckets():
    tensors = bench.transformer_tensors(**bench.QWEN_MATH_7B)
    assert len(tensors) == 28 * 12 + 3  # q/k/v weights and biases, o, gate, up, down, 2 norms
    assert sum(tensors) == bench.transformer_params(**bench.QWEN_MATH_7B)
    sizes = [2 * t for t in tensors]
    assert bench.bucket_count([10, 10, 10], 32) == 2  # each padded to 16 bytes: two a bucket
    assert bench.bucket_count(sizes, 1) == len(tensors)  # every tensor alone
    # the preset's 256 MiB: the embedding and the head (1.09 GB) and each layer's three MLP
    # matrices (136 MB each) cannot share, so far more than 15.2 GB / 256 MiB = 57 buckets
    assert bench.bucket_count(sizes, 256 * 2**20) > 57
    assert bench.bucket_count(sizes, 10**12) == 1


def test_paper_sync_is_link_time_plus_headers_and_layerwise_load():
    est = bench.paper_estimate(per_bucket_s=0.01, per_tensor_load_s=0.002)
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
        bench.paper_estimate(bucket_mb=1024)["sync_parts"]["header_s"]
        < bench.paper_estimate()["sync_parts"]["header_s"]
    )
    assert est["step_s"] == pytest.approx(
        est["generate_s"] + est["logprobs_s"] + est["update_s"] + est["sync_s"]
    )
    assert "bucket headers" in bench.paper_table(est)
