"""SeTa: 1-D k-means on losses, the sliding window, partial annealing, and the callback around them.

Run as a script (``python tests/test_seta.py``) it prints the comparison of our 1-D k-means with a plain
k-means (k-means++ initialisation, 10 restarts) cited in ``docs/methods/seta.md``.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from helpers import ToyModel, toy_datamodule, trainer_kwargs
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import lightning_pruning.methods.seta as seta_module
from lightning_pruning.methods.base import Harvest
from lightning_pruning.methods.ranking import random_choice_mask
from lightning_pruning.methods.registry import METHODS
from lightning_pruning.methods.seta import SeTa, kmeans_1d, seta_select, window_start
from lightning_pruning.selection import make_generator, mask_positions


def harvest(epoch: int, indices: Tensor, losses: Tensor) -> Harvest:
    zeros = torch.zeros_like(indices)
    return Harvest(epoch=epoch, indices=indices, losses=losses, batch_idx=zeros, steps=zeros)


# ---------------------------------------------------------------------------------------------------
# 1-D k-means.
def test_kmeans_1d_hand_computed() -> None:
    values = torch.tensor([0.0, 0.1, 0.2, 5.0, 5.1, 10.0])
    assert kmeans_1d(values, 3).tolist() == [3, 5, 6]
    # equal-count start [0,1 | 2,3 | 9,10]: centres 0.5, 2.5, 9.5, midpoints 1.5 and 6: already a fixed point
    assert kmeans_1d(torch.tensor([0.0, 1.0, 2.0, 3.0, 9.0, 10.0]), 3).tolist() == [2, 4, 6]
    # start [0, 0.1 | 0.2, 9]: centres 0.05, 4.6 -> midpoint 2.325 moves 0.2 down: [0, 0.1, 0.2 | 9]
    assert kmeans_1d(torch.tensor([0.0, 0.1, 0.2, 9.0]), 2).tolist() == [3, 4]
    assert kmeans_1d(torch.tensor([1.0, 2.0]), 1).tolist() == [2]


def test_kmeans_1d_with_few_distinct_values_cuts_equal_slices() -> None:
    assert kmeans_1d(torch.full((10,), 3.0), 5).tolist() == [2, 4, 6, 8, 10]  # the reference chunks equally
    assert kmeans_1d(torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0, 2.0]), 3).tolist() == [2, 4, 6]
    # The same through torch's count of distinct values (numpy has no bfloat16) and through a strided view.
    assert kmeans_1d(torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0, 2.0], dtype=torch.bfloat16), 3).tolist() == [2, 4, 6]
    assert kmeans_1d(torch.tensor([1.0, 0.0, 1.0, 0.0, 2.0, 0.0, 2.0, 0.0])[::2], 3).tolist() == [1, 3, 4]
    with pytest.raises(ValueError):
        kmeans_1d(torch.tensor([1.0, 2.0]), 3)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(min_value=0.0, max_value=20.0, allow_nan=False), min_size=1, max_size=60),
    k=st.integers(min_value=1, max_value=8),
)
def test_kmeans_1d_is_a_lloyd_fixed_point(values: list[float], k: int) -> None:
    sorted_values = torch.tensor(sorted(values), dtype=torch.float64)
    k = min(k, len(values))
    ends = kmeans_1d(sorted_values, k)
    assert ends.numel() == k and int(ends[-1]) == len(values)
    assert bool((ends[1:] >= ends[:-1]).all()) and int(ends[0]) >= 0
    distinct = len(set(values))
    if distinct < k:
        return  # equal slices
    starts = torch.cat([torch.zeros(1, dtype=torch.int64), ends[:-1]])
    segments = [(s, e) for s, e in zip(starts.tolist(), ends.tolist(), strict=True) if e > s]
    centres = [float(sorted_values[s:e].mean()) for s, e in segments]
    # no value is strictly nearer another cluster's centre than its own (Lloyd's fixed point)
    for label, (s, e) in enumerate(segments):
        for value in sorted_values[s:e].tolist():
            own = abs(value - centres[label])
            assert all(own <= abs(value - centre) + 1e-9 for centre in centres)
    # equal values never straddle two clusters
    for boundary in ends[:-1].tolist():
        if 0 < boundary < len(values):
            assert sorted_values[boundary - 1] < sorted_values[boundary]


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=3000),
    seed=st.integers(min_value=0, max_value=2**31),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    strided=st.booleans(),
)
def test_kmeans_helpers_read_strided_and_narrow_tables_like_torch(
    size: int, seed: int, dtype: torch.dtype, strided: bool
) -> None:
    """The numpy binary search and prefix sums (float32/float64 views, strided or not) and their torch fallbacks
    (dtypes numpy lacks) give searchsorted's counts and float64 sums of the same values."""
    generator = torch.Generator().manual_seed(seed)
    values = (torch.rand(size, generator=generator) * 5).round(decimals=1).sort().values.to(dtype)
    if strided:
        buffer = torch.zeros(2 * size, dtype=dtype)
        buffer[1::2] = values
        values = buffer[1::2]
    wide = values.to(torch.float64)
    targets = torch.cat([wide[torch.randint(0, size, (7,), generator=generator)], torch.tensor([-1.0, 0.05, 9.0])])
    expected = torch.searchsorted(wide.contiguous(), targets, right=True)
    assert torch.equal(seta_module._count_at_most(values, targets), expected)
    shift = float(wide.mean())
    sums = seta_module._PrefixSums(values, shift)
    positions = torch.tensor(sorted({0, size, *torch.randint(0, size + 1, (9,), generator=generator).tolist()}))
    first, second = sums.at(positions)
    centred = wide - shift
    want_first = torch.stack([centred[:i].sum() for i in positions.tolist()])
    want_second = torch.stack([centred[:i].square().sum() for i in positions.tolist()])
    torch.testing.assert_close(first, want_first, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(second, want_second, rtol=1e-12, atol=1e-9)


@settings(max_examples=80, deadline=None)
@given(
    size=st.integers(min_value=2, max_value=4000),
    seed=st.integers(min_value=0, max_value=2**31),
    shape=st.sampled_from(["exponential", "cubed", "ties", "normal"]),
    k=st.integers(min_value=2, max_value=8),
    bins=st.integers(min_value=4, max_value=1100),
)
def test_divide_and_conquer_layers_split_like_the_full_table(
    size: int, seed: int, shape: str, k: int, bins: int
) -> None:
    """The dynamic programme's layers by halving the split ranges find the same split as the whole table, on skewed
    losses, heavy tails, many equal values and negative values."""
    generator = torch.Generator().manual_seed(seed)
    if shape == "normal":
        values = torch.randn(size, generator=generator, dtype=torch.float64) * 3 - 1
    elif shape == "ties":
        values = (torch.rand(size, generator=generator) * 5).round(decimals=1)
    else:
        values = torch.empty(size).exponential_(generator=generator) ** (3 if shape == "cubed" else 1)
    values = values.sort().values
    k = min(k, size)
    sums = seta_module._PrefixSums(values, float(values.to(torch.float64).mean()))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(seta_module, "_FULL_TABLE_EDGES", 10**9)
        by_table = seta_module._optimal_segments(values, sums, k, bins)
        patch.setattr(seta_module, "_FULL_TABLE_EDGES", 0)
        by_halving = seta_module._optimal_segments(values, sums, k, bins)
    assert torch.equal(by_halving, by_table)


def _sse(values: list[float], ends: list[int]) -> float:
    total, start = 0.0, 0
    for end in ends:
        if end > start:
            part = values[start:end]
            centre = sum(part) / len(part)
            total += sum((v - centre) ** 2 for v in part)
        start = end
    return total


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.floats(min_value=0.0, max_value=10.0, allow_nan=False), min_size=3, max_size=10),
    k=st.integers(min_value=2, max_value=4),
)
def test_kmeans_1d_reaches_the_optimum_on_small_inputs(values: list[float], k: int) -> None:
    import itertools

    values = sorted(values)
    k = min(k, len(values))
    if len(set(values)) < k:
        return
    ends = kmeans_1d(torch.tensor(values, dtype=torch.float64), k).tolist()
    optimum = min(_sse(values, [*cuts, len(values)]) for cuts in itertools.combinations(range(1, len(values)), k - 1))
    assert _sse(values, ends) <= optimum + 1e-9


