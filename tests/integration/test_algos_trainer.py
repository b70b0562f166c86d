"""Every `algo=` preset through the real trainer: one Trainer (real vLLM engine, reward actor,
2 DeepSpeed ZeRO-3 ranks over gloo) runs each preset for 2 steps on the warmed-up tiny model,
and each run must show its own mechanism acting on the batch the learners actually received,
a loss equal to the preset's aggregation computed independently, and weights that moved.

The actors are started once and shared: between presets only the algorithm config changes
(the driver's and the learner group's, which passes it to the ranks on every update). The
batches are observed by wrapping `learners.update` and `_rollout` with recorders that call the
real methods."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from egsw_rl.batch import TrainBatch
from egsw_rl.runlog import read_metrics

pytestmark = pytest.mark.integration

B, G, MAX_TOKENS = 8, 4, 16
BASE = [
    f"data.batch_size={B}",
    f"rollout.n={G}",
    f"rollout.max_tokens={MAX_TOKENS}",
    "data.eval=[]",
    "trainer.total_steps=2",
    "trainer.save_every=0",
    "logger.plots=false",
    "logger.progress_bar=false",
    "logger.wandb.mode=disabled",
]


def compose(*overrides):
    from egsw_rl.bench.runner import compose as compose_preset  # as `launch` composes it
    from egsw_rl.config import validate

    cfg = compose_preset("tiny_cpu", (*BASE, *overrides))
    validate(cfg)
    return cfg


@pytest.fixture(scope="module")
def trainer(ray_session, tmp_path_factory):
    from egsw_rl.trainer import Trainer

    t = Trainer(compose("algo=grpo"), tmp_path_factory.mktemp("algos"))
    yield t
    t.shutdown()


@dataclasses.dataclass
class Run:
    rows: list[dict]
    batches: list[TrainBatch]
    rollouts: list
    moved: float  # largest change of the learner's logprobs on a fixed probe
    algo: object


def run_preset(trainer, tmp_path, *overrides) -> Run:
    """Point the trainer at a new algorithm config and run `fit()` (2 steps) through it."""
    from omegaconf import OmegaConf

    cfg = compose(*overrides)
    algo = OmegaConf.to_object(cfg.algo)
    if algo.norm_constant is None:  # as Trainer.__init__ resolves it
        algo.norm_constant = float(cfg.rollout.max_tokens)
    trainer.cfg, trainer.algo, trainer.learners.acfg = cfg, algo, algo
    trainer.run_dir = tmp_path
    batches, rollouts = [], []
    real_update, real_rollout = trainer.learners.update, trainer._rollout

    def update(batch, **kw):
        batches.append(dataclasses.replace(batch))
        return real_update(batch, **kw)

    def rollout(*a, **kw):
        rollouts.append(real_rollout(*a, **kw))
        return rollouts[-1]

    probe = TrainBatch(prompt_ids=[list(range(20, 40))], completion_ids=[list(range(40, 52))])
    before = trainer.learners.compute_logprobs(probe)["old_logprobs"]
    trainer.learners.update, trainer._rollout = update, rollout
    try:
        trainer.fit()
    finally:
        del trainer.learners.update, trainer._rollout  # back to the class's methods
    after = trainer.learners.compute_logprobs(probe)["old_logprobs"]
    return Run(
        read_metrics(tmp_path / "metrics.jsonl"), batches, rollouts, float(np.abs(after - before).max()), algo
    )


def expected_loss(b: TrainBatch, agg: str, norm_constant: float) -> float:
    """AGG(-W * A, M') in float64: every preset here trains on-policy (one epoch, one
    mini-batch), so the PPO ratio is 1 and the loss is the aggregated -W A."""
    m = np.asarray(b.mask, dtype=bool)
    x = np.where(m, -np.asarray(b.weights, np.float64) * np.asarray(b.advantages, np.float64), 0.0)
    if agg == "token_mean":
        return float(x.sum() / max(m.sum(), 1))
    if agg == "seq_mean_token_mean":
        return float(np.mean(x.sum(1) / np.maximum(m.sum(1), 1)))
    return float(x.sum() / (norm_constant * m.shape[0]))


def check_common(run: Run) -> None:
    assert [r["step"] for r in run.rows] == [1, 2]
    assert len(run.batches) == 2
    for row, b in zip(run.rows, run.batches):
        # (GRPO's on-policy loss is 0 by construction: centred advantages, ratio 1; its
        # gradient is not, hence the gradient norm and the weights below)
        want = expected_loss(b, run.algo.agg, run.algo.norm_constant)
        assert row["loss"] == pytest.approx(want, rel=1e-3, abs=1e-6), (row["loss"], want)
        assert row["grad_norm"] > 1e-3 and math.isfinite(row["grad_norm"])
        assert np.abs(np.asarray(b.advantages)[np.asarray(b.mask, bool)]).max() > 1e-3
    assert run.moved > 1e-5, run.moved  # the update reached the weights


def valid_mask(b: TrainBatch) -> np.ndarray:
    """Every completion token (M before any token mask)."""
    T = np.asarray(b.mask).shape[1]
    return np.arange(T)[None, :] < np.array([len(c) for c in b.completion_ids])[:, None]


def per_sequence_spread(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    return np.array([np.ptp(x[i][m[i]]) if m[i].any() else 0.0 for i in range(len(x))])


def group_rewards(rollout) -> np.ndarray:
    return np.asarray(rollout.rewards, np.float64).reshape(-1, G)


def test_grpo_zero_for_all_equal_groups_unit_weights(trainer, tmp_path):
    run = run_preset(trainer, tmp_path, "algo=grpo")
    check_common(run)
    for b, ro in zip(run.batches, run.rollouts):
        m = np.asarray(b.mask, bool)
        assert np.array_equal(m, valid_mask(b))  # no token mask
        assert np.all(np.asarray(b.weights)[m] == 1.0)
        a = np.asarray(b.advantages)
        assert per_sequence_spread(a, m).max() < 1e-6  # one advantage per sequence
        r = group_rewards(ro)
        seq_a = np.array([a[i][m[i]][0] if m[i].any() else 0.0 for i in range(len(a))]).reshape(-1, G)
        equal = r.max(1) == r.min(1)
        assert np.all(seq_a[equal] == 0.0)
        want = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-6)
        np.testing.assert_allclose(seq_a[~equal], want[~equal], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("preset", ["egsw", "egsw_trajectory"])
def test_egsw_weights_differ(trainer, tmp_path, preset):
    run = run_preset(trainer, tmp_path, f"algo={preset}")
    check_common(run)
    for row, b in zip(run.rows, run.batches):
        m = np.asarray(b.mask, bool)
        w = np.asarray(b.weights)[m]
        assert w.max() - w.min() > 1e-3 and row["egsw/weight_max"] > row["egsw/weight_min"]
        if preset == "egsw":  # rescaled softmax at each position: the weights of S_t sum to |S_t|
            assert w.mean() == pytest.approx(1.0, rel=1e-3)
        else:  # one weight per sequence
            assert per_sequence_spread(np.asarray(b.weights), m).max() < 1e-6


def test_gtpo_advantages_vary_within_a_sequence(trainer, tmp_path):
    run = run_preset(trainer, tmp_path, "algo=gtpo")
    check_common(run)
    for b in run.batches:
        assert b.old_logprobs is not None  # entropy_source=learner: the exact entropy pass ran
        assert per_sequence_spread(np.asarray(b.advantages), np.asarray(b.mask, bool)).max() > 1e-3


def test_grpo_s_sequence_advantages_even_for_all_equal_groups(trainer, tmp_path):
    run = run_preset(trainer, tmp_path, "algo=grpo_s")
    check_common(run)
    seen_equal = False
    for b, ro in zip(run.batches, run.rollouts):
        m = np.asarray(b.mask, bool)
        a = np.asarray(b.advantages)
        assert per_sequence_spread(a, m).max() < 1e-6
        r = group_rewards(ro)
        for k in np.flatnonzero(r.max(1) == r.min(1)):
            rows = slice(k * G, (k + 1) * G)
            if m[rows].sum(1).min() > 0:  # entropy-shaped: non-zero unlike GRPO
                seen_equal = True
                assert np.abs(a[rows][m[rows]]).max() > 1e-3
    assert seen_equal, "no all-equal group in 16: GRPO-S's distinguishing case never occurred"


@pytest.mark.parametrize(
    "preset, overrides",
    [
        ("clipb", ["algo.mu=0.5"]),  # tightened from 2.5 so that some tokens must drop
        ("clipv", ["algo.mu=0.5", "algo.max_frac=0.5"]),  # from 8.5 and 1e-4
    ],
)
def test_clip_masks_drop_tokens(trainer, tmp_path, preset, overrides):
    run = run_preset(trainer, tmp_path, f"algo={preset}", *overrides)
    check_common(run)
    dropped = 0
    for row, b in zip(run.rows, run.batches):
        m, valid = np.asarray(b.mask, bool), valid_mask(b)
        assert not np.any(m & ~valid)
        n_drop = int(valid.sum() - m.sum())
        assert row["mask/dropped_tokens"] == n_drop
        dropped += n_drop
        assert np.all(np.asarray(b.advantages)[valid & ~m] == 0)
    assert dropped > 0


def test_high_entropy_mask_keeps_a_fifth(trainer, tmp_path):
    run = run_preset(trainer, tmp_path, "algo=grpo", "algo.token_mask=high_entropy", "algo.agg=token_mean")
    check_common(run)
    for b in run.batches:
        m, valid = np.asarray(b.mask, bool), valid_mask(b)
        assert not np.any(m & ~valid)
        assert int(m.sum()) == math.ceil(0.2 * int(valid.sum()) - 1e-9)


def test_dr_grpo_no_std_and_the_budget_normaliser(trainer, tmp_path):
    run = run_preset(trainer, tmp_path, "algo=dr_grpo")
    assert run.algo.agg == "seq_mean_token_sum_norm" and run.algo.norm_constant == MAX_TOKENS
    check_common(run)  # loss = sum(-A) / (rollout.max_tokens x sequences)
    for b, ro in zip(run.batches, run.rollouts):
        m = np.asarray(b.mask, bool)
        a = np.asarray(b.advantages)
        seq_a = np.array([a[i][m[i]][0] if m[i].any() else 0.0 for i in range(len(a))]).reshape(-1, G)
        r = group_rewards(ro)
        has = m.sum(1).reshape(-1, G) > 0
        np.testing.assert_allclose(seq_a[has], (r - r.mean(1, keepdims=True))[has], atol=1e-5)


def test_dapo_drops_or_regenerates_uninformative_groups(trainer, tmp_path):
    run = run_preset(trainer, tmp_path, "algo=dapo")
    check_common(run)
    acted = 0
    for row, ro in zip(run.rows, run.rollouts):
        correct = np.array([r.status == "correct" for r in ro.results]).reshape(-1, G)
        informative = int(np.sum(correct.any(1) & ~correct.all(1)))
        assert len(ro.problems) == B
        assert row["dapo/kept_groups"] == informative
        assert row["dapo/kept_groups"] + row["dapo/short_groups"] == B
        acted += row["dapo/dropped_groups"] + row["dapo/short_groups"] + (row["dapo/gen_rounds"] > 1)
        # reward metrics describe the batch trained on, whatever the number of rounds
        counts = sum(row[f"reward/{s}_count"] for s in ("correct", "wrong", "no_answer", "timeout", "error"))
        assert counts == B * G and row["reward/correct_count"] == int(correct.sum())
        assert row["reward/mean_score"] <= 1.0
        assert row["reward/accuracy"] == pytest.approx(correct.mean())
    assert acted > 0, "dynamic sampling never dropped or regenerated a group in 2 steps"


def test_rollout_correction_weights_are_one_on_cpu(trainer, tmp_path):
    """fp32 engine and learner with the same weights: pi_old / pi_vllm is 1 to kernel precision,
    so TIS neither truncates nor re-weights."""
    run = run_preset(trainer, tmp_path, "algo=egsw", "algo.rollout_correction=tis")
    check_common(run)
    for row in run.rows:
        assert abs(row["rollout_is/mean"] - 1.0) < 1e-3
        assert 1.0 - 1e-3 < row["rollout_is/min"] <= row["rollout_is/max"] < 1.0 + 1e-3
        assert row["rollout_is/clipped_frac"] == 0.0


@pytest.mark.parametrize(
    "overrides,passes",
    [
        (("algo=grpo",), 1),  # one update a batch: the pre-update policy comes from the update's forward
        (("algo=clipv",), 2),  # ClipV needs an old-logprob pass (full-vocabulary N) anyway: it carries it
    ],
)
def test_entropy_dynamics_monitor(trainer, tmp_path, overrides, passes):
    """trainer.entropy_dynamics: the predicted and measured entropy changes are logged, finite
    and non-zero, at the cost of one learner forward a step (none when off)."""
    calls = []
    real = trainer.learners.compute_logprobs

    def counted(batch, **kw):
        calls.append(kw)
        return real(batch, **kw)

    trainer.learners.compute_logprobs = counted
    try:
        off = run_preset(trainer, tmp_path / "off", *overrides)
        calls_off = len(calls)
        on = run_preset(trainer, tmp_path / "on", *overrides, "trainer.entropy_dynamics=true")
    finally:
        del trainer.learners.compute_logprobs
    # the probe in run_preset calls compute_logprobs twice per run
    assert calls_off - 2 == 2 * (passes - 1)
    assert len(calls) - calls_off - 2 == 2 * passes
    assert not any(k.startswith("entropy_dynamics/") for r in off.rows for k in r)
    check_common(on)
    for row in on.rows:
        for key in ("predicted_delta", "measured_delta", "token_corr"):
            v = row[f"entropy_dynamics/{key}"]
            assert math.isfinite(v) and v != 0.0, (key, v)
        for key in ("decrease_frac", "decrease_frac_pos_adv", "decrease_frac_neg_adv"):
            assert 0.0 <= row[f"entropy_dynamics/{key}"] <= 1.0
        assert row["timing/entropy_dynamics_s"] > 0
