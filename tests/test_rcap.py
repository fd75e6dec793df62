"""RCAP: the closed-form class split, its integer rounding, the within-class sampling and the callback."""

from __future__ import annotations

import io
import itertools
import math
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import ToyDataset, ToyModel, toy_datamodule, trainer_kwargs
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.utils.data import Dataset

from lightning_pruning import PruningDataModule
from lightning_pruning.data.labels import LabelsNotFoundError, contiguous_labels
from lightning_pruning.methods.base import Harvest
from lightning_pruning.methods.rcap import (
    RCAP,
    class_budgets,
    class_fractions,
    class_loss_signal,
    class_subset_mass,
    gumbel_noise,
    sample_within_classes,
    segment_sums,
)
from lightning_pruning.selection import ClassLayout, make_generator

# Fashion-MNIST-LT class profile (imbalance ratio 100 over 10 classes).
FMNIST_LT_COUNTS = torch.tensor([math.floor(6000 * (1 / 100) ** (c / 9)) for c in range(10)])


def objective(signal: Tensor, alpha: Tensor) -> float:
    """sum_j L_j / alpha_j, the quantity the closed form minimises."""
    return float((signal.double() / alpha.double()).sum())


def reference_rcap_budgets(signal: Tensor, counts: Tensor, total: int) -> Tensor:
    """THE RELEASED CODE'S FLAWED RULE (test-only, to quantify it): after saturating a class it re-splits
    the FULL budget over the other classes (not the remaining one), then rounds every class up (ceil)."""
    signal, size = signal.double(), counts.double()
    ratio, weight = (signal / size).sqrt(), (signal * size).sqrt()
    alpha = total * ratio / weight.sum()
    saturated = torch.zeros(counts.numel(), dtype=torch.bool)
    while bool((alpha > 1).any()):
        saturated |= alpha > 1
        alpha = torch.where(saturated, 1.0, total * ratio / weight[~saturated].sum())
    return torch.ceil(alpha * size).to(torch.int64)


def grouped(values: Tensor, layout: ClassLayout) -> Tensor:
    return values[layout.order]


# ----------------------------------------------------------------------------------------------------
# The closed form with water-filling.
def test_unsaturated_split_is_the_closed_form() -> None:
    signal, counts = torch.tensor([4.0, 1.0, 9.0]), torch.tensor([100, 50, 200])
    alpha, saturated = class_fractions(signal, counts, 60)
    expected = 60 * (signal / counts).sqrt() / (signal * counts).sqrt().sum()
    torch.testing.assert_close(alpha, expected.double())
    assert not bool(saturated.any())


def test_saturation_re_splits_the_remaining_budget_by_hand() -> None:
    # Equal signals: square-root-frequency. Round 1 gives the 1-sample class 30 / (10 + sqrt(10) + 1) > 1,
    # so it is kept whole and the remaining 29 samples are split over the other two classes.
    alpha, saturated = class_fractions(torch.ones(3), torch.tensor([100, 10, 1]), 30)
    root = 10 + math.sqrt(10)
    torch.testing.assert_close(
        alpha, torch.tensor([29 / root / 10, 29 / root / math.sqrt(10), 1.0], dtype=torch.float64)
    )
    assert saturated.tolist() == [False, False, True]
    assert float((alpha * torch.tensor([100, 10, 1])).sum()) == pytest.approx(30)


