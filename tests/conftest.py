"""Shared fixtures. Expensive real components (Ray, the tiny model) are started once per test
session; integration tests ask for them by fixture name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Keep vLLM's CPU KV cache small and threads modest: 2 cores, 24 GiB, several engines per run.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from egsw_rl.testing import tiny_model

    return tiny_model()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.fail(f"data sets not found at {SHARED_DATA} (CI clones main with shared/ beside it)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session, on loopback only."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=8,  # logical slots: actors mostly wait on each other; 2 real cores here
            include_dashboard=False,
            log_to_driver=True,
            _node_ip_address="127.0.0.1",
            runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": os.environ["VLLM_CPU_KVCACHE_SPACE"],
                                      "TOKENIZERS_PARALLELISM": "false"}},
        )
    yield ray
    ray.shutdown()
