"""A push's timing through the real actors (two ZeRO-3 ranks over gloo, two vLLM CPU engines) on
both transports: counted from the first byte sent until every engine has loaded and bumped its
version, and split into gather, transfer and load parts that fit inside that total."""

import pytest

from egsw_rl.config import AlgoConfig, LearnerConfig, ModelConfig
from egsw_rl.sync import WeightSync

pytestmark = pytest.mark.integration

PARTS = ("sync/gather_s", "sync/transfer_s", "sync/load_s")


@pytest.fixture(scope="module")
def rig(ray_session, tiny_model_dir, vh):
    from egsw_rl.actors.learner import LearnerGroup

    learners = LearnerGroup(
        ModelConfig(path=str(tiny_model_dir)),
        LearnerConfig(num_ranks=2, cpus_per_rank=1.0, sync_bucket_mb=1),
        AlgoConfig(beta=0.0),
        "cpu",
        1.0,
    )
    gens = vh.start_group(tiny_model_dir)
    yield learners, gens
    gens.shutdown()
    learners.shutdown()


def _check_split(p):
    assert p["sync/total_s"] > 0
    for k in PARTS:
        assert p[k] >= 0, k
    assert p["sync/transfer_s"] > 0 and p["sync/load_s"] > 0
    # the parts are intervals of the engines' receipt, which lies inside the push
    assert sum(p[k] for k in PARTS) <= p["sync/total_s"]
    assert p["sync/recv_s"] <= p["sync/total_s"]
    assert p["sync/other_s"] == pytest.approx(p["sync/total_s"] - sum(p[k] for k in PARTS))


def test_group_push_is_split_bucket_by_bucket(rig):
    import ray

    from egsw_rl.bench.sync import replan_buckets

    learners, gens = rig
    sync = WeightSync(learners, gens, transport="group")
    sync.push()  # with the probe
    planned = ray.get([a.__ray_call__.remote(replan_buckets, 64 * 2**10) for a in learners.actors])
    assert len(set(planned)) == 1 and planned[0] > 5
    before = gens.versions()
    p = sync.push(probe=False)
    assert gens.versions() == [v + 1 for v in before] == [p["sync/version"]] * 2
    assert p["sync/buckets"] == planned[0]  # every bucket's header and payload were timed
    _check_split(p)
    assert p["sync/gather_s"] > 0  # ZeRO-3 gathers every bucket before it is sent
    assert p["sync/header_s"] >= 0 and p["sync/gather_hidden_s"] >= 0
    # what the engine waited for and what it did not see add up to the sender's gathers
    # (all of them but the last bucket's release)
    assert p["sync/gather_s"] + p["sync/gather_hidden_s"] <= p["sync/gather_total_s"] + 1e-9


def test_shared_memory_push_gathers_nothing(rig):
    learners, gens = rig
    sync = WeightSync(learners, gens, transport="shm")
    sync.push()
    before = gens.versions()
    p = sync.push(probe=False)
    assert gens.versions() == [v + 1 for v in before]
    assert p["sync/gather_s"] == 0.0
    _check_split(p)
