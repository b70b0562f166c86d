"""Learner group: real Ray, 2 ranks of real DeepSpeed ZeRO-3 over gloo (egsw_rl/actors/learner.py).

The proof that aggregation and ZeRO-3 are right: one update on 2 ranks, with micro-batches of
different sizes and an empty padding micro-batch on one rank, equals a single-process plain-torch
update (same loss through `algos.policy_loss`, torch AdamW, same clipping) on the same batch.
Adam's first step is m/(sqrt(v)+eps) ~ sign(g) for a small eps, which would hide a wrong gradient
scale; these tests use eps = 1 so the step is ~ lr * g, and also compare the gradient norm.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

from egsw_rl import algos
from egsw_rl.batch import TrainBatch
from egsw_rl.config import AlgoConfig, LearnerConfig, ModelConfig
from egsw_rl.sync import WeightSync

pytestmark = pytest.mark.integration

TEMP = 0.8  # sampling temperature: logits are divided by it
LR, EPS, CLIP = 2e-2, 1.0, 1.0


def _learner_cfg(**kw) -> LearnerConfig:
    base = dict(
        num_ranks=2,
        cpus_per_rank=1.0,
        micro_batch_tokens=40,
        logprob_chunk_tokens=16,
        lr=LR,
        adam_eps=EPS,
        weight_decay=0.01,
        grad_clip=CLIP,
        sync_bucket_mb=1,
    )
    base.update(kw)
    return LearnerConfig(**base)


def make_batch(n: int = 7, seed: int = 0, vocab: int = 400) -> TrainBatch:
    """Prompts and completions of mixed lengths, signed per-token advantages, positive weights,
    and a mask with a few tokens filtered out (M' != completion mask)."""
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(5, vocab, size=int(rng.integers(2, 9))).tolist() for _ in range(n)]
    lens = [int(x) for x in rng.integers(1, 14, size=n)]
    lens[0] = 22  # one long sequence: its own micro-batch, the other rank gets more, shorter ones
    comps = [rng.integers(5, vocab, size=L).tolist() for L in lens]
    T = max(lens)
    mask = np.zeros((n, T), dtype=bool)
    for i, L in enumerate(lens):
        mask[i, :L] = True
    drop = rng.random((n, T)) < 0.1
    mask &= ~drop
    adv = (rng.normal(size=(n, 1)) + 0.3 * rng.normal(size=(n, T))).astype(np.float32) * mask
    w = (0.5 + rng.random((n, T))).astype(np.float32) * mask
    return TrainBatch(prompt_ids=prompts, completion_ids=comps, advantages=adv, weights=w, mask=mask)


def hf_logprobs(
    model, batch: TrainBatch, temperature: float = TEMP, grad: bool = False, entropy: bool = False
):
    """[N, T] logprobs of the completion tokens under a plain transformers model, one sequence at a
    time (no padding at all), full logits; with entropy=True also the [N, T] exact entropy."""
    T = max(len(c) for c in batch.completion_ids)
    rows, ents = [], []
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx:
        for p, c in zip(batch.prompt_ids, batch.completion_ids):
            ids = torch.tensor([p + c])
            logits = model(input_ids=ids).logits[0].float()[len(p) - 1 : len(p) - 1 + len(c)] / temperature
            lp = torch.log_softmax(logits, -1)
            tok = lp.gather(-1, torch.tensor(c)[:, None])[:, 0]
            rows.append(torch.nn.functional.pad(tok, (0, T - len(c))))
            if entropy:
                ents.append(torch.nn.functional.pad(algos.entropy_from_logits(logits), (0, T - len(c))))
    if entropy:
        return torch.stack(rows), torch.stack(ents)
    return torch.stack(rows)


