"""Shared fixtures. Expensive real components (Ray, the tiny model) are started once per test
session; integration tests ask for them by fixture name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep vLLM's CPU KV cache small and threads modest: 2 cores, 24 GiB, several engines per run.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from egsw_rl.testing import tiny_model

    return tiny_model()


@pytest.fixture(scope="session")
def dataset():
    """rows = dataset("math500"): the rows of a data set shipped in the package."""
    from egsw_rl.data import dataset_path, read_rows

    return lambda name: read_rows(dataset_path(name))


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
            runtime_env={
                "env_vars": {
                    "VLLM_CPU_KVCACHE_SPACE": os.environ["VLLM_CPU_KVCACHE_SPACE"],
                    "TOKENIZERS_PARALLELISM": "false",
                }
            },
        )
    yield ray
    ray.shutdown()
