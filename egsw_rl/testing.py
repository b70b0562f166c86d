"""Offline tiny models for tests and the embedded default.

`tiny_model(...)` returns the path of an ordinary Hugging Face model folder (config, safetensors,
tokenizer with a ChatML template) holding a small random Qwen2 causal LM. Nothing is downloaded:
the byte-level BPE tokenizer is trained on the spot on a small math corpus. transformers,
DeepSpeed and vLLM all load the folder. Folders are cached under `$EGSW_RL_CACHE` (default
`~/.cache/egsw_rl`) keyed by their settings, and written atomically so concurrent test workers
never see half a model.

`populate_hf_cache(folder, repo_id, hf_home)` places such a folder in a Hugging Face cache under a
hub repo id, so runs and tests can load it by id with `HF_HUB_OFFLINE=1` (no network);
`rehearsal=cpu` does that with the tiny model.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def cache_dir() -> Path:
    return Path(os.environ.get("EGSW_RL_CACHE", Path.home() / ".cache" / "egsw_rl"))


def _corpus(n: int = 4000, seed: int = 0) -> list[str]:
    """Arithmetic and LaTeX-flavoured lines so the BPE merges look like math text."""
    rng = random.Random(seed)
    words = (
        "the answer is so we get then therefore compute add subtract multiply divide "
        "total each how many left sum of and with step first next finally"
    ).split()
    lines = []
    for _ in range(n):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        op = rng.choice(["+", "-", "*"])
        val = eval(f"{a}{op}{b}")  # our own integers, not model output
        filler = " ".join(rng.choice(words) for _ in range(rng.randint(2, 8)))
        lines.append(f"What is {a} {op} {b}? {filler} {a} {op} {b} = {val}. \\boxed{{{val}}}")
        lines.append(f"\\frac{{{a}}}{{{b + 1}}} + \\sqrt{{{a}}} x^{{2}} ( {a}, {b} ) \\pi")
    return lines


def build_tokenizer(out_dir: Path, vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def tiny_model(
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    intermediate_size: int = 256,
    vocab_size: int = 512,
    max_position_embeddings: int = 2048,
    tie_word_embeddings: bool = True,
    seed: int = 0,
    root: Path | None = None,
) -> Path:
    """Build (once) and return a tiny random Qwen2 model folder. head_dim = hidden/heads must be
    32, 64 or 128: vLLM's CPU attention rejects smaller heads."""
    settings = dict(
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        seed=seed,
        format=1,
    )
    head_dim = hidden_size // num_heads
    if head_dim not in (32, 64, 128):
        raise ValueError(f"head_dim {head_dim} (hidden_size/num_heads): vLLM CPU needs 32, 64 or 128")
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(root) if root is not None else cache_dir() / "tiny"
    out = root / f"qwen2-tiny-{key}"
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".building-"))
    try:
        tok = build_tokenizer(tmp, vocab_size=vocab_size - 16)
        # vLLM wants the embedding at least as large as the tokenizer; round up for kernels.
        n_vocab = max(vocab_size, ((len(tok) + 63) // 64) * 64)
        config = Qwen2Config(
            vocab_size=n_vocab,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            head_dim=head_dim,
            max_position_embeddings=max_position_embeddings,
            tie_word_embeddings=tie_word_embeddings,
            bos_token_id=None,
            eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
            torch_dtype="float32",
        )
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).to(torch.float32)
        model.generation_config.eos_token_id = config.eos_token_id
        model.generation_config.pad_token_id = config.pad_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "egsw_rl_tiny.json").write_text(json.dumps(settings, indent=1))
        try:
            tmp.rename(out)
        except OSError:  # another process finished first; theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# Files the hub stores through LFS (their blob is named by sha256); other files are git blobs
# (named by git's sha1 of "blob <size>\0" + content).
_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".model", ".h5", ".msgpack", ".onnx")


def _blob_name(path: Path) -> str:
    h = (
        hashlib.sha256()
        if path.suffix in _LFS_SUFFIXES or path.stat().st_size > 10 * 2**20
        else hashlib.sha1()
    )
    if h.name == "sha1":
        h.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            h.update(chunk)
    return h.hexdigest()


def populate_hf_cache(
    model_dir: Path | str, repo_id: str, hf_home: Path | str, *, revision: str = "main"
) -> Path:
    """Place the model folder `model_dir` into the Hugging Face cache of `hf_home` under `repo_id`,
    in the hub's own layout (`hub/models--org--name/{blobs, snapshots/<commit>, refs/<revision>}`,
    snapshot files symlinked to content-named blobs), so that with `HF_HUB_OFFLINE=1
    HF_HOME=<hf_home>` transformers, vLLM and `egsw_rl.models.resolve_model` load it by repo id,
    exactly as a real download would have left it. The commit is a hash of the files, so placing
    the same folder again changes nothing. Returns the snapshot folder."""
    src = Path(model_dir)
    files = sorted(
        p
        for p in src.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(src).parts)
    )
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src}: not a model folder (no config.json)")
    from egsw_rl.models.resolve import looks_like_repo_id

    if not looks_like_repo_id(repo_id):
        raise ValueError(f"repo id {repo_id!r}: expected 'org/name' or 'name'")
    repo = Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))
    blobs = {str(p.relative_to(src)): _blob_name(p) for p in files}
    commit = hashlib.sha1(json.dumps(blobs, sort_keys=True).encode()).hexdigest()
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "snapshots").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for p in files:
        blob = repo / "blobs" / blobs[str(p.relative_to(src))]
        if not blob.exists():
            tmp = blob.with_name(blob.name + f".{os.getpid()}.incomplete")
            shutil.copyfile(p, tmp)
            os.replace(tmp, blob)
    snap = repo / "snapshots" / commit
    if not snap.is_dir():
        tmp = Path(tempfile.mkdtemp(dir=repo / "snapshots", prefix=".building-"))
        for rel, name in blobs.items():
            link = tmp / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            # relative, as the hub client writes them: the cache stays valid when moved or mounted elsewhere
            target = os.path.relpath(repo / "blobs" / name, (snap / rel).parent)
            try:
                os.symlink(target, link)
            except OSError:  # no symlinks on this file system: the hub client copies then too
                shutil.copyfile(repo / "blobs" / name, link)
        try:
            tmp.rename(snap)
        except OSError:  # placed concurrently by another process: same content
            shutil.rmtree(tmp, ignore_errors=True)
    ref = repo / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp_ref = ref.with_name(ref.name + f".{os.getpid()}.tmp")
    tmp_ref.write_text(commit)  # no newline: the hub client reads the file verbatim
    os.replace(tmp_ref, ref)
    return snap


# ----------------------------------------------------------------------------- rehearsal


def rehearsal_keys(name: str) -> list[str]:
    """The dotted keys `rehearsal=<name>` sets (egsw_rl/conf/rehearsal/<name>.yaml): all that a
    rehearsal replaces in a preset."""
    from omegaconf import OmegaConf

    path = Path(__file__).resolve().parent / "conf" / "rehearsal" / f"{name}.yaml"
    conf = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}

    def flat(node: dict, prefix: str) -> list[str]:
        out = []
        for key, value in node.items():
            if key == "defaults":
                continue
            out += flat(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
        return out

    return flat(conf, "")


def rehearsal_hf_home(hf_home: Path | str | None = None) -> Path:
    """Where a rehearsal's offline Hugging Face cache lives: `rehearsal.hf_home`, else
    rehearsal/hf under the egsw_rl cache."""
    return Path(hf_home).expanduser().absolute() if hf_home else cache_dir() / "rehearsal" / "hf"


if __name__ == "__main__":
    print(tiny_model())