def reference_update(model_dir, batch: TrainBatch, algo: AlgoConfig, lcfg: LearnerConfig):
    """Single-process plain torch: same loss, torch AdamW, clip_grad_norm_. Returns (state dict
    after the step, gradient norm before clipping, loss)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    lp, ent = hf_logprobs(model, batch, grad=True, entropy=True)
    mask = torch.from_numpy(batch.mask)
    norms = algos.loss_normalizers(mask, algo.agg)
    loss, _ = algos.policy_loss(
        lp,
        torch.from_numpy(batch.old_logprobs),
        torch.from_numpy(batch.advantages),
        mask,
        weights=torch.from_numpy(batch.weights),
        ref_logprobs=None if batch.ref_logprobs is None else torch.from_numpy(batch.ref_logprobs),
        clip_low=algo.clip_low,
        clip_high=algo.clip_high,
        beta=algo.beta,
        agg=algo.agg,
        norm_constant=algo.norm_constant,
        entropy=ent,
        entropy_coef=algo.entropy_coef,
        global_tokens=norms["global_tokens"],
        global_seqs=norms["global_seqs"],
    )
    loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(model.parameters(), lcfg.grad_clip)
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=lcfg.lr,
        betas=tuple(lcfg.adam_betas),
        eps=lcfg.adam_eps,
        weight_decay=lcfg.weight_decay,
    )
    opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, float(gn), float(loss.detach())


def load_export(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def assert_same_step(w0: dict, got: dict, want: dict, rel: float = 2e-4):
    """The learner's step (got - w0) equals the reference's (want - w0) for every tensor."""
    for name, t0 in w0.items():
        d_got = got[name] - t0
        d_want = want[name] - t0
        scale = float(d_want.abs().max())
        assert scale > 0, f"{name}: the reference did not move it"
        err = float((d_got - d_want).abs().max())
        assert err <= rel * scale + 1e-7, f"{name}: step differs by {err:.3g} (step size {scale:.3g})"


def check_equals_reference(group, model_dir, algo, lcfg, tmp_path, tag):
    batch = make_batch(seed=26)
    out = group.compute_logprobs(batch)
    rng = np.random.default_rng(1)
    # old logprobs off the current policy so that some ratios clip
    batch.old_logprobs = (out["old_logprobs"] + rng.normal(0, 0.25, out["old_logprobs"].shape)).astype(
        np.float32
    ) * batch.mask
    batch.ref_logprobs = out.get("ref_logprobs")
    norms = algos.loss_normalizers(torch.from_numpy(batch.mask), algo.agg)
    batch.global_tokens, batch.global_seqs = float(norms["global_tokens"]), float(norms["global_seqs"])

    # micro-batches of 1 and 2 sequences, and one rank runs an empty (padding) micro-batch
    (step,) = group._plan_update(batch)
    assert {len(mb) for r in step["per_rank"] for mb in r} == {0, 1, 2}

    group.save_hf(tmp_path / f"{tag}_before")
    w0 = load_export(tmp_path / f"{tag}_before")
    want, gn_ref, loss_ref = reference_update(tmp_path / f"{tag}_before", batch, algo, lcfg)
    metrics = group.update(batch)
    group.save_hf(tmp_path / f"{tag}_after")
    got = load_export(tmp_path / f"{tag}_after")

    assert metrics["actor/micro_batches"] >= 2
    assert 0.0 < metrics["actor/clip_frac"] < 1.0
    assert metrics["actor/loss"] == pytest.approx(loss_ref, rel=1e-4, abs=1e-6)
    assert metrics["actor/grad_norm"] == pytest.approx(gn_ref, rel=1e-4)
    if lcfg.grad_clip < gn_ref:  # clipping was active on both sides
        assert gn_ref > 2 * lcfg.grad_clip
    assert set(got) == set(w0)
    assert_same_step(w0, got, want)
    return metrics


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def group_kl(ray_session, tiny_model_dir):
    """2 ranks, GRPO aggregation, beta > 0 (a reference engine on the same ranks)."""
    from egsw_rl.actors.learner import LearnerGroup

    algo = AlgoConfig(beta=0.05, agg="seq_mean_token_mean")
    g = LearnerGroup(
        ModelConfig(path=str(tiny_model_dir)), _learner_cfg(), algo, "cpu", sampling_temperature=TEMP
    )
    yield g
    g.shutdown()


# ----------------------------------------------------------------------------- tests


def test_each_rank_holds_half_the_parameters(group_kl):
    info = group_kl.shard_info()
    assert len(info) == 2
    total = info[0]["total_numel"]
    for r in info:
        assert r["total_numel"] == total
        assert r["local_numel"] == pytest.approx(total / 2, rel=0.02)
    assert group_kl.has_ref


def test_logprobs_entropy_clipv_match_plain_transformers(group_kl, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    batch = make_batch(seed=11)
    out = group_kl.compute_logprobs(batch, with_entropy=True, with_clipv=True)
    assert set(out) == {"old_logprobs", "entropy", "clipv_n", "ref_logprobs"}
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    want = hf_logprobs(model, batch).numpy()
    valid = np.zeros_like(want, dtype=bool)
    for i, c in enumerate(batch.completion_ids):
        valid[i, : len(c)] = True
    for k in out:
        assert out[k].shape == want.shape and out[k].dtype == np.float32
        assert np.all(out[k][~valid] == 0)
    np.testing.assert_allclose(out["old_logprobs"], want, atol=2e-5)
    np.testing.assert_allclose(out["ref_logprobs"], want, atol=2e-5)
    # exact entropy / ClipV's N at the sampling temperature, from full logits
    with torch.no_grad():
        for i, (p, c) in enumerate(zip(batch.prompt_ids, batch.completion_ids)):
            logits = model(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1 : len(p) - 1 + len(c)] / TEMP
            h, n = algos.clipv_stats_from_logits(logits)
            np.testing.assert_allclose(out["entropy"][i, : len(c)], h.numpy(), atol=2e-5)
            np.testing.assert_allclose(out["clipv_n"][i, : len(c)], n.numpy(), atol=2e-5)


def test_update_equals_single_process_reference_kl(group_kl, tiny_model_dir, tmp_path):
    algo = AlgoConfig(beta=0.05, agg="seq_mean_token_mean")
    check_equals_reference(group_kl, tiny_model_dir, algo, _learner_cfg(), tmp_path, "kl")


def test_reference_stays_fixed_while_policy_moves(group_kl):
    batch = make_batch(seed=5)
    batch.advantages = np.abs(batch.advantages) + batch.mask.astype(np.float32)  # all positive
    first = group_kl.compute_logprobs(batch)
    kls, lps = [], []
    for _ in range(3):
        # old logprobs omitted: one epoch, one mini-batch -> the learner's own detached logprobs;
        # ref logprobs omitted: computed on the fly by the reference engine
        assert not group_kl.old_logprobs_needed()
        b = dataclasses.replace(batch, old_logprobs=None, ref_logprobs=None)
        m = group_kl.update(b)
        kls.append(m["actor/ref_kl"])
        assert m["actor/clip_frac"] == 0.0 and m["actor/approx_kl"] == pytest.approx(0.0, abs=1e-9)
        lps.append(group_kl.compute_logprobs(batch))
    valid = batch.mask
    for out in lps:
        np.testing.assert_array_equal(out["ref_logprobs"], first["ref_logprobs"])
    means = [float(first["old_logprobs"][valid].mean())] + [
        float(o["old_logprobs"][valid].mean()) for o in lps
    ]
    assert all(b > a for a, b in zip(means, means[1:])), means  # positive advantages raise logprobs
    # k3 KL to the frozen reference grows from (almost) 0 as the policy moves away
    assert kls[-1] > kls[0] >= 0.0
    assert all(b > a for a, b in zip(kls, kls[1:])), kls


# ----------------------------------------------------------------------------- beta = 0 group


@pytest.fixture(scope="module")
def untied_model_dir():
    from egsw_rl.testing import tiny_model

    return tiny_model(tie_word_embeddings=False)  # a separate output head, like Qwen2.5-Math-7B


@pytest.fixture(scope="module")
def group_plain(ray_session, untied_model_dir, tmp_path_factory):
    """2 ranks, DAPO token-mean, entropy bonus, beta = 0; gradient checkpointing, parameter and
    optimizer offload; no gradient clipping (so a wrong gradient scale shows in the step)."""
    from egsw_rl.actors.learner import LearnerGroup

    algo = AlgoConfig(beta=0.0, agg="token_mean", entropy_coef=0.01, clip_high=0.28)
    lcfg = _learner_cfg(
        grad_clip=100.0, gradient_checkpointing=True, offload_params=True, offload_optimizer=True
    )
    g = LearnerGroup(ModelConfig(path=str(untied_model_dir)), lcfg, algo, "cpu", sampling_temperature=TEMP)
    g.test_algo, g.test_lcfg = algo, lcfg
    g.test_init_ckpt = str(tmp_path_factory.mktemp("init") / "ckpt")
    g.save_checkpoint(g.test_init_ckpt)  # fresh weights and optimizer, for tests that need them
    yield g
    g.shutdown()


def test_no_reference_model_when_beta_is_zero(group_plain):
    assert not group_plain.has_ref
    out = group_plain.compute_logprobs(make_batch(seed=2))
    assert set(out) == {"old_logprobs"}


def test_update_equals_single_process_reference_token_mean(group_plain, untied_model_dir, tmp_path):
    check_equals_reference(
        group_plain, untied_model_dir, group_plain.test_algo, group_plain.test_lcfg, tmp_path, "tm"
    )


def test_epochs_and_mini_batches_equal_sequential_reference_steps(group_plain, untied_model_dir, tmp_path):
    """ppo_epochs=2 x mini_batches=2: four optimizer steps, each normalised over its own
    mini-batch, equal four plain-torch AdamW steps on the same sub-batches in the same order."""
    from transformers import AutoModelForCausalLM

    g = group_plain
    g.load_checkpoint(g.test_init_ckpt)
    algo = dataclasses.replace(g.test_algo, ppo_epochs=2, mini_batches=2)
    saved_algo, g.acfg = g.acfg, algo
    try:
        batch = make_batch(n=8, seed=26)
        with pytest.raises(ValueError, match="old_logprobs"):
            g.update(batch)
        batch.old_logprobs = (g.compute_logprobs(batch)["old_logprobs"] - 0.05 * batch.mask).astype(
            np.float32
        )
        steps = g._plan_update(batch)
        assert len(steps) == 4
        for epoch in (steps[:2], steps[2:]):  # each epoch visits both halves (whole groups)
            assert sorted(s["seqs"] for s in epoch) == [[0, 1, 2, 3], [4, 5, 6, 7]]
        metrics = g.update(batch)
        g.save_hf(tmp_path / "after")
    finally:
        g.acfg = saved_algo
    assert metrics["actor/optimizer_steps"] == 4

    lcfg = g.test_lcfg
    model = AutoModelForCausalLM.from_pretrained(untied_model_dir, dtype=torch.float32)
    w0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=lcfg.lr,
        betas=tuple(lcfg.adam_betas),
        eps=lcfg.adam_eps,
        weight_decay=lcfg.weight_decay,
    )
    for st in steps:
        sub = TrainBatch(
            prompt_ids=[batch.prompt_ids[i] for i in st["seqs"]],
            completion_ids=[batch.completion_ids[i] for i in st["seqs"]],
        )
        T = max(len(c) for c in sub.completion_ids)
        pick = lambda a, st=st, T=T: torch.from_numpy(a[st["seqs"], :T])  # noqa: E731
        lp, ent = hf_logprobs(model, sub, grad=True, entropy=True)
        mask = pick(batch.mask)
        norms = algos.loss_normalizers(mask, algo.agg)
        loss, _ = algos.policy_loss(
            lp,
            pick(batch.old_logprobs),
            pick(batch.advantages),
            mask,
            weights=pick(batch.weights),
            clip_low=algo.clip_low,
            clip_high=algo.clip_high,
            agg=algo.agg,
            entropy=ent,
            entropy_coef=algo.entropy_coef,
            **norms,
        )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), lcfg.grad_clip)
        opt.step()
    want = {k: v.detach() for k, v in model.state_dict().items()}
    assert_same_step(w0, load_export(tmp_path / "after"), want, rel=5e-4)


def test_checkpoint_restores_model_optimizer_and_schedule(group_plain, tmp_path):
    batch = make_batch(seed=8)
    before = group_plain.compute_logprobs(batch)
    batch.old_logprobs = before["old_logprobs"]
    group_plain.save_checkpoint(str(tmp_path / "ckpt"))
    m1 = group_plain.update(batch)
    group_plain.save_hf(tmp_path / "one")
    group_plain.update(batch)
    group_plain.load_checkpoint(str(tmp_path / "ckpt"))
    np.testing.assert_array_equal(group_plain.compute_logprobs(batch)["old_logprobs"], before["old_logprobs"])
    m1b = group_plain.update(batch)  # same Adam moments and step count -> the very same step
    group_plain.save_hf(tmp_path / "again")
    a, b = load_export(tmp_path / "one"), load_export(tmp_path / "again")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-7)
    assert m1b["actor/loss"] == pytest.approx(m1["actor/loss"], rel=1e-6)


# ----------------------------------------------------------------------------- weights out to vLLM

KERNEL_TOL = 5e-3  # vLLM CPU vs transformers on a tiny random model (up to ~4e-3 seen in an earlier set-up)


def _rollout_cfg(**kw):
    from egsw_rl.config import RolloutConfig

    base = dict(
        num_generators=1,
        temperature=TEMP,
        max_tokens=12,
        n=2,
        logprobs=0,
        max_model_len=256,
        cpu_kvcache_gib=0.25,
        seed=0,
        prompt_template="chat",
    )
    base.update(kw)
    return RolloutConfig(**base)


def _sample(gens, prompts, seed=123):
    gens.reseed(seed)
    return gens.generate(prompts)


@pytest.mark.parametrize("transport", ["shm", "group"])
def test_push_then_engine_equals_fresh_engine_from_export(group_plain, untied_model_dir, tmp_path, transport):
    """After a push (shared memory: every rank writes its own shards; group: gathered buckets
    over gloo) the engine samples the same tokens with the same logprobs (1e-5) as a fresh
    engine loaded from `save_hf` of the same step; its sampled-token logprobs match the learner's
    (kernel tolerance); the export loads in transformers with the learner's logprobs."""
    import ray
    from transformers import AutoModelForCausalLM

    from egsw_rl.actors.generator import GeneratorGroup

    # move the policy well away from the files the engine starts from
    batch = make_batch(seed=9)
    batch.advantages = np.abs(batch.advantages) + batch.mask
    for _ in range(3):
        group_plain.update(batch)
    probe = TrainBatch(prompt_ids=[batch.prompt_ids[1]], completion_ids=[batch.completion_ids[1]])
    learner_probe = group_plain.compute_logprobs(probe)["old_logprobs"][0]

    questions = ["What is 12 + 7?", "Compute 3 * 41.", "How many left: 9 - 4?"]
    gens = GeneratorGroup(ModelConfig(path=str(untied_model_dir)), _rollout_cfg(), "cpu")
    try:
        prompts = gens.render(questions)
        engine = gens.actors[0]
        before = ray.get(engine.logprobs_of.remote(probe.prompt_ids[0], probe.completion_ids[0]))
        sync = WeightSync(group_plain, gens, transport=transport)
        info = sync.info
        pushes = [sync.push() for _ in range(2)]
        after = ray.get(engine.logprobs_of.remote(probe.prompt_ids[0], probe.completion_ids[0]))
        synced = _sample(gens, prompts)
    finally:
        gens.shutdown()
    print("push metrics", pushes)
    # the engine served the old weights before the push and the learner's after it
    assert np.abs(before - learner_probe).max() > 20 * KERNEL_TOL, (before, learner_probe)
    assert np.abs(after - learner_probe).max() < KERNEL_TOL, (after, learner_probe)
    assert info["transport"] == transport
    if transport == "shm":  # unlinked once mapped: nothing is left behind, even after a crash
        assert not os.path.exists(info["path"])
    assert pushes[0]["sync/logprob_diff_max"] < KERNEL_TOL  # the probe rides on the first push only
    assert "sync/logprob_diff_max" not in pushes[1]
    for p in pushes:
        assert p["timing/sync_s"] > 0 and p["sync/bytes"] > 0
    assert pushes[-1]["sync/version"] == 2

    export = tmp_path / "export"
    group_plain.save_hf(export)
    fresh_gens = GeneratorGroup(ModelConfig(path=str(export)), _rollout_cfg(), "cpu")
    try:
        fresh = _sample(fresh_gens, prompts)
    finally:
        fresh_gens.shutdown()

    # synced engine == fresh engine from the export (same seed): tokens and logprobs
    assert [c.token_ids for c in synced] == [c.token_ids for c in fresh]
    for a, b in zip(synced, fresh):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5, rtol=0)

    # the learner's logprobs of the sampled tokens (same temperature) within the kernel tolerance
    sampled = TrainBatch(
        prompt_ids=[c.prompt_ids for c in synced], completion_ids=[c.token_ids for c in synced]
    )
    ours = group_plain.compute_logprobs(sampled)["old_logprobs"]
    gap = max(float(np.abs(ours[i, : len(c.token_ids)] - c.logprobs).max()) for i, c in enumerate(synced))
    print("learner vs vLLM sampled-token logprob gap", gap)
    assert gap < KERNEL_TOL

    # the export in plain transformers: the learner's logprobs to float precision
    model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
    np.testing.assert_allclose(hf_logprobs(model, sampled).numpy(), ours, atol=2e-5)