def test_closed_form_beats_a_fine_grid_of_feasible_splits() -> None:
    """Brute force over alpha_1, alpha_2 on a grid (alpha_3 fixed by the budget) on random 3-class cases,
    several of which saturate."""
    generator = torch.Generator().manual_seed(0)
    grid = torch.linspace(1e-3, 1.0, 1000, dtype=torch.float64)
    a1, a2 = torch.meshgrid(grid, grid, indexing="ij")
    saturating_cases = 0
    for _ in range(12):
        counts = torch.randint(1, 60, (3,), generator=generator)
        signal = torch.rand(3, generator=generator, dtype=torch.float64) * 5 + 0.01
        total = int(torch.randint(3, int(counts.sum()), (1,), generator=generator))
        alpha, saturated = class_fractions(signal, counts, total)
        saturating_cases += int(saturated.any())
        n = counts.double()
        a3 = (total - a1 * n[0] - a2 * n[1]) / n[2]
        feasible = (a3 > 0) & (a3 <= 1)
        values = signal[0] / a1 + signal[1] / a2 + signal[2] / a3.clamp_min(1e-12)
        best = float(values[feasible].min())
        ours = objective(signal, alpha)
        assert ours <= best + 1e-9
        assert ours >= best * (1 - 2e-3)  # the grid gets close: the closed form is the optimum, not a bound
        assert float((alpha * n).sum()) == pytest.approx(total)
        assert bool((alpha > 0).all()) and bool((alpha <= 1).all())
    assert saturating_cases >= 3


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 200), min_size=1, max_size=8),
    signal_seed=st.integers(0, 2**31 - 1),
    keep=st.floats(0.0, 1.0),
)
def test_closed_form_satisfies_the_optimality_conditions(counts: list[int], signal_seed: int, keep: float) -> None:
    """KKT: every unsaturated class has the same L_j / (n_j alpha_j^2); saturated ones have at least that."""
    sizes = torch.tensor(counts)
    signal = torch.rand(len(counts), generator=torch.Generator().manual_seed(signal_seed), dtype=torch.float64) + 0.05
    total = round(keep * sum(counts))
    alpha, saturated = class_fractions(signal, sizes, total)
    assert float((alpha * sizes).sum()) == pytest.approx(total, abs=1e-6)
    assert bool((alpha >= 0).all()) and bool((alpha <= 1 + 1e-12).all())
    if total == 0:
        return
    marginal = signal / (sizes.double() * alpha**2)
    free = ~saturated
    if bool(free.any()):
        torch.testing.assert_close(marginal[free], marginal[free].mean().expand(int(free.sum())), rtol=1e-9, atol=0)
        if bool(saturated.any()):
            assert float(marginal[saturated].min()) >= float(marginal[free].mean()) * (1 - 1e-9)


def test_zero_and_equal_signals() -> None:
    counts = torch.tensor([40, 10, 50])
    # All zero: every split is optimal; the budget is still split (square-root-frequency).
    alpha, _ = class_fractions(torch.zeros(3), counts, 30)
    torch.testing.assert_close(alpha, class_fractions(torch.ones(3), counts, 30)[0])
    # A zero-signal class gets no share of the continuous split.
    alpha, _ = class_fractions(torch.tensor([0.0, 1.0, 1.0]), counts, 30)
    assert float(alpha[0]) == 0.0 and float((alpha * counts).sum()) == pytest.approx(30)
    # Equal losses under the "loss" signal (L_j = n_j * l): proportional split.
    alpha, _ = class_fractions(counts.double() * 0.7, counts, 30)
    torch.testing.assert_close(alpha, torch.full((3,), 0.3, dtype=torch.float64))


def test_full_budget_keeps_everything_and_empty_classes_get_nothing() -> None:
    alpha, saturated = class_fractions(torch.tensor([1.0, 3.0, 2.0]), torch.tensor([5, 0, 7]), 12)
    assert alpha.tolist() == [1.0, 0.0, 1.0] and saturated.tolist() == [True, False, True]
    with pytest.raises(ValueError, match="cannot keep"):
        class_fractions(torch.ones(2), torch.tensor([3, 3]), 7)


# ----------------------------------------------------------------------------------------------------
# Integer budgets.
@settings(max_examples=80, deadline=None)
@given(
    counts=st.lists(st.integers(0, 300), min_size=1, max_size=12).filter(lambda c: sum(c) > 0),
    signal_seed=st.integers(0, 2**31 - 1),
    keep=st.floats(0.0, 1.0),
    zero_some=st.booleans(),
)
def test_integer_budgets_are_exact_and_bounded(
    counts: list[int], signal_seed: int, keep: float, zero_some: bool
) -> None:
    sizes = torch.tensor(counts)
    generator = torch.Generator().manual_seed(signal_seed)
    signal = torch.rand(len(counts), generator=generator, dtype=torch.float64)
    if zero_some:
        signal = torch.where(torch.rand(len(counts), generator=generator) < 0.5, 0.0, signal)
    total = max(1, round(keep * sum(counts)))
    per_class = class_budgets(class_fractions(signal, sizes, total)[0], sizes, total)
    assert int(per_class.sum()) == total
    assert bool((per_class >= 0).all()) and bool((per_class <= sizes).all())
    present = int((sizes > 0).sum())
    if total >= present:
        assert bool((per_class[sizes > 0] >= 1).all())


