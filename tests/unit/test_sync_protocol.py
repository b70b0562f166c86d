"""weight_sync without vLLM: metadata, bucket plans, plan validation, and the wire protocol
between a sender and a stand-in worker over a real gloo group (two threads)."""

from __future__ import annotations

import socket
import threading
from types import SimpleNamespace

import pytest
import torch

from egsw_rl.sync import group, plan, shm, vllm_worker


def _meta(*sizes, dtype="float32"):
    return [plan.ParamMeta(f"p{i}", (n,), dtype) for i, n in enumerate(sizes)]


def test_param_meta_nbytes_and_alignment():
    m = plan.ParamMeta("w", (3, 5), "bfloat16")
    assert m.numel == 15 and m.nbytes == 30 and m.padded_nbytes == 32


def test_plan_buckets_keeps_order_and_respects_the_size():
    meta = _meta(10, 100, 7, 300, 5, 5, 1000, 2)
    cap = 512  # bytes
    buckets = plan.plan_buckets(meta, cap)
    assert [m for b in buckets for m in b] == meta
    for b in buckets:
        size = sum(m.padded_nbytes for m in b)
        assert size <= cap or len(b) == 1
    assert [m.name for m in buckets[[i for i, b in enumerate(buckets) if meta[6] in b][0]]] == ["p6"]
    assert len(plan.plan_buckets(meta, 1 << 30)) == 1
    with pytest.raises(ValueError):
        plan.plan_buckets(meta, 0)


def test_param_meta_uses_the_full_zero3_shape():
    """A ZeRO-3 partitioned parameter is an empty local tensor with ds_shape / ds_numel: the plan
    must use those, or every bucket would be sized 0."""
    lin = torch.nn.Linear(64, 32)
    part = torch.nn.Parameter(torch.empty(0))
    part.ds_shape, part.ds_numel, part.ds_id = torch.Size([32, 64]), 32 * 64, 0
    lin.weight = part
    meta = plan.param_meta(lin)
    assert meta[0] == plan.ParamMeta("weight", (32, 64), "float32")
    assert meta[0].nbytes == 32 * 64 * 4
    assert len(plan.plan_buckets(meta, 4096)) == 2


