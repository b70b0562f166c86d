"""The placement plan: bundles from the config, and a node for each before anything starts."""

import pytest
from omegaconf import OmegaConf

from egsw_rl.placement import PlacementError, assign, make_plan


def cfg(ranks=4, nodes=1, gpn=4, gens=4, tp=1, cpr=8.0, cpg=4.0, rewards=1):
    return OmegaConf.create(
        {
            "learner": {"num_ranks": ranks, "num_nodes": nodes, "gpus_per_node": gpn, "cpus_per_rank": cpr},
            "rollout": {"tensor_parallel_size": tp, "cpus_per_generator": cpg, "num_generators": gens},
            "reward": {"num_actors": rewards},
        }
    )


def test_the_papers_node_holds_learners_and_engines_on_its_8_gpus():
    plan = make_plan(cfg(), "cuda")
    assert plan.need() == {"CPU": 4 * 8 + 4 * 4 + 0.5, "GPU": 8.0}
    nodes = assign(plan, {"a": {"CPU": 64, "GPU": 8}})
    assert set(nodes) == {"a"} and plan.of("learner") == [0, 1, 2, 3] and plan.of("generator") == [4, 5, 6, 7]


def test_learner_groups_get_whole_nodes_before_engines_scatter_over_them():
    # two 8-GPU nodes, 8 learner ranks per node on one of them... and engines must not take a
    # learner node's GPUs first: the learners are placed first, each group on its own node
    plan = make_plan(cfg(ranks=8, nodes=1, gpn=8, gens=8, tp=1, cpr=4, cpg=4), "cuda")
    nodes = assign(plan, {"a": {"CPU": 64, "GPU": 8}, "b": {"CPU": 64, "GPU": 8}})
    learner_nodes = {nodes[i] for i in plan.of("learner")}
    assert len(learner_nodes) == 1
    assert {nodes[i] for i in plan.of("generator")} == {"a", "b"} - learner_nodes
    two = make_plan(cfg(ranks=8, nodes=2, gpn=4, gens=4, cpr=4, cpg=4), "cuda")
    nodes = assign(two, {"a": {"CPU": 64, "GPU": 8}, "b": {"CPU": 64, "GPU": 8}})
    groups = [{nodes[i] for i in two.of("learner")[k * 4 : (k + 1) * 4]} for k in range(2)]
    assert all(len(g) == 1 for g in groups) and groups[0] != groups[1]


def test_a_plan_the_cluster_cannot_hold_fails_at_once_naming_need_have_and_fix():
    with pytest.raises(PlacementError) as e:
        assign(make_plan(cfg(ranks=16, nodes=2, gpn=8, gens=4), "cuda"), {"a": {"CPU": 64, "GPU": 8}})
    msg = str(e.value)
    assert "learner ranks 0-7 need" in msg or "learner ranks 8-15 need" in msg
    assert "The run needs 20 GPUs and the cluster has 8" in msg and "a: 64 CPU, 8 GPU" in msg
    # tiny_cpu's 4.5 CPUs on a 2-CPU `ray start --head`
    tiny = make_plan(cfg(ranks=2, nodes=1, gpn=0, gens=1, cpr=1, cpg=2), "cpu")
    with pytest.raises(PlacementError, match=r"ray start --head --num-cpus=5"):
        assign(tiny, {"127.0.0.1": {"CPU": 2.0}})
    assert set(assign(tiny, {"127.0.0.1": {"CPU": 5.0}})) == {"127.0.0.1"}


def test_tensor_parallel_engines_need_their_gpus_on_one_node():
    plan = make_plan(cfg(ranks=2, gpn=2, gens=1, tp=4), "cuda")
    with pytest.raises(
        PlacementError, match="generator 0 needs 4 CPU, 4 GPU.*The totals fit but not per node"
    ):
        assign(plan, {"a": {"CPU": 64, "GPU": 3}, "b": {"CPU": 64, "GPU": 3}})
    # the learners take the smaller node, which leaves the engine a whole one
    nodes = assign(plan, {"a": {"CPU": 64, "GPU": 4}, "b": {"CPU": 64, "GPU": 2}})
    assert [nodes[i] for i in plan.of("learner")] == ["b", "b"] and nodes[plan.of("generator")[0]] == "a"
