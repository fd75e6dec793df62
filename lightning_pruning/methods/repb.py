"""RePB (Zhou et al., ICLR 2026): local window pruning, uniform resampling, cumulative temporal rescaling.

While epoch E trains, each sample's loss is compared with the mean loss of its local window (the
samples of the same ``window`` optimizer steps, all ranks together); samples below their window mean
are pruned for epoch E+1 with probability ``rho``. Every sample not trained in epoch E re-enters with
probability ``1 - rho``. In epoch E+1 a sample's loss is weighted by ``(E+1) / N_i``, ``N_i`` being the
number of epochs 0..E it was trained in. See ``docs/methods/repb.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_pruning import host_ops
from lightning_pruning.methods.base import Harvest, PruningCallback, Selection
from lightning_pruning.methods.registry import register
from lightning_pruning.selection import mask_positions


def window_means(losses: Tensor, window_ids: Tensor) -> Tensor:
    """The mean loss of every window, shape ``(max(window_ids) + 1,)`` (NaN for an empty window).

    Args:
        losses: per-sample losses, shape ``(M,)``.
        window_ids: int64 window of every sample, shape ``(M,)``, non-negative.
    """
    if losses.numel() == 0:
        return torch.empty(0, dtype=torch.float64)
    # float64 sums keep max(window) >= mean(window) exact for equal losses, so no window is fully pruned.
    sums = torch.bincount(window_ids, weights=losses.to(torch.float64))
    counts = torch.bincount(window_ids, minlength=sums.numel())
    return sums / counts


def below_window_mean(losses: Tensor, steps: Tensor, window: int | None) -> Tensor:
    """Whether each sample's loss is strictly below the mean loss of its window (pure function).

    Args:
        losses: per-sample losses of one epoch, shape ``(M,)``.
        steps: int64 optimizer step within the epoch at which each loss was computed, shape ``(M,)``.
        window: number of consecutive steps per window (window ``k`` holds steps ``[kW, (k+1)W)``);
            ``None`` compares every sample with the one global mean of the epoch (InfoBatch-style).

    Returns:
        bool mask, shape ``(M,)``.
    """
    losses64 = losses.to(torch.float64)
    if window is None:
        return losses64 < (losses64.mean() if losses.numel() else 0.0)
    window_ids = steps if window == 1 else torch.div(steps, window, rounding_mode="floor")
    return losses64 < window_means(losses64, window_ids)[window_ids]


def ctr_weights(train_counts: Tensor, epochs: int, max_weight: float | None = None) -> Tensor:
    """Cumulative temporal rescaling weights ``epochs / N_i`` (float32, optionally clipped).

    A sample never trained (``N_i = 0``, possible when ``drop_last`` left it out of every epoch so far)
    is weighted as if trained once, ``epochs / 1``, instead of an infinite weight.
    """
    # A true division (``scalar / tensor`` would be reciprocal-then-multiply, off by an ulp).
    weights = train_counts.to(torch.float32, copy=True).clamp_min_(1.0)
    torch.div(torch.tensor(float(epochs)), weights, out=weights)  # in place: one float32 table per call
    if max_weight is not None:
        weights.clamp_max_(max_weight)
    return weights


@dataclass(frozen=True)
class RePBDecision:
    """The subset of the next epoch and how it came about.

    Attributes:
        indices: dataset indices, ascending (int32 while N < 2**31; the sampler shuffles).
        num_reentered: how many of ``indices`` were not trained in the last epoch (uniform resampling).
    """

    indices: Tensor
    num_reentered: int


def repb_next_subset(
    trained: Tensor,
    below: Tensor,
    rho: float,
    generator: torch.Generator,
    *,
    resampling: bool = True,
) -> RePBDecision:
    """The next epoch's subset from the last epoch's window comparisons (pure function).

    One ``U_i ~ U(0, 1)`` is drawn per dataset sample, in index order, and used by whichever rule
    applies to the sample, so all decisions are independent:

    * trained in the last epoch: kept when at or above its window mean, or when ``U_i >= rho``;
    * not trained: re-enters when ``U_i < 1 - rho`` (only with ``resampling``).

    Args:
        trained: bool mask over the dataset of the samples trained in the last epoch, shape ``(N,)``.
        below: bool mask over the dataset of the trained samples below their window mean, shape ``(N,)``.
        rho: pruning probability of below-mean samples; ``1 - rho`` is the re-entry probability.
        generator: source of ``U``.
        resampling: let untrained samples re-enter (off: the subset can only shrink).
    """
    draws = torch.rand(trained.numel(), generator=generator)
    # keep = trained & (~below | (draws >= rho)), in place through numpy (torch's bool kernels are slower on CPU).
    keep = host_ops.and_(host_ops.or_(host_ops.greater_equal(draws, rho), below, invert=True), trained)
    num_kept = host_ops.count_true(keep)
    if resampling:
        host_ops.or_(keep, host_ops.and_(host_ops.less(draws, 1.0 - rho), trained, invert=True))
    del draws  # 4 bytes per sample, freed before the indices are allocated
    indices = mask_positions(keep)
    return RePBDecision(indices, indices.numel() - num_kept)


def steady_state_keep_fraction(rho: float, below_fraction: float) -> float:
    """The keep fraction RePB settles at, ``(1 - rho) / (q * rho + 1 - rho)`` with ``q`` the below-mean share.

    Solves ``k = k (1 - q rho) + (1 - k)(1 - rho)``: survivors of window pruning plus re-entries.
    """
    denominator = below_fraction * rho + 1.0 - rho
    return 1.0 if denominator == 0.0 else (1.0 - rho) / denominator


@register("repb")
class RePB(PruningCallback):
    """RePB: local window pruning + uniform resampling + cumulative temporal rescaling (CTR).

    Epoch 0 trains on the full data with weights 1. The realised keep fraction is not a fixed budget:
    it settles near ``(1 - rho) / (q rho + 1 - rho)`` with ``q`` the share of samples below their window
    mean (about 67% kept at ``rho=0.5, q=0.5``); it is logged every epoch.

    Args:
        rho: probability of pruning a sample below its window mean; ``1 - rho`` is the probability that
            a sample not trained in the last epoch re-enters. In ``[0, 1]``.
        window: number of consecutive optimizer steps forming one local window (1 = one batch, the
            paper's default; under DDP a step's window holds every rank's samples).
        local_window_pruning: compare with the window mean; off compares with the epoch's global mean
            (the ablation's "no LWP" row).
        resampling: let samples not trained in the last epoch re-enter; off only shrinks the subset
            (the ablation's collapsing "no resampling" row).
        temporal_rescaling: weight losses by ``epochs / N_i`` (CTR); off uses weight 1.
        max_weight: optional upper clip of the CTR weight (>= 1); ``None`` is the paper's behaviour.
        seed: seed of the random draws (default: rank 0's ``torch.initial_seed()``).
        annealing_fraction: final share of epochs trained on the full data with weights 1 (default 0,
            the paper anneals nothing).
    """

    key_arguments = ("rho", "window", "local_window_pruning", "resampling", "temporal_rescaling", "max_weight")
    state_attributes = ("train_counts", "epochs_counted", "trained", "below")

    def __init__(
        self,
        rho: float = 0.5,
        window: int = 1,
        local_window_pruning: bool = True,
        resampling: bool = True,
        temporal_rescaling: bool = True,
        max_weight: float | None = None,
        *,
        seed: int | None = None,
        annealing_fraction: float = 0.0,
    ) -> None:
        super().__init__(seed=seed, annealing_fraction=annealing_fraction)
        rho = float(rho)
        if not 0.0 <= rho <= 1.0:
            raise ValueError(
                f"`rho` must be in [0, 1] (the probability of pruning a below-window-mean sample), got {rho!r}. "
                "Use e.g. rho=0.5 (about a third of the data pruned)."
            )
        if isinstance(window, bool) or int(window) != window or window < 1:
            raise ValueError(f"`window` must be an integer >= 1 (optimizer steps per local window), got {window!r}.")
        if max_weight is not None and not float(max_weight) >= 1.0:
            raise ValueError(f"`max_weight` must be None (no clip) or >= 1 (CTR weights are >= 1), got {max_weight!r}.")
        self.rho = rho
        self.window = int(window)
        self.local_window_pruning = bool(local_window_pruning)
        self.resampling = bool(resampling)
        self.temporal_rescaling = bool(temporal_rescaling)
        self.max_weight = None if max_weight is None else float(max_weight)
        self.reset(0)

    def reset(self, num_samples: int) -> None:
        #: N_i: in how many harvested epochs each sample was trained (int16: 2 bytes per sample in memory and
        #: checkpoints; widened to int32 before a run could pass 32767 epochs).
        self.train_counts = torch.zeros(num_samples, dtype=torch.int16)
        #: How many epochs were folded in (the numerator of the CTR weight).
        self.epochs_counted = 0
        #: The last epoch's trained samples, and those of them below their window mean.
        self.trained = torch.zeros(num_samples, dtype=torch.bool)
        self.below = torch.zeros(num_samples, dtype=torch.bool)

    @property
    def below_fraction(self) -> float:
        """q: the share of the last epoch's trained samples that were below their window mean."""
        count = int(torch.count_nonzero(self.trained))
        return int(torch.count_nonzero(self.below)) / count if count else 0.0

    def update(self, harvest: Harvest) -> None:
        # The window comparison needs no randomness, so it is done here; the draws happen in select().
        window = self.window if self.local_window_pruning else None
        indices = harvest.indices.to(torch.int64)
        self.trained.zero_()
        self.trained[indices] = True  # harvested indices are distinct
        self.below.zero_()
        self.below[indices] = below_window_mean(harvest.losses, harvest.steps.to(torch.int64), window)
        if self.epochs_counted >= torch.iinfo(self.train_counts.dtype).max:
            self.train_counts = self.train_counts.to(torch.int32)
        self.train_counts += self.trained
        self.epochs_counted += 1

    def select(self, epoch: int, generator: torch.Generator) -> Selection:
        if epoch == 0 or self.epochs_counted == 0:
            # Epoch 0 (or a resume without state) trains on everything, weights 1.
            return Selection(torch.arange(self.num_samples))
        decision = repb_next_subset(self.trained, self.below, self.rho, generator, resampling=self.resampling)
        weights = None
        if self.temporal_rescaling:
            counts = torch.index_select(self.train_counts, 0, decision.indices)  # not [...]: faster on CPU
            weights = ctr_weights(counts, self.epochs_counted, self.max_weight)
        return Selection(
            decision.indices,
            weights,
            stats={
                "below_window_mean": self.below_fraction,
                "reentered_fraction": decision.num_reentered / self.num_samples,
            },
        )
