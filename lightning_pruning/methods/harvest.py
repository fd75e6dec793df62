"""One epoch's per-step bookkeeping on this rank: the batch positions, the loss weights, the harvested losses.

Everything a training step touches lives here and stays on the model's device: the step path only slices,
multiplies and copies tensors, so it never waits for the device. The checks that need values on the host
(NaN/inf losses) run once per epoch, when the harvest is gathered (:func:`check_finite`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_pruning.data.sampler import SubsetSampler


class EpochBuffer:
    """The current epoch's step state on this rank.

    Args:
        epoch: the epoch being trained.
        sampler: the epoch's sampler (its ``rank_order`` is what this rank trains, from ``sampler.skipped``).
        batch_size: the training batch size.
        device: the model's device; the losses and weights live there.
        weights: the epoch's loss weights aligned with the sampler's subset, or ``None`` (weights 1).
        prefix: a resumed epoch's harvest before ``sampler.start``: (losses, batch numbers) in position order.
        last_batch_idx: the number of the epoch's last batch (the harvest is folded in after it).
    """

    def __init__(
        self,
        *,
        epoch: int,
        sampler: SubsetSampler,
        batch_size: int,
        device: torch.device,
        weights: Tensor | None,
        prefix: tuple[Tensor, Tensor] | None,
        last_batch_idx: int,
    ) -> None:
        self.epoch = epoch
        self.sampler = sampler
        self.batch_size = batch_size
        self.skipped = sampler.skipped
        self.size = sampler.rank_size
        self.prefix = prefix
        self.last_batch_idx = last_batch_idx
        #: Per-sample losses of this rank's positions (NaN until trained), on the device.
        self.losses = torch.full((self.size,), math.nan, device=device)
        self.filled = 0
        self.start = 0
        self.stop = 0
        # The weights are looked up per batch through the subset positions this rank serves, so no dense
        # N-vector and no epoch-wide gather is needed; served in subset order they are sliced directly.
        self.weights: Tensor | None = None
        self.positions: Tensor | None = None
        if weights is not None:
            positions = sampler.rank_positions
            replayed = sampler.replayed_in_rank_order(weights.to(torch.float32)) if positions is None else None
            if replayed is not None:
                # The in-place shuffle replayed on the weights: served in batch order, sliced per batch.
                self.weights = replayed.to(device, non_blocking=True)
            elif positions is None:
                # A custom orderer does not track subset positions: the weights are looked up by dataset index,
                # per batch, in a dense table over the subset's index range.
                subset = sampler.subset
                dense = torch.ones(int(subset.max()) + 1 if subset.numel() else 0)
                dense[subset] = weights.to(torch.float32)
                self.weights = dense.to(device, non_blocking=True)
                self.positions = sampler.rank_order.to(device, non_blocking=True)
            elif isinstance(positions, slice):
                self.weights = weights[positions].to(device, non_blocking=True)
            else:
                self.weights = weights.to(torch.float32).to(device, non_blocking=True)
                self.positions = positions.to(device, non_blocking=True)

    def begin_batch(self, batch_idx: int) -> None:
        """Points the buffer at ``batch_idx``'s positions (Python arithmetic only)."""
        start = batch_idx * self.batch_size - self.skipped
        self.start = start
        self.stop = min(start + self.batch_size, self.size)

    def weighted_mean(self, losses: Tensor) -> Tensor:
        """The batch mean of the current batch's weights times ``losses`` (no host-device sync)."""
        expected = self.stop - self.start
        if losses.numel() != expected:
            raise ValueError(
                f"pruning_loss got {losses.numel()} per-sample losses for a batch of {expected} samples. Return "
                "one loss per sample of the batch, in batch order (a collate_fn must not drop or add samples)."
            )
        weights = self.weights
        if weights is None:
            return losses.mean()
        positions = self.positions
        batch = weights[self.start : self.stop] if positions is None else weights[positions[self.start : self.stop]]
        if batch.dtype != losses.dtype:
            batch = batch.to(losses.dtype)
        return (losses * batch).mean()

    def store(self, per_sample: Tensor, owner: str) -> None:
        """Keeps the batch's detached losses (a device-side copy; bf16/fp16 are cast to float32)."""
        if per_sample.numel() != self.stop - self.start:
            raise ValueError(
                f"training_step returned {per_sample.numel()} per-sample losses for a batch of "
                f"{self.stop - self.start} samples ({owner})."
            )
        self.losses[self.start : self.stop] = per_sample.detach().reshape(-1)
        self.filled = self.stop

    def gathered(self, trainer: pl.Trainer) -> tuple[Tensor, Tensor]:
        """The epoch's losses and batch numbers of global positions ``0..P-1`` trained so far, every rank's
        (CPU tensors, position order).

        Rank ``r``'s ``j``-th yielded sample sits at position ``start + j * world + r`` of the epoch order, so the
        ranks' first ``filled`` samples fill positions ``start .. start + filled * world - 1`` exactly; a resumed
        epoch's earlier positions come from the checkpoint.
        """
        world, filled = trainer.world_size, self.filled
        losses = self.losses[:filled]
        if world > 1:
            losses = trainer.strategy.all_gather(losses)  # (world, filled): equal shapes on every rank
        losses = losses.reshape(world, filled).cpu().t().reshape(-1)  # position order
        local = torch.arange(filled).repeat_interleave(world)
        batch_idx = (self.skipped + local) // self.batch_size
        if self.prefix is not None:
            losses = torch.cat([self.prefix[0], losses])
            batch_idx = torch.cat([self.prefix[1], batch_idx])
        return losses, batch_idx

    @property
    def has_harvest(self) -> bool:
        """Whether anything of the epoch was trained (here or before a resume)."""
        return self.filled > 0 or self.prefix is not None


def check_finite(losses: Tensor, batch_idx: Tensor, *, epoch: int, owner: str) -> None:
    """Raises if a harvested loss is NaN/inf, naming the epoch and the first offending batch.

    One host-device read per epoch (the losses are already on the host here), before any decision uses them.

    Raises:
        ValueError: for NaN or infinite losses.
    """
    finite = torch.isfinite(losses)
    if bool(finite.all()):
        return
    bad = (~finite).nonzero()
    first = int(bad[0])
    batches = torch.unique(batch_idx[bad.squeeze(1)])
    raise ValueError(
        f"{owner}: the per-sample losses of epoch {epoch} contain {bad.numel()} NaN/inf values, first in batch "
        f"{int(batch_idx[first])} (batch_idx within the epoch; {batches.numel()} batch(es) affected). Pruning scores "
        "samples by their loss, so training cannot go on: lower the learning rate, clip gradients, or check the "
        "inputs (Trainer(detect_anomaly=True) finds the operation). The check runs once per epoch, when the "
        "losses are harvested, so the training step never waits for the device."
    )
