"""The generator's pure parts: completion text decoded once per completion (identical to what
vLLM's own incremental detokeniser returns for the same ids), the stop tokens a chat template
implies, the GPU indices an engine uses, and the generation benchmark's summary. The reference
for the text is vLLM's `FastIncrementalDetokenizer` itself, fed the ids as the engine feeds it."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest

from egsw_rl.actors import generator as gen


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from egsw_rl.testing import tiny_model

    return AutoTokenizer.from_pretrained(str(tiny_model()))


def vllm_text(tokenizer, prompt_ids, token_ids, stopped_by_token):
    """What vLLM 0.32's output processor puts in CompletionOutput.text for these ids."""
    from vllm import SamplingParams
    from vllm.v1.engine.detokenizer import IncrementalDetokenizer

    request = SimpleNamespace(
        request_id="r",
        prompt_token_ids=list(prompt_ids),
        prompt_embeds=None,
        sampling_params=SamplingParams(skip_special_tokens=True),
    )
    detok = IncrementalDetokenizer.from_new_request(tokenizer, request)
    for i, t in enumerate(token_ids):
        detok.update([t], stopped_by_token and i == len(token_ids) - 1)
    return detok.get_next_output_text(True, False)


def random_cases(tokenizer, n, seed, max_len=40):
    rng = random.Random(seed)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+3? é ü 漢字"}], tokenize=False, add_generation_prompt=True
    )
    pids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    # uniform ids from a byte-level vocabulary: split and invalid UTF-8 sequences everywhere,
    # special tokens in the middle, trailing incomplete characters
    return [
        (pids, [rng.randrange(len(tokenizer)) for _ in range(rng.randint(0, max_len))], rng.random() < 0.5)
        for _ in range(n)
    ]


def test_completion_text_matches_vllm_detokenizer_on_random_ids(tok):
    cases = random_cases(tok, 400, seed=0)
    got = gen.completion_texts(tok, [c[0] for c in cases], [c[1] for c in cases], [c[2] for c in cases])
    want = [vllm_text(tok, *c) for c in cases]
    assert sum("\ufffd" in w for w in want) > 100  # the hard cases are really exercised
    assert [i for i, (g, w) in enumerate(zip(got, want)) if g != w] == []


def test_completion_text_matches_vllm_on_a_non_byte_level_decoder(tmp_path):
    # A Metaspace (SentencePiece-style) decoder strips the first space of a decode: text must be
    # decoded in the prompt's context, as the engine does.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Sequence([decoders.Metaspace(), decoders.ByteFallback()])
    raw.train_from_iterator(
        ["the answer is 42 so we get 7", "compute 3 + 4 then divide é"] * 50,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<unk>", "</s>"],
            initial_alphabet=[f"<0x{i:02X}>" for i in range(256)],
            show_progress=False,
        ),
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    sp = AutoTokenizer.from_pretrained(str(tmp_path))
    rng = random.Random(1)
    pids = sp("compute the answer", add_special_tokens=False)["input_ids"]
    cases = [
        (pids, [rng.randrange(len(sp)) for _ in range(rng.randint(0, 20))], rng.random() < 0.5)
        for _ in range(200)
    ]
    got = gen.completion_texts(sp, [c[0] for c in cases], [c[1] for c in cases], [c[2] for c in cases])
    assert got == [vllm_text(sp, *c) for c in cases]
    # the leading space of the first completion token survives (it would not in a bare decode)
    word = sp(" answer", add_special_tokens=False)["input_ids"]
    assert gen.completion_texts(sp, [pids], [word], [False])[0].startswith(" ")


def test_completion_text_leaves_out_the_stop_token_only_when_it_stopped(tok):
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    body = tok("so we get 5", add_special_tokens=False)["input_ids"]
    prompt = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    stopped, cut = gen.completion_texts(
        tok, [prompt, prompt], [body + [im_end], body + body[:1]], [True, True]
    )
    assert stopped == "so we get 5"
    assert cut == "so we get 5"  # the stop token is dropped whatever it is, as vLLM does
    assert gen.completion_texts(tok, [prompt], [body], [False]) == ["so we get 5"]


# ---------------------------------------------------------------- stop tokens


