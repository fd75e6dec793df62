"""InfoBatch: the selection rule on hand-computed score tables, annealing, weighting and a full fit."""

from __future__ import annotations

import math
from fractions import Fraction

import lightning.pytorch as pl
import pytest
import torch
from helpers import ToyModel, WeightedGradientCheck, toy_datamodule, trainer_kwargs
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_pruning.methods.base import Harvest
from lightning_pruning.methods.infobatch import InfoBatch, infobatch_keep_probability, infobatch_select
from lightning_pruning.methods.registry import METHODS
from lightning_pruning.selection import make_generator


def harvest(indices: list[int] | torch.Tensor, losses: list[float] | torch.Tensor, epoch: int = 0) -> Harvest:
    indices = torch.as_tensor(indices, dtype=torch.int64)
    steps = torch.zeros_like(indices)
    return Harvest(epoch, indices, torch.as_tensor(losses, dtype=torch.float32), steps, steps)


def as_dict(indices: torch.Tensor, weights: torch.Tensor) -> dict[int, float]:
    return dict(zip(indices.tolist(), weights.tolist(), strict=True))


# --------------------------------------------------------------------------------------------------
# The pure selection rule.
def test_keep_probability_is_clamped_like_the_reference() -> None:
    assert infobatch_keep_probability(0.0) == 1.0
    assert infobatch_keep_probability(0.5) == 0.5
    assert infobatch_keep_probability(0.9) == pytest.approx(0.1)
    assert infobatch_keep_probability(0.95) == 0.1
    assert infobatch_keep_probability(0.999) == 0.1


def test_hand_computed_selection_at_half() -> None:
    scores = torch.tensor([0.1, 0.2, 0.3, 0.4, 5.0, 6.0])  # mean 2.0, samples 0..3 well-learned
    decision = infobatch_select(scores, 0.5, make_generator(0, 1))
    assert decision.threshold == pytest.approx(2.0)
    assert decision.num_well_learned == 4
    chosen = as_dict(decision.indices, decision.weights)
    assert chosen[4] == 1.0 and chosen[5] == 1.0
    learned = {i: w for i, w in chosen.items() if i < 4}
    assert len(learned) == 2  # floor(0.5 * 4)
    assert set(learned.values()) == {2.0}
    assert len(chosen) == 4 and decision.indices.dtype == torch.int32  # int32 ids while N < 2**31


@pytest.mark.parametrize(
    ("prune_ratio", "kept_learned", "weight"),
    [(0.0, 4, 1.0), (0.25, 3, 4 / 3), (0.75, 1, 4.0), (0.6, 1, 2.5), (0.95, 0, 10.0)],
)
def test_number_of_kept_well_learned_is_floored(prune_ratio: float, kept_learned: int, weight: float) -> None:
    scores = torch.tensor([0.1, 0.2, 0.3, 0.4, 5.0, 6.0])
    decision = infobatch_select(scores, prune_ratio, make_generator(3, 2))
    chosen = as_dict(decision.indices, decision.weights)
    learned = [i for i in chosen if i < 4]
    assert len(learned) == kept_learned
    assert all(chosen[i] == pytest.approx(weight) for i in learned)
    assert chosen[4] == chosen[5] == 1.0


def test_floor_is_robust_to_float_noise() -> None:
    scores = torch.cat([torch.zeros(20), torch.full((5,), 10.0)])  # 20 well-learned
    decision = infobatch_select(scores, 0.55, make_generator(0, 1))  # 1 - 0.55 = 0.44999999999999996
    assert decision.indices.numel() == 5 + 9


