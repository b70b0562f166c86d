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


@pytest.mark.parametrize(
    "algo", ["grpo", "egsw", "egsw_trajectory", "gtpo", "grpo_s", "clipb", "clipv", "dr_grpo", "dapo"]
)
def test_every_algo_composes_and_validates(algo):
    cfg = cfg_with(f"algo={algo}")
    assert cfg.algo.name == algo
    validate(cfg)


def test_egsw_keys_reach_the_weights_and_only_them():
    """algo.alpha / algo.temperature are EGSW's alpha and P: overridden on the command line they
    change the weights the trainer's shaping call computes, and leave the sampling temperature
    (rollout.temperature, the other key of that name) alone."""
    import torch
    from omegaconf import OmegaConf

    from egsw_rl import algos

    base, cfg = cfg_with(), cfg_with("algo.alpha=0.7", "algo.temperature=0.25")
    assert cfg.rollout.temperature == base.rollout.temperature == 1.0
    gen = torch.Generator().manual_seed(0)
    r = torch.tensor([1.0, 0.0, 0.0, 1.0] * 2, dtype=torch.float64)
    h = torch.rand(8, 5, generator=gen, dtype=torch.float64) * 3
    m = torch.ones(8, 5, dtype=torch.bool)

    def weights(c):
        return algos.shape_batch(r, h, m, OmegaConf.to_object(c.algo), group_size=4, vocab_size=100)[1]

    want = algos.egsw_weights(
        algos.group_advantages(r, group_size=4)[:, None].expand(8, 5),
        h,
        m,
        group_size=4,
        vocab_size=100,
        alpha=0.7,
        temperature=0.25,
    )
    torch.testing.assert_close(weights(cfg), want)
    assert (weights(cfg) - weights(base)).abs().max().item() > 1e-2


@pytest.fixture
def throwaway_methods():
    """A new advantage and a new weighting, registered the way a new method is, removed after."""
    import torch

    from egsw_rl import algos

    @algos.register_advantage("sign_test", reads=("alpha1",))
    def sign_advantages(rewards, entropy, mask, *, group_size, alpha1):
        centred = rewards.view(-1, group_size) - rewards.view(-1, group_size).mean(1, keepdim=True)
        return alpha1 * torch.sign(centred).reshape(-1)  # one advantage a sequence

    @algos.register_weighting("halves_test")
    def halves(advantages, entropy, mask, *, group_size, vocab_size):
        return mask.to(advantages.dtype) / 2

    yield
    del algos.ADVANTAGES["sign_test"], algos.WEIGHTS["halves_test"]


def test_a_new_method_is_one_function_and_one_yaml(throwaway_methods, tmp_path):
    """Registering a function is all `validate` needs to accept its name (the registries are the
    list of allowed names); a preset YAML in a searched folder selects it as `algo=<file>`, and
    the function receives the config fields it declared."""
    import torch
    from omegaconf import OmegaConf

    from egsw_rl import algos

    (tmp_path / "algo").mkdir()
    (tmp_path / "algo" / "sign_test.yaml").write_text(
        "name: sign_test\nadvantage: sign_test\nweighting: halves_test\nalpha1: 3.0\n"
    )
    cfg = cfg_with(f"hydra.searchpath=[file://{tmp_path}]", "algo=sign_test")
    assert cfg.algo.advantage == "sign_test" and cfg.algo.weighting == "halves_test"
    validate(cfg)
    validate(cfg_with("algo.advantage=sign_test", "algo.weighting=halves_test"))

    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    m = torch.tensor([[True, True], [True, False], [True, True], [False, False]])
    a, w, m2, _ = algos.shape_batch(r, torch.zeros(4, 2), m, OmegaConf.to_object(cfg.algo), group_size=2)
    assert a.tolist() == [[3.0, 3.0], [-3.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    assert torch.equal(m2, m) and w.tolist() == [[0.5, 0.5], [0.5, 0], [0.5, 0.5], [0, 0]]


def test_an_unregistered_method_lists_the_registered_ones(throwaway_methods):
    with pytest.raises(ConfigError) as e:
        validate(cfg_with("algo.advantage=sign_tst"))
    assert (
        "algo.advantage='sign_tst': allowed values are grpo, dr_grpo, batch_std, gtpo, grpo_s, sign_test"
        in str(e.value)
    )


def test_typo_key_is_refused_with_its_name():
    with pytest.raises(ConfigCompositionException, match="algo.alhpa"):
        cfg_with("algo.alhpa=0.3")


def test_wrong_type_is_refused():
    with pytest.raises(ConfigCompositionException, match="algo.alpha"):
        cfg_with("algo.alpha=high")


def test_unknown_preset_lists_the_options():
    with pytest.raises(MissingConfigException, match="tiny_cpu"):
        cfg_with("conf=nope")


@pytest.mark.parametrize(
    "overrides, key",
    [
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
        # every consumer of the rollout entropy needs the untruncated distribution
        (["algo=gtpo", "algo.entropy_source=rollout", "rollout.top_p=0.9"], "algo.advantage=gtpo"),
        (["algo=grpo_s", "algo.entropy_source=rollout", "rollout.top_k=50"], "algo.advantage=grpo_s"),
        (["algo=clipb", "algo.entropy_source=rollout", "rollout.top_p=0.9"], "algo.token_mask=clipb"),
        (["algo=grpo", "algo.token_mask=high_entropy", "rollout.top_k=20"], "algo.token_mask=high_entropy"),
        (["algo=grpo", "algo.entropy_coef=0.01", "rollout.top_p=0.95"], "algo.entropy_coef=0.01"),
        (["algo.rollout_correction=is"], "algo.rollout_correction"),
        (["rollout.entropy_estimator=lower_bound", "rollout.logprobs=0"], "rollout.logprobs=0"),
        (["rollout.entropy_estimator=top1"], "rollout.entropy_estimator"),
        (["algo.rollout_correction=tis", "algo.rollout_correction_cap=0.5"], "algo.rollout_correction_cap"),
    ],
)
def test_impossible_combinations_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        validate(cfg_with(*overrides))
    assert key in str(e.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["algo=grpo", "rollout.top_p=0.9"],  # nothing reads the entropy
        ["algo=gtpo", "rollout.top_p=0.9"],  # the preset's entropy is the learner's exact one
        ["algo=egsw", "algo.entropy_source=learner", "rollout.top_k=40"],
        ["algo.rollout_correction=mis", "algo.rollout_correction_cap=1"],
        ["rollout.logprobs=0"],  # the exact entropy (default) uses no top-k candidates
    ],
)
def test_truncated_sampling_is_fine_when_no_rollout_entropy_is_used(overrides):
    validate(cfg_with(*overrides))


def test_more_gpus_than_the_cluster_has():
    cfg = cfg_with("conf=qwen_math_7b")
    with pytest.raises(ConfigError, match="the cluster has 4"):
        validate(cfg, available_gpus=4)
