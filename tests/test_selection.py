"""The shared pure selection helpers, and Random* / RS2's selection rules."""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import lightning_pruning.selection as selection_module
from lightning_pruning.methods.random import RS2, RandomPruning, rs2_chunk
from lightning_pruning.selection import (
    ClassLayout,
    budget,
    check_prune_ratio,
    derive_seed,
    largest_remainder_round,
    make_generator,
    segmented_top_k,
    stratified_counts,
    stratified_uniform_subset,
    uniform_subset,
)


def test_budget_is_round_of_kept_share() -> None:
    assert budget(0.5, 10) == 5
    assert budget(0.3, 10) == 7
    assert budget(0.25, 10) == 8  # round(7.5) -> banker's rounding gives 8
    assert budget(0.0, 7) == 7
    assert budget(0.99, 10) == 1  # never an empty epoch


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_prune_ratio_outside_range_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="prune_ratio"):
        check_prune_ratio(bad)


def test_derive_seed_separates_streams_and_epochs() -> None:
    seeds = {derive_seed(0, epoch, stream) for epoch in range(50) for stream in range(3)}
    assert len(seeds) == 150
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)


def test_largest_remainder_hand_computed() -> None:
    # quotas 1.5, 1.3, 1.2 -> floors 1,1,1; one unit left goes to the largest remainder (index 0)
    assert largest_remainder_round(torch.tensor([1.5, 1.3, 1.2]), 4).tolist() == [2, 1, 1]
    # ties go to the lower index
    assert largest_remainder_round(torch.tensor([0.5, 0.5, 0.5, 0.5]), 2).tolist() == [1, 1, 0, 0]
    # an upper bound diverts units to the next remainder
    assert largest_remainder_round(torch.tensor([2.9, 0.6, 0.5]), 4, upper=torch.tensor([2, 5, 5])).tolist() == [
        2,
        1,
        1,
    ]
    # lower bounds win over tiny quotas; the excess comes back from the smallest remainder with slack
    counts = largest_remainder_round(torch.tensor([9.6, 0.2, 0.2]), 10, lower=torch.tensor([1, 1, 1]))
    assert counts.tolist() == [8, 1, 1]


def test_largest_remainder_unreachable_total_is_an_error() -> None:
    with pytest.raises(ValueError):
        largest_remainder_round(torch.tensor([1.0, 1.0]), 5, upper=torch.tensor([2, 2]))


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=12),
    share=st.floats(min_value=0.0, max_value=1.0),
)
def test_stratified_counts_properties(sizes: list[int], share: float) -> None:
    counts = torch.tensor(sizes)
    total = round(share * int(counts.sum()))
    split = stratified_counts(counts, total)
    assert int(split.sum()) == total
    assert bool((split <= counts).all()) and bool((split >= 0).all())
    # proportional within one unit of the exact quota
    exact = counts.double() * total / max(int(counts.sum()), 1)
    assert bool(((split.double() - exact).abs() < 1.0 + 1e-9).all())


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 500), ratio=st.floats(0.0, 0.99), seed=st.integers(0, 2**31))
def test_uniform_subset_properties(n: int, ratio: float, seed: int) -> None:
    size = budget(ratio, n)
    picked = uniform_subset(n, size, make_generator(seed, 0))
    assert picked.numel() == size
    assert picked.unique().numel() == size
    assert int(picked.min()) >= 0 and int(picked.max()) < n
    assert torch.equal(picked, uniform_subset(n, size, make_generator(seed, 0)))


def test_uniform_subset_is_uniform() -> None:
    hits = torch.zeros(10)
    trials = 4000
    for trial in range(trials):
        hits[uniform_subset(10, 3, make_generator(7, trial))] += 1
    # each index has inclusion probability 0.3; binomial std of the frequency ~ 0.0072
    assert bool(((hits / trials - 0.3).abs() < 0.03).all())