def test_long_tailed_budgets() -> None:
    counts = FMNIST_LT_COUNTS
    total = round(0.1 * int(counts.sum()))
    alpha, _ = class_fractions(torch.ones(10), counts, total)
    per_class = class_budgets(alpha, counts, total)
    assert int(per_class.sum()) == total
    # Square-root-frequency: the rarest class keeps a far larger share than the most frequent one.
    assert float(per_class[9] / counts[9]) > 5 * float(per_class[0] / counts[0])
    # Tiny budget (fewer samples than classes): exact, no class forced.
    assert int(class_budgets(class_fractions(torch.ones(10), counts, 4)[0], counts, 4).sum()) == 4


def test_single_class_and_one_per_class() -> None:
    single = torch.tensor([10])
    assert class_budgets(class_fractions(torch.ones(1), single, 3)[0], single, 3).tolist() == [3]
    counts = torch.tensor([1000, 1, 1, 1])
    per_class = class_budgets(class_fractions(torch.tensor([1.0, 0.0, 0.0, 0.0]), counts, 4)[0], counts, 4)
    assert per_class.tolist() == [1, 1, 1, 1]


@pytest.mark.parametrize(("keep", "reference_total"), [(0.1, 1495), (0.3, 4795), (0.5, 9287), (0.7, 14886)])
def test_reference_rule_overshoots_the_budget_on_the_long_tailed_profile(keep: float, reference_total: int) -> None:
    """Quantifies the released code's budget overshoot (the numbers are reported in docs/methods/rcap.md)."""
    counts, signal = FMNIST_LT_COUNTS, torch.ones(10)  # epoch 0 (L_j = 1)
    num_samples = int(counts.sum())
    total = round(keep * num_samples)
    reference = reference_rcap_budgets(signal, counts, total)
    ours = class_budgets(class_fractions(signal, counts, total)[0], counts, total)
    assert num_samples == 14886
    assert int(ours.sum()) == total
    assert int(reference.sum()) == reference_total  # at keep 0.7: all 14886 samples instead of 10420


def test_reference_ceil_overshoots_on_a_balanced_profile() -> None:
    # And on a balanced profile the ceil alone overshoots by up to C - 1.
    balanced = torch.full((10,), 333)
    assert int(reference_rcap_budgets(torch.ones(10), balanced, 1001).sum()) == 1010


# ----------------------------------------------------------------------------------------------------
# Class signals.
def test_class_signals_by_hand() -> None:
    layout = ClassLayout.from_labels(torch.tensor([0, 1, 0, 1, 1]))
    scores = torch.tensor([0.5, 1.0, 1.5, 2.0, 0.0])
    torch.testing.assert_close(
        class_loss_signal(grouped(scores, layout), layout.counts), torch.tensor([2.0, 3.0]).double()
    )
    previous = torch.tensor([True, False, False, True, True])
    mass = class_subset_mass(grouped(scores, layout), 0.5, layout.counts, grouped(previous, layout))
    e = torch.exp(scores.double() / 0.5)
    expected = torch.stack([e[0] / (e[0] + e[2]), (e[3] + e[4]) / (e[1] + e[3] + e[4])])
    torch.testing.assert_close(mass, expected, rtol=1e-6, atol=1e-7)
    # S_j = whole class: L_j = 1.
    assert class_subset_mass(grouped(scores, layout), 0.5, layout.counts, None).tolist() == [1.0, 1.0]
    whole = class_subset_mass(grouped(scores, layout), 0.5, layout.counts, torch.ones(5, dtype=torch.bool))
    torch.testing.assert_close(whole, torch.ones(2, dtype=torch.float64))


def test_subset_mass_is_stable_for_small_beta() -> None:
    # Exponents span 500: a single global shift would underflow class 1 entirely (0 / 0).
    layout = ClassLayout.from_labels(torch.tensor([0, 0, 1, 1]))
    scores = torch.tensor([5.0, 4.99, 0.02, 0.0])
    previous = torch.tensor([False, True, True, False])
    mass = class_subset_mass(scores, 0.01, layout.counts, previous)
    expected = torch.tensor([1 / (1 + math.exp(1.0)), 1 / (1 + math.exp(-2.0))], dtype=torch.float64)
    torch.testing.assert_close(mass, expected, rtol=1e-4, atol=0)  # float32 scores


