"""The optimizer DeepSpeed builds from the learner's generated config needs no compiled op.

A GPU cluster node must never JIT-build a DeepSpeed op at start-up: FusedAdam and
DeepSpeedCPUAdam are C++/CUDA extensions compiled on first use, which needs a CUDA toolkit that
matches torch's (DeepSpeed's `assert_no_cuda_mismatch` refuses otherwise) on every node. These
tests hand the config `build_ds_config` generates for each device to DeepSpeed 0.19.8's own
config parser and its own optimizer choice (`DeepSpeedEngine._configure_basic_optimizer`), with
every op build made to raise, and take a real step with what comes out. Only the engine shell
around those two methods is skipped (it needs a process group and a model).
"""

from __future__ import annotations

import pytest
import torch

from egsw_rl.actors.learner_model import build_ds_config
from egsw_rl.config import LearnerConfig


@pytest.fixture
def no_op_builds(monkeypatch):
    from deepspeed.ops.op_builder.builder import OpBuilder

    built: list[str] = []

    def refuse(self, *args, **kwargs):
        built.append(self.name)
        raise AssertionError(f"DeepSpeed op {self.name!r} would be compiled at run time")

    monkeypatch.setattr(OpBuilder, "load", refuse)
    monkeypatch.setattr(OpBuilder, "jit_load", refuse)
    return built


def _deepspeed_basic_optimizer(ds_config: dict, params):
    from deepspeed.runtime.config import DeepSpeedConfig
    from deepspeed.runtime.engine import DeepSpeedEngine

    engine = DeepSpeedEngine.__new__(DeepSpeedEngine)
    torch.nn.Module.__init__(engine)
    engine._config = DeepSpeedConfig(ds_config)
    engine.client_optimizer = None
    engine.zenflow = False
    return engine._configure_basic_optimizer(params)


@pytest.mark.parametrize("offload_optimizer", [False, True])
def test_gpu_learner_optimizer_is_torch_fused_adamw_with_no_op_build(no_op_builds, offload_optimizer):
    lc = LearnerConfig(
        lr=5e-7, weight_decay=0.01, offload_optimizer=offload_optimizer, offload_params=offload_optimizer
    )
    cfg = build_ds_config(lc, device="cuda", dtype="bfloat16", train=True, hidden_size=64)
    assert cfg["optimizer"]["type"] == "AdamW"
    assert cfg["optimizer"]["params"]["torch_adam"] is True and cfg["optimizer"]["params"]["fused"] is True
    # the rest of the GPU config: ZeRO-3, bf16 weights with fp32 gradient accumulation, overlap
    assert cfg["zero_optimization"]["stage"] == 3 and cfg["zero_optimization"]["overlap_comm"] is True
    assert cfg["bf16"]["enabled"] is True and cfg["data_types"]["grad_accum_dtype"] == "fp32"
    if offload_optimizer:
        assert cfg["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}

    # ZeRO-3 hands the optimizer fp32 master partitions: on the GPU, or in host memory when
    # offloaded (the CPU tensor here is exactly that case; torch's fused kernel has both).
    p = torch.nn.Parameter(torch.randn(64))
    opt = _deepspeed_basic_optimizer(cfg, [p])
    assert type(opt) is torch.optim.AdamW, type(opt)
    assert (
        opt.defaults["fused"] is True and opt.defaults["lr"] == 5e-7 and opt.defaults["weight_decay"] == 0.01
    )
    before = p.detach().clone()
    p.grad = torch.ones_like(p)
    opt.step()
    assert not torch.equal(before, p.detach())
    assert no_op_builds == []


def test_cpu_learner_optimizer_is_unchanged_plain_torch_adamw(no_op_builds):
    cfg = build_ds_config(LearnerConfig(), device="cpu", dtype="float32", train=True)
    assert cfg["optimizer"]["params"]["torch_adam"] is True and "fused" not in cfg["optimizer"]["params"]
    p = torch.nn.Parameter(torch.randn(8))
    opt = _deepspeed_basic_optimizer(cfg, [p])
    assert type(opt) is torch.optim.AdamW and not opt.defaults["fused"]
    assert no_op_builds == []


def test_the_guard_catches_deepspeeds_own_adam(no_op_builds):
    """Without torch_adam DeepSpeed picks FusedAdam (DeepSpeedCPUAdam when offloaded): the
    config the GPU learner generated before; the guard above must see its build."""
    for offload in (False, True):
        cfg = build_ds_config(
            LearnerConfig(offload_optimizer=offload), device="cuda", dtype="bfloat16", train=True
        )
        cfg["optimizer"]["params"]["torch_adam"] = False
        del cfg["optimizer"]["params"]["fused"]
        with pytest.raises(Exception):  # noqa: B017 - DeepSpeedCPUAdam re-raises the build failure as its own
            _deepspeed_basic_optimizer(cfg, [torch.nn.Parameter(torch.randn(8))])
    assert no_op_builds == ["fused_adam", "cpu_adam"]
