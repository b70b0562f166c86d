"""The embedded default's starting model: the tiny Qwen2 given a short supervised warm-up on
generated arithmetic (the training operand pairs only). It writes its answer as `\\boxed{N}`
only some of the time (otherwise a bare number, which the grader does not accept) and is right
some of the time: like a real base model, it has a format to learn and a distribution to sharpen,
so RL has a signal to climb from step 1 and visibly does within minutes on a laptop CPU.

Built on first use (about a minute on 2 cores) and cached beside the tiny model; the warm-up
problems come from a different seed than the RL training problems.

`tiny_arith_chain` (`conf=tiny_methods`, CHAIN_SETTINGS) is the same procedure on three-operand
expressions, always boxed: there the reward is the accuracy, with no format to learn.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
from pathlib import Path

from egsw_rl.testing import cache_dir, tiny_model

log = logging.getLogger(__name__)

SETTINGS = dict(
    hidden_size=128,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    intermediate_size=384,
    steps=600,
    batch=64,
    lr=3e-3,
    seed=1234,
    max_operand=15,
    boxed_frac=0.5,
    format=5,
    pairs="train",
)
# `conf=tiny_methods` ("tiny_arith_chain"): the same model on three-operand expressions
# ("What is 3 + 9 - 4?", data.arithmetic_chain_problems, training expressions only), always boxed:
# the format is not what RL has to learn there, the arithmetic is.
CHAIN_SETTINGS = dict(SETTINGS, task="chain", max_operand=9, terms=3, boxed_frac=1.0, steps=300)


def answer_text(answer: str, boxed: bool) -> str:
    return f"\\boxed{{{answer}}}" if boxed else answer


def ensure_warm_model(root: Path | None = None, settings: dict | None = None) -> Path:
    """The warmed-up model folder for `settings` (default SETTINGS), built on first use and cached
    under a name keyed by the settings."""
    import hashlib

    settings = SETTINGS if settings is None else settings
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    root = Path(root) if root is not None else cache_dir() / "tiny"
    out = root / f"arith-{'chain' if settings.get('task') == 'chain' else 'warm'}-{key}"
    if (out / "model.safetensors").exists():
        return out
    base = tiny_model(
        hidden_size=settings["hidden_size"],
        num_layers=settings["num_layers"],
        num_heads=settings["num_heads"],
        num_kv_heads=settings["num_kv_heads"],
        intermediate_size=settings["intermediate_size"],
        root=root,
    )
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".building-"))
    try:
        _warm_up(base, tmp, settings)
        try:
            tmp.rename(out)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def ensure_chain_model(root: Path | None = None) -> Path:
    """The `tiny_arith_chain` model: the warm-up on three-operand expressions (CHAIN_SETTINGS)."""
    return ensure_warm_model(root, CHAIN_SETTINGS)


def warmup_problems(settings: dict):
    """The warm-up's problems: its training split only (the held-out one is never seen)."""
    from egsw_rl.data import arithmetic_chain_problems, arithmetic_problems

    if settings.get("task") == "chain":
        return arithmetic_chain_problems(
            20000,
            seed=settings["seed"],
            max_operand=settings["max_operand"],
            terms=settings["terms"],
            split=settings["pairs"],
        )
    return arithmetic_problems(
        20000, seed=settings["seed"], max_operand=settings["max_operand"], split=settings["pairs"]
    )


def _warm_up(base: Path, out: Path, settings: dict) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("warming up the tiny arithmetic model (first use only, about a minute)")
    torch.manual_seed(settings["seed"])
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    # the training pairs only: the held-out pairs (data.eval arithmetic_heldout) are never seen by
    # the warm-up either, so their accuracy measures generalisation, not memorisation
    problems = warmup_problems(settings)
    examples = []
    fmt_rng = random.Random(settings["seed"] + 1)
    for p in problems:
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": p.question}], tokenize=False, add_generation_prompt=True
        )
        p_ids = tok(prompt, add_special_tokens=False).input_ids
        boxed = fmt_rng.random() < settings["boxed_frac"]
        a_ids = tok(answer_text(p.answer, boxed) + "<|im_end|>", add_special_tokens=False).input_ids
        examples.append((p_ids, a_ids))

    opt = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=0.0)
    rng = random.Random(settings["seed"])
    pad_id = tok.pad_token_id
    model.train()
    for step in range(settings["steps"]):
        batch = rng.sample(examples, settings["batch"])
        width = max(len(p) + len(a) for p, a in batch)
        ids = torch.full((len(batch), width), pad_id)
        labels = torch.full((len(batch), width), -100)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (p, a) in enumerate(batch):
            seq = p + a
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, len(p) : len(seq)] = torch.tensor(a)
            attn[i, : len(seq)] = 1
        for g in opt.param_groups:  # linear decay keeps the end of the warm-up stable
            g["lr"] = settings["lr"] * (1 - step / settings["steps"])
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            log.info("warm-up step %d loss %.3f", step, loss.item())
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / "egsw_rl_warmup.json").write_text(json.dumps(settings, indent=1))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    import sys

    print(ensure_chain_model() if sys.argv[1:] == ["chain"] else ensure_warm_model())
