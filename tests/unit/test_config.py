"""Config composition and the checks that refuse a bad run before any actor starts."""

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException, MissingConfigException

import egsw_rl.launch  # noqa: F401  registers the schema
from egsw_rl.config import ConfigError, validate


def cfg_with(*overrides):
    with initialize_config_module("egsw_rl.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("preset", ["tiny_cpu", "smollm2_cpu", "qwen_math_7b", "qwen_math_7b_instruct"])
def test_every_preset_composes(preset):
    cfg = cfg_with(f"conf={preset}")
    if preset.startswith("qwen"):
        assert cfg.model.path.startswith("Qwen/Qwen2.5-Math-7B")
        assert cfg.rollout.n == 8 and cfg.data.batch_size == 1024 and cfg.learner.lr == 5e-7
        assert cfg.algo.beta == 1e-4 and cfg.trainer.device == "cuda"
        validate(cfg, available_gpus=8)
    else:
        validate(cfg)


@pytest.mark.parametrize("algo", ["grpo", "egsw", "egsw_trajectory", "gtpo", "grpo_s", "clipb",
                                  "clipv", "dr_grpo", "dapo"])
def test_every_algo_composes_and_validates(algo):
    cfg = cfg_with(f"algo={algo}")
    assert cfg.algo.name == algo
    validate(cfg)


def test_contract_keys_override():
    cfg = cfg_with("algo.alpha=0.3", "algo.temperature=2", "trainer.total_steps=3",
                   "logger.wandb.mode=disabled", "resume=auto")
    assert (cfg.algo.alpha, cfg.algo.temperature, cfg.trainer.total_steps) == (0.3, 2.0, 3)
    assert cfg.logger.wandb.mode == "disabled" and cfg.resume == "auto"


def test_typo_key_is_refused_with_its_name():
    with pytest.raises(ConfigCompositionException, match="algo.alhpa"):
        cfg_with("algo.alhpa=0.3")


def test_wrong_type_is_refused():
    with pytest.raises(ConfigCompositionException, match="algo.alpha"):
        cfg_with("algo.alpha=high")


def test_unknown_preset_lists_the_options():
    with pytest.raises(MissingConfigException, match="tiny_cpu"):
        cfg_with("conf=nope")


@pytest.mark.parametrize("overrides, key", [
    (["algo=clipv", "algo.entropy_source=rollout"], "algo.entropy_source=learner"),
    (["rollout.n=1"], "rollout.n=1"),
    (["algo.agg=token_sum"], "algo.agg='token_sum'"),
    (["algo.mini_batches=3"], "algo.mini_batches=3"),
    (["learner.num_ranks=100", "data.batch_size=2", "rollout.n=2"], "learner.num_ranks=100"),
    (["algo.temperature=0"], "algo.temperature"),
    (["rollout.max_tokens=4096"], "rollout.max_tokens=4096"),
    (["learner.gpus_per_node=8"], "learner.gpus_per_node=8"),
    (["reward.scheme=ternary"], "reward.scheme"),
    (["reward.format_penalty=-1"], "reward.format_penalty"),
    (["rollout.top_p=0.9"], "rollout.top_p"),
])
def test_impossible_combinations_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        validate(cfg_with(*overrides))
    assert key in str(e.value)


def test_more_gpus_than_the_cluster_has():
    cfg = cfg_with("conf=qwen_math_7b")
    with pytest.raises(ConfigError, match="the cluster has 4"):
        validate(cfg, available_gpus=4)