# ---------------------------------------------------------------------------------------------------
# The window and one decision.
def test_window_slides_from_easy_to_hard_and_wraps() -> None:
    # k = 5, w = round(0.9 * 5) = 4: two positions
    assert [window_start(t, 5, 4) for t in range(1, 6)] == [1, 0, 1, 0, 1]
    # k = 10, w = 5: six positions, easy (0) to hard (5), then again
    assert [window_start(t, 10, 5) for t in range(1, 9)] == [1, 2, 3, 4, 5, 0, 1, 2]
    assert [window_start(t, 3, 3) for t in range(4)] == [0, 0, 0, 0]


def test_seta_select_hand_computed() -> None:
    # 9 samples, all kept by the random step; losses form three obvious clusters
    scores = torch.tensor([5.0, 0.1, 9.0, 0.2, 5.1, 9.2, 0.0, 4.9, 9.1])
    easy, middle, hard = [1, 3, 6], [0, 4, 7], [2, 5, 8]
    for iteration, expected in [(1, middle), (2, hard), (3, easy), (4, middle)]:
        decision = seta_select(scores, 9, 3, 1, iteration, make_generator(0, iteration))
        assert sorted(decision.indices.tolist()) == expected
        assert decision.cluster_sizes.tolist() == [3, 3, 3]
    two = seta_select(scores, 9, 3, 2, 1, make_generator(0, 1))  # w = 2: windows [0, 1] and [1, 2]
    assert sorted(two.indices.tolist()) == sorted(middle + hard) and two.start == 1
    assert (two.low, two.high) == (pytest.approx(4.9), pytest.approx(9.2))
    # iteration 0 (first pruned epoch) and None (partial annealing) train the random subset only
    for iteration in (0, None):
        plain = seta_select(scores, 4, 3, 1, iteration, make_generator(0, 7))
        assert plain.indices.numel() == 4 and plain.indices.unique().numel() == 4 and plain.start == -1


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**31 - 1),
    size=st.integers(min_value=6, max_value=3000),
    levels=st.sampled_from([None, 4, 40]),
    iteration=st.integers(min_value=1, max_value=7),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_value_sort_selects_what_the_stable_sort_selects(
    seed: int, size: int, levels: int | None, iteration: int, dtype: torch.dtype
) -> None:
    # The window found on the sorted losses alone and read back by value must train the same samples, with the
    # same clusters, as the stable sort of the randomly ordered subset (the path that breaks ties at random),
    # unless a window edge cuts equal losses (then the ties are drawn at random).
    generator = torch.Generator().manual_seed(seed)
    scores = torch.empty(size).exponential_(generator=generator)
    if levels is not None:
        scores = torch.floor(scores * levels / 4) / levels  # many equal losses
    scores = (scores - 0.5).to(dtype)  # negative losses too
    keep = max(5, size * 3 // 4)
    fast = seta_select(scores, keep, 5, 3, iteration, make_generator(seed, 1))
    draw = make_generator(seed, 1)
    subset = mask_positions(random_choice_mask(size, keep, draw), dtype=torch.int64)
    stable = seta_module._window_by_stable_sort(scores, subset, 5, 3, iteration, draw)
    assert fast.cluster_sizes.tolist() == stable.cluster_sizes.tolist() and fast.start == stable.start
    assert fast.indices.unique().numel() == fast.indices.numel()
    edge_cuts_ties = fast.indices.numel() != keep and (
        bool((scores[fast.indices.long()] == fast.low).sum() != (scores[subset] == fast.low).sum())
        or bool((scores[fast.indices.long()] == fast.high).sum() != (scores[subset] == fast.high).sum())
    )
    if not edge_cuts_ties:
        assert bool((fast.indices[1:] > fast.indices[:-1]).all())  # read back from a mask: index order
        assert sorted(fast.indices.tolist()) == sorted(stable.indices.tolist())
        assert (fast.low, fast.high) == (stable.low, stable.high) or fast.low != fast.low


def test_value_sort_on_a_large_table_with_a_sparse_left_out_draw() -> None:
    # 100_000 samples keeping 90%: the random step draws the 10_000 left out sparsely; same window as the stable sort.
    generator = torch.Generator().manual_seed(11)
    scores = torch.empty(100_000).exponential_(generator=generator)
    for iteration in (1, 2):
        fast = seta_select(scores, 90_000, 5, 4, iteration, make_generator(2, iteration))
        draw = make_generator(2, iteration)
        subset = mask_positions(random_choice_mask(100_000, 90_000, draw), dtype=torch.int64)
        stable = seta_module._window_by_stable_sort(scores, subset, 5, 4, iteration, draw)
        assert fast.cluster_sizes.tolist() == stable.cluster_sizes.tolist()
        assert torch.equal(fast.indices.long(), stable.indices.sort().values)
        assert (fast.low, fast.high) == (stable.low, stable.high)


def test_equal_losses_cut_by_the_window_are_drawn_at_random() -> None:
    # All losses equal: fewer distinct values than clusters, so k-means cuts equal slices and the window
    # (2 of 4 slices) must take a uniformly random half of the kept samples.
    scores = torch.full((40,), 0.5)
    hits = torch.zeros(40)
    for draw in range(3000):
        decision = seta_select(scores, 40, 4, 2, 1, make_generator(3, draw))
        assert decision.indices.numel() == 20 and decision.cluster_sizes.tolist() == [10, 10, 10, 10]
        hits[decision.indices.long()] += 1
    assert float((hits / 3000 - 0.5).abs().max()) < 0.05


def test_negative_losses_are_clustered_too() -> None:
    scores = torch.tensor([-5.0, -4.9, 0.0, 0.1, 5.0, 5.2])
    decision = seta_select(scores, 6, 3, 1, 1, make_generator(0, 1))
    assert sorted(decision.indices.tolist()) == [2, 3] and decision.cluster_sizes.tolist() == [2, 2, 2]


def test_seta_select_random_step_is_uniform() -> None:
    hits = torch.zeros(20)
    for draw in range(4000):
        hits[seta_select(torch.rand(20), 5, 2, 1, None, make_generator(1, draw)).indices] += 1
    assert hits.sum() == 4000 * 5
    assert float((hits / 4000 - 0.25).abs().max()) < 0.03  # each sample kept with probability 5/20


# ---------------------------------------------------------------------------------------------------
# The callback.
def test_schedule_sizes_and_exact_saved_fraction() -> None:
    n = 200
    method = SeTa(prune_ratio=0.2, num_groups=4, window_scale=0.5, delta=0.875, seed=3)  # w = 2, m = 160
    method.prepare(n, max_epochs=10)
    assert (method.keep, method.window, method.anneal_from) == (160, 2, 8)  # floor(8.75) = 8, as the reference
    losses = torch.linspace(0.01, 4.0, n)
    method.update(harvest(0, torch.arange(n), losses))  # every loss known (constant over the run)
    sizes = []
    for epoch in range(10):
        selection = method.decide(epoch)
        indices = selection.indices
        assert indices.unique().numel() == indices.numel()
        stats = selection.stats
        assert stats["window_share"] * 160 == pytest.approx(indices.numel())
        if epoch in (0, 8, 9):
            assert indices.numel() == 160 and stats["window_start"] == -1.0
        else:
            assert stats["window_start"] == float(window_start(epoch, 4, 2))
            window = losses[indices]
            assert float(window.min()) == pytest.approx(stats["window_low_loss"])
            assert float(window.max()) == pytest.approx(stats["window_high_loss"])
        assert stats["annealing"] == float(epoch >= 8)
        method.update(harvest(epoch, indices, losses[indices]))
        sizes.append(indices.numel())
    method._trained_counts = sizes  # what the harvests of a fit record
    method.num_samples = n
    assert method.saved_fraction == pytest.approx(1 - sum(sizes) / (n * 10))
    # linearly spaced losses give clusters of about equal size: the window holds about w/k of m
    assert sizes[1] == pytest.approx(80, abs=4)


def test_window_moves_towards_harder_samples() -> None:
    n = 400
    method = SeTa(prune_ratio=0.0, num_groups=10, window_scale=0.5, delta=1.0, seed=0)  # w = 5, six positions
    method.prepare(n)
    losses = torch.rand(n, generator=torch.Generator().manual_seed(0)) * 3
    method.update(harvest(0, torch.arange(n), losses))
    lows = [method.decide(epoch).stats["window_low_loss"] for epoch in range(1, 6)]
    assert lows == sorted(lows) and lows[0] > 0.0  # epoch 1 starts at cluster 1; the window then moves up
    assert method.decide(6).stats["window_start"] == 0.0  # and wraps around to the easy end


def test_unknown_losses_are_clustered_at_the_mean_of_the_known() -> None:
    n = 12
    method = SeTa(prune_ratio=0.0, num_groups=3, window_scale=1 / 3, delta=1.0, seed=0)  # w = 1
    method.prepare(n)
    known = torch.arange(8)
    method.update(harvest(0, known, torch.tensor([0.0, 0.0, 0.0, 0.0, 10.0, 10.0, 10.0, 10.0])))
    # unknown samples 8..11 take the mean 5.0: the middle cluster (window start 1 at epoch 1)
    assert sorted(method.decide(1).indices.tolist()) == [8, 9, 10, 11]
    assert sorted(method.decide(2).indices.tolist()) == [4, 5, 6, 7]
    assert sorted(method.decide(3).indices.tolist()) == [0, 1, 2, 3]


def test_decisions_are_pure_functions_of_seed_epoch_and_scores() -> None:
    losses = torch.rand(300, generator=torch.Generator().manual_seed(1))
    picks = []
    for _ in range(2):
        method = SeTa(prune_ratio=0.3, num_groups=6, window_scale=0.5, seed=11)
        method.prepare(300, max_epochs=8)
        method.update(harvest(0, torch.arange(300), losses))
        picks.append([method.decide(epoch).indices for epoch in (1, 2, 7)])
    for first, second in zip(*picks, strict=True):
        assert torch.equal(first, second)


def test_validation_errors() -> None:
    assert METHODS["seta"] is SeTa
    with pytest.raises(ValueError, match="prune_ratio"):
        SeTa(prune_ratio=0.95)
    with pytest.raises(ValueError, match="num_groups"):
        SeTa(num_groups=0)
    with pytest.raises(ValueError, match="window_scale"):
        SeTa(num_groups=4, window_scale=0.1)  # round(0.4) = 0 clusters
    with pytest.raises(ValueError, match="delta"):
        SeTa(delta=0.0)
    with pytest.raises(ValueError, match="max_epochs"):
        SeTa().prepare(100)
    with pytest.raises(ValueError, match="num_groups"):
        SeTa(prune_ratio=0.5, num_groups=10).prepare(15, max_epochs=4)  # keeps 7 < 10
    SeTa(delta=1.0).prepare(100)  # no annealing: max_epochs not needed


def test_lightning_fit_logs_the_saved_fraction() -> None:
    method = SeTa(prune_ratio=0.25, num_groups=4, window_scale=0.5, delta=0.8, seed=0)  # m = 72 of 96, w = 2
    trainer = pl.Trainer(callbacks=[method], **trainer_kwargs(max_epochs=5))
    model = ToyModel()
    trainer.fit(model, datamodule=toy_datamodule(96, 8))
    sizes = [int(entry["epoch_samples"]) for entry in method.history]
    assert sizes[0] == 72 and sizes[4] == 72  # first epoch and the annealing epoch (4 >= floor(0.8 * 5))
    assert all(0 < size < 72 for size in sizes[1:4])
    assert sum(model.seen_batches) == sum(sizes)
    assert method.saved_fraction == pytest.approx(1 - sum(sizes) / (96 * 5))
    assert method.history[-1]["saved_fraction"] == pytest.approx(method.saved_fraction)
    assert bool(method.scored.any()) and method.scores.dtype == torch.float32


# ---------------------------------------------------------------------------------------------------
# Our k-means against a plain one (run as a script).
def _plain_kmeans(values: Tensor, k: int, generator: torch.Generator, restarts: int = 10) -> tuple[Tensor, float]:
    """Lloyd's algorithm with k-means++ seeding, best of ``restarts``: cluster rank (easy..hard) per value."""
    x = values.to(torch.float64)
    best: tuple[Tensor, float] | None = None
    for _ in range(restarts):
        centres = x[torch.randint(x.numel(), (1,), generator=generator)]
        for _ in range(1, k):
            distance = ((x[:, None] - centres[None, :]) ** 2).min(1).values
            pick = torch.multinomial(distance / distance.sum(), 1, generator=generator)
            centres = torch.cat([centres, x[pick]])
        for _ in range(300):
            labels = ((x[:, None] - centres[None, :]) ** 2).argmin(1)
            sums = torch.zeros(k, dtype=torch.float64).index_add_(0, labels, x)
            counts = torch.bincount(labels, minlength=k)
            new = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
            if torch.equal(new, centres):
                break
            centres = new
        inertia = float(((x - centres[labels]) ** 2).sum())
        rank = torch.argsort(torch.argsort(centres))[labels]
        if best is None or inertia < best[1]:
            best = (rank, inertia)
    assert best is not None
    return best


def _ours(values: Tensor, k: int) -> tuple[Tensor, float]:
    sorted_values, order = torch.sort(values.to(torch.float64), stable=True)
    ends = kmeans_1d(sorted_values, k)
    sizes = torch.diff(torch.cat([torch.zeros(1, dtype=torch.int64), ends]))
    rank_sorted = torch.repeat_interleave(torch.arange(k), sizes)
    rank = torch.empty_like(rank_sorted)
    rank[order] = rank_sorted
    centres = torch.zeros(k, dtype=torch.float64).index_add_(0, rank, values.to(torch.float64))
    centres /= sizes.clamp_min(1)
    return rank, float(((values.to(torch.float64) - centres[rank]) ** 2).sum())


def _mlp_losses(epochs: int, samples: int = 20000) -> Tensor:
    """Per-sample training losses of a small MLP after ``epochs`` on Fashion-MNIST (seeded)."""
    import torch.nn.functional as F

    from lightning_pruning.experiment import load_dataset
    from lightning_pruning.models import build_backbone

    train, _ = load_dataset("fashion_mnist")
    torch.manual_seed(0)
    images, targets = train.images[:samples], train.targets[:samples]
    model = build_backbone("mlp", 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(epochs):
        for batch in torch.randperm(samples).split(128):
            optimizer.zero_grad()
            F.cross_entropy(model(images[batch]), targets[batch]).backward()
            optimizer.step()
    with torch.no_grad():
        return F.cross_entropy(model(images), targets, reduction="none")


if __name__ == "__main__":
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    cases = {
        "log-normal (sigma 1)": torch.randn(20000, generator=generator).exp(),
        "exponential": -torch.rand(20000, generator=generator).log(),
        "Fashion-MNIST MLP, 1 epoch": _mlp_losses(1),
        "Fashion-MNIST MLP, 4 epochs": _mlp_losses(4),
    }
    print("| losses (20,000 samples) | k | same cluster as plain k-means | inertia ours / plain |")
    print("|---|---|---|---|")
    for label, losses in cases.items():
        for k in (5, 10):
            ours, ours_inertia = _ours(losses, k)
            plain, plain_inertia = _plain_kmeans(losses, k, torch.Generator().manual_seed(k))
            agree = float((ours == plain).double().mean())
            print(f"| {label} | {k} | {agree:.4f} | {ours_inertia / plain_inertia:.4f} |")