def test_ties_and_scores_at_the_threshold_are_kept() -> None:
    equal = infobatch_select(torch.full((5,), 0.7), 0.5, make_generator(0, 1))
    assert sorted(equal.indices.tolist()) == [0, 1, 2, 3, 4]
    assert equal.num_well_learned == 0 and torch.equal(equal.weights, torch.ones(5))
    # Score 2.0 equals the mean (1 + 2 + 3) / 3: not strictly below, so it is always kept with weight 1.
    at_mean = infobatch_select(torch.tensor([1.0, 2.0, 3.0]), 0.5, make_generator(0, 1))
    assert at_mean.num_well_learned == 1
    assert as_dict(at_mean.indices, at_mean.weights) == {1: 1.0, 2: 1.0}  # floor(0.5 * 1) = 0 kept


def test_equal_scores_whose_rounded_mean_exceeds_them_are_all_kept() -> None:
    """float32: 3 x 6.0575 sums to a mean one ulp above 6.0575; no sample is below the true mean, so none is
    well-learned and the epoch keeps everything (it used to drop all three and train nothing)."""
    scores = torch.full((3,), 6.0575)
    assert float(scores.sum()) / 3 > float(scores[0])  # the rounding this test is about
    decision = infobatch_select(scores, 0.67, make_generator(0, 1))
    assert decision.num_well_learned == 0
    assert sorted(decision.indices.tolist()) == [0, 1, 2]
    assert decision.weights.tolist() == [1.0, 1.0, 1.0]
    scored = torch.tensor([True, True, True, False])
    partial = infobatch_select(torch.cat([scores, torch.zeros(1)]), 0.67, make_generator(0, 1), scored)
    assert partial.num_well_learned == 0 and partial.indices.numel() == 4


def test_unscored_samples_do_not_count_and_are_kept() -> None:
    scores = torch.tensor([1.0, 3.0, 0.0, 0.0])
    scored = torch.tensor([True, True, False, False])
    decision = infobatch_select(scores, 0.0, make_generator(0, 1), scored)
    assert decision.threshold == pytest.approx(2.0)  # not (1 + 3) / 4
    assert decision.num_well_learned == 1
    assert as_dict(decision.indices, decision.weights) == {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}


def test_well_learned_draw_is_uniform() -> None:
    scores = torch.tensor([0.0, 0.0, 0.0, 0.0, 10.0])
    hits = torch.zeros(5)
    for seed in range(800):
        decision = infobatch_select(scores, 0.5, make_generator(seed, 1))
        hits[decision.indices] += 1
    assert hits[4] == 800
    assert torch.allclose(hits[:4] / 800, torch.full((4,), 0.5), atol=0.06)


@settings(max_examples=40, deadline=None)
@given(
    losses=st.lists(st.floats(0.0, 10.0, width=32), min_size=1, max_size=60),
    percent=st.integers(0, 99),
    seed=st.integers(0, 2**31),
)
def test_selection_properties(losses: list[float], percent: int, seed: int) -> None:
    prune_ratio = percent / 100
    scores = torch.tensor(losses, dtype=torch.float32)
    decision = infobatch_select(scores, prune_ratio, make_generator(seed, 1))
    again = infobatch_select(scores, prune_ratio, make_generator(seed, 1))
    assert torch.equal(decision.indices, again.indices) and torch.equal(decision.weights, again.weights)
    indices = decision.indices
    assert indices.unique().numel() == indices.numel()
    assert int(indices.min()) >= 0 and int(indices.max()) < scores.numel()
    learned = scores < decision.threshold
    num_learned = int(learned.sum())
    keep = max(1.0 - prune_ratio, 0.1)
    exact_keep = max(Fraction(100 - percent, 100), Fraction(1, 10))  # the decimal the user meant
    assert decision.num_well_learned == num_learned
    assert indices.numel() == scores.numel() - num_learned + math.floor(exact_keep * num_learned)
    assert bool(torch.isin(torch.nonzero(~learned).squeeze(1), indices).all())  # hard samples always kept
    expected_weights = torch.where(learned[indices], 1.0 / keep, 1.0)
    assert torch.allclose(decision.weights, expected_weights)


