"""The DeepSpeed config the learner generates from `learner.*`, the LR schedule, and the chunked
logprob head (pure torch, no DeepSpeed engine)."""

from __future__ import annotations

import math

import pytest
import torch

from egsw_rl import algos
from egsw_rl.actors.learner_model import (
    ChunkedLogprobHead,
    build_ds_config,
    collate,
    deep_merge,
    lr_lambda,
    scatter_tokens,
)
from egsw_rl.config import LearnerConfig


def test_cpu_config_is_zero3_fp32_torch_adamw():
    cfg = build_ds_config(
        LearnerConfig(lr=3e-6, grad_clip=0.5, weight_decay=0.1), device="cpu", dtype="float32", train=True
    )
    assert cfg["zero_optimization"]["stage"] == 3
    assert not cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]
    assert "data_types" not in cfg
    opt = cfg["optimizer"]
    assert opt["type"] == "AdamW" and opt["params"]["torch_adam"] is True
    assert opt["params"]["lr"] == 3e-6 and opt["params"]["weight_decay"] == 0.1
    assert cfg["gradient_clipping"] == 0.5
    assert cfg["gradient_accumulation_steps"] == 1 and cfg["train_micro_batch_size_per_gpu"] == 1
    assert "offload_param" not in cfg["zero_optimization"]


def test_gpu_config_is_bf16_with_fp32_accumulation_and_offload():
    lc = LearnerConfig(offload_params=True, offload_optimizer=True)
    cfg = build_ds_config(lc, device="cuda", dtype="bfloat16", train=True)
    assert cfg["bf16"]["enabled"] and cfg["data_types"]["grad_accum_dtype"] == "fp32"
    assert (
        cfg["optimizer"]["params"]["torch_adam"] is True
    )  # no DeepSpeed op to build (test_actors_learner_model_optimizer)
    z = cfg["zero_optimization"]
    assert z["offload_param"]["device"] == "cpu" and z["offload_optimizer"]["device"] == "cpu"
    assert z["offload_param"]["pin_memory"] is True
    ref = build_ds_config(lc, device="cuda", dtype="bfloat16", train=False)
    assert "optimizer" not in ref and "offload_optimizer" not in ref["zero_optimization"]


def test_user_deepspeed_keys_are_merged_over_the_generated_config():
    lc = LearnerConfig(
        deepspeed={
            "zero_optimization": {"stage3_max_live_parameters": 123},
            "optimizer": {"params": {"torch_adam": True}},
            "steps_per_print": 5,
        }
    )
    cfg = build_ds_config(lc, device="cuda", dtype="bfloat16", train=True)
    assert cfg["zero_optimization"]["stage"] == 3  # kept
    assert cfg["zero_optimization"]["stage3_max_live_parameters"] == 123
    assert cfg["optimizer"]["params"]["torch_adam"] is True and cfg["optimizer"]["type"] == "AdamW"
    assert cfg["steps_per_print"] == 5
    assert deep_merge({"a": {"b": 1}}, {"a": {"c": 2}}) == {"a": {"b": 1, "c": 2}}


def test_lr_schedules():
    const = lr_lambda("constant", 0, None)
    assert [const(s) for s in range(3)] == [1.0, 1.0, 1.0]
    warm = lr_lambda("constant", 3, None)
    assert [warm(s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cos = lr_lambda("cosine", 2, 12)
    assert cos(0) < cos(1) < 1.0 and cos(2) == pytest.approx(1.0)
    assert cos(7) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cos(12) == pytest.approx(0.0, abs=1e-12) and cos(50) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="total_steps"):
        lr_lambda("cosine", 0, None)
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_lambda("linear", 0, 10)


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_chunked_head_matches_full_logits(chunk):
    torch.manual_seed(0)
    out = torch.nn.Linear(16, 50, bias=False)
    head = ChunkedLogprobHead(out, temperature=0.7, chunk_tokens=chunk)
    h = torch.randn(10, 16, requires_grad=True)
    tgt = torch.randint(0, 50, (10,))
    lp, ent, _ = head(h, tgt, want_ent=True, grad_ent=True)
    full = out(h) / 0.7
    want_lp = torch.log_softmax(full, -1).gather(-1, tgt[:, None])[:, 0]
    want_ent = algos.entropy_from_logits(full)
    torch.testing.assert_close(lp, want_lp)
    torch.testing.assert_close(ent, want_ent)
    # gradients through the recomputed chunks equal the full-logits ones
    g1 = torch.autograd.grad((lp.sum() + 0.3 * ent.sum()), [h, out.weight])
    g2 = torch.autograd.grad((want_lp.sum() + 0.3 * want_ent.sum()), [h, out.weight])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        _, h2, n2 = head(h, tgt, want_clipv=True)
        hw, nw = algos.clipv_stats_from_logits(full)
    torch.testing.assert_close(h2, hw)
    torch.testing.assert_close(n2, nw)


def test_collate_positions_and_targets():
    prompts = [[1, 2, 3], [4]]
    comps = [[5, 6], [7, 8, 9]]
    x = collate(prompts, comps, [1, 0], pad_id=0, device=torch.device("cpu"))
    # row 0 = seq 1: input [4, 7, 8] predicts [7, 8, 9] at positions 0, 1, 2
    assert x["input_ids"].tolist() == [[4, 7, 8, 0], [1, 2, 3, 5]]
    assert x["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert x["rows"].tolist() == [0, 0, 0, 1, 1] and x["cols"].tolist() == [0, 1, 2, 2, 3]
    assert x["targets"].tolist() == [7, 8, 9, 5, 6] and x["T"] == 3
    grid = scatter_tokens(torch.arange(5.0), x["tok_row"], x["tok_col"], 2, x["T"])
    assert grid.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 0.0]]
    dummy = collate(prompts, comps, [], pad_id=0, device=torch.device("cpu"))
    assert dummy["dummy"] and dummy["input_ids"].shape == (1, 1)


def test_zero3_buffers_follow_the_hidden_size_unless_overridden():
    cfg = build_ds_config(LearnerConfig(), device="cpu", dtype="float32", train=True, hidden_size=64)
    z = cfg["zero_optimization"]
    assert z["reduce_bucket_size"] == 4096 and z["stage3_param_persistence_threshold"] == 640
    assert z["stage3_prefetch_bucket_size"] == int(0.9 * 4096)
    user = LearnerConfig(deepspeed={"zero_optimization": {"reduce_bucket_size": 10}})
    assert (
        build_ds_config(user, device="cpu", dtype="float32", train=True, hidden_size=64)["zero_optimization"][
            "reduce_bucket_size"
        ]
        == 10
    )
