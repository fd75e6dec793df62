"""Sharded selection simulated in one process: every rank holds only its block of the tables, and the
decision must equal the replicated decision under the same rule, for any world size."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from lightning_pruning.methods.infobatch import infobatch_keep_probability, infobatch_select
from lightning_pruning.selection import ClassLayout, make_generator, segmented_top_k
from lightning_pruning.sharded import (
    SimulatedGroup,
    counter_keys,
    counter_uniform,
    distributed_group_threshold,
    float_keys,
    radix_select_bytes,
    replicated_group_top_k,
    shard_bounds,
    sharded_class_top_k,
    sharded_group_top_k,
    sharded_infobatch,
    sharded_orderdp,
    sharded_top_k,
    sharded_uniform,
    split,
)


def joined(masks: list[Tensor]) -> Tensor:
    return torch.cat(masks)


def test_shard_bounds_cover_every_sample_once() -> None:
    assert shard_bounds(10, 3) == [0, 3, 6, 10]
    assert shard_bounds(2, 4) == [0, 0, 1, 1, 2]  # empty shards are allowed
    with pytest.raises(ValueError, match="world_size >= 1"):
        shard_bounds(10, 0)


def test_float_keys_order_like_the_floats() -> None:
    values = torch.tensor([-math.inf, -3.0, -1e-40, -0.0, 0.0, 1e-40, 2.5, math.inf])
    keys = float_keys(values)
    assert bool((keys[1:] >= keys[:-1]).all()) and int(keys[3]) == int(keys[4])  # -0.0 == +0.0
    assert bool((keys >= 0).all()) and bool((keys < 2**32).all())


def test_counter_keys_are_a_pure_function_of_the_sample_id() -> None:
    ids = torch.arange(1000)
    assert torch.equal(counter_keys(3, 1, ids)[500:], counter_keys(3, 1, torch.arange(500, 1000)))
    assert not torch.equal(counter_keys(3, 1, ids), counter_keys(3, 2, ids))
    uniform = counter_uniform(3, 1, torch.arange(200_000))
    assert 0.0 <= float(uniform.min()) and float(uniform.max()) < 1.0
    # Mean and a histogram of 10 bins: uniform within sampling error.
    assert abs(float(uniform.mean()) - 0.5) < 0.003
    bins = torch.bincount((uniform * 10).long(), minlength=10) / 200_000
    assert float((bins - 0.1).abs().max()) < 0.003


def test_radix_select_by_hand() -> None:
    comm = SimulatedGroup(2)
    keys = [torch.tensor([5, 300, 7]), torch.tensor([300, 1, 70000])]
    found = distributed_group_threshold(keys, None, torch.tensor([3]), 32, comm)
    # Sorted descending: 70000, 300, 300, 7, ... -> the 3rd largest is 300, both 300s needed after 70000.
    assert int(found.threshold[0]) == 300 and int(found.ties_needed[0]) == 2
    assert comm.calls == 4 and comm.sent_bytes == 4 * 256 * 8


@settings(max_examples=60, deadline=None)
@given(
    num=st.integers(1, 300),
    world=st.integers(1, 6),
    share=st.floats(0.0, 1.0),
    ties=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_sharded_top_k_equals_the_replicated_top_k(num: int, world: int, share: float, ties: bool, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(num, generator=generator)
    if ties:
        scores = scores.round()  # large ties straddle the threshold and the shard borders
        scores[torch.rand(num, generator=generator) < 0.1] = math.inf  # never-trained samples
    k = round(share * num)
    comm = SimulatedGroup(world)
    sharded = joined(sharded_top_k(split(scores, shard_bounds(num, world)), k, comm))
    replicated = replicated_group_top_k(float_keys(scores), None, torch.tensor([k]))
    assert torch.equal(sharded, replicated) and int(sharded.sum()) == k
    # The threshold really is the k-th largest: everything kept is >= everything dropped.
    if 0 < k < num:
        assert float(scores[sharded].min()) >= float(scores[~sharded].max())
    assert comm.sent_bytes == radix_select_bytes(1, world, 32)


@pytest.mark.parametrize("world", [1, 3, 8])
def test_sharded_uniform_draw_is_independent_of_the_world_size(world: int) -> None:
    comm = SimulatedGroup(world)
    mask = joined(sharded_uniform(shard_bounds(1000, world), 300, 7, 2, comm))
    reference = joined(sharded_uniform(shard_bounds(1000, 1), 300, 7, 2, SimulatedGroup(1)))
    assert torch.equal(mask, reference) and int(mask.sum()) == 300
    assert torch.equal(mask, replicated_group_top_k(counter_keys(7, 2, torch.arange(1000)), None, torch.tensor([300])))


def test_sharded_uniform_draw_is_uniform() -> None:
    hits = torch.zeros(40)
    trials = 3000
    for epoch in range(trials):
        hits += joined(sharded_uniform(shard_bounds(40, 3), 10, 1, epoch, SimulatedGroup(3)))
    assert float((hits / trials - 0.25).abs().max()) < 0.04  # binomial sd 0.008


@pytest.mark.parametrize("world", [1, 2, 5])
def test_sharded_orderdp_equals_its_replicated_rule(world: int) -> None:
    generator = torch.Generator().manual_seed(world)
    scores = torch.rand(500, generator=generator).round(decimals=1)  # ties
    scores[:50] = math.inf
    bounds = shard_bounds(500, world)
    mask = joined(sharded_orderdp(split(scores, bounds), bounds, 150, 200, 4, 1, SimulatedGroup(world)))
    pool = replicated_group_top_k(counter_keys(4, 1, torch.arange(500)), None, torch.tensor([200]))
    expected = replicated_group_top_k(float_keys(torch.where(pool, scores, -math.inf)), None, torch.tensor([150]))
    assert torch.equal(mask, expected) and int(mask.sum()) == 150 and bool(pool[mask].all())


@pytest.mark.parametrize("world", [1, 2, 7])
def test_sharded_infobatch_equals_the_replicated_decision(world: int) -> None:
    generator = torch.Generator().manual_seed(world)
    scores = torch.empty(2000).exponential_(generator=generator)
    bounds = shard_bounds(2000, world)
    keep = infobatch_keep_probability(0.5)
    comm = SimulatedGroup(world)
    decision = sharded_infobatch(split(scores, bounds), bounds, keep, 3, 1, comm)
    # The replicated rule: the same mean, the same below-mean set, the same keyed draw among it.
    threshold = float(scores.double().mean())
    below = scores.double() < threshold
    num_kept = math.floor(keep * int(below.sum()) * (1 + 1e-12))
    picked = replicated_group_top_k(counter_keys(3, 1, torch.arange(2000)), below.long(), torch.tensor([0, num_kept]))
    assert decision.threshold == pytest.approx(threshold, rel=1e-15)
    assert torch.equal(joined(decision.kept), ~below | picked)
    assert torch.equal(torch.cat(decision.weights), torch.where(picked, 1 / keep, 1.0)[~below | picked].float())
    # The library's replicated InfoBatch (float32 mean, randperm draw) finds the same well-learned set and
    # keeps as many; only which of them are kept differs (same uniform distribution, other draws).
    library = infobatch_select(scores, 0.5, make_generator(3, 1))
    assert library.num_well_learned == decision.num_well_learned
    assert library.indices.numel() == int(joined(decision.kept).sum())


@pytest.mark.parametrize("world", [1, 4])
def test_sharded_rcap_within_class_draw_equals_the_replicated_segmented_top_k(world: int) -> None:
    generator = torch.Generator().manual_seed(world)
    labels = torch.randint(0, 30, (3000,), generator=generator)
    keys = torch.rand(3000, generator=generator) * 2  # score / beta + Gumbel, distinct values
    per_class = torch.bincount(labels, minlength=30) * 2 // 5
    bounds = shard_bounds(3000, world)
    comm = SimulatedGroup(world)
    mask = joined(sharded_class_top_k(split(keys, bounds), split(labels, bounds), per_class, comm))
    layout = ClassLayout.from_labels(labels)
    order = layout.order.long()
    replicated = torch.zeros(3000, dtype=torch.bool)
    replicated[order[segmented_top_k(keys[order], layout.counts, per_class).long()]] = True
    assert torch.equal(mask, replicated)
    assert torch.equal(torch.bincount(labels[mask], minlength=30), per_class)
    assert comm.sent_bytes == radix_select_bytes(30, world, 32)


def test_group_ties_go_to_the_lowest_ids_across_ranks() -> None:
    keys = torch.tensor([1, 5, 5, 5, 5, 5, 0, 5])
    groups = torch.tensor([0, 0, 1, 0, 1, 0, 1, 1])
    take = torch.tensor([2, 2])
    masks = sharded_group_top_k(split(keys, [0, 3, 5, 8]), split(groups, [0, 3, 5, 8]), take, 32, SimulatedGroup(3))
    # group 0 holds 5 at ids 1, 3, 5 -> ids 1, 3; group 1 holds 5 at ids 2, 4, 7 -> ids 2, 4.
    assert joined(masks).nonzero().squeeze(1).tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("world", [1, 3])
def test_random_ties_are_uniform_and_independent_of_the_world_size(world: int) -> None:
    # 4 samples above a tie of 10 at 1.0, k = 7: the 4 always, then 3 of the 10 uniformly.
    scores = torch.cat([torch.full((4,), 2.0), torch.ones(10), torch.zeros(6)])
    bounds = shard_bounds(20, world)
    hits = torch.zeros(20)
    trials = 2000
    for epoch in range(trials):
        mask = joined(
            sharded_top_k(split(scores, bounds), 7, SimulatedGroup(world), random_ties=(5, epoch), bounds=bounds)
        )
        single = joined(sharded_top_k([scores], 7, SimulatedGroup(1), random_ties=(5, epoch), bounds=[0, 20]))
        assert torch.equal(mask, single) and int(mask.sum()) == 7
        hits += mask
    assert hits[:4].tolist() == [trials] * 4 and hits[14:].sum() == 0
    assert float((hits[4:14] / trials - 0.3).abs().max()) < 0.05  # binomial sd 0.010
    with pytest.raises(ValueError, match="shard bounds"):
        sharded_top_k([scores], 7, SimulatedGroup(1), random_ties=(5, 0))
