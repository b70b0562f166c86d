"""Weight pushes, learner ranks -> vLLM (`--only sync`): every transport's push timed from the
first byte sent until the engine has loaded and bumped its version, split into gather, transfer
and load; the cost of one bucket and of one tensor in vLLM's layer-wise load; this machine's
memcpy, a bare loopback gloo broadcast and the CUDA IPC transport's handshake as baselines."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from egsw_rl.bench.report import fmt, format_table, human_bytes, measured, median
from egsw_rl.bench.runner import MODELS, model_dir

if TYPE_CHECKING:
    from egsw_rl.bench.runner import Bench


def sync_summary(
    rows: Sequence[dict], warmup: int, memcpy_bytes_per_s: float, gloo_bytes_per_s: float | None = None
) -> dict:
    """One push, from the trainer's per-step metrics: bytes, seconds (whole push: ZeRO-3 gathers,
    broadcast, vLLM in-place reload and repack, probe check), bytes/s, and the ratio to memcpy
    (and to a bare gloo broadcast when measured). Also the sender's and the loader's share."""
    rows = measured(rows, warmup)
    nbytes = median(r.get("sync/bytes", float("nan")) for r in rows)
    secs = median(r["timing/sync_s"] for r in rows)
    bps = nbytes / secs if secs > 0 else float("nan")
    out = {
        "bytes": nbytes,
        "sync_s": secs,
        "bytes_per_s": bps,
        "send_s": median(r.get("sync/send_s", float("nan")) for r in rows),
        "recv_s": median(r.get("sync/recv_s", float("nan")) for r in rows),
        "load_s": median(r.get("sync/load_s", float("nan")) for r in rows),
        "memcpy_bytes_per_s": memcpy_bytes_per_s,
        "ratio_to_memcpy": bps / memcpy_bytes_per_s if memcpy_bytes_per_s else float("nan"),
    }
    if gloo_bytes_per_s:
        out["gloo_bytes_per_s"] = gloo_bytes_per_s
        out["ratio_to_gloo"] = bps / gloo_bytes_per_s
    return out


SYNC_SPLIT = ("total_s", "gather_s", "transfer_s", "load_s", "other_s", "header_s", "buckets")


def sync_push_summary(pushes: Sequence[dict]) -> dict:
    """Medians of the split of timed pushes (`WeightSync.push`' sync/* keys)."""
    if not pushes:
        raise ValueError("sync_push_summary needs at least one push")
    return {k: median(p.get(f"sync/{k}", float("nan")) for p in pushes) for k in SYNC_SPLIT}


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> dict:
    """Least-squares y = fixed + slope * x (e.g. a sync's transfer seconds against its number of
    buckets: the slope is the cost of one bucket, the fixed part what every sync pays)."""
    n = len(xs)
    if n < 2 or len(set(float(x) for x in xs)) < 2:
        raise ValueError("fit_line needs two distinct x values")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return {"slope": slope, "fixed": my - slope * mx}


def fit_load(tensors: Sequence[float], nbytes: Sequence[float], seconds: Sequence[float]) -> dict:
    """Least squares of an engine's load time, seconds = per_tensor_s * tensors + per_byte_s *
    bytes, over models of different sizes: the per-tensor part is vLLM's layer-wise bookkeeping
    (buffering each checkpoint tensor, materializing and finalizing its layer), which is host
    work on any device; the per-byte part is copying and, on CPU, repacking."""
    if len(seconds) < 2:
        raise ValueError("fit_load needs two models")
    a11 = sum(t * t for t in tensors)
    a12 = sum(t * b for t, b in zip(tensors, nbytes))
    a22 = sum(b * b for b in nbytes)
    y1 = sum(t * s for t, s in zip(tensors, seconds))
    y2 = sum(b * s for b, s in zip(nbytes, seconds))
    det = a11 * a22 - a12 * a12
    if abs(det) <= 1e-12 * a11 * a22:
        raise ValueError("fit_load needs models whose tensor counts and sizes are not proportional")
    return {"per_tensor_s": (y1 * a22 - y2 * a12) / det, "per_byte_s": (a11 * y2 - a12 * y1) / det}


def ipc_handshake_cost(buckets: Sequence[int] = (4, 200), pushes: int = 5) -> dict:
    """Seconds a bucket adds to a CUDA IPC push beyond its bytes: the transport's own protocol
    (`sync.ipc.IpcSender`, `ipc_stream`) between two threads over a loopback TCPStore, tiny
    buckets, the slope of the median push time over the bucket count."""
    import pickle
    import socket
    import threading

    import torch

    from egsw_rl.sync import ipc, plan

    medians = []
    for n in buckets:
        module = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(int(n))])
        meta = plan.param_meta(module)
        bplan = plan.plan_buckets(meta, 400)  # one layer's weight and bias a bucket
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        shared: dict = {}

        def share(t):  # the stand-in for a CUDA IPC handle: the same tensor, another thread
            shared[id(t)] = t  # noqa: B023 - called within its iteration
            return id(t)

        sender = ipc.IpcSender("127.0.0.1", port, 0, timeout_s=120, share=share)
        store = ipc.ipc_store("127.0.0.1", port, False, 120)
        times = []
        for push in range(pushes):

            def receive(push=push):
                staging = shared[pickle.loads(store.get(f"h/{push}/0"))]  # noqa: B023 - called within its iteration
                for _ in ipc.ipc_stream(store, push, 0, meta, staging, {}):  # noqa: B023 - called within its iteration
                    pass
                ipc.ipc_probe(store, push)  # noqa: B023 - called within its iteration

            t = threading.Thread(target=receive)
            t0 = time.perf_counter()
            t.start()
            sender.send(module, bplan, False, torch.device("cpu"))
            t.join()
            times.append(time.perf_counter() - t0)
        medians.append((len(bplan), median(times)))
    (n0, t0), (n1, t1) = medians[0], medians[-1]
    return {"per_bucket_s": (t1 - t0) / (n1 - n0), "pushes": medians}


