"""The CUDA IPC transport's protocol without a GPU: learner ranks pack buckets into one reused
staging buffer and announce them through a real TCPStore, engine workers copy each bucket out
before acknowledging it, as vLLM's layer-wise loader holds a layer's tensors until the layer is
whole. Here the "handle" hands the staging tensor between threads of one process (what CUDA IPC
does between processes on one device); everything else is the transport's own code. Also: the
handle's plain description round-trips into torch's rebuild arguments in order."""

from __future__ import annotations

import socket
import threading

import pytest
import torch

from egsw_rl.sync import ipc, plan


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(50, 16), torch.nn.Linear(16, 32), torch.nn.Linear(32, 50))


def test_buckets_reach_every_receiver_intact_through_a_reused_buffer_push_after_push():
    m = model()
    meta = plan.param_meta(m)
    buckets = plan.plan_buckets(meta, 2200)  # several buckets, so the buffer is reused
    assert len(buckets) >= 3
    port, ranks, pushes = free_port(), 2, 2
    shared: dict[int, torch.Tensor] = {}

    def share(t):  # the stand-in for a CUDA IPC handle: the same memory, another thread
        shared[id(t)] = t
        return id(t)

    senders = [ipc.IpcSender("127.0.0.1", port, r, timeout_s=60, share=share) for r in range(ranks)]
    got: dict[tuple, list] = {}
    errors: list = []

    def receive(rank, push):
        try:
            store = ipc.ipc_store("127.0.0.1", port, False, 60)
            import pickle

            staging = shared[pickle.loads(store.get(f"h/{push}/{rank}"))]
            state: dict = {}
            # hold every view until the end, as the loader does with a layer's tensors
            got[rank, push] = list(ipc.ipc_stream(store, push, rank, meta, staging, state))
            got[rank, push, "probe"] = ipc.ipc_probe(store, push)
            got[rank, push, "bytes"] = state["bytes"]
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    for push in range(pushes):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(1.0)  # new weights every push
        want = {plan.checkpoint_name(n): p.detach().clone() for n, p in m.named_parameters()}
        threads = [threading.Thread(target=receive, args=(r, push)) for r in range(ranks)]

        def send(s, push=push):
            got["sent", s.rank, push] = s.send(m, buckets, False, torch.device("cpu"))

        threads += [threading.Thread(target=send, args=(s,)) for s in senders]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        for r in range(ranks):
            names = [n for n, _ in got[r, push]]
            assert names == [x.name for x in meta]
            for name, t in got[r, push]:
                assert torch.equal(t, want[name]), (r, push, name)
            assert got[r, push, "probe"] == {"ids": [], "logprobs": []}
            assert (
                got[r, push, "bytes"] == got["sent", r, push]["bytes"] == sum(x.padded_nbytes for x in meta)
            )
    # every per-bucket key was consumed: only the last push's handles and probe remain
    store = senders[0].store
    for key in [
        f"{kind}/{push}/{k}/{r}"
        for kind in "ba"
        for push in range(pushes)
        for k in range(len(buckets) + 1)
        for r in range(ranks)
    ] + ["h/0/0", "h/0/1", "p/0"]:
        assert not store.check([key]), key
    assert store.check(["p/1"])


def test_the_handle_is_torchs_own_description_in_rebuild_order(monkeypatch):
    import torch.multiprocessing.reductions as red

    fields = [
        "cls",
        (4, 2),
        (2, 1),
        3,
        "scls",
        torch.bfloat16,
        1,
        b"H",
        4096,
        256,
        False,
        b"R",
        8,
        b"E",
        True,
    ]
    monkeypatch.setattr(red, "reduce_tensor", lambda t: (red.rebuild_cuda_tensor, tuple(fields)))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: type("P", (), {"uuid": "GPU-1"})())
    h = ipc.ipc_handle(torch.empty(0))
    seen = {}
    monkeypatch.setattr(red, "rebuild_cuda_tensor", lambda *a: seen.setdefault("args", a))
    ipc.open_ipc_handle(h, torch.device("cuda", 5))
    a = seen["args"]
    assert a[0] is torch.Tensor and a[4] is torch.UntypedStorage
    assert tuple(a[1]) == (4, 2) and tuple(a[2]) == (2, 1) and a[3] == 3 and a[5] is torch.bfloat16
    assert a[6] == 5  # opened on the receiver's own index of the same GPU
    assert a[7:] == (b"H", 4096, 256, False, b"R", 8, b"E", True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: type("P", (), {"uuid": "GPU-2"})())
    with pytest.raises(ValueError, match="must share its learner rank's device"):
        ipc.open_ipc_handle(h, torch.device("cuda", 0))