def test_param_meta_names_and_tied_embedding(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    meta = plan.param_meta(model)
    names = [m.name for m in meta]
    assert model.config.tie_word_embeddings
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    assert len(names) == len(set(names)) == len(list(model.parameters()))
    shapes = plan.checkpoint_shapes(str(tiny_model_dir))
    assert plan.validate_meta(meta, shapes, tied=True) == []


def test_checkpoint_name_strips_wrappers():
    assert (
        plan.checkpoint_name("module.model.layers.0.mlp.up_proj.weight")
        == "model.layers.0.mlp.up_proj.weight"
    )
    assert plan.checkpoint_name("_orig_mod.module.lm_head.weight") == "lm_head.weight"
    assert plan.checkpoint_name("model._orig_mod.norm.weight") == "model.norm.weight"


def test_validate_meta_names_every_problem():
    expected = {"a.weight": (4, 4), "b.weight": (4,), "lm_head.weight": (8, 4), "x.rotary_emb.inv_freq": (2,)}
    good = [plan.ParamMeta("a.weight", (4, 4), "float32"), plan.ParamMeta("b.weight", (4,), "float32")]
    assert plan.validate_meta(good, expected, tied=True) == []  # head tied, inv_freq skipped by vLLM
    assert any("lm_head.weight" in p for p in plan.validate_meta(good, expected, tied=False))
    missing = plan.validate_meta(good[:1], expected, tied=True)
    assert len(missing) == 1 and "missing parameter" in missing[0] and "b.weight" in missing[0]
    unknown = plan.validate_meta(good + [plan.ParamMeta("c.weight", (1,), "float32")], expected, tied=True)
    assert any("unknown parameter name" in p and "c.weight" in p for p in unknown)
    shape = plan.validate_meta([good[0], plan.ParamMeta("b.weight", (5,), "float32")], expected, tied=True)
    assert any("b.weight: shape (5,)" in p for p in shape)
    dup = plan.validate_meta(good + good[:1], expected, tied=True)
    assert any("duplicate" in p for p in dup)
    assert plan.validate_meta(good + [plan.ParamMeta("zzz", (1,), "float32")], None, tied=True) == []


def test_probe_ids_are_fixed_and_in_range():
    ids = plan.probe_token_ids(512)
    assert ids == plan.probe_token_ids(512) and len(ids) == plan.PROBE_LEN
    assert min(ids) >= 3 and max(ids) < 256
    assert max(plan.probe_token_ids(100)) < 100
    assert len(set(ids)) > 10


# ------------------------------------------------------------------ the protocol over gloo


class FakeWorker(vllm_worker.WorkerExtension):
    """What vLLM's worker provides to the extension: rank, model_config, reload_weights and a
    model runner. reload_weights copies what the stream yields."""

    def __init__(self, model_dir, tied=True):
        self.rank = 0
        self.model_config = SimpleNamespace(
            model=str(model_dir), hf_config=SimpleNamespace(tie_word_embeddings=tied)
        )
        self.model_runner = SimpleNamespace(get_model=lambda: torch.nn.Linear(2, 2))
        self.loaded = {}
        self.reloads = 0

    def reload_weights(self, weights_iterator, is_checkpoint_format=True):
        assert is_checkpoint_format
        self.reloads += 1
        for name, t in weights_iterator:
            self.loaded[name] = t.clone()


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_SENDERS: list = []  # the last pair's sender, for tests that reuse its group


def _run_pair(model, send_meta, recv_meta, worker, bucket_bytes=64 * 1024):
    """Sender in a thread, receiver here; returns (sender result, receiver result or exception)."""
    port = _port()
    sender = group.WeightSender("127.0.0.1", port, 2, "gloo", timeout_s=60)
    _SENDERS.append(sender)
    out = {}

    def send_side():
        sender.connect()
        out["sent"] = sender.send(model, plan.plan_buckets(send_meta, bucket_bytes), is_sender=True)

    t = threading.Thread(target=send_side)
    t.start()
    worker.egsw_init_receiver("127.0.0.1", port, 1, 2, "gloo", 60)
    try:
        res = worker.egsw_receive(plan.meta_to_rows(recv_meta))
    except Exception as e:  # noqa: BLE001 - returned for the test to inspect
        res = e
    t.join(timeout=60)
    assert not t.is_alive(), "sender still blocked: the receiver fell out of step"
    return out["sent"], res


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    m.eval()
    return m


def test_roundtrip_delivers_every_tensor_bit_exact(tiny_lm, tiny_model_dir):
    meta = plan.param_meta(tiny_lm)
    worker = FakeWorker(tiny_model_dir)
    sent, res = _run_pair(tiny_lm, meta, meta, worker)
    assert not isinstance(res, Exception), res
    assert worker.reloads == 1  # one reload call for the whole sync, fed bucket by bucket
    params = dict(tiny_lm.named_parameters())
    assert set(worker.loaded) == set(params)
    for name, p in params.items():
        assert torch.equal(worker.loaded[name], p.detach()), name
    assert res["bytes"] == sent["bytes"] == sum(m.padded_nbytes for m in meta)
    assert res["params"] == len(meta)
    assert len(plan.plan_buckets(meta, 64 * 1024)) > 3
    # the probe: ids and the sender's logprobs arrive intact
    assert res["probe_ids"] == plan.probe_token_ids(tiny_lm.config.vocab_size)
    ref = plan.probe_logprobs(tiny_lm, res["probe_ids"])
    assert torch.allclose(torch.tensor(res["probe_logprobs"]), ref, atol=0, rtol=0)


def test_bf16_parameters_travel_in_their_dtype(tiny_model_dir):
    mod = torch.nn.Sequential(torch.nn.Linear(8, 3), torch.nn.Linear(3, 5)).to(torch.bfloat16)
    meta = plan.param_meta(mod)
    assert {m.dtype for m in meta} == {"bfloat16"}
    sender = group.WeightSender("127.0.0.1", _port(), 2, "gloo", timeout_s=60)
    worker = FakeWorker(tiny_model_dir)
    worker._egsw_shapes = None  # no checkpoint for this toy module: skip the name check
    port = sender.master_port
    out = {}

    def send_side():
        sender.connect()
        out["sent"] = sender.send(mod, plan.plan_buckets(meta, 16), is_sender=True, probe=False)

    t = threading.Thread(target=send_side)
    t.start()
    worker.egsw_init_receiver("127.0.0.1", port, 1, 2, "gloo", 60)
    res = worker.egsw_receive(plan.meta_to_rows(meta))
    t.join(timeout=60)
    assert res["probe_ids"] == [] and res["params"] == 4
    for n, p in mod.named_parameters():
        assert worker.loaded[n].dtype == torch.bfloat16 and torch.equal(worker.loaded[n], p.detach())


def test_receiver_rejects_a_bad_plan_without_loading_and_stays_in_step(tiny_lm, tiny_model_dir):
    meta = plan.param_meta(tiny_lm)
    short = [m for m in meta if m.name != "model.norm.weight"]
    worker = FakeWorker(tiny_model_dir)
    sent, res = _run_pair(tiny_lm, short, short, worker)
    assert isinstance(res, ValueError)
    assert "model.norm.weight" in str(res) and "weights unchanged" in str(res)
    assert worker.reloads == 0 and worker.loaded == {}
    assert sent["bytes"] > 0  # the sender finished: the stream was drained


class FailingWorker(FakeWorker):
    """A loader that fails part-way through the stream (e.g. a weight_loader error)."""

    def reload_weights(self, weights_iterator, is_checkpoint_format=True):
        for i, (_name, _t) in enumerate(weights_iterator):
            if i == 3:
                raise RuntimeError("loader exploded")


def test_a_loader_error_mid_stream_does_not_hang_the_sender(tiny_lm, tiny_model_dir):
    meta = plan.param_meta(tiny_lm)
    worker = FailingWorker(tiny_model_dir)
    sent, res = _run_pair(tiny_lm, meta, meta, worker, bucket_bytes=16 * 1024)
    assert isinstance(res, RuntimeError) and "loader exploded" in str(res)
    assert sent["bytes"] == sum(m.padded_nbytes for m in meta)
    # and the group is still usable: a second, good sync over the same group
    good = FakeWorker(tiny_model_dir)
    good._egsw_pg, good._egsw_device = worker._egsw_pg, worker._egsw_device
    out = {}
    t = threading.Thread(
        target=lambda: out.update(
            sent=_SENDERS[-1].send(tiny_lm, plan.plan_buckets(meta, 16 * 1024), is_sender=True)
        )
    )
    t.start()
    res2 = good.egsw_receive(plan.meta_to_rows(meta))
    t.join(timeout=60)
    assert res2["params"] == len(meta) and set(good.loaded) == {m.name for m in meta}


# ---------------------------------------------------------------------------- shared memory


class _Stack(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(7, 5)  # 35 + 5 elements: uneven over 2 and 3 ranks
        self.b = torch.nn.Linear(5, 3, bias=False)
        self.norm = torch.nn.Parameter(torch.randn(4))


def _as_zero3_rank(full: torch.nn.Module, rank: int, world: int, keep_whole=("norm",)) -> torch.nn.Module:
    """A copy of `full` laid out as ZeRO-3 rank `rank` holds it: every parameter an empty tensor
    with ds_shape / ds_numel and ds_tensor = this rank's flat slice, zero-padded to ceil(n/world)
    (names in `keep_whole` stay ordinary, unpartitioned parameters)."""
    import copy

    mod = copy.deepcopy(full)
    for name, p in list(mod.named_parameters()):
        if name in keep_whole:
            continue
        flat = p.detach().reshape(-1)
        size = -(-flat.numel() // world)
        part = torch.zeros(size)
        lo, hi = rank * size, min((rank + 1) * size, flat.numel())
        if hi > lo:
            part[: hi - lo] = flat[lo:hi]
        q = torch.nn.Parameter(torch.empty(0))
        q.ds_shape, q.ds_numel, q.ds_id, q.ds_tensor = p.shape, p.numel(), 0, part
        owner, _, leaf = name.rpartition(".")
        setattr(mod.get_submodule(owner) if owner else mod, leaf, q)
    return mod


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_rank_writing_its_shards_reassembles_the_full_tensors(tmp_path, world):
    torch.manual_seed(world)
    full = _Stack()
    meta = plan.param_meta(full)
    offsets, nbytes = shm.shared_layout(meta)
    assert nbytes == sum(m.padded_nbytes for m in meta) and all(o % plan.ALIGN == 0 for o in offsets)
    buf = shm.map_shared(str(tmp_path / "w"), nbytes, create=True)
    buf.fill_(0xFF)  # anything not written shows up as NaN
    written = sum(
        shm.write_shards(_as_zero3_rank(full, r, world), meta, offsets, buf, r) for r in range(world)
    )
    assert written == sum(m.nbytes for m in meta)
    got = dict(shm.shared_views(buf, meta, offsets))
    for name, p in full.named_parameters():
        torch.testing.assert_close(got[name], p.detach(), rtol=0, atol=0)


def test_write_shards_refuses_a_plan_that_does_not_match(tmp_path):
    full = _Stack()
    meta = plan.param_meta(full)
    offsets, nbytes = shm.shared_layout(meta)
    buf = shm.map_shared(str(tmp_path / "w"), nbytes, create=True)
    with pytest.raises(KeyError):
        shm.write_shards(full, [plan.ParamMeta("nope", (3,), "float32")], [0], buf, 0)
    bad = [plan.ParamMeta(m.name, m.shape, "bfloat16") if m.name == "norm" else m for m in meta]
    with pytest.raises(ValueError, match="norm"):
        shm.write_shards(full, bad, offsets, buf, 0)


def _child_writes(path, nbytes):
    buf = shm.map_shared(path, nbytes)
    buf[:4] = torch.tensor([1, 2, 3, 4], dtype=torch.uint8)


def test_the_shared_buffer_is_one_memory_for_every_process(tmp_path):
    import multiprocessing as mp

    path = str(tmp_path / "w")
    buf = shm.map_shared(path, 64, create=True)
    proc = mp.get_context("spawn").Process(target=_child_writes, args=(path, 64))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    assert buf[:4].tolist() == [1, 2, 3, 4]
    with pytest.raises(FileExistsError):  # never two runs in one buffer
        shm.map_shared(path, 64, create=True)


# ------------------------------------------------------------------ tensor-parallel engines


def test_every_tensor_parallel_worker_of_every_engine_receives_every_bucket(tiny_lm, tiny_model_dir):
    """Two engines of tensor_parallel_size 2: four vLLM workers, ranks 1-4 of one group, each
    loading the whole sync from the sender's broadcasts."""
    engines, tp = 2, 2
    offsets = group.receiver_rank_offsets(engines, tp)
    assert offsets == [1, 3]
    ranks = sorted(o + r for o in offsets for r in range(tp))
    assert ranks == list(range(1, 1 + engines * tp))  # each rank once, none for the sender
    meta = plan.param_meta(tiny_lm)
    world = 1 + engines * tp
    port = _port()
    sender = group.WeightSender("127.0.0.1", port, world, "gloo", timeout_s=60)
    workers = []
    for o in offsets:
        for r in range(tp):
            w = FakeWorker(tiny_model_dir)
            w.rank = r  # vLLM's worker rank within its engine
            workers.append((o, w))
    results: dict = {}

    def receive(i, offset, worker):
        results[("rank", i)] = worker.egsw_init_receiver("127.0.0.1", port, offset, world, "gloo", 60)
        results[i] = worker.egsw_receive(plan.meta_to_rows(meta))

    threads = [threading.Thread(target=receive, args=(i, o, w)) for i, (o, w) in enumerate(workers)]
    for t in threads:
        t.start()
    sender.connect()
    sender.send(tiny_lm, plan.plan_buckets(meta, 64 * 1024), is_sender=True)
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert sorted(results[("rank", i)] for i in range(len(workers))) == ranks
    params = dict(tiny_lm.named_parameters())
    for i, (_, w) in enumerate(workers):
        assert results[i]["params"] == len(meta)
        assert set(w.loaded) == set(params)
        assert all(torch.equal(w.loaded[n], p.detach()) for n, p in params.items())
    sender.close()