def memcpy_bandwidth(nbytes: int = 512 * 2**20, repeats: int = 5) -> float:
    """Bytes/s of the best of `repeats` `dst.copy_(src)` of `nbytes` (uint8, CPU)."""
    import torch

    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.empty_like(src)
    dst.copy_(src)  # fault the pages in
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def gloo_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 3) -> float:
    """Bytes/s of the best of `repeats` broadcasts of `nbytes` between two threads of this process
    over a loopback gloo group (the weight-sync transport without anything around it)."""
    import socket
    import threading

    import torch

    from egsw_rl.sync.group import bcast, new_group

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    groups = {}

    def join(rank):
        groups[rank] = new_group("127.0.0.1", port, rank, 2, "gloo", 120)[0]

    t = threading.Thread(target=join, args=(1,))
    t.start()
    join(0)
    t.join()
    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = threading.Thread(target=bcast, args=(groups[1], dst))
        t0 = time.perf_counter()
        t.start()
        bcast(groups[0], src)
        t.join()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


# bucket sizes the group transport is timed at, by model: from about one tensor a bucket to the
# preset's 256 MiB, so the per-bucket cost is the slope of the transfer time over the count
SYNC_BUCKETS = {"tiny": [16 * 2**10, 128 * 2**10, 256 * 2**20], "smollm2": [2**20, 16 * 2**20, 256 * 2**20]}


def replan_buckets(learner, bucket_bytes: int) -> int:
    """Inside a `Learner` rank (`actor.__ray_call__`): cut its sync plan into buckets of
    `bucket_bytes` for the pushes that follow; the number of buckets."""
    from egsw_rl.sync.plan import plan_buckets

    learner._sync_buckets = plan_buckets(learner._sync_meta, int(bucket_bytes))
    return len(learner._sync_buckets)


def sync_rig(
    model: str,
    *,
    pushes: int,
    warmup: int = 1,
    bucket_bytes: Sequence[int] | None = None,
    echo: Callable[[str], None] = print,
) -> dict:
    """Weight pushes alone (needs Ray up): two ZeRO-3 learner ranks over gloo (one core each)
    and one vLLM CPU engine on `model`, `warmup` + `pushes` pushes over shared memory and then
    over the process group at each bucket size. Every push is the trainer's own
    (`WeightSync.push`, without the probe), timed from the first byte sent until the
    engine has loaded and bumped its version, and split into gather, transfer and load."""
    import ray

    from egsw_rl.actors.generator import GeneratorGroup
    from egsw_rl.actors.learner import LearnerGroup
    from egsw_rl.config import AlgoConfig, LearnerConfig, ModelConfig, RolloutConfig
    from egsw_rl.sync import WeightSync

    path = model_dir(model)
    sizes = list(bucket_bytes or SYNC_BUCKETS.get(model, SYNC_BUCKETS["smollm2"]))
    group = LearnerGroup(
        ModelConfig(path=path),
        LearnerConfig(num_ranks=2, cpus_per_rank=1.0),
        AlgoConfig(beta=0.0),
        "cpu",
        1.0,
    )
    gens = None
    out: dict = {"model": model, "runs": []}
    try:
        gens = GeneratorGroup(
            ModelConfig(path=path),
            RolloutConfig(num_generators=1, max_model_len=512, cpu_kvcache_gib=0.25),
            "cpu",
        )
        for transport, size in [("shm", None)] + [("group", b) for b in sizes]:
            if size is None or size == sizes[0]:
                sync = WeightSync(group, gens, transport=transport)
                check = sync.push(probe=True)  # the consistency check, untimed
                out.setdefault("logprob_diff_max", {})[transport] = check.get("sync/logprob_diff_max")
                out["tensors"] = len(sync.meta)
            if size is not None:
                n = ray.get([a.__ray_call__.remote(replan_buckets, size) for a in group.actors])[0]
            load0 = os.getloadavg()[0]
            rows = [sync.push(probe=False) for _ in range(warmup + pushes)][warmup:]
            run = {
                "transport": transport,
                "bucket_bytes": size,
                **sync_push_summary(rows),
                "bytes": median(r.get("sync/bytes", float("nan")) for r in rows),
                "load_avg": [load0, os.getloadavg()[0]],
                "pushes": rows,
            }
            if size is not None:
                run["planned_buckets"] = n
            echo(
                f"[bench] sync {model} {transport} {size or ''}: total {run['total_s']:.3f} s, "
                f"gather {run['gather_s']:.3f}, transfer {run['transfer_s']:.3f}, load {run['load_s']:.3f}, "
                f"buckets {run['buckets']}, load avg {load0:.1f}"
            )
            out["runs"].append(run)
        group_runs = [r for r in out["runs"] if r["transport"] == "group"]
        if len({r["buckets"] for r in group_runs}) >= 2:
            for key in ("transfer_s", "total_s"):
                f = fit_line([r["buckets"] for r in group_runs], [r[key] for r in group_runs])
                out[f"per_bucket_{key}"] = f["slope"]
        return out
    finally:
        if gens is not None:
            gens.shutdown()
        group.shutdown()