def chatml_variant(tok, tmp_path, eos="<|endoftext|>"):
    """The tiny tokenizer with another EOS: a base model's config under a ChatML template."""
    tok.save_pretrained(tmp_path)
    cfg_path = tmp_path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["eos_token"] = eos
    cfg_path.write_text(json.dumps(cfg))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tmp_path))


def test_turn_end_is_a_stop_token_when_eos_differs(tok, tmp_path):
    base = chatml_variant(tok, tmp_path)
    assert base.eos_token == "<|endoftext|>"
    im_end = base.convert_tokens_to_ids("<|im_end|>")
    eot = base.convert_tokens_to_ids("<|endoftext|>")
    assert gen.turn_end_token_ids(base) == [im_end]
    for template in ("chat", "qwen_math"):
        ids = gen.stop_token_ids(base, template, generation_eos=[eot])
        assert im_end in ids and eot in ids
    # a plain prompt template has no turns: only the model's EOS
    assert gen.stop_token_ids(base, "Question: {question}\nAnswer:", generation_eos=[eot]) == [eot]


def test_turn_end_of_other_templates(tok):
    from copy import deepcopy

    llama3ish = deepcopy(tok)
    llama3ish.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n\n{{ m['content'] | trim }}"
        "<|endoftext|>{% endfor %}{% if add_generation_prompt %}<|im_start|>"
        "assistant\n\n{% endif %}"
    )
    assert gen.turn_end_token_ids(llama3ish) == [tok.convert_tokens_to_ids("<|endoftext|>")]
    plain_turns = deepcopy(tok)  # turns end in a newline: nothing to stop on but EOS
    plain_turns.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    assert gen.turn_end_token_ids(plain_turns) == []
    no_template = deepcopy(tok)
    no_template.chat_template = None
    assert gen.turn_end_token_ids(no_template) == []


# ---------------------------------------------------------------- GPU indices


@pytest.mark.parametrize(
    "gpu_ids, visible, want",
    [
        (["3"], "3", [0]),  # Ray set CUDA_VISIBLE_DEVICES to the actor's GPU
        ([2, 3], "2,3", [0, 1]),  # a tensor-parallel engine
        (["5"], None, [5]),  # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES, all visible
        (["5"], "", [5]),
        (["6", "7"], "4,5,6,7", [2, 3]),  # NOSET on a node started with a subset visible
        ([1], " 0, 1 ", [1]),
    ],
)
def test_engine_device_indices(gpu_ids, visible, want):
    assert gen.engine_device_ids(gpu_ids, visible) == want


def test_engine_device_indices_refuse_an_invisible_gpu():
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        gen.engine_device_ids(["6"], "0,1")


# ---------------------------------------------------------------- per-token arrays, the trip through Ray


def vllm_flat(rows):
    """A FlatLogprobs as vLLM's output processor fills it: per position the sampled token's
    logprob first, then the candidates (`rows`: one list of logprobs per position)."""
    from vllm.logprobs import FlatLogprobs, append_logprobs_for_next_position

    flat = FlatLogprobs()
    for row in rows:
        append_logprobs_for_next_position(
            flat, list(range(len(row))), [float(x) for x in row], [None] * len(row), 1, len(row) - 1
        )
    return flat