def test_small_beta_subset_mass_with_many_classes_matches_a_per_class_shift() -> None:
    generator = torch.Generator().manual_seed(4)
    counts = torch.cat([torch.tensor([0, 5000]), torch.randint(1, 6, (300,), generator=generator)])
    scores = torch.rand(int(counts.sum()), generator=generator) * 3
    previous = torch.rand(scores.numel(), generator=generator) < 0.5
    beta = 0.02  # exponents span 150: the per-class shift path
    expected = []
    for part, kept in zip(scores.split(counts.tolist()), previous.split(counts.tolist()), strict=True):
        weight = torch.exp((part.double() - part.double().max()) / beta) if part.numel() else part.double()
        expected.append(float(weight[kept].sum() / weight.sum()) if part.numel() else 0.0)
    mass = class_subset_mass(scores, beta, counts, previous)
    torch.testing.assert_close(mass, torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-12)


def test_segment_sums() -> None:
    assert segment_sums(torch.arange(6.0), torch.tensor([2, 0, 4])).tolist() == [1.0, 0.0, 14.0]


@pytest.mark.parametrize("strided", [False, True])  # numpy's reduceat, or torch's segment_reduce for a strided view
def test_segment_sums_with_empty_classes_first_between_and_last(strided: bool) -> None:
    counts = torch.tensor([0, 2, 0, 300, 257, 0])
    values = torch.rand(559, generator=torch.Generator().manual_seed(2)) * 3
    table = torch.stack([values, values], dim=1)[:, 0] if strided else values
    assert table.is_contiguous() is not strided
    expected = torch.stack([part.double().sum() for part in values.split(counts.tolist())])
    sums = segment_sums(table, counts)
    assert sums.dtype == torch.float64 and sums[[0, 2, 5]].tolist() == [0.0, 0.0, 0.0]
    torch.testing.assert_close(sums, expected, rtol=1e-6, atol=1e-9)


def test_segment_sums_of_large_and_many_classes_match_float64() -> None:
    # Classes spanning several 4096-blocks, empty ones and 500 tiny ones, in one call.
    counts = torch.cat([torch.tensor([20_000, 0, 4096, 4097, 1]), torch.full((500,), 3)])
    values = torch.rand(int(counts.sum()), generator=torch.Generator().manual_seed(0)) * 7
    expected = torch.stack([part.double().sum() for part in values.split(counts.tolist())])
    torch.testing.assert_close(segment_sums(values, counts), expected, rtol=1e-6, atol=1e-9)
    few = torch.tensor([70_000, 0, 80_000])  # few large classes: the torch.sum-per-class path
    values = torch.rand(150_000, generator=torch.Generator().manual_seed(1))
    expected = torch.stack([part.double().sum() for part in values.split(few.tolist())])
    torch.testing.assert_close(segment_sums(values, few), expected, rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------------------------------
# Within-class sampling.
def test_tiny_beta_takes_the_highest_scores_of_each_class() -> None:
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0])
    scores = torch.tensor([0.1, 0.9, 0.7, 0.3, 0.5, 0.6, 0.2])
    layout = ClassLayout.from_labels(labels)
    picked = sample_within_classes(grouped(scores, layout), 1e-3, layout, torch.tensor([2, 1]), make_generator(0, 0))
    assert sorted(picked.tolist()) == [1, 2, 4]


def loop_sample_within_classes(
    grouped_scores: Tensor, beta: float, layout: ClassLayout, per_class: Tensor, generator: torch.Generator
) -> Tensor:
    """The earlier implementation (one topk per class in a Python loop), kept to pin the draws."""
    order = layout.order.long()
    keys = gumbel_noise(order.numel(), generator).add_(grouped_scores, alpha=1.0 / beta)
    picks = []
    for start, size, take in zip(layout.offsets.tolist(), layout.counts.tolist(), per_class.tolist(), strict=True):
        picks.append(order[start + torch.topk(keys[start : start + size], take).indices])
    return torch.cat(picks)


