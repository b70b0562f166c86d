"""trainer.placement=colocated: one bundle per device carrying a learner rank and an engine
worker, engines spanning tensor_parallel_size devices of one node, on any number of nodes."""

import pytest
from omegaconf import OmegaConf

from egsw_rl.placement import COLOCATED_GPU_SHARE, PlacementError, assign, colocation_errors, make_plan


def cfg(
    ranks=8,
    nodes=1,
    gpn=8,
    gens=8,
    tp=1,
    cpr=4.0,
    cpg=4.0,
    rewards=2,
    overlap=False,
    offload_params=False,
    transport="auto",
):
    return OmegaConf.create(
        {
            "learner": {
                "num_ranks": ranks,
                "num_nodes": nodes,
                "gpus_per_node": gpn,
                "cpus_per_rank": cpr,
                "offload_params": offload_params,
                "sync_transport": transport,
            },
            "rollout": {"tensor_parallel_size": tp, "cpus_per_generator": cpg, "num_generators": gens},
            "reward": {"num_actors": rewards},
            "trainer": {"placement": "colocated", "overlap": overlap},
        }
    )


def test_the_papers_node_colocated_is_8_devices_each_a_rank_and_an_engine():
    plan = make_plan(cfg(), "cuda")
    assert plan.layout == "colocated"
    assert plan.of("learner") == list(range(8)) and plan.of("generator") == list(range(8))
    assert plan.need() == {"CPU": 8 * (4 + 4) + 2 * 0.5, "GPU": 8.0}  # 8 GPUs, not 16
    assert plan.gpu_share("learner") == plan.gpu_share("generator") == COLOCATED_GPU_SHARE
    assert plan.gpu_share("learner") + plan.gpu_share("generator") == 1.0  # the device is whole
    assert plan.engine_spans() == [[r] for r in range(8)]
    assert set(assign(plan, {"a": {"CPU": 96, "GPU": 8}})) == {"a"}
    assert "8 colocated devices" in plan.describe()


def test_tensor_parallel_engines_span_consecutive_ranks_and_sit_on_the_first():
    plan = make_plan(cfg(gens=4, tp=2), "cuda")
    assert plan.of("generator") == [0, 2, 4, 6]
    assert plan.engine_spans() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    # the engine's CPUs are on the bundle its actor uses, the other device has the rank's only
    assert [plan.bundles[i].resources["CPU"] for i in range(4)] == [8.0, 4.0, 8.0, 4.0]


def test_any_number_of_nodes_keeps_each_engine_on_one_node():
    plan = make_plan(cfg(ranks=16, nodes=2, gpn=8, gens=4, tp=4), "cuda")
    nodes = assign(plan, {"a": {"CPU": 128, "GPU": 8}, "b": {"CPU": 128, "GPU": 8}})
    for span in plan.engine_spans():
        assert len({nodes[r] for r in span}) == 1
    assert {nodes[r] for r in range(8)} != {nodes[r] for r in range(8, 16)}
    # a node too small for a whole group of ranks refuses at once
    with pytest.raises(PlacementError, match="learner ranks 8-15 need|learner ranks 0-7 need"):
        assign(plan, {"a": {"CPU": 128, "GPU": 8}, "b": {"CPU": 128, "GPU": 4}})


def test_one_gpu_is_enough():
    plan = make_plan(cfg(ranks=1, gpn=1, gens=1, rewards=1), "cuda")
    assert plan.need()["GPU"] == 1.0
    assert assign(plan, {"box": {"CPU": 16, "GPU": 1}})


def test_on_cpu_the_same_plan_holds_cpus_only():
    plan = make_plan(cfg(ranks=2, gpn=0, gens=2, cpr=1, cpg=2, rewards=1), "cpu")
    assert plan.need() == {"CPU": 2 * 3 + 0.5}
    assert plan.gpu_share("learner") == plan.gpu_share("generator") == 0.0


@pytest.mark.parametrize(
    "kw, says",
    [
        (
            dict(gens=4),
            "rollout.num_generators x rollout.tensor_parallel_size = 4 x 1 must equal learner.num_ranks=8",
        ),
        (dict(gens=2, tp=3, ranks=6, gpn=8), "must be a multiple of rollout.tensor_parallel_size"),
        (dict(overlap=True), "trainer.overlap=true"),
        (dict(offload_params=True), "learner.offload_params=false"),
        (dict(transport="group"), "NCCL refuses two ranks of one group on one GPU"),
    ],
)
def test_colocated_configs_that_cannot_work_are_refused_naming_the_key(kw, says):
    c = cfg(**kw)
    assert any(says in e for e in colocation_errors(c, "cuda"))
    with pytest.raises(
        PlacementError, match="trainer.placement=colocated|trainer.overlap|offload_params|NCCL"
    ):
        make_plan(c, "cuda")


def test_split_stays_the_default_and_suggests_colocated_when_gpus_are_short():
    c = cfg(ranks=4, gpn=4, gens=4)
    c.trainer.placement = "split"
    plan = make_plan(c, "cuda")
    assert plan.layout == "split" and plan.need()["GPU"] == 8.0 and colocation_errors(c, "cuda") == []
    with pytest.raises(PlacementError, match="or trainer.placement=colocated"):
        assign(plan, {"a": {"CPU": 64, "GPU": 4}})
    del c["trainer"]  # configs without a trainer section (older callers) are split
    assert make_plan(c, "cuda").layout == "split"