def reference_arrays(flats, lengths, k, method, vocab):
    """The per-completion computation `token_arrays` replaced (one array and one torch call per
    completion, padded and concatenated for the estimators), kept as the reference."""
    import numpy as np
    import torch

    from egsw_rl.algos import topk_entropy, topk_tail_mass

    lps, topks = [], []
    for flat, T in zip(flats, lengths):
        lp, topk = np.full(T, np.nan, dtype=np.float32), None
        if flat is not None and T:
            vals = np.asarray(flat.logprobs, dtype=np.float32)
            starts, ends = np.asarray(flat.start_indices), np.asarray(flat.end_indices)
            lp = vals[starts]
            if k > 0:
                width = ends - starts
                if np.all(width == k + 1):
                    topk = vals.reshape(T, k + 1)[:, 1:]
                else:
                    topk = np.full((T, int(width.max()) - 1), -np.inf, dtype=np.float32)
                    for t in range(T):
                        row = vals[starts[t] + 1 : ends[t]]
                        topk[t, : len(row)] = row
        lps.append(lp)
        topks.append(topk)
    hs = [np.full(T, np.nan, dtype=np.float32) for T in lengths]
    rs = [np.full(T, np.nan, dtype=np.float32) for T in lengths]
    rows = [t for t in topks if t is not None and len(t)]
    if rows:
        width = max(r.shape[1] for r in rows)
        rows = [
            r
            if r.shape[1] == width
            else np.pad(r, ((0, 0), (0, width - r.shape[1])), constant_values=-np.inf)
            for r in rows
        ]
        allk = torch.from_numpy(np.concatenate(rows, 0))
        h = topk_entropy(allk, method=method, vocab_size=vocab).numpy().astype(np.float32)
        r = topk_tail_mass(allk).numpy().astype(np.float32)
        off = 0
        for i, t in enumerate(topks):
            if t is None or not len(t):
                continue
            hs[i], rs[i] = h[off : off + len(t)].copy(), r[off : off + len(t)].copy()
            off += len(t)

    def cat(xs):
        return np.concatenate(xs) if xs else np.zeros(0, dtype=np.float32)

    return cat(lps), cat(hs), cat(rs)


def random_batch(seed, k, n=40, irregular=False, missing=False, vocab=64):
    import numpy as np

    rng = np.random.default_rng(seed)
    flats, lengths = [], []
    for _i in range(n):
        T = int(rng.integers(0, 30))
        rows = []
        for _ in range(T):
            logits = rng.normal(0, rng.uniform(0.1, 6), vocab)
            lp = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
            cands = np.sort(lp)[::-1][:k]
            if rng.random() < 0.2:  # outside top-p: processed logprobs are -inf
                cands[int(rng.integers(0, max(k, 1))) :] = -np.inf
            if irregular and rng.random() < 0.3:
                cands = cands[: int(rng.integers(0, k + 1))]
            rows.append([lp[int(rng.integers(0, vocab))], *cands])
        lengths.append(T)
        flats.append(None if missing and rng.random() < 0.2 else vllm_flat(rows))
    return flats, lengths


@pytest.mark.parametrize("method", ["lower_bound", "renorm", "upper_bound"])
@pytest.mark.parametrize(
    "k,irregular,missing",
    [(20, False, False), (5, True, False), (8, False, True), (0, False, False), (64, True, True)],
)
def test_token_arrays_are_the_per_completion_results_bit_for_bit(method, k, irregular, missing):
    import numpy as np

    for seed in range(3):
        flats, lengths = random_batch(seed, k, irregular=irregular, missing=missing)
        got = gen.token_arrays(flats, lengths, k, method, 64)
        want = reference_arrays(flats, lengths, k, method, 64)
        for g, w in zip(got, want):
            assert g.dtype == np.float32 and g.shape == (sum(lengths),)
            assert g.tobytes() == w.tobytes()
        if k == 0:
            assert np.isnan(got[1]).all() and np.isnan(got[2]).all()
        elif not missing:
            assert np.isfinite(got[1]).all()


def test_token_arrays_refuse_positions_that_do_not_match_the_tokens():
    flats, lengths = random_batch(0, 4, n=3)
    lengths = [t + 1 if t else t for t in lengths]
    with pytest.raises(RuntimeError, match="logprob positions for"):
        gen.token_arrays(flats, lengths, 4, "lower_bound")


def test_token_arrays_exact_reads_the_engines_entropy_entry():
    """method exact: per position the sampled token's logprob, then the hook's entropy entry;
    tail mass 0; completions without logprobs NaN; a position without the entry is refused."""
    import numpy as np

    rng = np.random.default_rng(3)
    lengths = [3, 0, 5, 2]
    rows = [[(-rng.random(), 3 * rng.random()) for _ in range(t)] for t in lengths]
    flats = [vllm_flat(r) if r else None for r in rows]
    flats[3] = None  # a completion without logprobs
    lp, h, r = gen.token_arrays(flats, lengths, 20, "exact", 64)
    want_lp = np.array([x[0] for t in rows[:3] for x in t] + [np.nan] * 2, dtype=np.float32)
    want_h = np.array([x[1] for t in rows[:3] for x in t] + [np.nan] * 2, dtype=np.float32)
    np.testing.assert_array_equal(lp, want_lp)
    np.testing.assert_array_equal(h, want_h)
    np.testing.assert_array_equal(r, np.where(np.isnan(want_h), np.nan, 0.0).astype(np.float32))
    with pytest.raises(RuntimeError, match="entropy entry"):
        gen.token_arrays([vllm_flat([[-0.5]])], [1], 0, "exact")


