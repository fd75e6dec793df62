"""Logging the per-epoch pruning values without per-step cost.

Values logged with ``LightningModule.log`` enter Lightning's step-level metric collection, which re-reads
every logged key on every training step (RCAP logs one budget per class: at 1000 classes that costs more
than the whole harvest). The pruning values change once per epoch, so they go straight to the trainer's
loggers instead, and into ``trainer.callback_metrics`` (for ``ModelCheckpoint(monitor=...)``, early
stopping and summaries), where nothing re-reads them per step.

Pruned epochs are short, so Lightning's "number of training batches is smaller than the logging interval"
warning would fire at every epoch whose batch count differs; :class:`LogIntervalNotice` says once what it
means for a pruned run and silences Lightning's repeats of that one message during the fit.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.warnings import PossibleUserWarning

# Lightning's message (lightning/pytorch/loops/fit_loop.py), matched from its start only.
_LIGHTNING_MESSAGE = r"The number of training batches \(\d+\) is smaller than the logging interval"


def log_epoch_values(trainer: pl.Trainer, values: dict[str, float]) -> None:
    """Logs per-epoch ``values`` to every logger of ``trainer`` (rank 0) and sets them in ``callback_metrics``.

    The logger rows carry the epoch, as Lightning's own epoch-level rows do, at the current global step.
    """
    if not values:
        return
    metrics = trainer.callback_metrics
    for name, value in values.items():
        metrics[name] = torch.tensor(float(value))
    if trainer.is_global_zero and trainer.loggers:
        row = {**values, "epoch": float(trainer.current_epoch)}
        for logger in trainer.loggers:
            logger.log_metrics(row, step=trainer.global_step)


class LogIntervalNotice:
    """Explains once per fit that pruned epochs may have fewer batches than ``log_every_n_steps``, and filters
    Lightning's per-epoch repeats of its own warning about it while the fit runs."""

    def __init__(self) -> None:
        self._filter: tuple[Any, ...] | None = None
        self._warned = False

    def install(self) -> None:
        """Starts filtering Lightning's message (idempotent)."""
        if self._filter is not None:
            return
        self._warned = False
        warnings.filterwarnings("ignore", message=_LIGHTNING_MESSAGE, category=PossibleUserWarning)
        self._filter = warnings.filters[0]

    def remove(self) -> None:
        """Stops filtering (the fit ended)."""
        entry, self._filter = self._filter, None
        if entry is not None:
            try:
                warnings.filters.remove(entry)  # type: ignore[attr-defined]
            except ValueError:  # someone reset the filters (e.g. pytest's catch_warnings)
                pass
            warnings._filters_mutated()  # type: ignore[attr-defined]

    def check(self, trainer: pl.Trainer, owner: str) -> None:
        """Warns once per fit when the current epoch has fewer batches than the logging interval."""
        batches = trainer.num_training_batches
        interval = trainer.log_every_n_steps
        if self._warned or not trainer.loggers or trainer.fast_dev_run or not batches < interval:
            return
        self._warned = True
        rank_zero_warn(
            f"{owner}: epoch {trainer.current_epoch} has {batches} training batches, fewer than "
            f"Trainer(log_every_n_steps={interval}). Pruned epochs are short: step-level values are logged every "
            f"{interval} global steps, across epoch boundaries, so they still appear, less often than once per "
            "epoch; the pruning/* values are logged once per epoch regardless. Set a lower log_every_n_steps for "
            "more step-level rows. (Lightning's own per-epoch warning about this is silenced during the fit.)",
            category=PossibleUserWarning,
        )
