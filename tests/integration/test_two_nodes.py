"""The cross-node path on one machine: a two-node Ray cluster (Ray's own multi-raylet test
facility), learners on one node and the vLLM engine on the other, so the weights must travel over
the process-group transport; then one learner rank per node (learner.num_nodes=2)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
FAST = [
    "data.batch_size=4",
    "rollout.n=4",
    "rollout.max_tokens=16",
    "trainer.total_steps=2",
    "trainer.save_every=0",
    "data.eval=[]",
    "logger.plots=false",
    "logger.progress_bar=false",
]


@pytest.fixture
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=False)
    yield c
    c.shutdown()


def _launch(address: str, run: Path, *extra: str):
    env = {**os.environ, "RAY_ADDRESS": address, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "egsw_rl.launch", f"hydra.run.dir={run}", *FAST, *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )


def _check(p, run: Path) -> list[dict]:
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-5000:]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    # the first push is probed in vLLM, every later step compares vLLM's logprobs of the batch
    # with the learners' own (the drift of the weights the engine sampled with)
    assert rows[0]["sync/logprob_diff_max"] < 1e-3
    for r in rows:
        assert r["rollout/logprob_diff_max"] < 1e-3
    assert "weight sync: group transport" in log  # learners and engine on different nodes
    return rows


def test_learners_and_engine_on_different_nodes_sync_over_the_process_group(cluster, tmp_path):
    # the learners take the smaller node (2 CPUs), the engine (2) and the reward actor (0.5) the other
    cluster.add_node(num_cpus=2, include_dashboard=False)
    cluster.add_node(num_cpus=3)
    cluster.wait_for_nodes()
    run = tmp_path / "split"
    p = _launch(cluster.address, run)
    _check(p, run)
    placed = p.stdout + p.stderr
    assert "2 learners x (1 CPU) on node" in placed and "1 generator x (2 CPU) on node" in placed
    line = next(x for x in placed.splitlines() if "placement: 2 learners" in x)
    learner_node = line.split("2 learners x (1 CPU) on node ")[1].split(";")[0]
    generator_node = line.split("1 generator x (2 CPU) on node ")[1].split(";")[0]
    assert learner_node != generator_node


def test_one_learner_rank_per_node(cluster, tmp_path):
    cluster.add_node(num_cpus=1, include_dashboard=False)
    cluster.add_node(num_cpus=4)
    cluster.wait_for_nodes()
    run = tmp_path / "ranks"
    p = _launch(cluster.address, run, "learner.num_nodes=2")
    _check(p, run)
    line = next(x for x in (p.stdout + p.stderr).splitlines() if "placement: 2 learners" in x)
    assert "2 learners x (1 CPU) on node " in line and "," in line.split("on node ")[1].split(";")[0]