def test_request_slot_names_the_completion_of_an_engine_request():
    prompt_of = {"7": 0, "8": 1}
    assert gen.request_slot("7-1a2b3c4d", prompt_of, 1) == 0  # n = 1: vLLM's id, no sample prefix
    assert gen.request_slot("3_8-1a2b3c4d", prompt_of, 4) == 7  # sample 3 of prompt 1
    assert gen.request_slot("0_7", prompt_of, 4) == 0  # request ids not randomised
    assert gen.request_slot("2_9-1a2b3c4d", prompt_of, 4) is None  # another call's request
    with pytest.raises(RuntimeError, match="sample 4 of a prompt asked for 4"):
        gen.request_slot("4_7-1a2b3c4d", prompt_of, 4)


def _record(per_request):
    """An engine record (`_V1SamplerEntropy.take`) from {request id: [(token, logprob, entropy)]}."""
    import numpy as np

    rows = [r for v in per_request.values() for r in v]
    return {
        "req_ids": list(per_request),
        "counts": np.array([len(v) for v in per_request.values()]),
        "token_ids": np.array([r[0] for r in rows], dtype=np.int64),
        "logprob": np.array([r[1] for r in rows], dtype=np.float32),
        "entropy": np.array([r[2] for r in rows], dtype=np.float32),
    }


def test_recorded_token_arrays_put_each_requests_rows_under_its_completion():
    """Rows of requests in any order go to their completions; rows past a completion's tokens
    (a step after it finished) and other calls' requests are left out."""
    import numpy as np

    record = _record(
        {
            "b": [(5, -0.5, 1.5), (6, -0.6, 1.6)],
            "old": [(9, -9.0, 9.0)],
            "a": [(1, -0.1, 1.1), (2, -0.2, 1.2), (3, -0.3, 1.3), (4, -0.4, 1.4)],
            "c": [],
        }
    )
    lp, h = gen.recorded_token_arrays(record, [1, None, 0, 2], [[1, 2, 3], [5, 6], []])
    np.testing.assert_array_equal(lp, np.array([-0.1, -0.2, -0.3, -0.5, -0.6], dtype=np.float32))
    np.testing.assert_array_equal(h, np.array([1.1, 1.2, 1.3, 1.5, 1.6], dtype=np.float32))


def test_recorded_token_arrays_refuse_a_record_that_does_not_match_the_tokens():
    record = _record({"a": [(1, -0.1, 1.1)], "b": [(5, -0.5, 1.5), (7, -0.7, 1.7)]})
    with pytest.raises(RuntimeError, match="completion 0: the engine recorded the entropy of 1 of its 2"):
        gen.recorded_token_arrays(record, [0, 1], [[1, 2], [5, 6]])
    with pytest.raises(RuntimeError, match="completion 1: the engine's entropy record is of other tokens"):
        gen.recorded_token_arrays(record, [0, 1], [[1], [5, 6]])
    with pytest.raises(RuntimeError, match="completion 1: the engine recorded the entropy of 0"):
        gen.recorded_token_arrays(record, [0, None], [[1], [5]])


def _metadata(batch, temperature, max_num_logprobs, top_k=None):
    import torch
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.metadata import SamplingMetadata

    return SamplingMetadata(
        temperature=torch.full((batch,), float(temperature)),
        all_greedy=False,
        all_random=True,
        top_p=None,
        top_k=None if top_k is None else torch.full((batch,), int(top_k)),
        generators={},
        max_num_logprobs=max_num_logprobs,
        no_penalties=True,
        prompt_token_ids=None,
        frequency_penalties=torch.zeros(batch),
        presence_penalties=torch.zeros(batch),
        repetition_penalties=torch.ones(batch),
        output_token_ids=[[] for _ in range(batch)],
        allowed_token_ids_mask=None,
        bad_words_token_ids={},
        logitsprocs=LogitsProcessors(),
    )


