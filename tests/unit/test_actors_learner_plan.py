"""Micro-batch planning of the learner group (pure logic, egsw_rl/actors/learner_plan.py)."""

from __future__ import annotations

import random

import pytest

from egsw_rl.actors import learner_plan as plan


def _lengths(n, seed=0, lo=5, hi=200):
    rng = random.Random(seed)
    return [rng.randint(lo, hi) for _ in range(n)]


@pytest.mark.parametrize("ranks", [1, 2, 3, 8])
def test_shard_covers_every_sequence_once_and_balances_tokens(ranks):
    lengths = _lengths(64, seed=ranks)
    shards = plan.shard_by_tokens(lengths, ranks)
    assert len(shards) == ranks
    flat = sorted(i for s in shards for i in s)
    assert flat == list(range(64))
    loads = [sum(lengths[i] for i in s) for s in shards]
    # LPT: the spread is at most the longest sequence
    assert max(loads) - min(loads) <= max(lengths)


def test_shard_more_ranks_than_sequences_leaves_empty_shards():
    shards = plan.shard_by_tokens([10, 20], 4)
    assert sorted(len(s) for s in shards) == [0, 0, 1, 1]


@pytest.mark.parametrize("budget", [1, 50, 256, 1000, 10**6])
def test_micro_batches_respect_the_padded_budget_and_sort_by_length(budget):
    lengths = _lengths(40, seed=budget % 97)
    idx = list(range(40))
    micro = plan.micro_batches_by_tokens(idx, lengths, budget)
    assert sorted(i for mb in micro for i in mb) == idx
    for mb in micro:
        ls = [lengths[i] for i in mb]
        assert ls == sorted(ls, reverse=True)
        # over budget only when a single sequence is longer than the budget
        assert len(ls) * max(ls) <= budget or len(ls) == 1
    # micro-batches come longest first overall
    firsts = [lengths[mb[0]] for mb in micro]
    assert firsts == sorted(firsts, reverse=True)


def test_length_sorting_keeps_padding_low():
    lengths = _lengths(256, seed=1, lo=10, hi=400)
    micro = plan.micro_batches_by_tokens(list(range(256)), lengths, 4096)
    real, padded = plan.padding_stats(micro, lengths)
    assert real == sum(lengths)
    assert 1 - real / padded < 0.10
    # the same counts in arrival order (no sorting) pad far more
    rows = [len(mb) for mb in micro]
    unsorted, k = [], 0
    for r in rows:
        unsorted.append(list(range(k, k + r)))
        k += r
    _, padded_unsorted = plan.padding_stats(unsorted, lengths)
    assert padded_unsorted > padded * 1.3


def test_equalize_pads_with_empty_micro_batches():
    out = plan.equalize([[[0, 1], [2]], [[3]], []])
    assert [len(p) for p in out] == [2, 2, 2]
    assert out[1] == [[3], []] and out[2] == [[], []]


def test_plan_pass_gives_every_rank_the_same_number_of_micro_batches():
    lengths = [300, 10, 10, 10, 10, 10, 10, 10]
    per_rank = plan.plan_pass(lengths, list(range(8)), 2, budget=40)
    assert len(per_rank[0]) == len(per_rank[1])
    assert sorted(i for r in per_rank for mb in r for i in mb) == list(range(8))
    assert any(mb == [] for r in per_rank for mb in r)  # the short rank got padding


def test_plan_pass_on_a_subset_keeps_global_ids():
    lengths = _lengths(20, seed=3)
    subset = [1, 4, 7, 11, 19]
    per_rank = plan.plan_pass(lengths, subset, 2, budget=300)
    assert sorted(i for r in per_rank for mb in r for i in mb) == subset


def test_mini_batch_split_is_a_seeded_partition_into_contiguous_groups():
    a = plan.mini_batch_split(12, 3, seed=5)
    assert a == plan.mini_batch_split(12, 3, seed=5)
    assert sorted(a) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]  # whole groups of 4 (G=4)
    orders = {tuple(p[0] for p in plan.mini_batch_split(12, 3, seed=s)) for s in range(20)}
    assert len(orders) > 1  # the visiting order changes with the seed
    assert sorted(len(p) for p in plan.mini_batch_split(10, 3, seed=None)) == [3, 3, 4]
    assert plan.mini_batch_split(4, 1, seed=None) == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="mini_batches"):
        plan.mini_batch_split(2, 3, seed=0)
