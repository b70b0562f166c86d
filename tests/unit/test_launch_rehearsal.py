"""`rehearsal=cpu` over every preset: it validates on a machine without GPUs, it replaces only
hardware and size keys (the ones its file lists), and everything the preset is about (algo, data,
reward, prompt template, eval sets, learning rate, schedule, checkpointing) stays the preset's.
The launch step puts the tiny model into an offline Hugging Face cache under the repo id the
run's model.path names."""

from __future__ import annotations

import os

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import egsw_rl.launch  # noqa: F401  registers the schema
from egsw_rl.config import validate
from egsw_rl.testing import rehearsal_keys

PRESETS = ["tiny_cpu", "smollm2_cpu", "qwen_math_7b", "qwen_math_7b_instruct"]
# What a rehearsal may replace: where the run runs and how big it is, nothing it computes.
HARDWARE_AND_SIZE = {
    "model.path",
    "model.tokenizer",
    "model.dtype",
    "trainer.device",
    "rollout.num_generators",
    "rollout.tensor_parallel_size",
    "rollout.cpus_per_generator",
    "rollout.cpu_kvcache_gib",
    "rollout.enforce_eager",
    "rollout.n",
    "rollout.max_model_len",
    "rollout.max_tokens",
    "learner.num_ranks",
    "learner.num_nodes",
    "learner.gpus_per_node",
    "learner.cpus_per_rank",
    "learner.offload_params",
    "learner.offload_optimizer",
    "learner.gradient_checkpointing",
    "learner.micro_batch_tokens",
    "learner.logprob_chunk_tokens",
    "data.batch_size",
    "data.eval_samples",
    "rehearsal.name",
}


def compose_cfg(*overrides):
    with initialize_config_module("egsw_rl.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def flat(cfg) -> dict:
    out = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def test_the_rehearsal_file_sets_only_hardware_and_size_keys():
    keys = set(rehearsal_keys("cpu"))
    assert keys - HARDWARE_AND_SIZE == set()
    assert {"model.path", "trainer.device", "learner.num_ranks", "data.batch_size"} <= keys
    assert rehearsal_keys("none") == []


@pytest.mark.parametrize("preset", PRESETS)
def test_rehearsal_over_each_preset_validates_on_cpu_and_keeps_the_preset(preset):
    plain, rehearsed = compose_cfg(f"conf={preset}"), compose_cfg(f"conf={preset}", "rehearsal=cpu")
    validate(rehearsed)  # no GPUs: a CPU run
    assert rehearsed.trainer.device == "cpu" and rehearsed.learner.gpus_per_node == 0
    assert rehearsed.learner.num_ranks == 2 and rehearsed.rollout.num_generators == 1
    assert rehearsed.model.path == rehearsed.rehearsal.repo_id == "egsw-rl-rehearsal/tiny-qwen2"
    assert rehearsed.model.dtype == "float32"

    a, b = flat(plain), flat(rehearsed)
    assert set(a) == set(b)
    changed = {k for k in a if a[k] != b[k]}
    assert changed <= set(rehearsal_keys("cpu")), changed - set(rehearsal_keys("cpu"))
    for key in a:
        if key.startswith(("algo.", "reward.", "logger.")) or key in (
            "data.train",
            "data.eval",
            "data.answer_format",
            "data.question_key",
            "data.answer_key",
            "rollout.prompt_template",
            "rollout.temperature",
            "rollout.top_p",
            "rollout.top_k",
            "rollout.stop",
            "rollout.logprobs",
            "rollout.overlong_prompt",
            "learner.lr",
            "learner.weight_decay",
            "learner.lr_schedule",
            "trainer.total_steps",
            "trainer.save_every",
            "trainer.eval_every",
            "trainer.keep_checkpoints",
            "resume",
        ):
            assert a[key] == b[key], f"{key}: {a[key]!r} in {preset}, {b[key]!r} rehearsed"
    # the preset's mini-batches still split the rehearsal's batch into whole groups
    assert rehearsed.data.batch_size % rehearsed.algo.mini_batches == 0


def test_the_paper_preset_rehearsed_keeps_its_algorithm_and_data():
    cfg = compose_cfg("conf=qwen_math_7b", "rehearsal=cpu")
    assert cfg.algo.name == "egsw" and cfg.algo.beta == 1e-4 and cfg.algo.mini_batches == 4
    assert cfg.data.train == "simplerl_8k" and list(cfg.data.eval) == ["math500", "aime24", "aime25"]
    assert cfg.rollout.prompt_template == "qwen_math" and cfg.rollout.overlong_prompt == "drop"
    assert cfg.rollout.max_model_len - cfg.rollout.max_tokens == 480
    assert cfg.learner.lr == 5e-7 and cfg.trainer.save_every == 10


def test_order_on_the_command_line_does_not_matter_and_user_overrides_win():
    a = compose_cfg("conf=qwen_math_7b", "rehearsal=cpu")
    b = compose_cfg("rehearsal=cpu", "conf=qwen_math_7b")
    assert flat(a) == flat(b)
    c = compose_cfg("conf=qwen_math_7b", "rehearsal=cpu", "rollout.n=2", "rehearsal.repo_id=me/other")
    assert c.rollout.n == 2 and c.model.path == "me/other"


def test_no_rehearsal_by_default():
    assert flat(compose_cfg()) == flat(compose_cfg("rehearsal=none"))
    assert compose_cfg("conf=qwen_math_7b").rehearsal.name == "none"


HF_VARS = ("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HUGGINGFACE_HUB_CACHE")


def test_launch_step_fills_an_offline_cache_the_repo_id_resolves_from(tmp_path, monkeypatch, capsys):
    from egsw_rl.launch import prepare_rehearsal
    from egsw_rl.models import ModelNotFoundError, locate_model

    for var in HF_VARS:
        monkeypatch.delenv(var, raising=False)  # restored after the test
    prepare_rehearsal(compose_cfg("conf=qwen_math_7b"))
    assert not any(os.environ.get(v) for v in HF_VARS), "rehearsal=none must not touch the environment"

    hf_home = tmp_path / "hf"
    cfg = compose_cfg("conf=qwen_math_7b", "rehearsal=cpu", f"rehearsal.hf_home={hf_home}")
    prepare_rehearsal(cfg)
    assert os.environ["HF_HOME"] == str(hf_home) and os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["HF_HUB_CACHE"] == str(hf_home / "hub")
    found = locate_model(cfg.model.path)
    assert found.kind == "hub" and hf_home in found.path.parents
    assert (found.path / "tokenizer_config.json").exists() and list(found.path.glob("*.safetensors"))
    out = capsys.readouterr().out
    assert "rehearsal" in out and "model.path=egsw-rl-rehearsal/tiny-qwen2" in out and str(hf_home) in out
    assert len(out.strip().splitlines()) == 1
    # offline and nothing else in this cache: an id it does not hold is refused, not downloaded
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        locate_model("egsw-rl-rehearsal/not-there")
