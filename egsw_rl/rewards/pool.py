"""RewardPool: graders in worker processes, with a hard wall-clock deadline per sample.

Each worker is a plain multiprocessing.Process with its own pipe, fed one sample at a time.
The parent waits on the pipes and process sentinels with the nearest deadline as timeout (no
threads, no signals: callable from any thread, inside or outside Ray). A worker past its deadline
is killed (SIGKILL) and replaced: its sample is `timeout`. A worker that dies (crash, OOM kill,
external SIGKILL) is replaced and its sample retried once on a fresh worker, then `error`.
The batch always returns, in input order.

Workers come from the forkserver context (spawn where there is none): the server imports and
warms the graders once, so a replacement worker is ready in milliseconds and no worker inherits
the parent's threads (Ray, gRPC) through a plain fork.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import signal
import statistics
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict
from multiprocessing.connection import Connection, wait

from egsw_rl.rewards.types import (
    CORRECT,
    ERROR,
    NO_ANSWER,
    STATUSES,
    TIMEOUT,
    WRONG,
    RewardOptions,
    RewardResult,
)

log = logging.getLogger(__name__)

_PRELOAD = "egsw_rl.rewards._preload"


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (a forkserver child's parent is the
    forkserver, which exits with the pool's owner)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort, not Linux
        pass


def _worker_main(conn: Connection, options: dict) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    from egsw_rl.rewards.grading import grade

    opts = RewardOptions.build(**options)
    grade("\\boxed{1}", "1", opts)  # warm (no-op when the forkserver already did)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        index, completion, gold, choices = msg
        result = grade(completion, gold, opts, choices)
        conn.send((index, result))


_START_LOCK = threading.Lock()


@contextlib.contextmanager
def _without_main_module():
    """Start a worker without the parent's __main__.

    spawn / forkserver children re-import the parent's main module (a script is re-run as
    __mp_main__, `python -m egsw_rl.launch` is imported again, Ray's default_worker.py too, and
    `python -` cannot start at all). Workers need nothing from it: their target lives in this
    module. While the process object is prepared, __main__ is a bare stand-in module."""
    with _START_LOCK:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if main is not None:
                sys.modules["__main__"] = main


class _Worker:
    __slots__ = ("proc", "conn", "ready", "born", "index", "deadline", "started", "tasks")

    def __init__(self, proc, conn: Connection) -> None:
        self.proc = proc
        self.conn = conn
        self.ready = False
        self.born = time.monotonic()
        self.index: int | None = None  # sample in flight
        self.deadline = 0.0
        self.started = 0.0
        self.tasks = 0


class RewardPool:
    """Score completions against gold answers in `workers` processes, `timeout_s` per sample.

    reward_options are `RewardOptions` fields (scheme, correct_score, ..., task); an unknown
    key raises ValueError here, before any process starts.
    """

    def __init__(
        self,
        workers: int = 2,
        timeout_s: float = 5.0,
        *,
        start_timeout_s: float = 120.0,
        max_tasks_per_worker: int | None = None,
        start_method: str | None = None,
        **reward_options,
    ) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"reward.workers must be an integer >= 1 (got {workers!r})")
        if not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
            raise ValueError(f"reward.timeout_s must be > 0 (got {timeout_s!r})")
        self.options = RewardOptions.build(**reward_options)
        self._options_dict = {k: v for k, v in asdict(self.options).items()}
        self.workers = workers
        self.timeout_s = float(timeout_s)
        self.start_timeout_s = float(start_timeout_s)
        self.max_tasks_per_worker = max_tasks_per_worker
        if start_method is None:
            start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        self._ctx = mp.get_context(start_method)
        if start_method == "forkserver":
            self._ctx.set_forkserver_preload([_PRELOAD])
        self._pool: list[_Worker] = []
        self._restarts = 0
        self._logged: set[str] = set()
        self._closed = False
        self._lock = threading.Lock()
        self._start_failures = 0  # consecutive
        for _ in range(workers):
            self._pool.append(self._spawn())
        self._wait_ready()

    # --- process management -------------------------------------------------------------

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=_worker_main, args=(child, self._options_dict), name="egsw-reward-worker", daemon=True
        )
        with _without_main_module():
            proc.start()
        child.close()
        return _Worker(proc, parent)

    def _replace(self, w: _Worker, why: str) -> _Worker:
        pid = w.proc.pid
        self._kill(w)
        self._restarts += 1
        new = self._spawn()
        self._pool[self._pool.index(w)] = new
        log.debug("reward worker %s replaced (%s)", pid, why)
        return new

    @staticmethod
    def _kill(w: _Worker) -> None:
        try:
            if w.proc.is_alive():
                w.proc.kill()
            w.proc.join(timeout=5)
        except Exception:  # noqa: BLE001
            pass
        try:
            w.conn.close()
        except Exception:  # noqa: BLE001
            pass
        try:
            w.proc.close()
        except Exception:  # noqa: BLE001
            pass

    def _wait_ready(self) -> None:
        """Block until every worker has started (used at construction)."""
        while True:
            starting = [w for w in self._pool if not w.ready]
            if not starting:
                return
            if self._broken():
                self.close()
                raise RuntimeError("reward workers fail to start; see the log for their exit codes")
            self._poll_starting(starting, timeout=0.5)

    def _poll_starting(self, starting: list[_Worker], timeout: float) -> None:
        if not starting:
            return
        ready = wait([w.conn for w in starting] + [w.proc.sentinel for w in starting], timeout=timeout)
        now = time.monotonic()
        for w in starting:
            if w.conn in ready:
                try:
                    msg = w.conn.recv()
                    w.ready = isinstance(msg, tuple) and msg[0] == "ready"
                except (EOFError, OSError):
                    pass
            if w.ready:
                self._start_failures = 0
                continue
            if w.proc.sentinel in ready or w.conn in ready or now - w.born > self.start_timeout_s:
                exitcode = w.proc.exitcode
                self._start_failures += 1
                self._log_once(f"reward worker failed to start (exit code {exitcode}); replacing it")
                self._replace(w, "start failed")

    def _broken(self) -> bool:
        return self._start_failures >= 3 * self.workers

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._pool]

    @property
    def restarts(self) -> int:
        return self._restarts

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for w in self._pool:
            try:
                w.conn.send(None)
            except Exception:  # noqa: BLE001
                pass
        deadline = time.monotonic() + 2
        for w in self._pool:
            try:
                w.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001
                pass
            self._kill(w)
        self._pool = []

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    # --- scoring -------------------------------------------------------------------------

    def _log_once(self, message: str) -> None:
        key = message[:160]
        if key not in self._logged and len(self._logged) < 1000:
            self._logged.add(key)
            log.warning("%s", message)

    def score(
        self,
        completions: Sequence[str],
        golds: Sequence[str],
        choices: Sequence[Sequence[str] | None] | None = None,
    ) -> tuple[list[RewardResult], dict]:
        """Grade completions[i] against golds[i]; results in input order plus metrics:
        reward/latency_s (batch wall time), reward/{correct,wrong,no_answer,timeout,error}_count,
        reward/mean_score, reward/sample_p50_s, reward/sample_p99_s, reward/worker_restarts."""
        with self._lock:  # one batch at a time (a threaded caller may call concurrently)
            return self._score(completions, golds, choices)

    def _score(self, completions, golds, choices) -> tuple[list[RewardResult], dict]:
        if self._closed:
            raise RuntimeError("RewardPool is closed")
        n = len(completions)
        if len(golds) != n:
            raise ValueError(f"{n} completions but {len(golds)} gold answers")
        if choices is not None and len(choices) != n:
            raise ValueError(f"{n} completions but {len(choices)} choice lists")
        t0 = time.monotonic()
        restarts0 = self._restarts
        for w in list(self._pool):  # a worker that died between batches (OOM killer, ...)
            if w.ready and not w.proc.is_alive():
                self._log_once(f"reward worker died while idle (exit code {w.proc.exitcode}); replacing it")
                self._replace(w, "died while idle")
        results: list[RewardResult | None] = [None] * n
        latency = [0.0] * n
        attempts = [0] * n
        pending = deque(range(n))
        fail = self.options.failure_score()

        def finish(i: int, res: RewardResult, elapsed: float) -> None:
            results[i] = res
            latency[i] = elapsed

        while pending or any(w.index is not None for w in self._pool):
            # hand samples to idle, ready workers
            for w in list(self._pool):
                if not pending:
                    break
                if not w.ready or w.index is not None:
                    continue
                i = pending.popleft()
                try:
                    w.conn.send((i, completions[i], golds[i], None if choices is None else choices[i]))
                except Exception as exc:  # noqa: BLE001 - a dead pipe, or an unpicklable input
                    if isinstance(exc, (BrokenPipeError, ConnectionError, EOFError, OSError)):
                        pending.appendleft(i)
                        self._replace(w, "send failed")
                    else:
                        msg = f"cannot send sample to worker: {type(exc).__name__}: {exc}"
                        self._log_once(f"reward sample {i}: {msg}")
                        finish(i, RewardResult(fail, ERROR, None, False, msg[:200]), 0.0)
                    continue
                w.index = i
                w.started = time.monotonic()
                w.deadline = w.started + self.timeout_s
            busy = [w for w in self._pool if w.index is not None]
            starting = [w for w in self._pool if not w.ready]
            now = time.monotonic()
            if busy:
                timeout = max(0.0, min(w.deadline for w in busy) - now)
            else:
                timeout = 0.5
            handles = [w.conn for w in busy] + [w.proc.sentinel for w in busy]
            handles += [w.conn for w in starting] + [w.proc.sentinel for w in starting]
            ready = set(wait(handles, timeout=timeout)) if handles else set()
            now = time.monotonic()
            for w in busy:
                i = w.index
                if w.conn in ready:
                    try:
                        msg = w.conn.recv()
                    except (EOFError, OSError):
                        msg = None
                    if msg is not None and msg[0] == i:
                        res = msg[1]
                        if res.status == ERROR and res.message:
                            self._log_once(f"reward sample {i}: {res.message}")
                        finish(i, res, now - w.started)
                        w.index = None
                        w.tasks += 1
                        if self.max_tasks_per_worker and w.tasks >= self.max_tasks_per_worker:
                            self._replace(w, "recycled")
                        continue
                if w.proc.sentinel in ready or w.conn in ready or not w.proc.is_alive():
                    # the worker died with the sample in flight
                    w.proc.join(timeout=1)
                    code = w.proc.exitcode
                    w.index = None
                    self._replace(w, f"died with exit code {code}")
                    attempts[i] += 1
                    if attempts[i] <= 1:
                        self._log_once(f"reward worker died (exit code {code}); retrying its sample once")
                        pending.appendleft(i)
                    else:
                        msg = f"reward worker died twice on this sample (exit code {code})"
                        self._log_once(f"reward sample {i}: {msg}")
                        finish(i, RewardResult(fail, ERROR, None, False, msg), now - w.started)
                    continue
                if now >= w.deadline:
                    w.index = None
                    self._replace(w, "timeout")
                    finish(
                        i,
                        RewardResult(fail, TIMEOUT, None, False, f"no result within {self.timeout_s:g} s"),
                        now - w.started,
                    )
            self._poll_starting([w for w in self._pool if not w.ready], timeout=0)
            if self._broken():
                while pending:
                    i = pending.popleft()
                    finish(i, RewardResult(fail, ERROR, None, False, "reward workers fail to start"), 0.0)
                self._log_once("reward workers fail to start: the rest of the batch is scored as error")

        out: list[RewardResult] = [r for r in results]  # type: ignore[misc]
        return out, self._metrics(out, latency, time.monotonic() - t0, self._restarts - restarts0)

    @staticmethod
    def _metrics(results: list[RewardResult], latency: list[float], wall: float, restarts: int) -> dict:
        counts = {s: 0 for s in STATUSES}
        for r in results:
            counts[r.status] = counts.get(r.status, 0) + 1
        lat = sorted(latency)

        def pct(p: float) -> float:
            if not lat:
                return 0.0
            return lat[min(len(lat) - 1, int(round(p * (len(lat) - 1))))]

        return {
            "reward/latency_s": wall,
            "reward/correct_count": counts[CORRECT],
            "reward/wrong_count": counts[WRONG],
            "reward/no_answer_count": counts[NO_ANSWER],
            "reward/timeout_count": counts[TIMEOUT],
            "reward/error_count": counts[ERROR],
            "reward/mean_score": statistics.fmean(r.score for r in results) if results else 0.0,
            "reward/sample_p50_s": pct(0.5),
            "reward/sample_p99_s": pct(0.99),
            "reward/worker_restarts": restarts,
        }
