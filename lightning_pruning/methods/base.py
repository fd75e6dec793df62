"""The shared Lightning plumbing of every pruning method.

A method subclasses :class:`PruningCallback` and implements three small pieces:

* :meth:`~PruningCallback.reset` allocates its tables for ``N`` samples,
* :meth:`~PruningCallback.update` folds one epoch of harvested losses into them,
* :meth:`~PruningCallback.select` decides the next epoch's subset (and optional loss weights).

The base owns everything Lightning-specific: it finds the sample ids of each batch, harvests the
per-sample losses, synchronises them across DDP ranks once per epoch, decides each epoch's subset
before Lightning builds that epoch's loader, applies warm-up / annealing epochs, saves and restores
state in checkpoints, and logs what happened.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from lightning_pruning.data.datamodule import PruningDataModule, find_subset_provider
from lightning_pruning.data.labels import contiguous_labels
from lightning_pruning.loss import PER_SAMPLE_LOSS_KEY
from lightning_pruning.selection import ClassLayout, make_generator

# Stream id of a method's decision generator (the sampler's shuffle uses another stream).
DECISION_STREAM = 0
_STATE_VERSION = 1


@dataclass(frozen=True)
class Harvest:
    """The per-sample training losses of one epoch, gathered from every rank (CPU tensors).

    Padding duplicates added by the distributed sampler are excluded, so every entry is one sample
    actually trained once in the epoch's subset.

    Attributes:
        epoch: the epoch the losses come from.
        indices: int64 dataset indices.
        losses: float32 per-sample losses from the training forward pass.
        batch_idx: int64 batch number within the epoch (the same number on every rank is the same step).
        steps: int64 optimizer step within the epoch (``batch_idx // accumulate_grad_batches``).
    """

    epoch: int
    indices: Tensor
    losses: Tensor
    batch_idx: Tensor
    steps: Tensor


@dataclass
class Selection:
    """One epoch's decision.

    Attributes:
        indices: int64 dataset indices to train (any order; the sampler shuffles).
        weights: optional float32 loss weight of each selected sample, aligned with ``indices``.
        stats: method-specific numbers to log for the epoch (plain floats).
    """

    indices: Tensor
    weights: Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)


class PruningCallback(Callback):
    """Base class of the pruning callbacks.

    Args:
        seed: seed of the method's random decisions. ``None`` takes rank 0's ``torch.initial_seed()`` at
            setup (so ``seed_everything`` controls it); the resolved seed is stored in checkpoints.
        warmup_epochs: number of first epochs trained on the full data (weights 1) before pruning starts.
        annealing_fraction: the final fraction of ``max_epochs`` trained on the full data with weights 1;
            epoch ``e`` anneals when ``e >= (1 - annealing_fraction) * max_epochs``.
    """

    #: Whether the method needs the class label of every training sample.
    needs_labels: bool = False
    #: Attributes (tensors or plain values) that make up the method's state in checkpoints.
    state_attributes: ClassVar[tuple[str, ...]] = ()
    #: Constructor arguments that distinguish two instances in a checkpoint's ``state_key``.
    key_arguments: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, seed: int | None = None, warmup_epochs: int = 0, annealing_fraction: float = 0.0) -> None:
        super().__init__()
        if warmup_epochs < 0:
            raise ValueError(f"`warmup_epochs` must be >= 0, got {warmup_epochs}.")
        if not 0.0 <= annealing_fraction < 1.0:
            raise ValueError(
                f"`annealing_fraction` must be in [0, 1) (the final share of epochs trained on full data), "
                f"got {annealing_fraction}."
            )
        self.seed = seed
        self.warmup_epochs = warmup_epochs
        self.annealing_fraction = annealing_fraction
        # Pruning runs while epoch < prune_until * max_epochs (InfoBatch's delta sets this directly).
        self._prune_until = 1.0 - annealing_fraction
        self.num_samples = 0
        self.class_layout: ClassLayout | None = None
        #: The user's label value of each contiguous class id (methods that need labels).
        self.class_values: list[int] = []
        self.history: list[dict[str, float]] = []
        self._kept_counts: list[int] = []
        self._decided_epoch = -1
        self._subset = torch.empty(0, dtype=torch.int64)
        self._weights: Tensor | None = None
        self._max_epochs: int | None = None
        self._restored = False
        self._harvest_epoch = -1
        #: Seconds spent in the pruning logic (decisions, harvesting, synchronisation) in this process.
        self.overhead_seconds = 0.0
        self._datamodule: PruningDataModule | None = None
        self._pending_losses: Tensor | None = None
        self._dense_weights: Tensor | None = None
        self._clear_epoch_buffers()

    # ------------------------------------------------------------------------------------------------
    # What a method implements.
    def reset(self, num_samples: int) -> None:
        """Allocates the method's tables for ``num_samples`` samples (``self.class_layout`` is set)."""

    def update(self, harvest: Harvest) -> None:
        """Folds one epoch's harvested losses into the method's tables."""

    def select(self, epoch: int, generator: torch.Generator) -> Selection:
        """Decides the subset of a pruned ``epoch``. Draw randomness only from ``generator``."""
        raise NotImplementedError

    def expected_subset_size(self, epoch: int) -> int | None:
        """The subset size of a pruned epoch if it is known in advance (fixed-budget methods)."""
        return None

    # ------------------------------------------------------------------------------------------------
    # Public read-outs.
    @property
    def state_key(self) -> str:
        # Lightning reads this on every hook call (profiler labels): build it once, the arguments are fixed.
        key = self.__dict__.get("_state_key")
        if key is None:
            key = self._generate_state_key(**{name: getattr(self, name) for name in self.key_arguments})
            self.__dict__["_state_key"] = key
        return key

    @property
    def kept_fraction(self) -> float:
        """|D_e| / N of the latest decided epoch."""
        return self._kept_counts[-1] / self.num_samples if self._kept_counts and self.num_samples else 1.0

    @property
    def saved_fraction(self) -> float:
        """1 - Σ|D_e| / (N · epochs) over the epochs decided so far."""
        if not self._kept_counts or not self.num_samples:
            return 0.0
        return 1.0 - sum(self._kept_counts) / (self.num_samples * len(self._kept_counts))

    @property
    def samples_trained(self) -> int:
        """Σ|D_e| over the epochs decided so far."""
        return sum(self._kept_counts)

    @property
    def current_subset(self) -> Tensor:
        """Dataset indices of the latest decided epoch."""
        return self._subset

    def is_full_epoch(self, epoch: int) -> bool:
        """Whether ``epoch`` is a warm-up or annealing epoch (full data, weights 1)."""
        if epoch < self.warmup_epochs:
            return True
        if self._prune_until < 1.0:
            if self._max_epochs is None:
                raise ValueError(
                    f"{type(self).__name__} anneals over the final epochs, which needs Trainer(max_epochs=...)."
                )
            return epoch >= self._prune_until * self._max_epochs
        return False

    def planned_subset_size(self, epoch: int) -> int | None:
        """Subset size of ``epoch`` when known in advance (``None`` for loss-driven methods)."""
        if self.is_full_epoch(epoch):
            return self.num_samples
        return self.expected_subset_size(epoch)

    def estimated_stepping_batches(self, trainer: pl.Trainer) -> int:
        """Optimizer steps of the whole pruned run, for step-based LR schedules.

        ``trainer.estimated_stepping_batches`` assumes full epochs, so a schedule sized with it never
        finishes on a pruned run. This sums the steps of every epoch's planned subset instead.

        Raises:
            ValueError: if the method's subset size is not known in advance (InfoBatch, RePB): size the
                schedule per epoch instead (``interval="epoch"``).
        """
        if trainer.max_epochs is None or trainer.max_epochs < 0:
            raise ValueError("estimated_stepping_batches needs Trainer(max_epochs=...).")
        datamodule = trainer.datamodule
        if not isinstance(datamodule, PruningDataModule):
            raise TypeError("estimated_stepping_batches needs the PruningDataModule attached to the trainer.")
        self._max_epochs = trainer.max_epochs
        if not self.num_samples:
            self.num_samples = datamodule.num_train_samples
        total = 0
        per_step = datamodule.batch_size * trainer.world_size
        for epoch in range(trainer.max_epochs):
            size = self.planned_subset_size(epoch)
            if size is None:
                raise ValueError(
                    f"{type(self).__name__} decides its subset size from the losses, so the step count is not "
                    "known in advance; step the LR schedule per epoch (interval='epoch') instead."
                )
            batches = size // per_step if datamodule.drop_last else -(-size // per_step)
            total += math.ceil(batches / trainer.accumulate_grad_batches)
        return total

    # ------------------------------------------------------------------------------------------------
    # Lightning hooks.
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = trainer.datamodule
        if not isinstance(datamodule, PruningDataModule):
            raise TypeError(
                f"{type(self).__name__} needs the training data served by lightning_pruning.PruningDataModule: "
                "trainer.fit(model, datamodule=PruningDataModule(train_dataset, val_dataset)) or "
                "PruningDataModule(datamodule=your_datamodule)."
            )
        find_subset_provider(trainer)  # raises on two pruning callbacks
        if getattr(trainer, "overfit_batches", 0):
            raise ValueError(
                "Trainer(overfit_batches=...) replaces the training sampler, so it cannot be combined with data "
                f"pruning. Remove {type(self).__name__} from the callbacks to overfit a few batches."
            )
        if trainer.reload_dataloaders_every_n_epochs != 1:
            # The subset changes every epoch and Lightning reads the loader length before any epoch hook,
            # so the loader must be rebuilt every epoch.
            if trainer.reload_dataloaders_every_n_epochs > 1:
                rank_zero_warn(
                    f"{type(self).__name__}: Trainer(reload_dataloaders_every_n_epochs="
                    f"{trainer.reload_dataloaders_every_n_epochs}) overridden to 1: the subset changes every epoch."
                )
            else:
                rank_zero_info(f"{type(self).__name__}: reloading the training loader every epoch.")
            trainer.reload_dataloaders_every_n_epochs = 1
        if self.seed is None:
            seed = torch.initial_seed() & ((1 << 63) - 1)
            self.seed = int(trainer.strategy.broadcast(seed, src=0))
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
        labels, class_values = datamodule.train_labels() if self.needs_labels else (None, None)
        self.prepare(datamodule.num_train_samples, labels=labels, class_values=class_values, max_epochs=max_epochs)

    def prepare(
        self,
        num_samples: int,
        *,
        labels: Tensor | None = None,
        class_values: Tensor | None = None,
        max_epochs: int | None = None,
    ) -> None:
        """Sets the method up for ``num_samples`` samples with empty state, outside of a Trainer.

        ``setup`` calls this; call it yourself to drive a method by hand (notebooks, benchmarks):
        ``prepare(N)``, then per epoch ``decide(epoch)`` and ``update(Harvest(...))``.

        Args:
            num_samples: N.
            labels: the class of every sample (required when ``needs_labels``): any integer values, mapped
                to ids ``0..C-1`` in sorted order, or ids ``0..C-1`` when ``class_values`` is given.
            class_values: the user's label value of each class id, for reports (default: the sorted
                distinct values of ``labels``).
            max_epochs: the run's length (required for annealing).
        """
        if self.needs_labels:
            if labels is None:
                raise ValueError(f"{type(self).__name__} needs `labels` (one class id per sample).")
            if class_values is None:  # any label values: map them to ids 0..C-1 ({3, 7, 100} -> 3 classes)
                labels, class_values = contiguous_labels(labels)
            elif labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= class_values.numel()):
                raise ValueError(
                    f"`labels` must be class ids 0..{class_values.numel() - 1} when `class_values` is given "
                    "(one value per id); pass the raw labels without `class_values` to have them mapped."
                )
            self.class_layout = ClassLayout.from_labels(labels)
            values = class_values
            self.class_values = [int(value) for value in values.tolist()]
        self._max_epochs = max_epochs
        self.is_full_epoch(0)  # raises early when annealing needs max_epochs
        self.num_samples = num_samples
        self.history = []
        self._kept_counts = []
        self._decided_epoch = -1
        self._restored = False
        self._harvest_epoch = -1
        self.overhead_seconds = 0.0
        self.reset(num_samples)

    def subset_for_epoch(self, trainer: pl.Trainer, epoch: int) -> Tensor:
        """The subset of ``epoch``, decided once (the DataModule calls this when it builds the loader)."""
        if epoch == self._decided_epoch:
            return self._subset
        if trainer.ckpt_path is not None and not self._restored and epoch > 0:
            rank_zero_warn(
                f"{type(self).__name__}: resuming from {trainer.ckpt_path}, which holds no state for this callback "
                "(saved with save_weights_only=True or without the callback). Pruning restarts from empty scores."
            )
            self._restored = True  # warn once
        if self._harvest_epoch < epoch - 1 and self._pending_losses is not None:
            self._flush(trainer)
        started = time.perf_counter()
        selection = self.decide(epoch)
        self.overhead_seconds += time.perf_counter() - started
        self._subset = selection.indices.to(torch.int64)
        self._weights = None if selection.weights is None else selection.weights.to(torch.float32)
        del self._kept_counts[epoch:]
        self._kept_counts.extend([self.num_samples] * (epoch - len(self._kept_counts)))  # epochs never decided
        self._kept_counts.append(int(self._subset.numel()))
        self._decided_epoch = epoch
        record: dict[str, float] = {
            "epoch": float(epoch),
            "kept_fraction": self.kept_fraction,
            "saved_fraction": self.saved_fraction,
            "epoch_samples": float(self._subset.numel()),
            "samples_trained": float(self.samples_trained),
        }
        if self._weights is not None:
            record["mean_weight"] = float(self._weights.mean()) if self._weights.numel() else 1.0
            record["max_weight"] = float(self._weights.max()) if self._weights.numel() else 1.0
        record.update(selection.stats)
        self.history = [entry for entry in self.history if entry["epoch"] < epoch] + [record]
        return self._subset

    def decide(self, epoch: int) -> Selection:
        """The decision for ``epoch`` from the current state: full data in warm-up/annealing epochs, else
        :meth:`select` with the generator of ``(seed, epoch)``. Call it once per epoch, in order."""
        if self.is_full_epoch(epoch):
            return Selection(torch.arange(self.num_samples))
        selection = self.select(epoch, make_generator(self._resolved_seed, epoch, DECISION_STREAM))
        self._check_selection(selection)
        return selection

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        assert isinstance(datamodule, PruningDataModule)
        epoch = trainer.current_epoch
        sampler = datamodule.train_sampler
        if sampler is None or sampler.epoch != epoch or self._decided_epoch != epoch:
            raise RuntimeError(
                f"{type(self).__name__}: the training loader of epoch {epoch} was not built by PruningDataModule "
                "for this epoch's decision; keep reload_dataloaders_every_n_epochs=1 and do not replace the loader."
            )
        device = pl_module.device
        self._datamodule = datamodule
        self._rank_order = sampler.rank_order.to(device, non_blocking=True)
        self._pending_losses = torch.full((self._rank_order.numel(),), math.nan, device=device)
        self._filled = 0
        self._dense_weights = None
        if self._weights is not None:
            dense = torch.ones(self.num_samples)
            dense[self._subset] = self._weights
            self._dense_weights = dense.to(device, non_blocking=True)
        self._batch_slice = slice(0, 0)
        self._last_batch_idx = trainer.num_training_batches - 1
        record = self.history[-1]
        pl_module.log_dict(
            {f"pruning/{name}": value for name, value in record.items() if name != "epoch"},
            on_step=False,
            on_epoch=True,
            # The values are identical on every rank. With rank_zero_only the "sync" is a no-op in Lightning;
            # sync_dist=True only stops its advice to sync epoch-level values under DDP.
            sync_dist=True,
            rank_zero_only=True,
        )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        assert self._datamodule is not None
        batch_size = self._datamodule.batch_size
        start = batch_idx * batch_size
        stop = min(start + batch_size, self._rank_order.numel())
        self._batch_slice = slice(start, stop)

    def weighted_mean(self, losses: Tensor) -> Tensor:
        """The batch mean of the current batch's per-sample weights times ``losses``."""
        expected = self._batch_slice.stop - self._batch_slice.start
        if losses.numel() != expected:
            raise ValueError(
                f"pruning_loss got {losses.numel()} per-sample losses for a batch of {expected} samples. Return "
                "one loss per sample of the batch, in batch order (a collate_fn must not drop or add samples)."
            )
        if self._dense_weights is None:
            return losses.mean()
        weights = self._dense_weights[self._rank_order[self._batch_slice]]
        return (losses * weights.to(losses.dtype)).mean()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        started = time.perf_counter()
        per_sample = outputs.get(PER_SAMPLE_LOSS_KEY) if isinstance(outputs, dict) else None
        if per_sample is None:
            raise ValueError(
                f"{type(self).__name__} needs the per-sample losses of every batch: end training_step with "
                "`return lightning_pruning.pruning_loss(self, F.cross_entropy(logits, y, reduction='none'))`."
            )
        batch_slice = self._batch_slice
        if per_sample.numel() != batch_slice.stop - batch_slice.start:
            raise ValueError(
                f"training_step returned {per_sample.numel()} per-sample losses for a batch of "
                f"{batch_slice.stop - batch_slice.start} samples."
            )
        pending = self._pending_losses
        assert pending is not None, "on_train_epoch_start did not run for this epoch"
        pending[batch_slice] = per_sample.detach().reshape(-1)  # the copy casts bf16/fp16 to float32
        self._filled = batch_slice.stop
        if batch_idx >= self._last_batch_idx:
            # Fold the epoch in now, before validation and any end-of-epoch checkpoint.
            self._flush(trainer)
        self.overhead_seconds += time.perf_counter() - started

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending_losses is not None:
            self._flush(trainer)

    def state_dict(self) -> dict[str, Any]:
        method_state = {}
        for name in self.state_attributes:
            value = getattr(self, name)
            method_state[name] = value.detach().cpu().clone() if isinstance(value, Tensor) else copy.deepcopy(value)
        return {
            "version": _STATE_VERSION,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "decided_epoch": self._decided_epoch,
            "harvest_epoch": self._harvest_epoch,
            "subset": self._subset.clone(),
            "weights": None if self._weights is None else self._weights.clone(),
            "kept_counts": list(self._kept_counts),
            "history": [dict(entry) for entry in self.history],
            "method": method_state,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.num_samples and state_dict["num_samples"] != self.num_samples:
            raise ValueError(
                f"{type(self).__name__}: the checkpoint was made on a training set of {state_dict['num_samples']} "
                f"samples, this run has {self.num_samples}; resume with the same training set."
            )
        self.seed = state_dict["seed"]
        self.num_samples = state_dict["num_samples"]
        self._decided_epoch = state_dict["decided_epoch"]
        self._harvest_epoch = state_dict["harvest_epoch"]
        self._subset = state_dict["subset"]
        self._weights = state_dict["weights"]
        self._kept_counts = list(state_dict["kept_counts"])
        self.history = [dict(entry) for entry in state_dict["history"]]
        for name, value in state_dict["method"].items():
            setattr(self, name, copy.deepcopy(value))
        self._restored = True

    # ------------------------------------------------------------------------------------------------
    # Internals.
    @property
    def _resolved_seed(self) -> int:
        return 0 if self.seed is None else self.seed

    def _clear_epoch_buffers(self) -> None:
        self._pending_losses = None
        self._rank_order = torch.empty(0, dtype=torch.int64)
        self._dense_weights = None
        self._filled = 0
        self._batch_slice = slice(0, 0)
        self._last_batch_idx = 0

    def _check_selection(self, selection: Selection) -> None:
        indices = selection.indices
        if indices.dtype != torch.int64 or indices.ndim != 1:
            raise TypeError(f"{type(self).__name__}.select must return 1-D int64 indices, got {indices.dtype}.")
        if indices.numel() == 0:
            raise ValueError(f"{type(self).__name__}.select chose no samples; every epoch needs at least one.")
        if int(indices.min()) < 0 or int(indices.max()) >= self.num_samples:
            raise ValueError(f"{type(self).__name__}.select returned indices outside [0, {self.num_samples}).")
        if selection.weights is not None and selection.weights.shape != indices.shape:
            raise ValueError(f"{type(self).__name__}.select returned weights not aligned with its indices.")

    def _flush(self, trainer: pl.Trainer) -> None:
        """Gathers the epoch's losses from every rank and hands them to :meth:`update` (once per epoch)."""
        pending = self._pending_losses
        assert pending is not None
        epoch, filled = self._decided_epoch, self._filled
        self._clear_epoch_buffers()
        world = trainer.world_size
        losses = pending[:filled]
        if world > 1:
            losses = trainer.strategy.all_gather(losses)  # (world, filled): equal shapes on every rank
        losses = losses.reshape(world, filled).cpu()
        assert self._datamodule is not None and self._datamodule.train_sampler is not None
        sampler = self._datamodule.train_sampler
        # Rank r's local position p is global position p * world + r of the padded epoch order.
        local = torch.arange(filled).expand(world, filled)
        global_positions = local * world + torch.arange(world).unsqueeze(1)
        real = global_positions < sampler.subset.numel()  # drop the sampler's padding duplicates
        indices = sampler.global_order[global_positions[real]]
        losses = losses[real]
        batch_idx = local[real] // self._datamodule.batch_size
        if not bool(torch.isfinite(losses).all()):
            raise ValueError(
                f"{type(self).__name__}: the harvested per-sample losses of epoch {epoch} contain NaN/inf or a batch "
                "returned no per-sample losses; return `pruning_loss(self, losses)` from every training_step."
            )
        harvest = Harvest(
            epoch=epoch,
            indices=indices,
            losses=losses,
            batch_idx=batch_idx,
            steps=batch_idx // trainer.accumulate_grad_batches,
        )
        self._harvest_epoch = epoch
        self.update(harvest)