def _runner(sampler, req_ids, discard):
    """What the V1 hook reads of vLLM's model runner: its sampler, the input batch's request
    order and the rows it will discard."""
    import numpy as np

    return SimpleNamespace(
        sampler=sampler,
        input_batch=SimpleNamespace(req_ids=list(req_ids)),
        discard_request_mask=SimpleNamespace(np=np.array(discard, dtype=bool)),
    )


@pytest.mark.parametrize("top_k", [None, 5])
def test_v1_sampler_hook_records_the_exact_entropy_per_request_and_samples_the_same_tokens(top_k):
    """vLLM's own V1 sampler (the CPU runner's), processed logprobs, temperature 0.7, requests
    asking for no logprobs: with the hook on, every row's exact entropy (of the tempered, top-k
    truncated distribution it was drawn from), the sampled token's logprob and the token are kept
    under the row's request id, rows grouped per request in sampling order across steps whose
    batches are ordered differently; discarded rows are left out; `take` hands them over once.
    The same seed samples the same tokens with the hook on or off, and off records nothing."""
    import numpy as np
    import torch
    from vllm.v1.sample.sampler import Sampler

    from egsw_rl.algos import entropy_from_logits
    from egsw_rl.sync.vllm_worker import hook_sampler

    B, V, T = 4, 50, 0.7
    sampler = Sampler(logprobs_mode="processed_logprobs")
    runner = _runner(sampler, "abcd", [False] * B)
    hook = hook_sampler(runner)
    assert hook.kind == "v1" and not hook.on
    assert hook_sampler(runner) is hook  # installed once
    logits = [torch.randn(B, V, generator=torch.Generator().manual_seed(s)) * 3 for s in (0, 1)]

    def run(step):
        torch.manual_seed(5 + step)
        return sampler(logits[step].clone(), _metadata(B, T, None, top_k)).sampled_token_ids[:, 0]

    plain = [run(0), run(1)]
    assert hook.take()["req_ids"] == []  # off: nothing recorded
    hook.on = True
    first = run(0)
    runner.input_batch.req_ids = ["c", "a", "e", "b"]  # the batch reordered, "e" a prompt chunk
    runner.discard_request_mask.np = np.array([False, False, True, False])
    second = run(1)
    assert torch.equal(first, plain[0]) and torch.equal(second, plain[1])
    got = hook.take()
    assert got["req_ids"] == ["a", "b", "c", "d", "e"]
    np.testing.assert_array_equal(got["counts"], [2, 2, 2, 1, 0])

    def dist(step):
        z = logits[step] / T
        return z if top_k is None else z.topk(top_k, -1).values  # what the sampler drew from

    h = [entropy_from_logits(dist(0)), entropy_from_logits(dist(1))]
    lp = [torch.log_softmax(dist(0), -1), torch.log_softmax(dist(1), -1)]
    z = [logits[0] / T, logits[1] / T]
    rows = [(0, 0), (1, 1), (0, 1), (1, 3), (0, 2), (1, 0), (0, 3)]  # (step, row) of a, a, b, b, c, c, d
    want_h = torch.stack([h[s][r] for s, r in rows])
    tok = [first, second]
    want_lp = torch.stack([torch.log_softmax(z[s][r], -1)[tok[s][r]] for s, r in rows])
    if top_k is not None:  # the sampled token is among the top k: its logprob renormalised over them
        want_lp = torch.stack([lp[s][r][(dist(s)[r] == z[s][r][tok[s][r]]).nonzero()[0, 0]] for s, r in rows])
    torch.testing.assert_close(torch.from_numpy(got["entropy"]), want_h, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.from_numpy(got["logprob"]), want_lp, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(got["token_ids"], [int(tok[s][r]) for s, r in rows])
    assert hook.take()["req_ids"] == []  # handed over once
    # an all-greedy batch: vLLM returns no processed logprobs, the hook computes them
    md = _metadata(B, 1.0, None, None)
    md.all_greedy, md.all_random, md.temperature = True, False, None
    greedy = sampler(logits[0].clone(), md).sampled_token_ids[:, 0]
    got = hook.take()  # rows c, a, b of the batch (e discarded)
    assert got["req_ids"] == ["c", "a", "e", "b"]
    torch.testing.assert_close(
        torch.from_numpy(got["entropy"]), entropy_from_logits(logits[0][[0, 1, 3]]), atol=1e-6, rtol=0
    )
    assert torch.equal(greedy, logits[0].argmax(-1))


def test_v2_sampler_hook_appends_the_entropy_of_the_processed_logits():
    """The V2 model runner's sampler (the CUDA default) calls its module's `compute_topk_scores`
    (Triton kernels: they do not run here) with the processed logits. Behind the hook, a
    stand-in with that function's signature and output: k - 1 candidates, then the entropy of
    log_softmax of the logits it was given (masked tokens -inf)."""

    import torch
    from vllm.v1.outputs import LogprobsTensors

    from egsw_rl.algos import entropy_from_logits
    from egsw_rl.sync.vllm_worker import _V2SamplerEntropy, sampler_hook_problems

    # what the hook relies on (the call's first three arguments, the per-request ids keyword)
    assert sampler_hook_problems() == []

    def compute_topk_scores(logits, num_logprobs, sampled_token_ids, *args, max_per_req_token_ids=0, **kw):
        lp = torch.log_softmax(logits, -1)
        ids = torch.cat((sampled_token_ids[:, None], lp.topk(num_logprobs, -1).indices), dim=1)
        return LogprobsTensors(ids, lp.gather(-1, ids), torch.ones_like(sampled_token_ids))

    B, V = 4, 40
    module = SimpleNamespace(compute_topk_scores=compute_topk_scores)
    hook = _V2SamplerEntropy(module)
    logits = torch.randn(B, V, generator=torch.Generator().manual_seed(1)) * 2
    logits[:, 30:] = float("-inf")  # a top-k mask
    sampled = torch.randint(0, 30, (B,), generator=torch.Generator().manual_seed(2))
    plain = module.compute_topk_scores(logits, 3, sampled, None)
    hook.on = True
    got = module.compute_topk_scores(logits, 3, sampled, None)
    assert got.logprobs.shape == plain.logprobs.shape == (B, 4)
    assert torch.equal(got.logprobs[:, :3], plain.logprobs[:, :3])
    assert torch.equal(got.logprob_token_ids[:, 3], sampled)
    torch.testing.assert_close(got.logprobs[:, 3], entropy_from_logits(logits[:, :30]), atol=1e-6, rtol=0)
    # logprobs=0 and per-request token ids: vLLM's own
    assert module.compute_topk_scores(logits, 0, sampled, None).logprobs.shape == (B, 1)
    assert module.compute_topk_scores(logits, 3, sampled, None, max_per_req_token_ids=2).logprobs.shape == (
        B,
        4,
    )
    torch.testing.assert_close(
        module.compute_topk_scores(logits, 3, sampled, None, max_per_req_token_ids=2).logprobs, plain.logprobs
    )


def test_sampler_hook_problems_name_what_a_vllm_lacks(monkeypatch):
    """The installed vLLM has both hook points (the preflight passes); a V2 sampler module whose
    compute_topk_scores changed its arguments is named."""
    from vllm.v1.worker.gpu.sample import sampler as v2

    from egsw_rl.sync.vllm_worker import sampler_hook_problems

    assert sampler_hook_problems() == []
    monkeypatch.setattr(v2, "compute_topk_scores", lambda logits, k, ids: None)
    assert [p.split("(")[0] for p in sampler_hook_problems()] == [
        "vllm.v1.worker.gpu.sample.sampler.compute_topk_scores"
    ]


def test_hook_refuses_an_unknown_sampler():
    from egsw_rl.sync.vllm_worker import hook_sampler

    with pytest.raises(RuntimeError, match="no entropy hook"):
        hook_sampler(SimpleNamespace(sampler=object()))


def test_token_arrays_leave_the_torch_thread_count_alone():
    import torch

    flats, lengths = random_batch(0, 20, n=200)
    before = torch.get_num_threads()
    gen.token_arrays(flats, lengths, 20, "lower_bound")
    assert torch.get_num_threads() == before


def completions(seed=0, n_prompts=3, G=4):
    import numpy as np

    from egsw_rl.batch import Completion

    rng = np.random.default_rng(seed)
    out = []
    for b in range(n_prompts):
        prompt = rng.integers(0, 500, int(rng.integers(1, 40))).tolist()
        for j in range(G):
            T = int(rng.integers(0, 17))
            arr = lambda T=T: rng.normal(size=T).astype(np.float32)  # noqa: E731
            out.append(
                Completion(
                    prompt_index=b,
                    sample_index=j,
                    prompt_ids=list(prompt),
                    token_ids=rng.integers(0, 151_000, T).tolist(),
                    text=f"é {b}/{j} \\boxed{{1}}",
                    logprobs=arr(),
                    entropy=arr(),
                    tail_mass=np.full(T, np.nan, dtype=np.float32),
                    finish_reason="stop" if j % 2 else "length",
                    version=7,
                )
            )
    return out


def assert_same(got, want):
    import dataclasses

    import numpy as np

    assert type(got) is list and len(got) == len(want)
    for g, w in zip(got, want):
        for f in dataclasses.fields(w):
            a, b = getattr(g, f.name), getattr(w, f.name)
            if isinstance(b, np.ndarray):
                assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), f.name
            else:
                assert a == b and type(a) is type(b), f.name
                if isinstance(b, list) and b:
                    assert all(type(x) is type(y) for x, y in zip(a, b)), f.name