@pytest.mark.parametrize("num_classes", [3, 400])
def test_vectorised_sampling_makes_the_same_draws_as_the_per_class_loop(num_classes: int) -> None:
    # Same generator, same Gumbel keys, same top-k of every class: the same subset as before.
    generator = torch.Generator().manual_seed(num_classes)
    labels = torch.randint(0, num_classes, (6000,), generator=generator)
    layout = ClassLayout.from_labels(labels)
    scores = grouped(torch.rand(6000, generator=generator) * 2, layout)
    per_class = torch.div(layout.counts * torch.randint(0, 101, (num_classes,), generator=generator), 100).long()
    for seed in range(3):
        new = sample_within_classes(scores, 0.5, layout, per_class, make_generator(seed, 1))
        old = loop_sample_within_classes(scores, 0.5, layout, per_class, make_generator(seed, 1))
        # int32 dataset indices below 2**31 samples (half the memory of int64).
        assert new.dtype == torch.int32 and torch.equal(new.long().sort().values, old.sort().values)


def test_rcap_tables_hold_at_most_16_bytes_per_sample() -> None:
    labels = torch.randint(0, 1000, (50_000,), generator=torch.Generator().manual_seed(0))
    method = make_rcap(labels)
    method.update(harvest(torch.arange(50_000), torch.rand(50_000)))
    layout = method.class_layout
    assert layout is not None
    tensors = [value for value in vars(method).values() if isinstance(value, Tensor)]
    tensors += [layout.order, layout.counts, layout.offsets]
    assert sum(tensor.nbytes for tensor in tensors) / 50_000 <= 16.0


def exact_inclusion(weights: list[float], k: int) -> list[float]:
    """Inclusion probabilities of sequential sampling without replacement, by enumerating every draw order."""
    inclusion = [0.0] * len(weights)
    for draw in itertools.permutations(range(len(weights)), k):
        probability, left = 1.0, sum(weights)
        for item in draw:
            probability *= weights[item] / left
            left -= weights[item]
        for item in draw:
            inclusion[item] += probability
    return inclusion


@pytest.mark.parametrize("take", [1, 2, 3])
def test_sampling_matches_softmax_without_replacement(take: int) -> None:
    # Two classes; class 1 (4 samples) is the one measured. beta=0.5 makes the weights very unequal.
    labels = torch.tensor([0, 1, 1, 0, 1, 1])
    scores = torch.tensor([0.3, 0.0, 0.4, 0.9, 1.0, 2.0])
    beta = 0.5
    layout = ClassLayout.from_labels(labels)
    members = layout.members(1).tolist()  # [1, 2, 4, 5]
    weights = [math.exp(float(scores[i]) / beta) for i in members]
    exact = exact_inclusion(weights, take)
    draws = 6000
    hits = torch.zeros(6)
    generator = torch.Generator().manual_seed(123)
    keys = grouped(scores, layout)
    per_class = torch.tensor([1, take])
    for _ in range(draws):
        picked = sample_within_classes(keys, beta, layout, per_class, generator)
        hits[picked] += 1
    frequencies = (hits / draws)[members]
    # 4.5 standard errors of a binomial frequency.
    for frequency, probability in zip(frequencies.tolist(), exact, strict=True):
        assert abs(frequency - probability) < 4.5 * math.sqrt(probability * (1 - probability) / draws) + 1e-9
    # The weights are far from uniform, so the test would catch uniform sampling.
    assert max(exact) - min(exact) > 0.3
    assert float(hits[[0, 3]].sum()) == draws  # class 0 always gives exactly one sample


@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=1, max_size=60),
    keep=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_sampling_properties(labels: list[int], keep: float, seed: int) -> None:
    mapped, _ = contiguous_labels(torch.tensor(labels))
    layout = ClassLayout.from_labels(mapped)
    scores = torch.rand(len(labels), generator=torch.Generator().manual_seed(seed)) * 2
    total = max(1, round(keep * len(labels)))
    per_class = class_budgets(
        class_fractions(torch.ones(layout.num_classes), layout.counts, total)[0], layout.counts, total
    )
    picked = sample_within_classes(grouped(scores, layout), 0.7, layout, per_class, make_generator(seed, 1))
    again = sample_within_classes(grouped(scores, layout), 0.7, layout, per_class, make_generator(seed, 1))
    assert picked.numel() == total and torch.equal(picked, again)
    assert picked.unique().numel() == total and int(picked.min()) >= 0 and int(picked.max()) < len(labels)
    assert torch.equal(torch.bincount(mapped[picked], minlength=layout.num_classes), per_class)


