"""OrderDP and the shared top-k machinery of the loss-ranking methods."""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import lightning.pytorch as pl
import pytest
import torch
from helpers import ToyModel, toy_datamodule, trainer_kwargs
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import lightning_pruning.methods.ranking as ranking_module
from lightning_pruning.methods.base import Harvest
from lightning_pruning.methods.orderdp import (
    OrderDP,
    candidate_count,
    orderdp_select,
    orderdp_surrogate_weights,
)
from lightning_pruning.methods.ranking import (
    kth_largest,
    random_choice,
    random_choice_mask,
    threshold_with_counts,
    top_k_mask,
    top_k_random_ties,
    uniform_subset_mask,
)
from lightning_pruning.methods.registry import METHODS
from lightning_pruning.selection import make_generator

INF = math.inf


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def within_binomial_noise(frequency: torch.Tensor, probability: torch.Tensor, trials: int) -> bool:
    """Every observed frequency is within 5 binomial standard deviations (plus one count) of its probability."""
    std = (probability * (1 - probability) / trials).sqrt()
    return bool(((frequency - probability).abs() <= 5 * std + 1.0 / trials).all())


# ---------------------------------------------------------------------------------------------------
# Shared machinery: exact top-k by threshold, random ties.
def test_top_k_hand_computed_with_inf_and_ties() -> None:
    values = torch.tensor([0.5, INF, 2.0, 0.5, -1.0, INF, 0.5])
    # k = 3: both +inf, then 2.0; no tie at the threshold.
    assert top_k_random_ties(values, 3, gen(0)).tolist() == [1, 2, 5]
    # k = 4: one of the three 0.5 entries, chosen at random.
    picks = {tuple(top_k_random_ties(values, 4, gen(seed)).tolist()) for seed in range(60)}
    assert picks == {(0, 1, 2, 5), (1, 2, 3, 5), (1, 2, 5, 6)}
    # k = 1: one of the two +inf.
    assert {tuple(top_k_random_ties(values, 1, gen(seed)).tolist()) for seed in range(40)} == {(1,), (5,)}
    assert top_k_random_ties(values, 0, gen(0)).numel() == 0
    assert top_k_random_ties(values, 7, gen(0)).tolist() == list(range(7))