# --------------------------------------------------------------------------------------------------
# The callback without Lightning.
def test_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="prune_ratio"):
        InfoBatch(prune_ratio=1.0)
    with pytest.raises(ValueError, match="prune_ratio"):
        InfoBatch(prune_ratio=-0.1)
    with pytest.raises(ValueError, match="delta"):
        InfoBatch(delta=0.0)
    with pytest.raises(ValueError, match="delta"):
        InfoBatch(delta=1.5)
    assert METHODS["infobatch"] is InfoBatch


def test_scores_are_overwritten_not_averaged() -> None:
    method = InfoBatch(seed=0)
    method.num_samples = 4
    method.reset(4)
    full = method.select(0, make_generator(0, 0))
    assert torch.equal(full.indices, torch.arange(4)) and full.weights is None
    method.update(harvest([0, 1, 2, 3], [1.0, 2.0, 3.0, 4.0]))
    method.update(harvest([1, 3], [9.0, 0.5], epoch=1))
    assert torch.equal(method.scores, torch.tensor([1.0, 9.0, 3.0, 0.5]))
    selection = method.select(2, make_generator(0, 2))
    assert selection.stats["threshold"] == pytest.approx(13.5 / 4)  # stale scores 1.0 and 3.0 included
    assert selection.stats["well_learned_fraction"] == 0.75


@pytest.mark.parametrize(
    ("max_epochs", "first_annealed"),
    [(90, 78), (100, 87), (300, 262), (8, 7), (16, 14)],
)
def test_annealing_starts_at_the_floor_of_delta_epochs(max_epochs: int, first_annealed: int) -> None:
    # 0.875 * 90 = 78.75, * 100 = 87.5, * 300 = 262.5: the official sampler anneals once its 1-based epoch
    # counter exceeds delta * E, i.e. from 0-based epoch floor(delta * E) (and its `==` weight reset never
    # fires there; ours resets by construction).
    method = InfoBatch(delta=0.875)
    method._max_epochs = max_epochs  # what setup() takes from the Trainer
    annealed = [epoch for epoch in range(max_epochs) if method.is_full_epoch(epoch)]
    assert annealed == list(range(first_annealed, max_epochs))
    assert method.anneal_from == first_annealed


def test_annealing_floor_is_robust_to_float_noise() -> None:
    method = InfoBatch(delta=0.29)  # 0.29 * 100 = 28.999999999999996 in floating point
    method._max_epochs = 100
    assert method.anneal_from == 29
    assert InfoBatch(delta=1.0).anneal_from is None
    with pytest.raises(ValueError, match="max_epochs"):
        InfoBatch(delta=0.5).prepare(10)


def test_state_round_trip_decides_identically() -> None:
    generator = torch.Generator().manual_seed(5)
    losses = torch.rand(50, generator=generator)
    first = InfoBatch(seed=1)
    first.num_samples = 50
    first.reset(50)
    first.update(harvest(torch.arange(50), losses))
    restored = InfoBatch(seed=1)
    restored.num_samples = 50
    restored.reset(50)
    restored.load_state_dict(first.state_dict())
    a, b = first.select(1, make_generator(1, 1)), restored.select(1, make_generator(1, 1))
    assert torch.equal(a.indices, b.indices)
    assert a.weights is not None and b.weights is not None and torch.equal(a.weights, b.weights)


# --------------------------------------------------------------------------------------------------
# Lightning fits.
class WeightCheckingModel(WeightedGradientCheck):
    """The expected weights are recomputed from the callback's score table, independently of its
    selection: a sample scoring below the mean has weight 1/(1-r) in a pruned epoch, 1 otherwise."""

    def __init__(self, prune_ratio: float) -> None:
        super().__init__()
        self.prune_ratio = prune_ratio

    def expected_weights(self, batch_indices: torch.Tensor) -> torch.Tensor:
        callback = next(cb for cb in self.trainer.callbacks if isinstance(cb, InfoBatch))
        weights = torch.ones(batch_indices.numel())
        if not callback.is_full_epoch(self.current_epoch) and self.current_epoch > 0:
            threshold = callback.scores.mean()
            weights[callback.scores[batch_indices] < threshold] = 1.0 / (1.0 - self.prune_ratio)
        return weights