# ----------------------------------------------------------------------------------------------------
# The callback without a Trainer.
def make_rcap(labels: Tensor, **kwargs: Any) -> RCAP:
    method = RCAP(seed=0, **kwargs)
    mapped, values = contiguous_labels(labels)
    method.prepare(labels.numel(), labels=mapped, class_values=values)
    return method


def harvest(indices: Tensor, losses: Tensor, epoch: int = 0) -> Harvest:
    zeros = torch.zeros_like(indices)
    return Harvest(epoch=epoch, indices=indices, losses=losses, batch_idx=zeros, steps=zeros)


def test_epoch_zero_is_square_root_frequency_and_uniform() -> None:
    labels = torch.repeat_interleave(torch.arange(3), torch.tensor([64, 16, 4]))
    method = make_rcap(labels, prune_ratio=0.5)
    assert float(method.grouped_scores[0]) == pytest.approx(math.log(3))  # never seen: the clip
    selection = method.select(0, make_generator(0, 0))
    # sqrt-frequency: 42 * (8, 4, 2) / 14 = (24, 12, 6), but class 2 has only 4 samples: it is kept whole
    # and the remaining 38 are split 8 : 4 = (25.33, 12.67), rounded to (25, 13).
    assert torch.bincount(labels[selection.indices]).tolist() == [25, 13, 4]
    assert method.class_budgets == [[25, 13, 4]] and method.budget_epochs == [0] and method.saturated == [[2]]
    assert selection.stats == {
        "budget_class_0": 25.0,
        "budget_class_1": 13.0,
        "budget_class_2": 4.0,
        "saturated_classes": 1.0,
        "budget_total": 42.0,
    }


def test_scores_are_overwritten_clipped_and_stale() -> None:
    labels = torch.tensor([0, 1, 0, 1])
    method = make_rcap(labels, clip=2.0)
    method.update(harvest(torch.tensor([0, 1]), torch.tensor([5.0, 0.5])))
    method.update(harvest(torch.tensor([1, 3]), torch.tensor([-1.0, 1.5]), epoch=1))
    assert method.scores.tolist() == [2.0, 0.0, 2.0, 1.5]
    # Sample 2 was never seen (clip); the previous epoch trained 1 and 3.
    assert method.previous_trained.tolist() == [False, False, True, True]  # grouped order: [0, 2 | 1, 3]


def test_loss_signal_moves_budget_to_the_hard_class() -> None:
    labels = torch.tensor([0] * 50 + [1] * 50)
    method = make_rcap(labels, prune_ratio=0.5, class_signal="loss")
    method.update(harvest(torch.arange(100), torch.cat([torch.full((50,), 0.1), torch.full((50,), 0.4)])))
    method.select(1, make_generator(0, 1))
    # k_j proportional to n_j sqrt(mean loss): 50 * (1, 2) / 3.
    assert method.class_budgets[-1] == [17, 33]


@pytest.mark.parametrize("class_signal", ["loss", "subset_mass"])
def test_zero_and_equal_losses_keep_the_budget(class_signal: str) -> None:
    labels = torch.tensor([0] * 30 + [1] * 10 + [2] * 2)
    for losses in (torch.zeros(42), torch.full((42,), 0.5)):
        method = make_rcap(labels, prune_ratio=0.5, class_signal=class_signal)
        method.update(harvest(torch.arange(42), losses))
        selection = method.select(1, make_generator(0, 1))
        assert selection.indices.numel() == 21 and selection.indices.unique().numel() == 21
        counts = torch.bincount(labels[selection.indices], minlength=3)
        assert bool((counts >= 1).all())


def test_deterministic_for_a_generator_seed() -> None:
    labels = torch.arange(40) % 4
    first, second = make_rcap(labels), make_rcap(labels)
    losses = torch.rand(40, generator=torch.Generator().manual_seed(1))
    for method in (first, second):
        method.update(harvest(torch.arange(40), losses))
    assert torch.equal(first.select(1, make_generator(5, 1)).indices, second.select(1, make_generator(5, 1)).indices)
    assert not torch.equal(first.select(2, make_generator(5, 2)).indices, first.select(2, make_generator(5, 3)).indices)