def test_rollout_correction_weights_are_one_against_an_fp32_engine(group_plain, untied_model_dir, tmp_path):
    """vLLM (fp32, CPU) sampling from the learner's own weights: pi_old / pi_vllm is within 1e-3
    of 1 on every sampled token, so TIS leaves the update as it was; a token vLLM made 4x less
    likely than the learner does is truncated to the cap and changes the loss."""
    from egsw_rl.actors.generator import GeneratorGroup

    g = group_plain
    export = g.save_hf(tmp_path / "export")
    gens = GeneratorGroup(ModelConfig(path=str(export)), _rollout_cfg(n=4), "cpu")
    try:
        comps = _sample(gens, gens.render(["What is 12 + 7?", "Compute 3 * 41."]))
    finally:
        gens.shutdown()
    T = max(len(c.token_ids) for c in comps)
    mask = np.zeros((len(comps), T), dtype=bool)
    roll = np.zeros((len(comps), T), dtype=np.float32)
    for i, c in enumerate(comps):
        mask[i, : len(c.token_ids)] = True
        roll[i, : len(c.token_ids)] = c.logprobs
    rng = np.random.default_rng(4)
    batch = TrainBatch(
        prompt_ids=[c.prompt_ids for c in comps],
        completion_ids=[c.token_ids for c in comps],
        advantages=(rng.normal(size=(len(comps), 1)) * mask).astype(np.float32),
        weights=mask.astype(np.float32),
        mask=mask,
        rollout_logprobs=roll,
    )
    ckpt = str(tmp_path / "ckpt")
    g.save_checkpoint(ckpt)
    saved = g.acfg
    try:
        g.acfg = dataclasses.replace(saved, rollout_correction="tis", rollout_correction_cap=2.0)
        tis = g.update(batch)
        g.load_checkpoint(ckpt)
        far = roll.copy()
        far[0, 0] -= np.log(4.0)  # vLLM's probability a quarter of the learner's: ratio 4 -> cap 2
        tis_far = g.update(dataclasses.replace(batch, rollout_logprobs=far))
        g.load_checkpoint(ckpt)
        g.acfg = saved
        plain = g.update(batch)
    finally:
        g.acfg = saved
        g.load_checkpoint(ckpt)
    print("rollout_is", {k: v for k, v in tis.items() if k.startswith("rollout_is/")})
    assert abs(tis["rollout_is/mean"] - 1.0) < 1e-3
    assert 1.0 - 1e-3 < tis["rollout_is/min"] <= tis["rollout_is/max"] < 1.0 + 1e-3
    assert tis["rollout_is/clipped_frac"] == 0.0
    assert not any(k.startswith("rollout_is/") for k in plain)
    assert tis["actor/loss"] == pytest.approx(plain["actor/loss"], rel=1e-3, abs=1e-6)
    assert tis_far["rollout_is/max"] == pytest.approx(4.0, rel=1e-2)
    assert tis_far["rollout_is/clipped_frac"] == pytest.approx(1.0 / mask.sum())
    # the truncated token's -w A term moved by (2 - 1) A_0 / n_tokens
    want = plain["actor/loss"] - float(batch.advantages[0, 0]) / mask.sum()
    assert tis_far["actor/loss"] == pytest.approx(want, rel=1e-3, abs=1e-5)
