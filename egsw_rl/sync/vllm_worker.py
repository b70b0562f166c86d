"""The code that runs inside vLLM's worker: `WorkerExtension`.

Loaded by vLLM as `worker_extension_cls="egsw_rl.sync.vllm_worker.WorkerExtension"`. It streams
the pushed tensors (group, shm or ipc) into the model runner's layer-wise in-place reload
(`reload_weights(weights_iterator=..., is_checkpoint_format=True)`): it accepts checkpoint (HF)
names, lets vLLM fuse qkv / gate_up and re-runs the post-load processing, which on CPU repacks
every linear weight. A module whose weight aliases another one (the tied embedding / output head)
keeps its own kernel-side copy that this reload does not refresh, so such modules are
re-processed afterwards.

It also hooks vLLM's sampler for the generator's exact per-token entropy (`egsw_engine_entropy`,
`hook_sampler`). On the V1 sampler (CPU, and CUDA's V1 model runner) the worker keeps each sampled
token's entropy and logprob under its request id and hands a call's worth over at once
(`egsw_take_entropy`), so the requests ask vLLM for no logprobs; on the V2 model runner's sampler
the last column of the sampled tokens' logprobs carries the entropy instead of the lowest top-k
candidate.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from egsw_rl.actors.vllm_logs import quiet_benign_reload
from egsw_rl.algos.entropy import entropy_from_logits, entropy_from_logprobs
from egsw_rl.sync.group import new_group, receive_stream
from egsw_rl.sync.ipc import ipc_probe, ipc_store, ipc_stream, open_ipc_handle
from egsw_rl.sync.plan import DEFAULT_TIMEOUT_S, ParamMeta, checkpoint_shapes, rows_to_meta, validate_meta
from egsw_rl.sync.shm import map_shared, shared_layout, shared_views
from egsw_rl.sync.timing import lap_lists


class WorkerExtension:
    """Mixed into vLLM's worker (`worker_extension_cls`, see the module docstring).
    Named methods called with `LLM.collective_rpc("egsw_...")`; plain-list arguments only (no
    pickled callables, no VLLM_ALLOW_INSECURE_SERIALIZATION). Names are prefixed so they never
    clash with the worker's own attributes."""

    def egsw_init_receiver(
        self,
        master_addr: str,
        master_port: int,
        rank_offset: int,
        world_size: int,
        backend: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> int:
        """Join the sync group as rank `rank_offset + this worker's rank` (tensor parallel
        workers of one engine take consecutive ranks)."""
        self.egsw_close_receiver()
        rank = int(rank_offset) + int(getattr(self, "rank", 0))
        self._egsw_pg, self._egsw_store, self._egsw_device = new_group(
            master_addr, master_port, rank, world_size, backend, timeout_s
        )
        return rank

    def egsw_close_receiver(self) -> None:
        self._egsw_pg = None
        self._egsw_store = None

    def _egsw_expected(self):
        if not hasattr(self, "_egsw_shapes"):
            self._egsw_shapes = checkpoint_shapes(self.model_config.model)
        tied = bool(getattr(self.model_config.hf_config, "tie_word_embeddings", False))
        return self._egsw_shapes, tied

    def egsw_expected_weights(self) -> dict:
        """{"names": {name: shape}, "tied": bool} from the engine's checkpoint (None: unknown)."""
        shapes, tied = self._egsw_expected()
        return {"shapes": None if shapes is None else {k: list(v) for k, v in shapes.items()}, "tied": tied}

    def egsw_engine_entropy(self, on: bool) -> str:
        """Turn the sampler's exact entropy on or off (`hook_sampler`, installed on first use).
        Returns which sampler was hooked: "v1" (fetch the values with `egsw_take_entropy`) or
        "v2" (a logprobs column); raises when this vLLM's sampler is neither."""
        hook = getattr(self, "_egsw_entropy", None)
        if hook is None:
            hook = self._egsw_entropy = hook_sampler(self.model_runner)
        hook.on = bool(on)
        return hook.kind

    def egsw_take_entropy(self) -> dict:
        """The V1 hook's record since the last take (`_V1SamplerEntropy.take`), then forgotten;
        its arrays as raw bytes (vLLM's IPC from an engine core in its own process does not
        return numpy arrays as arrays)."""
        hook = getattr(self, "_egsw_entropy", None)
        if hook is None or hook.kind != "v1":
            raise RuntimeError("egsw_take_entropy needs the V1 sampler hook (egsw_engine_entropy first)")
        return {k: v.tobytes() if isinstance(v, np.ndarray) else v for k, v in hook.take().items()}

    def egsw_reseed(self, seed: int) -> None:
        """Reset the worker's global RNG (vLLM samples from it when no per-request seed is set)."""
        from vllm.utils.torch_utils import set_random_seed

        set_random_seed(int(seed))

    def _egsw_drain(self, state) -> None:
        for _ in receive_stream(self._egsw_pg, self._egsw_device, [], state, drain=True):
            pass

    def egsw_receive(self, meta_rows: list, strict: bool = True) -> dict:
        """Receive one whole sync and load it in place. With a plan that does not cover the model
        exactly, the incoming stream is drained (the sender finishes) and ValueError is raised
        before any weight changes: the engine keeps serving the old weights."""
        if getattr(self, "_egsw_pg", None) is None:
            raise RuntimeError("egsw_receive before egsw_init_receiver")
        meta = rows_to_meta(meta_rows)
        state: dict = {"bytes": 0, "names": [], "done": False}
        t0 = time.perf_counter()
        rejected = self._egsw_rejected(meta, strict)
        if rejected:
            self._egsw_drain(state)
            raise ValueError(rejected)
        try:
            repacked = self._egsw_reload(receive_stream(self._egsw_pg, self._egsw_device, meta, state))
        finally:
            if not state["done"]:  # keep the group in step with the sender whatever happened
                self._egsw_drain(state)
        laps = state["laps"]
        laps.mark("load")  # vLLM's finalize and the tied head's re-processing
        lists = lap_lists(laps.intervals())  # on GPU: synchronizes, the engine has loaded
        return {
            "bytes": state["bytes"],
            "params": len(state["names"]),
            "probe_ids": state.get("probe_ids", []),
            "probe_logprobs": state.get("probe_logprobs", []),
            "repacked": repacked,
            "seconds": time.perf_counter() - t0,
            "header_waits": lists.get("header", []),
            "payload_waits": lists.get("payload", []),
            "end_wait_s": sum(lists.get("end", [])),
            "load_s": sum(lists.get("load", [])),
        }

    def _egsw_rejected(self, meta: Sequence[ParamMeta], strict: bool) -> str:
        """Why a plan cannot be loaded ('' when it covers the engine's model exactly)."""
        shapes, tied = self._egsw_expected()
        problems = validate_meta(meta, shapes if strict else None, tied)
        return "weight sync rejected, engine weights unchanged: " + "; ".join(problems) if problems else ""

    def _egsw_reload(self, weights: Iterator[tuple[str, torch.Tensor]]) -> list[str]:
        """vLLM's in-place layer-wise reload from (name, tensor) pairs, then the tied head."""
        quiet_benign_reload(tied_head=self._egsw_expected()[1])
        self.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        return _reprocess_aliased_modules(self.model_runner.get_model())

    def egsw_open_shared(self, path: str, nbytes: int) -> None:
        """Map the learners' shared weights file (same node only); kept mapped for every sync."""
        self._egsw_shared = map_shared(path, int(nbytes))

    def egsw_load_shared(self, meta_rows: list, strict: bool = True) -> dict:
        """Load the weights the learner ranks wrote into the shared buffer, in place; a plan that
        does not cover the model exactly raises ValueError before any weight changes."""
        buf = getattr(self, "_egsw_shared", None)
        if buf is None:
            raise RuntimeError("egsw_load_shared before egsw_open_shared")
        meta = rows_to_meta(meta_rows)
        t0 = time.perf_counter()
        rejected = self._egsw_rejected(meta, strict)
        if rejected:
            raise ValueError(rejected)
        offsets, total = shared_layout(meta)
        if total > buf.numel():
            raise ValueError(f"weight sync plan needs {total} bytes, the shared buffer has {buf.numel()}")
        t1 = time.perf_counter()
        repacked = self._egsw_reload(shared_views(buf, meta, offsets))
        t2 = time.perf_counter()
        return {
            "bytes": sum(m.nbytes for m in meta),
            "params": len(meta),
            "repacked": repacked,
            "seconds": t2 - t0,
            "load_s": t2 - t1,
        }

    def egsw_ipc_receive(
        self,
        meta_rows: list,
        addr: str,
        port: int,
        rank_offset: int,
        push: int,
        strict: bool = True,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> dict:
        """CUDA IPC transport: load one push from the staging buffer of the learner rank on this
        worker's device (rank `rank_offset` + this worker's tensor-parallel rank), bucket by bucket,
        each copied out on the device before it is acknowledged (see `IpcSender`). A plan that
        does not cover the model raises ValueError before any weight changes; the learner ranks
        then time out on their first acknowledgement, as a group sender does on a dead receiver."""
        meta = rows_to_meta(meta_rows)
        t0 = time.perf_counter()
        rejected = self._egsw_rejected(meta, strict)
        if rejected:
            raise ValueError(rejected)
        store = getattr(self, "_egsw_ipc_store", None)
        if store is None or getattr(self, "_egsw_ipc_at", None) != (addr, int(port)):
            store = self._egsw_ipc_store = ipc_store(addr, port, False, timeout_s)
            self._egsw_ipc_at = (addr, int(port))
        r = int(rank_offset) + int(getattr(self, "rank", 0))
        device = torch.device("cuda", torch.cuda.current_device())
        staging = open_ipc_handle(pickle.loads(store.get(f"h/{push}/{r}")), device)
        state: dict = {"bytes": 0, "waits": [], "copies": []}
        repacked = self._egsw_reload(ipc_stream(store, push, r, meta, staging, state))
        torch.cuda.synchronize(device)
        del staging
        probe = ipc_probe(store, push)
        secs = time.perf_counter() - t0
        return {
            "bytes": state["bytes"],
            "params": len(meta),
            "repacked": repacked,
            "seconds": secs,
            "probe_ids": probe["ids"],
            "probe_logprobs": probe["logprobs"],
            "handoff_wait_s": sum(state["waits"]),
            "copy_s": sum(state["copies"]),
            # the group transport's timeline names (split_sync): each bucket's wait for its
            # announcement, then its copy out of the rank's buffer
            "header_waits": list(state["waits"]),
            "payload_waits": list(state["copies"]),
            "load_s": secs - sum(state["waits"]) - sum(state["copies"]),
        }


def _reprocess_aliased_modules(model: torch.nn.Module) -> list[str]:
    """Re-run post-load processing of modules whose weight is shared with another module (a
    tied output head). The layer-wise reload refreshes the embedding; the head, which loaded
    nothing of its own, would otherwise keep the kernel-side copy of the old weight that its
    processing made (on CPU: the packed oneDNN / sgl matrix)."""
    by_storage: dict[int, list[tuple[str, torch.nn.Module]]] = {}
    for name, mod in model.named_modules():
        qm = getattr(mod, "quant_method", None)
        w = getattr(mod, "weight", None)
        if qm is None or not isinstance(w, torch.Tensor) or w.numel() == 0 or w.is_meta:
            continue
        by_storage.setdefault(w.data_ptr(), []).append((name, mod))
    done = []
    for group in by_storage.values():
        if len(group) < 2:
            continue
        for name, mod in group:
            mod.quant_method.process_weights_after_loading(mod)
            done.append(name)
    return done


# ============================================================================ the entropy hook


def _chunk_rows(x: torch.Tensor) -> int:
    """Rows of [rows, V] per chunk of the hook's entropy: 2^24 fp32 entries (64 MiB) a temporary,
    which vLLM's memory profile of the sampler does not include (a 152k vocabulary over 2,048
    sequences would otherwise add GBs a decode step); one chunk on small models."""
    return max(1, (1 << 24) // max(1, int(x.shape[-1])))


def append_entropy(tensors, entropy: torch.Tensor, sampled: torch.Tensor):
    """vLLM's LogprobsTensors of sampled tokens with one more column: the exact entropy, under the
    sampled token's id (a real id, so a detokenising output processor can decode it, and the
    position's entries stay in FlatLogprobs; a dict of logprobs would merge it with the sampled
    token's, so the generator always asks for flat logprobs)."""
    ids = tensors.logprob_token_ids
    lps = tensors.logprobs
    return tensors._replace(
        logprob_token_ids=torch.cat((ids, sampled.reshape(-1, 1).to(ids.dtype)), dim=1),
        logprobs=torch.cat((lps, entropy.reshape(-1, 1).to(lps.dtype)), dim=1),
    )


class _SamplerEntropy:
    """The hook's switch: `on` (set per generate call by the generator, off at start)."""

    kind = ""

    def __init__(self) -> None:
        self.on = False


class _V1SamplerEntropy(_SamplerEntropy):
    """vLLM's V1 sampler (`vllm.v1.sample.sampler.Sampler`: the CPU model runner, and CUDA with
    the V1 model runner). Its `sample` returns the sampled tokens with the processed logprobs of
    every row (log_softmax after penalties, temperature, top-k / top-p:
    logprobs_mode=processed_logprobs). With the hook on, each row's exact entropy, the sampled
    token's logprob and the token stay in the worker under the row's request id (the model
    runner's input batch orders the rows) until `take` hands them over, once per generate call.
    The requests then ask vLLM for no logprobs at all: its logprobs channel turns every position
    into Python lists, which on a small model costs more than the entropy. On a GPU the values
    stay on the device until `take`; a row the runner discards (a prompt chunk that is not the
    prompt's last) is marked and dropped."""

    kind = "v1"

    def __init__(self, runner, sampler) -> None:
        super().__init__()
        if not hasattr(runner, "discard_request_mask") or not hasattr(runner, "input_batch"):
            raise RuntimeError(
                f"rollout.entropy_estimator=exact: vLLM's model runner {type(runner).__name__!r} has no "
                "input_batch / discard_request_mask to attribute sampled rows to requests; "
                "choose a top-k estimator (rollout.entropy_estimator=lower_bound)"
            )
        self._slots: dict[str, int] = {}  # request id -> its slot, in order of first sight
        self._steps: list[tuple[np.ndarray, torch.Tensor, torch.Tensor]] = []
        sample = sampler.sample

        def hooked_sample(logits, sampling_metadata, *args, **kwargs):
            sampled, processed = sample(logits, sampling_metadata, *args, **kwargs)
            if self.on:
                self._record(runner, logits, sampled, processed)
            return sampled, processed

        sampler.sample = hooked_sample

    def _record(self, runner, logits, sampled, processed) -> None:
        n = int(sampled.shape[0])
        slots = self._slots
        row_slots = np.fromiter(
            (slots.setdefault(r, len(slots)) for r in runner.input_batch.req_ids[:n]), np.int64, n
        )
        row_slots[runner.discard_request_mask.np[:n]] = -1
        # all-greedy batches come back without processed logprobs: the greedy ones are these
        lp = processed if processed is not None else logits.log_softmax(dim=-1, dtype=torch.float32)
        tokens = sampled.reshape(-1, 1).long()
        h = entropy_from_logprobs(lp, chunk_size=_chunk_rows(lp))
        values = torch.stack((h, lp.gather(1, tokens).squeeze(1).float()), dim=1)
        self._steps.append((row_slots, values, tokens.squeeze(1)))

    def take(self) -> dict:
        """Everything recorded since the last take, and forget it: `req_ids` (slot order), per
        slot its row `counts`, and the rows grouped by slot in sampling order: `entropy`,
        `logprob` (float32) and `token_ids` (int64)."""
        steps, slots = self._steps, self._slots
        self._steps, self._slots = [], {}
        if not steps:
            return {
                "req_ids": [],
                "counts": np.zeros(0, np.int64),
                "entropy": np.zeros(0, np.float32),
                "logprob": np.zeros(0, np.float32),
                "token_ids": np.zeros(0, np.int64),
            }
        row_slots = np.concatenate([s for s, _, _ in steps])
        values = torch.cat([v for _, v, _ in steps]).cpu().numpy()
        tokens = torch.cat([t for _, _, t in steps]).cpu().numpy()
        keep = np.nonzero(row_slots >= 0)[0]
        order = keep[np.argsort(row_slots[keep], kind="stable")]
        return {
            "req_ids": list(slots),
            "counts": np.bincount(row_slots[keep], minlength=len(slots)),
            "entropy": np.ascontiguousarray(values[order, 0], dtype=np.float32),
            "logprob": np.ascontiguousarray(values[order, 1], dtype=np.float32),
            "token_ids": tokens[order].astype(np.int64),
        }


class _V2SamplerEntropy(_SamplerEntropy):
    """vLLM's V2 model runner sampler (`vllm.v1.worker.gpu.sample.sampler`, the CUDA default when
    Triton is present). Its __call__ hands the processed logits (after temperature and top-k /
    top-p, masked tokens -inf) to the module's `compute_topk_scores`, which computes the
    logprobs of the sampled token and the top-k in a kernel without materialising the
    distribution; the prompt-logprob path imports its own reference and is unaffected. The hook
    replaces that module's name: one candidate fewer, then the entropy of log_softmax of the same
    logits appended."""

    kind = "v2"

    def __init__(self, module) -> None:
        super().__init__()
        compute = module.compute_topk_scores

        def hooked(logits, num_logprobs, sampled_token_ids, *args, **kwargs):
            if not self.on or num_logprobs < 1 or kwargs.get("max_per_req_token_ids", 0):
                return compute(logits, num_logprobs, sampled_token_ids, *args, **kwargs)
            out = compute(logits, num_logprobs - 1, sampled_token_ids, *args, **kwargs)
            h = entropy_from_logits(logits, chunk_size=_chunk_rows(logits))
            return append_entropy(out, h, sampled_token_ids)

        module.compute_topk_scores = hooked


def sampler_hook_problems() -> list[str]:
    """What the entropy hooks need of the installed vLLM and do not find ([] when everything is
    there): the V1 sampler's `sample(logits, sampling_metadata)` and, where vLLM has the V2 model
    runner (the CUDA default), its sampler module's `compute_topk_scores(logits, num_logprobs,
    sampled_token_ids, ..., max_per_req_token_ids)`. Read from the sources, no engine started,
    so the preflight can say it before GPU time is spent."""
    import inspect

    from vllm.v1.sample.sampler import Sampler

    out = []
    if list(inspect.signature(Sampler.sample).parameters)[1:3] != ["logits", "sampling_metadata"]:
        out.append("vllm.v1.sample.sampler.Sampler.sample(logits, sampling_metadata, ...)")
    try:
        from vllm.v1.worker.gpu.sample import sampler as v2
    except ImportError:  # a vLLM without the V2 model runner
        return out
    params = list(inspect.signature(getattr(v2, "compute_topk_scores", lambda: None)).parameters)
    if params[:3] != ["logits", "num_logprobs", "sampled_token_ids"] or "max_per_req_token_ids" not in params:
        out.append(
            "vllm.v1.worker.gpu.sample.sampler.compute_topk_scores"
            "(logits, num_logprobs, sampled_token_ids, ..., max_per_req_token_ids)"
        )
    return out


def hook_sampler(model_runner) -> _SamplerEntropy:
    """Hook the model runner's sampler for the exact entropy (off until `.on` is set). One
    extra reduction over the vocabulary per sampled token, on the logits the sampler already
    has: on CPU and CUDA alike, and with tensor parallelism on every worker (vLLM all-gathers the
    logits, so each worker's sampler sees the whole vocabulary; the first worker's values are
    used). The sampled tokens are untouched (the entropy is read after sampling, no random
    numbers drawn). V1: the values are kept per request for `take`, whatever the request asked
    for. V2: a request for k >= 1 logprobs gets the sampled token's logprob, k - 1 top candidates,
    then the entropy; requests with logprobs=0 or none, and prompt logprobs, are served as vLLM
    would."""
    sampler = getattr(model_runner, "sampler", None)
    from vllm.v1.sample.sampler import Sampler

    if isinstance(sampler, Sampler):
        hook = getattr(sampler, "_egsw_entropy", None)
        if hook is None:
            hook = _V1SamplerEntropy(model_runner, sampler)
            sampler._egsw_entropy = hook
        return hook
    try:
        from vllm.v1.worker.gpu.sample import sampler as v2
    except ImportError:  # a vLLM without the V2 model runner
        v2 = None
    if v2 is not None and isinstance(sampler, v2.Sampler):
        hook = getattr(v2, "_egsw_entropy", None)  # one per process: it replaces a module name
        if hook is None:
            hook = _V2SamplerEntropy(v2)
            v2._egsw_entropy = hook
        return hook
    raise RuntimeError(
        f"rollout.entropy_estimator=exact: no entropy hook for vLLM's sampler {type(sampler).__name__!r} "
        "(known: vllm.v1.sample.sampler.Sampler, vllm.v1.worker.gpu.sample.sampler.Sampler); "
        "choose a top-k estimator (rollout.entropy_estimator=lower_bound)"
    )