def test_state_round_trip_decides_identically() -> None:
    labels = torch.tensor([3, 7, 100] * 20)
    method = make_rcap(labels, prune_ratio=0.6)
    first = method.select(0, make_generator(0, 0)).indices
    method.update(harvest(first, torch.rand(first.numel(), generator=torch.Generator().manual_seed(2)) * 3))
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = make_rcap(labels, prune_ratio=0.6)
    resumed.load_state_dict(state)
    assert resumed.class_budgets == method.class_budgets and resumed.budget_epochs == [0]
    expected = method.select(1, make_generator(0, 1))
    again = resumed.select(1, make_generator(0, 1))
    assert torch.equal(expected.indices, again.indices) and expected.stats == again.stats
    assert resumed.class_budgets == method.class_budgets and len(resumed.class_budgets) == 2


def test_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="beta"):
        RCAP(beta=0.0)
    with pytest.raises(ValueError, match="beta"):
        RCAP(beta=float("inf"))
    with pytest.raises(ValueError, match="clip"):
        RCAP(clip=-1.0)
    with pytest.raises(ValueError, match="class_signal"):
        RCAP(class_signal="mass")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prune_ratio"):
        RCAP(prune_ratio=1.0)
    assert RCAP().needs_labels and RCAP(0.7, beta=0.25).beta == 0.25


# ----------------------------------------------------------------------------------------------------
# Full Lightning fits.
def test_full_fit_keeps_the_exact_budget_and_logs_class_budgets() -> None:
    method = RCAP(prune_ratio=0.5, seed=0)
    model = ToyModel()
    trainer = pl.Trainer(callbacks=[method], **trainer_kwargs())
    trainer.fit(model, datamodule=toy_datamodule())
    assert method.budget_epochs == [0, 1, 2]
    assert all(sum(budgets) == 48 for budgets in method.class_budgets)
    assert [record["budget_total"] for record in method.history] == [48.0, 48.0, 48.0]
    assert all(record["epoch_samples"] == 48.0 for record in method.history)
    assert {"budget_class_0", "budget_class_1", "budget_class_2", "saturated_classes"} <= set(method.history[-1])
    assert sum(model.seen_batches) == 3 * 48
    assert method.has_harvest and bool((method.scores < math.log(3)).any())
    logged = trainer.callback_metrics
    assert float(logged["pruning/budget_total"]) == 48.0


class RelabelledToy(Dataset[tuple[Tensor, int]]):
    """Trains on labels 0..2 but declares non-contiguous dataset labels {3, 7, 100} (``labels`` attribute)."""

    def __init__(self, num_samples: int = 96) -> None:
        self.inner = ToyDataset(num_samples)
        self.labels = torch.tensor([3, 7, 100])[self.inner.targets]

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.inner[index]


def test_fit_with_non_contiguous_labels_and_warmup() -> None:
    dataset = RelabelledToy()
    method = RCAP(prune_ratio=0.75, seed=0, warmup_epochs=1, class_signal="loss")
    datamodule = PruningDataModule(dataset, ToyDataset(30, seed=1), batch_size=8, seed=0)
    pl.Trainer(callbacks=[method], **trainer_kwargs()).fit(ToyModel(), datamodule=datamodule)
    assert method.class_values == [3, 7, 100]
    assert method.budget_epochs == [1, 2]  # epoch 0 is the full warm-up epoch
    assert {"budget_class_3", "budget_class_7", "budget_class_100"} <= set(method.history[-1])
    assert sum(method.history[-1][f"budget_class_{value}"] for value in (3, 7, 100)) == 24.0


class Unlabelled(Dataset[tuple[Tensor, int]]):
    def __init__(self) -> None:
        self.inner = ToyDataset(32)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.inner[index]


def test_dataset_without_labels_raises_a_clear_error() -> None:
    datamodule = PruningDataModule(Unlabelled(), batch_size=8, seed=0)
    trainer = pl.Trainer(callbacks=[RCAP(seed=0)], **trainer_kwargs(limit_val_batches=0))
    with pytest.raises(LabelsNotFoundError, match="train_labels="):
        trainer.fit(ToyModel(), datamodule=datamodule)