def test_top_k_ties_are_uniform() -> None:
    values = torch.tensor([3.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    counts = torch.zeros(6)
    trials = 2000
    for seed in range(trials):
        counts[top_k_random_ties(values, 3, gen(seed))] += 1
    assert counts[0] == trials and counts[5] == 0
    assert within_binomial_noise(counts[1:5] / trials, torch.full((4,), 0.5), trials)


def test_top_k_rejects_nan_and_bad_k() -> None:
    with pytest.raises(ValueError, match="NaN"):
        top_k_mask(torch.tensor([math.nan, math.nan, 2.0]), 2, gen(0))
    with pytest.raises(ValueError, match="top 4 of 3"):
        top_k_mask(torch.zeros(3), 4, gen(0))


def exact_counts(values: torch.Tensor, k: int) -> tuple[float, int, int]:
    threshold = torch.kthvalue(values, values.numel() - k + 1).values
    return float(threshold), int((values > threshold).sum()), int((values == threshold).sum())


@pytest.mark.parametrize("k", [1, 77, 60_000, 100_000, 140_000, 180_000, 199_999])
@pytest.mark.parametrize("layout", ["ties", "big_tie", "continuous"])
def test_threshold_matches_kthvalue_on_large_inputs(k: int, layout: str) -> None:
    n = 200_000  # above the exact-selection size, so the sampled bracket is used
    if layout == "ties":
        values = torch.randint(0, 5000, (n,), generator=gen(1)).float()
        values[::7] = INF
    elif layout == "big_tie":  # half the values share one score: the bracket ends fall inside the tie
        values = torch.rand(n, generator=gen(1))
        values[torch.randperm(n, generator=gen(2))[: n // 2]] = 0.5
    else:
        values = torch.randn(n, generator=gen(1))
    threshold, greater, equal = threshold_with_counts(values, k)
    assert (float(threshold), greater, equal) == exact_counts(values, k)
    assert kth_largest(values, k) == threshold
    mask = top_k_mask(values, k, gen(2))
    assert int(mask.sum()) == k
    assert bool((values[mask].min() >= values[~mask].max()).item())


def test_kth_largest_falls_back_when_the_sample_misleads() -> None:
    n = 1 << 17
    values = torch.ones(n)
    stride = n // (1 << 14)
    values[::stride] = 0.0  # the strided sample sees only zeros
    for k in (5, n - (n // stride) + 3):
        threshold, greater, equal = threshold_with_counts(values, k)
        assert (float(threshold), greater, equal) == exact_counts(values, k)
    values[::stride] = 2.0  # now the sample sees only values above all others
    threshold, greater, equal = threshold_with_counts(values, n // 2)
    assert (float(threshold), greater, equal) == exact_counts(values, n // 2) == (1.0, n // stride, n - n // stride)


def test_large_tie_sets_are_broken_with_random_keys() -> None:
    n = 150_000  # a tie set above the randperm size
    values = torch.zeros(n)
    first = top_k_random_ties(values, 1000, gen(0))
    again = top_k_random_ties(values, 1000, gen(0))
    other = top_k_random_ties(values, 1000, gen(1))
    assert first.numel() == 1000 and torch.equal(first, again) and not torch.equal(first, other)
    assert first.unique().numel() == 1000
    assert abs(first.float().mean().item() - n / 2) < 0.1 * n  # spread over the whole range


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_uniform_subset_mask_and_random_choice_sizes(n: int, data: st.DataObject) -> None:
    size = data.draw(st.integers(0, n))
    seed = data.draw(st.integers(0, 2**31))
    mask = uniform_subset_mask(n, size, gen(seed))
    assert mask.dtype == torch.bool and int(mask.sum()) == size
    assert torch.equal(mask, uniform_subset_mask(n, size, gen(seed)))
    picks = random_choice(n, size, gen(seed))
    assert picks.unique().numel() == size and (picks.numel() == 0 or int(picks.max()) < n)


@settings(max_examples=60, deadline=None)
@given(population=st.integers(1, 400), data=st.data())
def test_sparse_random_choice_draws_exactly_size_distinct_positions(population: int, data: st.DataObject) -> None:
    size = data.draw(st.integers(0, population))  # dense draws too: many rounds and a trimmed surplus
    seed = data.draw(st.integers(0, 2**31))
    picks = ranking_module._sparse_random_choice(population, size, gen(seed))
    assert picks.dtype == torch.int64 and picks.numel() == size and picks.unique().numel() == size
    assert size == 0 or 0 <= int(picks.min()) <= int(picks.max()) < population
    assert torch.equal(picks, ranking_module._sparse_random_choice(population, size, gen(seed)))


def _sorted_sparse_members(generator: torch.Generator) -> Tensor:
    member = torch.zeros(10)
    member[ranking_module._sparse_random_choice(10, 3, generator)] = 1.0
    return member


def _masked_sparse_members(generator: torch.Generator) -> Tensor:
    return torch.from_numpy(ranking_module._sparse_mask(10, 3, generator)).float()


@pytest.mark.parametrize("draw", [_sorted_sparse_members, _masked_sparse_members])
def test_sparse_draws_are_uniform_over_subsets(draw: Callable[[torch.Generator], Tensor]) -> None:
    # Every element with probability 3/10 and every pair with probability (3 * 2) / (10 * 9) = 1/15.
    trials = 4000
    singles = torch.zeros(10)
    pairs = torch.zeros(10, 10)
    for seed in range(trials):
        member = draw(gen(seed))
        singles += member
        pairs += member[:, None] * member[None, :]
    assert within_binomial_noise(singles / trials, torch.full((10,), 0.3), trials)
    off_diagonal = pairs[~torch.eye(10, dtype=torch.bool)] / trials
    assert within_binomial_noise(off_diagonal, torch.full_like(off_diagonal, 1 / 15), trials)


@settings(max_examples=60, deadline=None)
@given(population=st.integers(1, 3000), data=st.data())
def test_sparse_mask_marks_exactly_size_members(population: int, data: st.DataObject) -> None:
    size = data.draw(st.integers(0, population))  # dense draws too: several rounds and an unmarked surplus
    seed = data.draw(st.integers(0, 2**31))
    mask = ranking_module._sparse_mask(population, size, gen(seed))
    assert mask.dtype == bool and mask.shape == (population,) and int(mask.sum()) == size
    assert (mask == ranking_module._sparse_mask(population, size, gen(seed))).all()


def test_random_choice_takes_the_sparse_path_for_few_picks_of_many() -> None:
    picks = random_choice(200_000, 20_000, gen(3))  # 1/10 of the population: sparse
    assert picks.numel() == 20_000 and picks.unique().numel() == 20_000 and int(picks.max()) < 200_000
    assert torch.equal(picks, ranking_module._sparse_random_choice(200_000, 20_000, gen(3)))
    dense = random_choice(200_000, 50_000, gen(3))  # 1/4: random keys
    assert dense.numel() == 50_000 and dense.unique().numel() == 50_000


def test_random_choice_of_nearly_all_leaves_out_a_sparse_uniform_draw() -> None:
    picks = random_choice(200_000, 180_000, gen(5))  # 9/10: the 20_000 left out are drawn the sparse way
    left_out = torch.ones(200_000, dtype=torch.bool)
    left_out[picks] = False
    expected = torch.from_numpy(ranking_module._sparse_mask(200_000, 20_000, gen(5)))
    assert torch.equal(left_out, expected)
    assert picks.dtype == torch.int64 and picks.numel() == 180_000 and bool((picks[1:] > picks[:-1]).all())


def test_random_choice_mask_marks_the_draw_of_random_choice() -> None:
    # Every regime: left-out sparse (9/10), random keys (1/4), sparse (1/10), and randperm (small populations).
    for population, size in [(200_000, 180_000), (200_000, 50_000), (200_000, 20_000), (1000, 900), (50, 50)]:
        mask = random_choice_mask(population, size, gen(7))
        assert mask.dtype == torch.bool and int(mask.sum()) == size
        assert torch.equal(mask.nonzero().flatten(), random_choice(population, size, gen(7)).sort().values)
    with pytest.raises(ValueError, match="cannot draw"):
        random_choice_mask(10, 11, gen(0))


def test_uniform_subset_mask_of_many_samples_takes_the_sparse_draws() -> None:
    # Past 2**16 samples: 9/10 kept clears a sparse draw of the 1/10 left out, 1/10 kept marks a sparse draw.
    nearly_all = uniform_subset_mask(200_000, 180_000, gen(4))
    left_out = torch.from_numpy(ranking_module._sparse_mask(200_000, 20_000, gen(4)))
    assert int(nearly_all.sum()) == 180_000 and torch.equal(~nearly_all, left_out)
    few = uniform_subset_mask(200_000, 20_000, gen(4))
    assert int(few.sum()) == 20_000 and torch.equal(few, left_out)
    middle = uniform_subset_mask(200_000, 100_000, gen(4))  # random keys
    assert int(middle.sum()) == 100_000


def test_uniform_subset_mask_is_uniform() -> None:
    counts = torch.zeros(7)
    trials = 3000
    for seed in range(trials):
        counts += uniform_subset_mask(7, 3, gen(seed)).float()
    assert within_binomial_noise(counts / trials, torch.full((7,), 3 / 7), trials)


# ---------------------------------------------------------------------------------------------------
# The surrogate weights.
def exact_weights(n: int, s: int, q: int) -> list[Fraction]:
    """The spec's double sum, in exact rational arithmetic."""
    return [
        Fraction(
            sum(math.comb(j - 1, m - 1) * math.comb(n - j, s - m) for m in range(max(1, s - n + j), min(q, j) + 1)),
            math.comb(n, s),
        )
        for j in range(1, n + 1)
    ]


def test_surrogate_weights_match_the_exact_formula() -> None:
    for n in range(1, 11):
        for s in range(1, n + 1):
            for q in range(1, s + 1):
                expected = torch.tensor([float(w) for w in exact_weights(n, s, q)], dtype=torch.float64)
                got = orderdp_surrogate_weights(n, s, q)
                assert got.dtype == torch.float64
                assert torch.allclose(got, expected, rtol=0, atol=1e-13), (n, s, q)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3000), data=st.data())
def test_surrogate_weight_properties(n: int, data: st.DataObject) -> None:
    s = data.draw(st.integers(1, n))
    q = data.draw(st.integers(1, s))
    w = orderdp_surrogate_weights(n, s, q)
    assert w.sum().item() == pytest.approx(q, rel=1e-12)
    assert bool((w[:q] == s / n).all())
    assert bool((w[1:] <= w[:-1] + 1e-15).all())
    assert bool((w[n - s + q :] == 0).all())
    assert bool((w >= 0).all())


def test_surrogate_weight_extremes_and_scale() -> None:
    assert torch.allclose(orderdp_surrogate_weights(50, 20, 20), torch.full((50,), 20 / 50, dtype=torch.float64))
    greedy = orderdp_surrogate_weights(50, 50, 20)
    assert greedy[:20].eq(1).all() and greedy[20:].eq(0).all()
    # Dataset scale: the top rho_q share is eligible, each kept with probability rho_s.
    n, rho_s, rho_q = 100_000, 0.8, 0.375
    w = orderdp_surrogate_weights(n, int(rho_s * n), int(rho_q * rho_s * n))
    assert w[: int(0.99 * rho_q * n)].sub(rho_s).abs().max() < 1e-3
    assert w[int(1.01 * rho_q * n) :].max() < 1e-3


def test_selection_frequencies_match_the_surrogate_weights() -> None:
    n, q, s, trials = 8, 3, 5, 4000
    scores = torch.tensor([0.3, 2.5, 0.9, 1.7, 0.1, 3.1, 1.2, 0.6])  # distinct; index order != rank order
    rank_order = torch.argsort(scores, descending=True)
    counts = torch.zeros(n)
    for seed in range(trials):
        counts[orderdp_select(scores, q, s, gen(seed))] += 1
    frequency_by_rank = counts[rank_order] / trials
    w = orderdp_surrogate_weights(n, s, q).float()
    assert within_binomial_noise(frequency_by_rank, w, trials)
    assert frequency_by_rank[n - s + q :].eq(0).all()


def test_top_ratio_one_is_random_star_and_full_candidates_is_greedy() -> None:
    scores = torch.tensor([0.3, 2.5, 0.9, 1.7, 0.1, 3.1, 1.2, 0.6])
    counts = torch.zeros(8)
    trials = 3000
    for seed in range(trials):
        counts[orderdp_select(scores, 3, 3, gen(seed))] += 1
    assert within_binomial_noise(counts / trials, torch.full((8,), 3 / 8), trials)
    for seed in range(5):
        assert orderdp_select(scores, 3, 8, gen(seed)).tolist() == [1, 3, 5]


def test_never_seen_samples_are_trained_before_any_seen_one_is_ranked_below() -> None:
    scores = torch.tensor([0.4, INF, 9.0, INF, 0.2, INF])
    # Greedy (s = N): the three +inf first.
    assert orderdp_select(scores, 3, 6, gen(0)).tolist() == [1, 3, 5]
    # q = 4: the +inf, then the largest seen loss.
    assert orderdp_select(scores, 4, 6, gen(0)).tolist() == [1, 2, 3, 5]


def test_candidate_count_rounds_and_clamps() -> None:
    assert candidate_count(100, 30, 0.375) == 80
    assert candidate_count(100, 70, 0.8) == 88  # round(87.5) to even
    assert candidate_count(100, 70, 0.5) == 100  # rho_q < 1-p: every sample is a candidate (greedy)
    assert candidate_count(100, 70, 1.0) == 70


# ---------------------------------------------------------------------------------------------------
# The callback.
def harvest(epoch: int, indices: torch.Tensor, losses: torch.Tensor) -> Harvest:
    zeros = torch.zeros_like(indices)
    return Harvest(epoch=epoch, indices=indices, losses=losses, batch_idx=zeros, steps=zeros)


def test_registered_and_validated() -> None:
    assert METHODS["orderdp"] is OrderDP
    with pytest.raises(ValueError, match="top_ratio"):
        OrderDP(top_ratio=0.0)
    with pytest.raises(ValueError, match="top_ratio"):
        OrderDP(top_ratio=1.5)
    with pytest.raises(ValueError, match="prune_ratio"):
        OrderDP(prune_ratio=1.0)
    with pytest.warns(UserWarning, match="greedy"):
        OrderDP(prune_ratio=0.1, top_ratio=0.8)


@pytest.mark.filterwarnings("ignore:OrderDP.*greedy")
def test_callback_scores_and_decision() -> None:
    method = OrderDP(prune_ratio=0.5, top_ratio=1.0 / 3.0, seed=0)  # q = 3, s = min(6, 9) = 6: greedy
    method.num_samples = 6
    method.reset(6)
    assert method.budget_size == 3 and method.candidates == 6
    assert method.surrogate_weights().tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]  # s = N: greedy
    assert torch.isinf(method.scores).all()
    method.update(harvest(0, torch.tensor([0, 2, 4]), torch.tensor([1.0, 3.0, 2.0])))
    assert method.scores.tolist() == [1.0, INF, 3.0, INF, 2.0, INF]
    selection = method.select(1, make_generator(0, 1))
    assert selection.indices.tolist() == [1, 3, 5] and selection.weights is None
    assert selection.stats == {"candidates": 6.0, "never_seen_share": 1.0}
    method.update(harvest(1, torch.tensor([1, 3, 5]), torch.tensor([0.5, 4.0, 0.25])))  # stale scores stay
    assert method.scores.tolist() == [1.0, 0.5, 3.0, 4.0, 2.0, 0.25]
    selection = method.select(2, make_generator(0, 2))
    assert selection.indices.tolist() == [2, 3, 4] and selection.stats["never_seen_share"] == 0.0
    # State round trip: a restored callback decides identically.
    restored = OrderDP(prune_ratio=0.5, top_ratio=1.0 / 3.0)
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.select(2, make_generator(0, 2)).indices, selection.indices)


@pytest.mark.filterwarnings("ignore:OrderDP.*greedy")
@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 200),
    prune_ratio=st.floats(0.0, 0.95),
    top_ratio=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**31),
    seen=st.floats(0.0, 1.0),
)
def test_budget_is_exact_unique_and_deterministic(
    n: int, prune_ratio: float, top_ratio: float, seed: int, seen: float
) -> None:
    method = OrderDP(prune_ratio=prune_ratio, top_ratio=top_ratio, seed=seed)
    method.num_samples = n
    method.reset(n)
    trained = torch.arange(int(seen * n))
    method.update(harvest(0, trained, torch.rand(trained.numel(), generator=gen(seed)).round(decimals=1)))
    first = method.select(1, make_generator(seed, 1))
    again = method.select(1, make_generator(seed, 1))
    q = method.expected_subset_size(1)
    assert first.indices.numel() == q and first.indices.unique().numel() == q
    assert 0 <= int(first.indices.min()) and int(first.indices.max()) < n
    assert torch.equal(first.indices, again.indices)
    assert q <= first.stats["candidates"] <= n
    # Never-seen samples come first: if any was left out, every selected sample is never-seen.
    never_seen = torch.isinf(method.scores)
    chosen_never_seen = int(never_seen[first.indices].sum())
    assert first.stats["never_seen_share"] == chosen_never_seen / q
    if first.stats["candidates"] == n:
        assert chosen_never_seen == min(q, int(never_seen.sum()))


def test_lightning_fit() -> None:
    method = OrderDP(seed=0)  # defaults: p = 0.3, top_ratio = 0.8
    trainer = pl.Trainer(callbacks=[method], **trainer_kwargs(max_epochs=3))
    model = ToyModel()
    trainer.fit(model, datamodule=toy_datamodule(96, 8))
    q = round(0.7 * 96)
    assert [entry["epoch_samples"] for entry in method.history] == [q, q, q]
    assert [entry["candidates"] for entry in method.history] == [round(q / 0.8)] * 3
    assert method.history[0]["never_seen_share"] == 1.0
    assert 0.0 < method.history[1]["never_seen_share"] < 1.0
    assert sum(model.seen_batches) == 3 * q
    # Every sample trained has a finite score; the last epoch's subset holds its latest losses.
    assert torch.isfinite(method.scores[method.current_subset]).all()
    assert int(torch.isfinite(method.scores).sum()) >= q


def never_seen_per_epoch(num_samples: int, prune_ratio: float, top_ratio: float, seed: int, epochs: int) -> list[int]:
    """Never-trained samples after each epoch of a synthetic run (random losses) driven by hand."""
    method = OrderDP(prune_ratio, top_ratio=top_ratio, seed=seed)
    method.prepare(num_samples)
    generator = torch.Generator().manual_seed(seed)
    trained = torch.zeros(num_samples, dtype=torch.bool)
    left = []
    for epoch in range(epochs):
        chosen = method.decide(epoch).indices
        zeros = torch.zeros_like(chosen)
        method.update(Harvest(epoch, chosen, torch.rand(chosen.numel(), generator=generator), zeros, zeros))
        trained[chosen] = True
        left.append(int((~trained).sum()))
    return left


def test_coverage_needs_several_epochs_because_candidates_are_subsampled() -> None:
    # p = 0.5, rho_q = 0.8: q = N/2, s = 0.625 N. A never-seen sample must be drawn as a candidate first, so
    # after epoch e about N (1 - q/N) (1 - s/N)^e samples are still unseen: 500, 187.5, 70.3, 26.4, ...
    n, seeds = 1000, range(6)
    runs = [never_seen_per_epoch(n, 0.5, 0.8, seed, 8) for seed in seeds]
    for epoch in range(4):
        expected = n * 0.5 * 0.375**epoch
        mean = sum(run[epoch] for run in runs) / len(runs)
        assert abs(mean - expected) < 4 * math.sqrt(expected) / math.sqrt(len(runs)) + 1
    assert all(run[2] > 0 for run in runs)  # not covered after epoch 2, unlike "every sample once first"
    # never-seen candidates always win: the unseen count never stalls while candidates can still hit them
    assert all(run[e + 1] < run[e] for run in runs for e in range(3))


if __name__ == "__main__":
    # The coverage numbers of docs/methods/orderdp.md: python tests/test_orderdp.py
    for seed in range(3):
        left = never_seen_per_epoch(1000, 0.5, 0.8, seed, 10)
        covered = next((epoch for epoch, count in enumerate(left) if count == 0), None)
        print(f"seed {seed}: never-trained samples after epochs 0..9 = {left}; all trained by epoch {covered}")
