"""The one function a LightningModule calls in ``training_step``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import lightning.pytorch as pl
from torch import Tensor

if TYPE_CHECKING:
    from lightning_pruning.methods.base import PruningCallback

PER_SAMPLE_LOSS_KEY = "per_sample_loss"
#: Attribute of the Trainer holding the fit's pruning callback (set in its ``setup``, cleared at teardown).
CALLBACK_ATTRIBUTE = "_lightning_pruning_callback"


def check_per_sample_losses(losses: Tensor) -> None:
    """Validates a per-sample loss vector.

    Only Python-level properties (type, ``ndim``) are checked, so this never waits for the device; NaN/inf
    values are found once per epoch by the pruning callback when it harvests the losses.

    Raises:
        TypeError: if ``losses`` is not a tensor.
        ValueError: for a scalar or multi-dimensional loss.
    """
    if not isinstance(losses, Tensor):
        raise TypeError(f"pruning_loss expects a tensor of per-sample losses, got {type(losses).__name__}.")
    if losses.ndim != 1:
        hint = (
            "got a scalar: compute the loss with reduction='none', e.g. F.cross_entropy(logits, y, reduction='none')"
            if losses.ndim == 0
            else f"got shape {tuple(losses.shape)}: reduce it to one value per sample first, e.g. "
            "losses.flatten(1).mean(1)"
        )
        raise ValueError(f"pruning_loss needs one loss per sample (shape (batch,)); {hint}.")


def find_pruning_callback(trainer: pl.Trainer | None) -> PruningCallback | None:
    """The pruning callback attached to ``trainer``, if any (scans ``trainer.callbacks``)."""
    if trainer is None:
        return None
    from lightning_pruning.methods.base import PruningCallback

    for callback in trainer.callbacks:
        if isinstance(callback, PruningCallback):
            return callback
    return None


def pruning_loss(module: pl.LightningModule, losses: Tensor) -> dict[str, Tensor]:
    """Turns per-sample losses into what ``training_step`` returns.

    Call it at the end of ``training_step`` with the loss computed with ``reduction="none"``::

        losses = F.cross_entropy(self(x), y, reduction="none")
        return pruning_loss(self, losses)

    With a pruning callback on the Trainer, the returned ``"loss"`` is the batch mean of the method's
    per-sample weights times the losses (InfoBatch and RePB re-weight; the others use weight 1), and
    the detached losses are handed to the callback, which scores the samples with them. Without a
    pruning callback ``"loss"`` is exactly ``losses.mean()``, so one LightningModule serves both runs.

    Nothing here waits for the device (no ``.item()``, ``bool()``, ``.cpu()``): the callback checks the
    harvested losses for NaN/inf once per epoch, before any decision uses them, and names the epoch and the
    first offending batch. Without a pruning callback there is no NaN check (use
    ``Trainer(detect_anomaly=True)`` for that).

    Args:
        module: the LightningModule (``self`` inside ``training_step``).
        losses: per-sample losses of the batch, shape ``(batch,)``, not reduced.

    Returns:
        ``{"loss": weighted mean, "per_sample_loss": losses.detach()}``.

    Raises:
        ValueError: for a scalar or multi-dimensional loss, or a length other than the batch's.
    """
    if not isinstance(losses, Tensor) or losses.ndim != 1:
        check_per_sample_losses(losses)  # raises with the fix
    trainer = module._trainer if isinstance(module, pl.LightningModule) else None
    # Resolved once per fit by the callback's setup (no scan of trainer.callbacks per step).
    callback: PruningCallback | None = getattr(trainer, CALLBACK_ATTRIBUTE, None)
    if callback is None or not trainer.training:  # type: ignore[union-attr]
        loss = losses.mean()
    else:
        loss = callback.weighted_mean(losses)
    return {"loss": loss, PER_SAMPLE_LOSS_KEY: losses.detach()}