def sync_bench(bench: Bench) -> dict:
    """`sync_rig` on each preset's model, next to memcpy and a bare gloo broadcast; the
    per-bucket and per-tensor fits; the trainer's own pushes when `steps` ran in this bench."""
    bench.ray()
    out: dict = {"memcpy_bytes_per_s": memcpy_bandwidth()}
    try:
        out["gloo_bytes_per_s"] = gloo_bandwidth()
    except Exception as e:  # noqa: BLE001 - the baseline is optional
        bench.echo(f"[bench] gloo baseline failed: {e}")
    warmup, pushes = (1, 3) if bench.quick else (1, 5)
    presets: dict = {}
    rows = []
    for preset in bench.presets:
        model = MODELS.get(preset, preset)
        r = sync_rig(model, pushes=pushes, warmup=warmup, echo=bench.echo)
        trainer = bench.trained(preset)  # the trainer's own pushes, when `steps` ran
        if trainer is not None:
            r["trainer"] = sync_summary(
                trainer["rows"], trainer["warmup"], out["memcpy_bytes_per_s"], out.get("gloo_bytes_per_s")
            )
        presets[preset] = r
        for run in r["runs"]:
            rows.append(
                [
                    preset,
                    run["transport"],
                    human_bytes(run["bytes"]),
                    "" if run["bucket_bytes"] is None else human_bytes(run["bucket_bytes"]),
                    run["buckets"],
                    run["total_s"],
                    run["gather_s"],
                    run["transfer_s"],
                    run["load_s"],
                    run["other_s"],
                    run["bytes"] / run["total_s"] / 1e6,
                    run["bytes"] / run["total_s"] / out["memcpy_bytes_per_s"],
                    "{:.1f}-{:.1f}".format(*tuple(run["load_avg"])),
                ]
            )
    fits = {
        p: {k: r.get(k) for k in ("tensors", "per_bucket_transfer_s", "per_bucket_total_s")}
        for p, r in presets.items()
    }
    shm = {p: next(x for x in r["runs"] if x["transport"] == "shm") for p, r in presets.items()}
    if len(shm) >= 2:
        try:
            out["load_fit"] = fit_load(
                [presets[p]["tensors"] for p in shm],
                [shm[p]["bytes"] for p in shm],
                [shm[p]["load_s"] for p in shm],
            )
        except ValueError as e:
            bench.echo(f"[bench] load fit: {e}")
    out["fits"] = fits
    table = format_table(
        "Weight sync (learner ranks -> vLLM, first byte sent to every engine loaded and versioned)",
        [
            "preset",
            "transport",
            "bytes",
            "bucket",
            "buckets",
            "total s",
            "gather s",
            "transfer s",
            "load s",
            "other s",
            "MB/s",
            "of memcpy",
            "load avg",
        ],
        rows,
    )
    extra = [
        f"per bucket ({p}, group): transfer {fmt(f['per_bucket_transfer_s'])} s, "
        f"total {fmt(f['per_bucket_total_s'])} s; {f['tensors']} tensors"
        for p, f in fits.items()
    ]
    if "load_fit" in out:
        lf = out["load_fit"]
        extra.append(
            f"engine load fit: {lf['per_tensor_s'] * 1e3:.3g} ms a tensor + "
            f"{lf['per_byte_s'] * 1e9:.3g} s a GB"
        )
    return {"table": table + "\n" + "\n".join(extra) + "\n", "presets": presets, **out}
