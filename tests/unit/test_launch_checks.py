"""What launch refuses before it starts anything: a run directory a Ray job would lose."""

from pathlib import Path

import pytest

from egsw_rl.config import ConfigError
from egsw_rl.launch import check_run_dir

RAY_COPY = Path(
    "/tmp/ray/session_1/runtime_resources/working_dir_files/_ray_pkg_0a1b/outputs/2026-12-02/10-00-00"
)


def test_a_ray_job_must_write_outside_rays_copy_of_the_working_dir(monkeypatch):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what Ray sets for a job's driver
    with pytest.raises(ConfigError, match="hydra.run.dir") as e:
        check_run_dir(RAY_COPY)
    assert "deleted when the job ends" in str(e.value) and "\n" not in str(e.value)
    check_run_dir(Path("/shared/runs/qwen7b"))


def test_outside_a_ray_job_the_run_directory_is_the_users_business(monkeypatch):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    check_run_dir(RAY_COPY)