def test_backpropagated_gradient_is_the_weighted_mean() -> None:
    model = WeightCheckingModel(prune_ratio=0.5)
    callback = InfoBatch(prune_ratio=0.5, delta=0.75, seed=0)
    trainer = pl.Trainer(callbacks=[callback], **trainer_kwargs(max_epochs=4))
    trainer.fit(model, datamodule=toy_datamodule(64, 8))
    assert model.checked_steps == len(model.seen_batches) > 0
    assert model.weighted_steps > 0  # the weights were really exercised


def test_full_fit_prunes_and_anneals() -> None:
    callback = InfoBatch(prune_ratio=0.6, delta=0.7, seed=0)  # floor(0.7 * 5) = 3: epochs 3 and 4 anneal
    model = ToyModel()
    trainer = pl.Trainer(callbacks=[callback], **trainer_kwargs(max_epochs=5))
    trainer.fit(model, datamodule=toy_datamodule(96, 8))
    history = {int(entry["epoch"]): entry for entry in callback.history}
    assert sorted(history) == [0, 1, 2, 3, 4]
    for epoch in (0, 3, 4):  # full data, weights 1
        assert history[epoch]["kept_fraction"] == 1.0 and "mean_weight" not in history[epoch]
    for epoch in (1, 2):
        entry = history[epoch]
        assert 0.0 < entry["well_learned_fraction"] < 1.0
        learned = round(entry["well_learned_fraction"] * 96)
        assert entry["epoch_samples"] == 96 - learned + math.floor(0.4 * learned * (1 + 1e-12))
        assert entry["max_weight"] == pytest.approx(2.5)
    assert 0.0 < callback.saved_fraction < 0.5
    assert sum(model.seen_batches) == callback.samples_trained
    assert "pruning/threshold" in trainer.callback_metrics
    assert "pruning/well_learned_fraction" in trainer.callback_metrics


@pytest.mark.parametrize(("prune_ratio", "warns"), [(0.9, True), (0.3, False)])
def test_heavy_loss_weights_warn_once_per_fit(prune_ratio: float, warns: bool) -> None:
    # 90 low losses below the mean (0.59), 10 high ones. At r = 0.9: 9 kept with weight 10, plus the 10 others
    # with weight 1, mean weight 100/19 = 5.3 > 2: warn once. At r = 0.3: 63 with weight 1/0.7, mean 1.38.
    import warnings
    from types import SimpleNamespace

    method = InfoBatch(prune_ratio=prune_ratio, seed=0)
    method.prepare(100, max_epochs=10)
    stub = SimpleNamespace(ckpt_path=None)
    method.subset_for_epoch(stub, 0)  # type: ignore[arg-type]
    losses = torch.cat([torch.full((90,), 0.1), torch.full((10,), 5.0)])
    zeros = torch.zeros(100, dtype=torch.int64)
    method.update(Harvest(epoch=0, indices=torch.arange(100), losses=losses, batch_idx=zeros, steps=zeros))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        method.subset_for_epoch(stub, 1)  # type: ignore[arg-type]
        method.subset_for_epoch(stub, 2)  # type: ignore[arg-type]
    heavy = [str(w.message) for w in caught if "loss weights of epoch" in str(w.message)]
    expected_mean = 100 / 19 if warns else (63 / 0.7 + 10) / 73
    assert method.history[1]["mean_weight"] == pytest.approx(expected_mean, rel=1e-6)
    if warns:
        assert len(heavy) == 1 and "epoch 1 average 5.26" in heavy[0] and "lower the learning rate" in heavy[0]
    else:
        assert heavy == []
