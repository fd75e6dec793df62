"""RePB: window means, the keep / re-entry rule, CTR weights, the ablation switches and full fits."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import ToyModel, WeightedGradientCheck, toy_datamodule, trainer_kwargs
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_pruning.methods.base import Harvest
from lightning_pruning.methods.registry import METHODS
from lightning_pruning.methods.repb import (
    RePB,
    below_window_mean,
    ctr_weights,
    repb_next_subset,
    steady_state_keep_fraction,
    window_means,
)
from lightning_pruning.selection import make_generator

LOSSES = torch.tensor([1.0, 3.0, 5.0, 7.0, 0.0, 4.0, 5.0])
STEPS = torch.tensor([0, 0, 1, 1, 2, 2, 2])


def harvest(indices: Any, losses: Any, steps: Any | None = None, epoch: int = 0) -> Harvest:
    indices = torch.as_tensor(indices, dtype=torch.int64)
    steps = torch.zeros_like(indices) if steps is None else torch.as_tensor(steps, dtype=torch.int64)
    return Harvest(epoch, indices, torch.as_tensor(losses, dtype=torch.float32), steps, steps)


def make(num_samples: int, **kwargs: Any) -> RePB:
    method = RePB(seed=0, **kwargs)
    method.num_samples = num_samples
    method.reset(num_samples)
    return method


# --------------------------------------------------------------------------------------------------
# Window means and the below-mean test.
def test_window_means_per_step() -> None:
    assert window_means(LOSSES, STEPS).tolist() == [2.0, 6.0, 3.0]
    assert below_window_mean(LOSSES, STEPS, 1).tolist() == [True, False, True, False, True, False, False]


def test_window_means_over_two_steps() -> None:
    # Window 0 = steps 0-1 (mean 4), window 1 = step 2 (mean 3).
    assert window_means(LOSSES, STEPS // 2).tolist() == [4.0, 3.0]
    assert below_window_mean(LOSSES, STEPS, 2).tolist() == [True, True, False, False, True, False, False]
    # Window 3 covers steps 0-2: one mean 25/7 over everything, like the global comparison.
    assert below_window_mean(LOSSES, STEPS, 3).tolist() == below_window_mean(LOSSES, STEPS, None).tolist()
    assert below_window_mean(LOSSES, STEPS, None).tolist() == [True, True, False, False, True, False, False]


def test_window_means_with_unsorted_steps_and_equal_losses() -> None:
    losses = torch.tensor([0.1, 0.1, 0.1, 2.0, 0.3])
    steps = torch.tensor([4, 4, 4, 0, 0])
    # Equal losses are never below their own mean (float64 sums are exact), 0.3 < 1.15.
    assert below_window_mean(losses, steps, 1).tolist() == [False, False, False, False, True]
    assert window_means(losses, steps)[[0, 4]].tolist() == pytest.approx([1.15, 0.1])


# --------------------------------------------------------------------------------------------------
# The keep / re-entry rule.
def test_next_subset_extremes() -> None:
    trained = torch.tensor([True, True, True, False, False])
    below = torch.tensor([True, False, True, False, False])
    everything = repb_next_subset(trained, below, 0.0, make_generator(0, 1))
    assert everything.indices.tolist() == [0, 1, 2, 3, 4] and everything.num_reentered == 2
    only_hard = repb_next_subset(trained, below, 1.0, make_generator(0, 1))
    assert only_hard.indices.tolist() == [1] and only_hard.num_reentered == 0
    no_resampling = repb_next_subset(trained, below, 0.0, make_generator(0, 1), resampling=False)
    assert no_resampling.indices.tolist() == [0, 1, 2] and no_resampling.num_reentered == 0


def test_next_subset_uses_one_draw_per_sample() -> None:
    trained = torch.tensor([True, True, True, True, False, False, False, False])
    below = torch.tensor([True, True, False, False, False, False, False, False])
    draws = torch.rand(8, generator=make_generator(7, 3))
    rho = 0.4
    expected = [i for i in range(2) if draws[i] >= rho] + [2, 3] + [i for i in range(4, 8) if draws[i] < 1 - rho]
    decision = repb_next_subset(trained, below, rho, make_generator(7, 3))
    assert decision.indices.tolist() == expected
    assert decision.num_reentered == sum(1 for i in expected if i >= 4)


def test_keep_and_reentry_probabilities() -> None:
    num = 20000
    trained = torch.arange(num) < num // 2
    below = trained & (torch.arange(num) % 2 == 0)
    decision = repb_next_subset(trained, below, 0.3, make_generator(0, 1))
    chosen = torch.zeros(num, dtype=torch.bool)
    chosen[decision.indices] = True
    assert bool(chosen[trained & ~below].all())  # above-mean samples always stay
    assert chosen[below].float().mean().item() == pytest.approx(0.7, abs=0.02)  # kept when U >= rho
    assert chosen[~trained].float().mean().item() == pytest.approx(0.7, abs=0.02)  # re-enter when U < 1 - rho


def test_ctr_weights_and_clip() -> None:
    counts = torch.tensor([4, 2, 1, 0], dtype=torch.int32)
    assert ctr_weights(counts, 4).tolist() == [1.0, 2.0, 4.0, 4.0]  # never trained: as if once
    assert ctr_weights(counts, 4, max_weight=3.0).tolist() == [1.0, 2.0, 3.0, 3.0]


# --------------------------------------------------------------------------------------------------
# The callback without Lightning.
def test_arguments_are_validated() -> None:
    for bad in ({"rho": -0.1}, {"rho": 1.5}, {"window": 0}, {"window": 1.5}, {"max_weight": 0.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RePB(**bad)
    assert METHODS["repb"] is RePB


def test_epoch_zero_is_full_data_with_unit_weights() -> None:
    method = make(6)
    selection = method.select(0, make_generator(0, 0))
    assert selection.indices.tolist() == list(range(6)) and selection.weights is None


def test_ctr_weights_follow_the_training_counts_over_epochs() -> None:
    num = 40
    method = make(num, rho=0.7)
    counts = torch.zeros(num)
    subset = torch.arange(num)
    largest = 1.0
    generator = torch.Generator().manual_seed(3)
    for epoch in range(6):
        order = subset[torch.randperm(subset.numel(), generator=generator)]
        losses = torch.rand(order.numel(), generator=generator)
        method.update(harvest(order, losses, torch.arange(order.numel()) // 4, epoch))
        counts[order] += 1
        selection = method.select(epoch + 1, make_generator(0, epoch + 1))
        assert selection.weights is not None
        # Weight for epoch E+1 = (E+1) / N_i, N_i counted independently here.
        assert torch.equal(selection.weights, torch.div(torch.tensor(epoch + 1.0), counts[selection.indices]))
        subset = selection.indices
        largest = max(largest, float(selection.weights.max()))
    assert largest > 1.0  # some samples were skipped and up-weighted


def test_below_fraction_and_stats() -> None:
    method = make(10)
    method.update(harvest([0, 1, 2, 3, 4, 5, 6], LOSSES, STEPS))
    assert method.below_fraction == pytest.approx(3 / 7)
    selection = method.select(1, make_generator(0, 1))
    assert selection.stats["below_window_mean"] == pytest.approx(3 / 7)
    reentered = [i for i in selection.indices.tolist() if i >= 7]
    assert selection.stats["reentered_fraction"] == pytest.approx(len(reentered) / 10)
    assert {1, 3, 5, 6} <= set(selection.indices.tolist())  # at or above their step mean


def test_local_window_switch_uses_the_global_mean() -> None:
    local = make(7, rho=1.0)
    local.update(harvest(range(7), LOSSES, STEPS))
    global_ = make(7, rho=1.0, local_window_pruning=False)
    global_.update(harvest(range(7), LOSSES, STEPS))
    # rho = 1: exactly the samples at or above their mean survive.
    assert local.select(1, make_generator(0, 1)).indices.tolist() == [1, 3, 5, 6]
    assert global_.select(1, make_generator(0, 1)).indices.tolist() == [2, 3, 5, 6]


def test_temporal_rescaling_switch_and_max_weight() -> None:
    plain = make(8, temporal_rescaling=False)
    clipped = make(8, max_weight=1.5)
    for method in (plain, clipped):
        method.update(harvest(range(8), torch.arange(8.0), epoch=0))
        method.update(harvest([4, 5, 6, 7], torch.arange(4.0), epoch=1))
    assert plain.select(2, make_generator(0, 2)).weights is None
    weights = clipped.select(2, make_generator(0, 2)).weights
    assert weights is not None and set(weights.tolist()) <= {1.0, 1.5}  # 2 / 1 clipped to 1.5


def test_without_resampling_the_pool_only_shrinks() -> None:
    num = 400
    method = make(num, resampling=False)
    generator = torch.Generator().manual_seed(0)
    subset = torch.arange(num)
    sizes = []
    for epoch in range(12):
        losses = torch.rand(subset.numel(), generator=generator)
        method.update(harvest(subset, losses, torch.arange(subset.numel()) // 8, epoch))
        following = method.select(epoch + 1, make_generator(0, epoch + 1)).indices
        assert bool(torch.isin(following, subset).all())
        subset = following
        sizes.append(subset.numel())
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < 0.2 * num  # collapse


@settings(max_examples=8, deadline=None)
@given(rho=st.floats(0.2, 0.8), q=st.floats(0.2, 0.8), seed=st.integers(0, 1000))
def test_steady_state_keep_fraction(rho: float, q: float, seed: int) -> None:
    """Synthetic epochs where a share ~q of every window is below the window mean."""
    num, batch = 20000, 250
    method = make(num, rho=rho)
    generator = torch.Generator().manual_seed(seed)
    subset = torch.arange(num)
    kept, below = [], []
    for epoch in range(20):
        order = subset[torch.randperm(subset.numel(), generator=generator)]
        losses = (torch.rand(order.numel(), generator=generator) >= q).float()  # 0 (below) w.p. q, else 1
        method.update(harvest(order, losses, torch.arange(order.numel()) // batch, epoch))
        subset = method.select(epoch + 1, make_generator(seed, epoch + 1)).indices
        kept.append(subset.numel() / num)
        below.append(method.below_fraction)
    realised_q = sum(below[-10:]) / 10
    assert realised_q == pytest.approx(q, abs=0.03)
    assert sum(kept[-10:]) / 10 == pytest.approx(steady_state_keep_fraction(rho, realised_q), abs=0.02)


def test_state_round_trip_decides_identically() -> None:
    first = make(30)
    first.update(
        harvest(torch.arange(30), torch.rand(30, generator=torch.Generator().manual_seed(1)), torch.arange(30) // 5)
    )
    restored = make(30)
    restored.load_state_dict(first.state_dict())
    a, b = first.select(1, make_generator(0, 1)), restored.select(1, make_generator(0, 1))
    assert torch.equal(a.indices, b.indices)
    assert a.weights is not None and b.weights is not None and torch.equal(a.weights, b.weights)


# --------------------------------------------------------------------------------------------------
# Lightning fits.
class CountingModel(WeightedGradientCheck):
    """Expects w_i = E / N_i, with N_i counted here from the batches the model actually trained on,
    independently of the callback."""

    def __init__(self) -> None:
        super().__init__()
        self.trained_in: list[set[int]] = []

    def on_train_epoch_start(self) -> None:
        self.trained_in.append(set())

    def expected_weights(self, batch_indices: torch.Tensor) -> torch.Tensor:
        ids = batch_indices.tolist()
        self.trained_in[-1].update(ids)
        epoch = self.current_epoch
        counts = torch.tensor([sum(i in seen for seen in self.trained_in[:epoch]) for i in ids], dtype=torch.float32)
        return torch.ones(len(ids)) if epoch == 0 else epoch / counts


def test_backpropagated_gradient_is_the_ctr_weighted_mean() -> None:
    model = CountingModel()
    callback = RePB(rho=0.6, seed=0)
    trainer = pl.Trainer(callbacks=[callback], **trainer_kwargs(max_epochs=5))
    trainer.fit(model, datamodule=toy_datamodule(64, 8))
    assert model.checked_steps == len(model.seen_batches) > 0
    assert model.weighted_steps > 0


def test_full_fit_with_defaults() -> None:
    callback = RePB(seed=0)
    model = ToyModel()
    trainer = pl.Trainer(callbacks=[callback], **trainer_kwargs(max_epochs=4))
    trainer.fit(model, datamodule=toy_datamodule(96, 8))
    epochs = [int(entry["epoch"]) for entry in callback.history]
    assert epochs == [0, 1, 2, 3]
    assert callback.history[0]["kept_fraction"] == 1.0 and "mean_weight" not in callback.history[0]
    for entry in callback.history[1:]:
        assert 0.0 < entry["kept_fraction"] < 1.0
        assert 0.0 < entry["below_window_mean"] < 1.0
        assert entry["max_weight"] >= entry["mean_weight"] >= 1.0
    assert callback.history[1]["reentered_fraction"] == 0.0  # epoch 0 trained everything
    assert callback.history[1]["max_weight"] == 1.0  # every sample trained once in one epoch
    assert callback.epochs_counted == 4
    assert sum(model.seen_batches) == callback.samples_trained
    assert 0.0 < callback.saved_fraction < 0.5
    assert "pruning/below_window_mean" in trainer.callback_metrics
    assert "pruning/reentered_fraction" in trainer.callback_metrics


def test_multi_step_windows_with_gradient_accumulation() -> None:
    """With accumulation 2 and window 2, a window spans 4 batches: fold the harvest by hand to compare."""
    seen: list[Harvest] = []

    class Spy(RePB):
        def update(self, harvest: Harvest) -> None:
            seen.append(harvest)
            super().update(harvest)

    callback = Spy(window=2, seed=0)
    trainer = pl.Trainer(callbacks=[callback], **trainer_kwargs(max_epochs=2, accumulate_grad_batches=2))
    trainer.fit(ToyModel(), datamodule=toy_datamodule(64, 8))
    last = seen[-1]
    assert torch.equal(last.steps, last.batch_idx // 2)
    window_ids = last.batch_idx // 4
    means = torch.stack([last.losses[window_ids == k].double().mean() for k in range(int(window_ids.max()) + 1)])
    expected = torch.zeros(64, dtype=torch.bool)
    expected[last.indices] = last.losses.double() < means[window_ids]
    assert torch.equal(callback.below, expected)


def test_training_counts_are_int16_and_widen_before_they_could_overflow() -> None:
    method = make(4)
    assert method.train_counts.dtype == torch.int16
    method.update(harvest(torch.tensor([0, 1]), torch.tensor([1.0, 2.0])))
    assert method.train_counts.tolist() == [1, 1, 0, 0] and method.train_counts.dtype == torch.int16
    # A run at the int16 limit: the next epoch's count no longer fits, so the table widens first.
    method.train_counts = torch.full((4,), 32767, dtype=torch.int16)
    method.epochs_counted = 32767
    method.update(harvest(torch.tensor([2, 3]), torch.tensor([1.0, 2.0])))
    assert method.train_counts.dtype == torch.int32
    assert method.train_counts.tolist() == [32767, 32767, 32768, 32768]
    weights = method.select(1, make_generator(0, 1)).weights
    assert weights is not None and bool((weights > 0).all())