def test_uniform_subset_keeps_the_draws_of_an_int64_randperm() -> None:
    for n in (10, 70_000):
        picked = uniform_subset(n, n // 3, make_generator(2, n))
        expected = torch.randperm(n, generator=make_generator(2, n))[: n // 3]
        assert picked.dtype == torch.int64 and torch.equal(picked, expected)


def test_stratified_uniform_subset_takes_exact_counts_per_class() -> None:
    labels = torch.tensor([0, 1, 1, 2, 2, 2, 0, 1, 2, 2])
    layout = ClassLayout.from_labels(labels)
    assert layout.counts.tolist() == [2, 3, 5]
    per_class = torch.tensor([1, 2, 3])
    picked = stratified_uniform_subset(layout, per_class, make_generator(0, 0))
    assert torch.bincount(labels[picked], minlength=3).tolist() == [1, 2, 3]
    assert picked.unique().numel() == 6


def test_rs2_walks_a_shuffled_permutation_without_replacement() -> None:
    n, size = 10, 4
    chunks = [rs2_chunk(n, size, round_index, seed=3) for round_index in range(5)]
    stream = torch.cat(chunks)  # 20 items = 2 full permutations
    assert sorted(stream[:10].tolist()) == list(range(10))
    assert sorted(stream[10:20].tolist()) == list(range(10))
    # the first permutation is shuffled (the reference forgets to)
    assert stream[:10].tolist() != list(range(10))
    # round 2 straddles the end of the first permutation: 2 items from it, 2 from a fresh one
    assert torch.equal(chunks[2][:2], stream[8:10])


def test_rs2_sees_every_sample_once_every_cycle() -> None:
    n, size = 12, 4  # keep 1/3: every sample once every 3 epochs
    for cycle in range(3):
        seen = torch.cat([rs2_chunk(n, size, cycle * 3 + k, seed=0) for k in range(3)])
        assert sorted(seen.tolist()) == list(range(n))


def _decide(method: RandomPruning | RS2, num_samples: int, epoch: int, labels: torch.Tensor | None = None) -> Tensor:
    if method.num_samples != num_samples:
        method.prepare(num_samples, labels=labels)
    return method.decide(epoch).indices


def test_random_pruning_budget_and_fresh_draw_every_epoch() -> None:
    method = RandomPruning(0.3, seed=5)
    first, second = _decide(method, 100, 0), _decide(method, 100, 1)
    assert first.numel() == second.numel() == 70
    assert first.unique().numel() == 70
    assert not torch.equal(first.sort().values, second.sort().values)
    assert torch.equal(first, _decide(RandomPruning(0.3, seed=5), 100, 0))


def test_random_pruning_stratified_is_proportional() -> None:
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    picked = _decide(RandomPruning(0.5, stratified=True, seed=0), 100, 0, labels)
    assert torch.bincount(labels[picked]).tolist() == [30, 15, 5]


def test_rs2_callback_cycles_through_the_data() -> None:
    method = RS2(0.75, seed=1)  # keep 25%: four epochs cover everything once
    seen = torch.cat([_decide(method, 40, epoch) for epoch in range(4)])
    assert sorted(seen.tolist()) == list(range(40))


def test_rs2_stratified_cycles_within_each_class() -> None:
    labels = torch.tensor([0] * 20 + [1] * 20)
    method = RS2(0.5, stratified=True, seed=2)
    seen = torch.cat([_decide(method, 40, epoch, labels) for epoch in range(2)])
    assert sorted(seen.tolist()) == list(range(40))


def test_rs2_with_replacement_matches_random_star() -> None:
    random_star = _decide(RandomPruning(0.5, seed=9), 50, 3)
    rs2 = _decide(RS2(0.5, replacement=True, seed=9), 50, 3)
    assert torch.equal(random_star, rs2)


def test_warmup_and_annealing_epochs_train_on_everything() -> None:
    method = RandomPruning(0.5, seed=0, warmup_epochs=2, annealing_fraction=0.25)
    method.prepare(20, max_epochs=8)
    assert [method.is_full_epoch(epoch) for epoch in range(8)] == [True, True, False, False, False, False, True, True]
    assert method.decide(0).indices.numel() == 20
    assert method.decide(3).indices.numel() == 10


def test_largest_remainder_lower_bound_does_not_also_take_a_remainder() -> None:
    # quota 0.9 is raised to 1 by the floor; the one unit left goes to the largest remainder of the others
    ones = torch.ones(3, dtype=torch.int64)
    assert largest_remainder_round(torch.tensor([0.9, 1.4, 1.7]), 4, lower=ones).tolist() == [1, 1, 2]
    # two raised entries: the two remaining units go to 2.6 and 2.5 (remainders 0.6, 0.5), not to 0.8
    quotas = torch.tensor([0.8, 0.7, 2.6, 2.5, 1.4])
    assert largest_remainder_round(quotas, 9, lower=torch.ones(5, dtype=torch.int64)).tolist() == [1, 1, 3, 3, 1]


def _brute_force_round(quotas: list[float], total: int, lower: list[int], upper: list[int]) -> list[list[int]]:
    """Every integer vector within the bounds summing to ``total`` at the least squared distance to ``quotas``."""
    import itertools

    best: list[list[int]] = []
    best_cost = math.inf
    for counts in itertools.product(*[range(lo, hi + 1) for lo, hi in zip(lower, upper, strict=True)]):
        if sum(counts) != total:
            continue
        cost = sum((c - q) ** 2 for c, q in zip(counts, quotas, strict=True))
        if cost < best_cost - 1e-9:
            best, best_cost = [list(counts)], cost
        elif abs(cost - best_cost) <= 1e-9:
            best.append(list(counts))
    return best


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=4.0, allow_nan=False),
            st.integers(min_value=0, max_value=2),
            st.integers(min_value=0, max_value=3),
        ),
        min_size=1,
        max_size=5,
    ),
    total_share=st.floats(min_value=0.0, max_value=1.0),
)
def test_largest_remainder_equals_brute_force(data: list[tuple[float, int, int]], total_share: float) -> None:
    quotas = [q for q, _, _ in data]
    lower = [lo for _, lo, _ in data]
    upper = [lo + extra for _, lo, extra in data]
    total = sum(lower) + round(total_share * (sum(upper) - sum(lower)))
    optima = _brute_force_round(quotas, total, lower, upper)
    counts = largest_remainder_round(
        torch.tensor(quotas, dtype=torch.float64), total, lower=torch.tensor(lower), upper=torch.tensor(upper)
    ).tolist()
    assert counts in optima
    if len(optima) == 1:
        assert counts == optima[0]


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=300),
    keep=st.floats(min_value=0.01, max_value=1.0),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_rs2_never_repeats_a_sample_within_an_epoch(n: int, keep: float, seed: int) -> None:
    size = max(1, min(n, round(keep * n)))
    rounds = 3 * -(-n // size) + 2  # at least three passes through the data
    chunks = [rs2_chunk(n, size, round_index, seed) for round_index in range(rounds)]
    for chunk in chunks:
        assert chunk.dtype == torch.int64 and chunk.numel() == size
        assert chunk.unique().numel() == size, "a sample repeats within one epoch"
    # every consecutive block of n positions of the walk is one permutation: each sample once per cycle
    stream = torch.cat(chunks)
    for start in range(0, stream.numel() - n + 1, n):
        assert sorted(stream[start : start + n].tolist()) == list(range(n))


@pytest.mark.parametrize("num_samples", [50_000, 997])
@pytest.mark.parametrize("prune_ratio", [0.3, 0.4, 0.55, 0.7, 0.9])
def test_rs2_callback_epochs_have_no_repeats(num_samples: int, prune_ratio: float) -> None:
    method = RS2(prune_ratio, seed=11)
    method.prepare(num_samples)
    size = round((1 - prune_ratio) * num_samples)
    for epoch in range(8):
        picked = method.decide(epoch).indices
        assert picked.numel() == size and picked.unique().numel() == size


def test_rs2_stratified_epochs_have_no_repeats() -> None:
    labels = torch.tensor([0] * 37 + [1] * 23 + [2] * 3)
    method = RS2(0.35, stratified=True, seed=4)
    method.prepare(63, labels=labels)
    for epoch in range(12):
        picked = method.decide(epoch).indices
        assert picked.unique().numel() == picked.numel() == 41


def test_prepare_maps_non_contiguous_labels_to_class_ids() -> None:
    labels = torch.tensor([3, 7, 100, 3, 7, 100, 3, 3])
    method = RandomPruning(0.5, stratified=True, seed=0)
    method.prepare(8, labels=labels)
    assert method.class_layout is not None and method.class_layout.num_classes == 3  # not 101
    assert method.class_values == [3, 7, 100]
    assert method.class_layout.labels.tolist() == [0, 1, 2, 0, 1, 2, 0, 0]
    picked = method.decide(0).indices
    assert sorted(labels[picked].tolist()) == [3, 3, 7, 100]  # budget 4 split 2 / 1 / 1 by class size
    with pytest.raises(ValueError, match=r"class ids 0\.\.2"):
        method.prepare(8, labels=labels, class_values=torch.tensor([3, 7, 100]))


# ----------------------------------------------------------------------------------------------------
# Per-class top-k without a Python loop over small classes.
def reference_segment_top_k(keys: Tensor, counts: Tensor, take: Tensor) -> list[list[float]]:
    """The sorted kept keys of every segment, by one topk per segment (the loop the helper replaces)."""
    kept, start = [], 0
    for size, count in zip(counts.tolist(), take.tolist(), strict=True):
        kept.append(sorted(torch.topk(keys[start : start + size], count).values.tolist()))
        start += size
    return kept


def kept_per_segment(keys: Tensor, counts: Tensor, positions: Tensor) -> list[list[float]]:
    segment = torch.repeat_interleave(torch.arange(counts.numel()), counts)[positions.long()]
    return [sorted(keys[positions.long()][segment == j].tolist()) for j in range(counts.numel())]


def test_segmented_top_k_by_hand() -> None:
    keys = torch.tensor([0.3, -1.0, 2.0, 5.0, -0.0, 0.0, -7.0, 1.0, 1.5])
    counts = torch.tensor([3, 0, 1, 5])
    take = torch.tensor([2, 0, 1, 2])
    for small in (0, 2048):  # the per-segment selection path and the shared-sort path
        picked = segmented_top_k(keys, counts, take, small_segment=small)
        assert picked.dtype == torch.int32
        assert sorted(picked.tolist()) == [0, 2, 3, 7, 8]


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=12),
    shares=st.lists(st.floats(0.0, 1.0), min_size=12, max_size=12),
    small=st.sampled_from([0, 5, 2048]),
    chunk=st.sampled_from([1, 16, 1 << 22]),
    ties=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    exact_max=st.sampled_from([8, 1 << 15]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_segmented_top_k_equals_a_topk_per_segment(
    sizes: list[int],
    shares: list[float],
    small: int,
    chunk: int,
    ties: bool,
    seed: int,
    exact_max: int,
    dtype: torch.dtype,
) -> None:
    counts = torch.tensor(sizes)
    take = torch.tensor([round(share * size) for share, size in zip(shares, sizes, strict=False)])
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(int(counts.sum()), generator=generator) * 3
    if ties:
        keys = keys.round()  # many exact ties, negative values and -0.0
    keys = keys.to(dtype)  # bfloat16: keys numpy cannot view take the torch path
    # exact_max=8: segments above 8 entries that the shared sort does not rank take the bracketed threshold path.
    with mock.patch.object(selection_module, "_EXACT_SEGMENT_MAX", exact_max):
        picked = segmented_top_k(keys, counts, take, small_segment=small, sort_chunk=chunk)
    assert picked.numel() == int(take.sum()) and picked.unique().numel() == picked.numel()
    assert kept_per_segment(keys, counts, picked) == reference_segment_top_k(keys, counts, take)
    # Ties at a segment's threshold are taken in position order on every path.
    start = 0
    for size, count in zip(counts.tolist(), take.tolist(), strict=True):
        mine = sorted(p - start for p in picked.tolist() if start <= p < start + size)
        if 0 < count < size:
            segment = keys[start : start + size]
            threshold = min(segment[mine].tolist())
            tied = [i for i in range(size) if float(segment[i]) == threshold]
            taken_ties = [i for i in mine if float(segment[i]) == threshold]
            assert taken_ties == tied[: len(taken_ties)]
        start += size


def test_segmented_top_k_rejects_bad_counts() -> None:
    with pytest.raises(ValueError, match="cannot take 3 entries from segment 1 of 2"):
        segmented_top_k(torch.zeros(4), torch.tensor([2, 2]), torch.tensor([1, 3]))
    with pytest.raises(ValueError, match="do not fit 5 keys"):
        segmented_top_k(torch.zeros(5), torch.tensor([2, 2]), torch.tensor([1, 1]))


def test_class_layout_stores_int32_order_and_rebuilds_labels() -> None:
    labels = torch.tensor([2, 0, 1, 2, 2, 0])
    layout = ClassLayout.from_labels(labels)
    assert layout.order.dtype == torch.int32 and layout.order.tolist() == [1, 5, 2, 0, 3, 4]
    assert torch.equal(layout.labels, labels) and layout.members(2).tolist() == [0, 3, 4]
    assert layout.grouped_labels().tolist() == [0, 0, 1, 2, 2, 2]


def test_stratified_uniform_subset_is_uniform_within_classes() -> None:
    # 1000 classes of 3 (the vectorised path) plus one class of 5000 (topk path): every member of a
    # class must be drawn with probability take / size.
    labels = torch.cat([torch.arange(1000).repeat_interleave(3), torch.full((5000,), 1000)])
    layout = ClassLayout.from_labels(labels)
    per_class = torch.cat([torch.ones(1000, dtype=torch.int64), torch.tensor([1000])])
    hits = torch.zeros(labels.numel())
    trials = 300
    for trial in range(trials):
        picked = stratified_uniform_subset(layout, per_class, make_generator(3, trial))
        assert torch.equal(torch.bincount(labels[picked], minlength=1001), per_class)
        hits[picked] += 1
    small_rate = hits[:3000].view(1000, 3).sum(0) / (1000 * trials)  # per position within the class
    assert bool(((small_rate - 1 / 3).abs() < 0.01).all())  # sd 0.0016
    big_rate = hits[3000:] / trials
    assert abs(float(big_rate.mean()) - 0.2) < 1e-6 and float(big_rate.std()) < 0.04  # binomial sd 0.023


def test_segmented_top_k_on_huge_segments_takes_ties_and_exact_counts() -> None:
    # Segments over 2**15 entries take the selection path; heavy ties straddle its thresholds.
    generator = torch.Generator().manual_seed(5)
    counts = torch.tensor([300_000, 3, 400_000])
    keys = torch.randint(0, 50, (int(counts.sum()),), generator=generator).float()
    take = torch.tensor([123_457, 2, 1])
    picked = segmented_top_k(keys, counts, take)
    assert picked.numel() == int(take.sum()) and picked.unique().numel() == picked.numel()
    assert kept_per_segment(keys, counts, picked) == reference_segment_top_k(keys, counts, take)
