"""InfoBatch (Qin et al., ICLR 2024): drop part of the "well-learned" samples and up-weight the rest.

Every pruned epoch, samples whose last training loss is strictly below the mean of all known scores
are "well-learned"; a uniform ``1 - r`` share of them is kept with loss weight ``1 / (1 - r)``, every
other sample is kept with weight 1. The final epochs (``epoch >= floor(delta * max_epochs)``, the
official schedule) train on the full data. See ``docs/methods/infobatch.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_pruning import host_ops
from lightning_pruning.methods.base import Harvest, PruningCallback, Selection
from lightning_pruning.methods.ranking import top_k_mask
from lightning_pruning.methods.registry import register
from lightning_pruning.selection import mask_positions

#: The reference implementation never keeps fewer than 10% of the well-learned samples.
MIN_KEEP_PROBABILITY = 0.1


def infobatch_keep_probability(prune_ratio: float) -> float:
    """The probability ``max(1 - r, 0.1)`` of keeping a well-learned sample (the reference's clamp)."""
    return max(1.0 - prune_ratio, MIN_KEEP_PROBABILITY)


@dataclass(frozen=True)
class InfoBatchDecision:
    """The outcome of one InfoBatch selection.

    Attributes:
        indices: kept dataset indices (int32 while N < 2**31, else int64), ascending.
        weights: float32 loss weight of each kept sample (1, or ``1 / keep_probability`` for kept
            well-learned samples), aligned with ``indices``.
        threshold: the mean of the known scores.
        num_well_learned: how many samples scored strictly below the threshold.
    """

    indices: Tensor
    weights: Tensor
    threshold: float
    num_well_learned: int


def infobatch_select(
    scores: Tensor, prune_ratio: float, generator: torch.Generator, scored: Tensor | None = None
) -> InfoBatchDecision:
    """One InfoBatch decision on a score table (pure function).

    Args:
        scores: float32 score (last training loss) of every sample, shape ``(N,)``.
        prune_ratio: probability ``r`` of dropping a well-learned sample, in ``[0, 1)``.
        generator: source of the uniform draw of the kept well-learned samples.
        scored: optional bool mask of the samples that have a score; the others are excluded from the
            threshold and always kept (weight 1). ``None`` means every sample has a score. Unscored
            entries of ``scores`` must hold 0 (they are summed).

    Returns:
        The decision: ``floor(keep * |well-learned|)`` well-learned samples drawn uniformly without
        replacement (``keep = max(1 - r, 0.1)``) with weight ``1 / keep``, plus every other sample with
        weight 1.
    """
    num_samples = scores.numel()
    num_scored = num_samples if scored is None else host_ops.count_true(scored)
    if num_scored == 0:
        return InfoBatchDecision(torch.arange(num_samples), torch.ones(num_samples), float("nan"), 0)
    # float32 cascade summation is accurate to ~1e-7 relative and 10x faster than a float64 pass.
    threshold = float(scores.sum()) / num_scored
    # The rounded mean can land above every score (three equal losses: sum/3 rounds up by an ulp), which would
    # make every sample "below the mean". The true mean never exceeds the largest score, so clamp to it.
    largest = scores.max() if scored is None or num_scored == num_samples else scores[scored].max()
    threshold = min(threshold, float(largest))
    well_learned = host_ops.less(scores, threshold)
    if scored is not None and num_scored < num_samples:
        well_learned &= scored
    num_learned = host_ops.count_true(well_learned)
    num_other = num_samples - num_learned
    keep_probability = infobatch_keep_probability(prune_ratio)
    # The relative 1e-12 guards the floor against float noise: 1 - 0.55 = 0.4499999... keeps 9 of 20, not 8.
    num_kept = math.floor(keep_probability * num_learned * (1.0 + 1e-12))
    if num_kept == num_learned:
        kept = torch.ones(num_samples, dtype=torch.bool)
    else:
        # One uniform key per sample, every sample that is not well-learned lifted to [1, 2): the
        # num_other + num_kept largest keys are all of those plus a uniform draw of num_kept well-learned ones
        # (ties broken at random). One pass of random keys over N is cheaper than a permutation of the
        # well-learned samples, and the kept set comes out as one mask, in index order.
        keys = host_ops.add_mask_(torch.rand(num_samples, generator=generator), well_learned.logical_not())
        kept = top_k_mask(keys, num_other + num_kept, generator)
        del keys
    # int32 ids while N < 2**31 (nonzero's int64 would double them).
    indices = mask_positions(kept)
    del kept
    # Weight w = float32(1 / keep) for the kept well-learned samples, 1 for the others, as flag * (w - 1) + 1:
    # w - 1 is exact in float32 for 1 <= w < 2**24, so both products and sums are exact.
    up_weight = float(torch.tensor(1.0 / keep_probability, dtype=torch.float32))
    weights = torch.index_select(well_learned, 0, indices).to(torch.float32)
    del well_learned
    weights.mul_(up_weight - 1.0).add_(1.0)
    return InfoBatchDecision(indices, weights, threshold, num_learned)


@register("infobatch")
class InfoBatch(PruningCallback):
    """InfoBatch: soft pruning of well-learned samples with expectation rescaling and final annealing.

    ``prune_ratio`` is NOT the fraction of the dataset dropped: it is the probability of dropping a
    sample whose loss is below the mean loss. Training losses are right-skewed, so most samples are below
    the mean and the share of an epoch dropped is somewhat below ``prune_ratio`` (measured values are on
    the benchmarks page); the realised fraction is logged as ``pruning/kept_fraction`` and
    ``pruning/saved_fraction``.

    Epoch 0 trains on the full data (weights 1); epochs ``e >= floor(delta * max_epochs)`` anneal on the
    full data with weights 1, as in the official code (``max_epochs=90``, ``delta=0.875``: from epoch 78).

    Args:
        prune_ratio: probability ``r`` of dropping a well-learned sample, in ``[0, 1)``. As in the
            reference implementation the keep probability ``1 - r`` is clamped to at least 0.1, so
            ratios above 0.9 act like 0.9.
        delta: prune while ``epoch < floor(delta * max_epochs)``; the remaining epochs train on the full
            data. In ``(0, 1]``; ``1`` never anneals.
        seed: seed of the random draws (default: rank 0's ``torch.initial_seed()``).
        warmup_epochs: first epochs trained on the full data (weights 1) before pruning starts.
    """

    key_arguments = ("prune_ratio", "delta")
    state_attributes = ("scores", "scored")

    def __init__(
        self,
        prune_ratio: float = 0.5,
        delta: float = 0.875,
        *,
        seed: int | None = None,
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__(seed=seed, warmup_epochs=warmup_epochs)
        prune_ratio = float(prune_ratio)
        if not 0.0 <= prune_ratio < 1.0:
            # Not check_prune_ratio: its message calls the ratio the fraction of the data dropped.
            raise ValueError(
                f"`prune_ratio` must be in [0, 1) (the probability of dropping a sample whose loss is below the "
                f"mean, not the fraction of the dataset dropped), got {prune_ratio!r}. Use e.g. prune_ratio=0.5."
            )
        self.prune_ratio = prune_ratio
        delta = float(delta)
        if not 0.0 < delta <= 1.0:
            raise ValueError(
                f"`delta` must be in (0, 1] (prune while epoch < floor(delta * max_epochs), then train on the full "
                f"data), got {delta!r}. Use delta=0.875 as in the paper, or delta=1.0 to never anneal."
            )
        self.delta = delta
        self.scores = torch.zeros(0)
        self.scored = torch.zeros(0, dtype=torch.bool)

    @property
    def anneal_from(self) -> int | None:
        """First annealing epoch, ``floor(delta · max_epochs)`` as in the official code (``None``: never)."""
        if self.delta >= 1.0:
            return None
        if self._max_epochs is None:
            raise ValueError("InfoBatch anneals from epoch floor(delta * max_epochs), which needs max_epochs.")
        # The relative 1e-12 keeps float noise (0.29 * 100 = 28.999...) from moving the floor down.
        return math.floor(self.delta * self._max_epochs * (1.0 + 1e-12))

    def is_full_epoch(self, epoch: int) -> bool:
        if super().is_full_epoch(epoch):
            return True
        anneal_from = self.anneal_from
        return anneal_from is not None and epoch >= anneal_from

    def reset(self, num_samples: int) -> None:
        # Unscored samples hold 0 so that a plain sum over the table is the sum of the known scores.
        self.scores = torch.zeros(num_samples)
        self.scored = torch.zeros(num_samples, dtype=torch.bool)

    def update(self, harvest: Harvest) -> None:
        # The latest training loss overwrites the score (no moving average, as in the reference).
        self.scores[harvest.indices] = harvest.losses.to(torch.float32)
        self.scored[harvest.indices] = True

    def select(self, epoch: int, generator: torch.Generator) -> Selection:
        num_scored = host_ops.count_true(self.scored)
        if epoch == 0 or num_scored == 0:
            # Epoch 0 (or a resume without state) trains on everything to score every sample.
            return Selection(torch.arange(self.num_samples), stats={"well_learned_fraction": 0.0})
        all_scored = num_scored == self.num_samples
        decision = infobatch_select(self.scores, self.prune_ratio, generator, None if all_scored else self.scored)
        return Selection(
            decision.indices,
            decision.weights,
            stats={
                "threshold": decision.threshold,
                "well_learned_fraction": decision.num_well_learned / self.num_samples,
            },
        )
