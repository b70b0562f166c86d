"""End to end through the user's entry point: `python -m egsw_rl.launch` with real Ray, vLLM,
DeepSpeed ZeRO-3 (2 ranks, gloo), math-verify, Hydra and wandb (offline)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from egsw_rl.data import PromptSampler, arithmetic_problems

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
REQUIRED_KEYS = [
    "step",
    "reward/mean",
    "reward/accuracy",
    "response_length/mean",
    "entropy/mean",
    "egsw/weight_max",
    "egsw/ess_frac",
    "kl/mean",
    "loss",
    "grad_norm",
    "rollout/logprob_diff_max",
    "timing/generate_s",
    "timing/reward_s",
    "timing/logprobs_s",
    "timing/update_s",
    "timing/sync_s",
    "timing/step_s",
    "reward/correct_count",
    "reward/wrong_count",
    "reward/no_answer_count",
    "reward/timeout_count",
    "reward/error_count",
]
# Small and fast: 4 prompts x G=4, short completions. beta > 0 so the reference model and the
# logprob pass run too (kl/mean and timing/logprobs_s are real numbers).
FAST = [
    "data.batch_size=4",
    "rollout.n=4",
    "rollout.max_tokens=16",
    "algo.beta=0.01",
    "logger.progress_bar=false",
]


def env():
    e = dict(os.environ)
    e.update(WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    e.pop("RAY_ADDRESS", None)
    e.pop("EGSW_RL_DATA", None)  # the data sets shipped in the package
    return e


def launch(args, timeout=900, **kw):
    return subprocess.run(
        [sys.executable, "-m", "egsw_rl.launch", *args],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_three_steps_write_every_metric_plots_and_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    # two epochs over each batch: the old-policy logprob pass runs (and is timed) too
    p = launch(
        [
            "conf=tiny_cpu",
            "trainer.total_steps=3",
            "trainer.save_every=3",
            "algo.ppo_epochs=2",
            f"hydra.run.dir={run}",
            *FAST,
        ]
    )
    assert p.returncode == 0, p.stderr[-4000:]
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in REQUIRED_KEYS:
        assert all(r.get(key) is not None for r in rows), f"metric {key} missing: {rows[-1]}"
    for key in (
        "timing/generate_s",
        "timing/reward_s",
        "timing/logprobs_s",
        "timing/update_s",
        "timing/sync_s",
        "timing/step_s",
        "grad_norm",
    ):
        assert all(r[key] > 0 for r in rows), (key, [r[key] for r in rows])
    assert all(r["kl/mean"] > 0 for r in rows[1:])  # the policy has left the reference
    assert rows[-1]["version"] == 3
    # vLLM agrees with the learner after a sync, to the kernels' own tolerance (conftest's
    # KERNEL_TOL; measured about 3e-6 here) ...
    assert rows[0]["sync/logprob_diff_max"] < 1e-3
    # ... and on every step's sampled tokens: the weights never drift apart
    assert max(r["rollout/logprob_diff_max"] for r in rows) < 1e-3
    assert (run / "plots" / "reward_mean.png").stat().st_size > 1000
    assert list((run / "wandb").glob("offline-run-*")), "no offline wandb run written"
    ckpt = run / "checkpoints" / "step_00000003"
    assert (ckpt / "COMPLETE").exists() and (ckpt / "hf" / "config.json").exists()
    assert "step 3/3" in p.stdout + p.stderr


def test_config_errors_name_the_key_before_anything_starts():
    p = launch(["algo.alhpa=0.3"], timeout=120)
    assert p.returncode != 0 and "algo.alhpa" in p.stderr
    t0 = time.time()
    p = launch(["algo=clipv", "algo.entropy_source=rollout", "rollout.n=1"], timeout=120)
    assert p.returncode == 2
    assert "algo.entropy_source=learner" in p.stderr and "rollout.n=1" in p.stderr
    assert time.time() - t0 < 60  # refused before Ray or any engine started


def test_multirun_two_by_two_writes_four_runs_and_a_summary(tmp_path):
    sweep = tmp_path / "sweep"
    p = launch(
        [
            "-m",
            "algo.alpha=0.1,0.3",
            "algo.temperature=1,2",
            "trainer.total_steps=1",
            "trainer.save_every=0",
            "logger.plots=false",
            f"hydra.sweep.dir={sweep}",
            *FAST,
        ],
        timeout=1500,
    )
    assert p.returncode == 0, p.stderr[-4000:]
    runs = sorted(d for d in sweep.iterdir() if (d / "metrics.jsonl").exists())
    assert len(runs) == 4
    import yaml

    by_pair = {}
    for run in runs:
        algo = yaml.safe_load((run / "config.yaml").read_text())["algo"]
        rows = read_jsonl(run / "metrics.jsonl")
        assert rows[0]["grad_norm"] > 0
        by_pair[(algo["alpha"], algo["temperature"])] = rows[0]
    assert set(by_pair) == {(0.1, 1.0), (0.1, 2.0), (0.3, 1.0), (0.3, 2.0)}
    # same seed, same first batch: EGSW's P changes the weights it gives
    for alpha in (0.1, 0.3):
        assert by_pair[(alpha, 1.0)]["egsw/weight_max"] != by_pair[(alpha, 2.0)]["egsw/weight_max"]
    summary = (sweep / "summary.md").read_text()
    assert sum("algo.alpha=" in line for line in summary.splitlines()) == 4
    assert "final reward/mean" in summary
    assert (sweep / "summary.csv").read_text().count("\n") == 5


def _wait_for_step(path: Path, step: int, proc, timeout: float) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists() and any(r["step"] >= step for r in read_jsonl(path)):
            return
        assert proc.poll() is None, "training exited before it could be killed"
        time.sleep(1)
    raise TimeoutError(f"step {step} not reached in {timeout} s")


def test_sigkill_then_resume_continues_without_repeating_or_skipping(tmp_path):
    run = tmp_path / "run"
    total = 40
    args = [
        "conf=tiny_cpu",
        f"trainer.total_steps={total}",
        "trainer.save_every=2",
        "trainer.keep_checkpoints=3",
        "logger.plots=false",
        f"hydra.run.dir={run}",
        *FAST,
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "egsw_rl.launch", *args],
        cwd=REPO,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for_step(run / "metrics.jsonl", 7, proc, timeout=900)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait()
    complete = sorted(p for p in (run / "checkpoints").iterdir() if (p / "COMPLETE").exists())
    assert len(complete) >= 2, f"expected two complete checkpoints, found {complete}"
    newest, fallback = complete[-1], complete[-2]
    killed_at = max(r["step"] for r in read_jsonl(run / "metrics.jsonl"))
    assert killed_at < total, "the run finished before it could be killed"
    # the newest checkpoint is damaged: resume must fall back to the one before it
    victim = next(p for p in sorted((newest / "hf").iterdir()) if p.suffix == ".safetensors")
    victim.write_bytes(victim.read_bytes()[:100])

    p = launch([*args, "resume=auto"])
    assert p.returncode == 0, p.stderr[-4000:]
    out = p.stdout + p.stderr
    assert f"{newest.name} is incomplete or corrupted" in out
    assert f"resumed from {fallback}" in out
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, total + 1))
    # the prompts of every step are exactly those of an uninterrupted run
    problems = arithmetic_problems(4096, seed=0)
    sampler = PromptSampler(len(problems), 4, seed=0)
    expected = [[problems[i].id for i in sampler.next_indices()] for _ in range(total)]
    got = [r["problem_ids"] for r in read_jsonl(run / "samples.jsonl")]
    assert got == expected


def test_ray_job_submit_to_a_local_cluster(tmp_path, vh):
    """From `ray start --head` to a finished job through launch/submit.sh, as a new user has it:
    a Ray token file on the machine (which turns the head's token auth on), no RAY_AUTH_MODE in
    any shell, and a WANDB_API_KEY in the submitting one."""
    e = env()
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(16))
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        e.pop(key, None)
    e["RAY_AUTH_TOKEN_PATH"] = str(token)
    # the activated environment: `ray` and the job's `python` are this venv's
    e["PATH"] = str(Path(sys.executable).parent) + os.pathsep + e.get("PATH", "")
    ray = str(Path(sys.executable).with_name("ray"))
    dash = vh.free_port()
    with vh.ray_head(e, num_cpus=6, dashboard_port=dash) as (head, _):
        run = tmp_path / "job"
        address = f"http://127.0.0.1:{dash}"
        with_mode = dict(e, RAY_AUTH_MODE="token")
        for _ in range(45):  # the dashboard's job API takes a few seconds to come up
            if (
                subprocess.run(
                    [ray, "job", "list", f"--address={address}"],
                    env=with_mode,
                    capture_output=True,
                    timeout=60,
                ).returncode
                == 0
            ):
                break
            assert head.poll() is None, "ray start --head exited"
            time.sleep(2)
        # The head did turn token auth on: a job client without RAY_AUTH_MODE is refused.
        p = subprocess.run(
            [ray, "job", "list", f"--address={address}"], env=e, capture_output=True, text=True, timeout=60
        )
        assert p.returncode != 0 and "authentication" in (p.stdout + p.stderr).lower(), p.stdout + p.stderr
        key = "dummy-" + secrets.token_hex(8)
        user = dict(e, RAY_ADDRESS=address, WANDB_API_KEY=key, WANDB_MODE="offline")
        # one-step off-policy overlap rides along: batch k+1 generates while batch k trains
        submit = [
            str(REPO / "launch" / "submit.sh"),
            "trainer.total_steps=2",
            "trainer.overlap=true",
            "trainer.save_every=0",
            "logger.plots=false",
            f"hydra.run.dir={run}",
            *FAST,
        ]
        for _ in range(20):  # the job agent comes up a little after the dashboard
            p = subprocess.run(submit, cwd=tmp_path, env=user, capture_output=True, text=True, timeout=900)
            if p.returncode == 0 or "No available agent" not in p.stdout + p.stderr:
                break
            time.sleep(2)
        out = p.stdout + p.stderr
        assert p.returncode == 0, out[-4000:]
        assert "succeeded" in out.lower()
        assert "RAY_AUTH_MODE=token" in out and "WANDB_API_KEY" in out  # it says what it did
        assert key not in out
        jobs = subprocess.run(
            [ray, "job", "list", f"--address={address}"],
            env=with_mode,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        assert key in jobs and "WANDB_MODE" in jobs  # the job's runtime env has both
        rows = read_jsonl(run / "metrics.jsonl")
        assert [r["step"] for r in rows] == [1, 2]
        assert [r["policy_lag/mean"] for r in rows] == [0.0, 1.0]
        assert rows[1]["rollout/logprob_diff_mean"] > 0  # old logprobs recomputed off-policy
        # the prefetched batch was graded share by share in the background while batch 1
        # trained: step 2 waits on almost none of its grading (scored after arrival it was 0)
        assert rows[1]["reward/hidden_frac"] > 0.5, rows[1]["reward/hidden_frac"]


def test_a_dead_actor_is_reported_and_the_checkpoints_are_kept(tmp_path):
    import psutil

    run = tmp_path / "run"
    args = [
        "conf=tiny_cpu",
        "trainer.total_steps=60",
        "trainer.save_every=2",
        "logger.plots=false",
        f"hydra.run.dir={run}",
        *FAST,
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "egsw_rl.launch", *args],
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 900
        while not (run / "checkpoints").exists() or not any(
            (p / "COMPLETE").exists() for p in (run / "checkpoints").iterdir()
        ):
            assert time.time() < deadline and proc.poll() is None, "no checkpoint was written"
            time.sleep(0.5)
        # this run's generator actor: a ray::Generator process descending from the driver
        victims = [
            p
            for p in psutil.process_iter(["pid", "cmdline"])
            if "ray::Generator" in " ".join(p.info["cmdline"] or []) and _descends(p, proc.pid)
        ]
        assert victims, "generator actor process not found"
        victims[0].kill()
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    assert "an actor died at step" in out and "resume=auto" in out, out[-3000:]
    assert any((p / "COMPLETE").exists() for p in (run / "checkpoints").iterdir())


def _descends(p, ancestor: int) -> bool:
    try:
        return any(q.pid == ancestor for q in p.parents())
    except Exception:  # the process is gone
        return False