def test_completion_list_pickles_as_columns_and_arrives_as_the_same_completions():
    import pickle

    want = completions()
    data = pickle.dumps(gen.CompletionList(want), protocol=5)
    got = pickle.loads(data)
    assert_same(got, want)
    # every completion its own prompt list, as before (mutating one leaves the others alone)
    assert len({id(c.prompt_ids) for c in got}) == len(got)
    # smaller than one record per completion
    assert len(data) < len(pickle.dumps(list(want), protocol=5))
    assert pickle.loads(pickle.dumps(gen.CompletionList([]))) == []


def test_completion_list_falls_back_to_plain_pickling_for_what_it_cannot_pack():
    import pickle

    import numpy as np

    odd = completions(seed=1)
    odd[2].entropy = odd[2].entropy.astype(np.float64)  # one dtype per field is needed to concatenate
    assert_same(pickle.loads(pickle.dumps(gen.CompletionList(odd))), odd)
    short = completions(seed=2)
    short[0].tail_mass = short[0].tail_mass[:-1] if len(short[0].tail_mass) else np.zeros(1, np.float32)
    assert_same(pickle.loads(pickle.dumps(gen.CompletionList(short))), short)


# ---------------------------------------------------------------- the benchmark's summary


def test_generate_summary_ratio_of_medians():
    from egsw_rl.bench.generate import generate_summary

    actor = [{"tokens": 100, "seconds": 1.0}, {"tokens": 90, "seconds": 1.0}, {"tokens": 300, "seconds": 1.0}]
    bare = [{"tokens": 100, "seconds": 0.5}, {"tokens": 100, "seconds": 0.5}, {"tokens": 100, "seconds": 1.0}]
    s = generate_summary(actor, bare)
    assert s["actor_tokens_per_s"] == 100 and s["bare_tokens_per_s"] == 200
    assert s["engine_ratio"] == pytest.approx(0.5)
    # rounds slowed by other jobs move the ratio of the medians, less the median of the rounds' ratios
    a = [{"tokens": 100, "seconds": s} for s in (1.0, 2.0, 4.0)]
    b = [{"tokens": 100, "seconds": s} for s in (0.5, 4.0, 4.0)]
    s2 = generate_summary(a, b)
    assert s2["engine_ratio"] == pytest.approx(2.0) and s2["engine_ratio_paired"] == pytest.approx(1.0)
    assert s["rounds"] == 3
    with pytest.raises(ValueError):
        generate_summary([], bare)
