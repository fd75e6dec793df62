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
from lightning_pruning.data.loader_state import restart_after_epoch_end, trained_batches
from lightning_pruning.loss import CALLBACK_ATTRIBUTE, PER_SAMPLE_LOSS_KEY
from lightning_pruning.methods.epoch_log import LogIntervalNotice, log_epoch_values
from lightning_pruning.methods.harvest import EpochBuffer, check_finite
from lightning_pruning.methods.state_codec import decode, decode_state, encode, encode_state
from lightning_pruning.selection import ClassLayout, make_generator

#: Mean loss weight of an epoch above which the callback warns that the effective learning rate is raised.
HEAVY_MEAN_WEIGHT = 2.0

# Stream id of a method's decision generator (the sampler's shuffle uses another stream).
DECISION_STREAM = 0
# 3: compact tensors (state_codec), the subset in int32 below 2**31 samples, and its random-order flag;
# 4: the subset's mask may ride in the sign bits of a method table (state_codec.encode_state).
_STATE_VERSION = 4
# History entries known only once the epoch is trained; logged at epoch end.
_LOGGED_AT_EPOCH_END = ("epoch", "trained_samples", "samples_trained", "saved_fraction")


@dataclass(frozen=True)
class Harvest:
    """The per-sample training losses of one epoch, gathered from every rank (CPU tensors).

    Padding duplicates added by the distributed sampler are excluded, so every entry is one sample
    actually trained once in the epoch's subset. Entries follow the epoch order (rank ``r``'s ``j``-th sample
    is position ``j * world + r``), so an epoch interrupted by a checkpoint and resumed hands over exactly the
    same tensors as an uninterrupted one.

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
        indices: int64 dataset indices to train (any order; the sampler shuffles); int32 is accepted too, and
            saves memory (the base stores the subset as int32 while N < 2**31).
        weights: optional float32 loss weight of each selected sample, aligned with ``indices``.
        stats: method-specific numbers to log for the epoch (plain floats).
        in_random_order: ``indices`` are already in uniformly random order, drawn from the decision's generator
            (e.g. a prefix of ``torch.randperm``): the sampler serves them in this order instead of shuffling
            them again. The order stays a pure function of ``(seed, epoch)``, so resume and DDP are unaffected.
    """

    indices: Tensor
    weights: Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)
    in_random_order: bool = False


class PruningCallback(Callback):
    """Base class of the pruning callbacks.

    Args:
        seed: seed of the method's random decisions. ``None`` takes rank 0's ``torch.initial_seed()`` at the
            setup of every fit (so ``seed_everything`` controls it); the resolved seed is stored in checkpoints
            and a resumed run uses the checkpoint's.
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
        self._requested_seed = seed
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
        #: Samples actually trained per harvested epoch (padding duplicates, drop_last and limits excluded).
        self._trained_counts: list[int] = []
        self._decided_epoch = -1
        self._subset = torch.empty(0, dtype=torch.int64)
        self._weights: Tensor | None = None
        self._subset_in_random_order = False
        self._max_epochs: int | None = None
        self._restored = False
        self._warned_weights = False
        self._harvest_epoch = -1
        #: Seconds spent in the per-epoch pruning logic (decisions, the harvest gathered across ranks and folded
        #: in) in this process; the per-step copies are not timed, to keep the step free of bookkeeping.
        self.overhead_seconds = 0.0
        #: The current epoch's step state (batch positions, weights, harvested losses); None between epochs.
        self._epoch_buffer: EpochBuffer | None = None
        # A mid-epoch checkpoint's harvest so far: (epoch, losses and batch numbers of positions 0..P-1).
        self._restored_partial: tuple[int, Tensor, Tensor] | None = None
        self._fits = 0
        self._missing_state_cause: str | None = None
        self._log_interval = LogIntervalNotice()

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
        """1 - Σ trained_e / (N · epochs) over the epochs trained so far.

        ``trained_e`` counts the samples actually trained in epoch ``e`` (its harvest): the chosen subset
        minus what ``limit_train_batches``, ``drop_last`` or an early stop left out, without the DDP
        sampler's padding duplicates.
        """
        if not self._trained_counts or not self.num_samples:
            return 0.0
        return 1.0 - sum(self._trained_counts) / (self.num_samples * len(self._trained_counts))

    @property
    def samples_trained(self) -> int:
        """Σ trained_e over the epochs trained so far."""
        return sum(self._trained_counts)

    @property
    def samples_chosen(self) -> int:
        """Σ|D_e| over the epochs decided so far (what the method chose, trained or not)."""
        return sum(self._kept_counts)

    @property
    def current_subset(self) -> Tensor:
        """Dataset indices of the latest decided epoch (int32 below 2**31 samples, else int64)."""
        return self._subset

    @property
    def subset_in_random_order(self) -> bool:
        """Whether the latest decided subset is already in uniformly random order (the DataModule then serves
        it without another shuffle)."""
        return self._subset_in_random_order

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
        for epoch in range(trainer.max_epochs):
            size = self.planned_subset_size(epoch)
            if size is None:
                raise ValueError(
                    f"{type(self).__name__} decides its subset size from the losses, so the step count is not "
                    "known in advance; step the LR schedule per epoch (interval='epoch') instead."
                )
            total += epoch_steps(
                size,
                batch_size=datamodule.batch_size,
                world_size=trainer.world_size,
                drop_last=datamodule.drop_last,
                accumulate_grad_batches=trainer.accumulate_grad_batches,
                limit_train_batches=trainer.limit_train_batches,
            )
        if trainer.max_steps is not None and trainer.max_steps >= 0:
            total = min(total, trainer.max_steps)
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
        if datamodule.num_train_samples == 0:
            raise ValueError(
                "the training set is empty (0 samples): there is nothing to train or prune. Check the dataset "
                "passed to PruningDataModule (or the wrapped DataModule's train_dataloader())."
            )
        warn_if_state_stays_in_workers(self, trainer)
        if self._fits and self.history and trainer.ckpt_path is None:
            rank_zero_warn(
                f"{type(self).__name__}: a second trainer.fit with the same callback starts a new run: its state and "
                "`history` are reset (resume with ckpt_path=... to continue a run instead)."
            )
        self._fits += 1
        self._missing_state_cause = None  # set again by on_load_checkpoint when this fit resumes
        # pruning_loss reads the callback from here on every step instead of scanning trainer.callbacks.
        setattr(trainer, CALLBACK_ATTRIBUTE, self)
        self._log_interval.install()
        # Every fit resolves its own seed (a seed sweep reusing this callback must not freeze the first one); an
        # explicit seed stays, and a resumed run takes the checkpoint's (load_state_dict runs after setup).
        seed = self._requested_seed
        if seed is None:
            seed = int(trainer.strategy.broadcast(torch.initial_seed() & ((1 << 63) - 1), src=0))
        self.seed = seed
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
        if num_samples < 1:
            raise ValueError(
                f"{type(self).__name__}: the training set is empty (num_samples={num_samples}); there is nothing "
                "to train or prune."
            )
        self._max_epochs = max_epochs
        self.is_full_epoch(0)  # raises early when annealing needs max_epochs
        self.num_samples = num_samples
        self.history = []
        self._kept_counts = []
        self._trained_counts = []
        self._restored_partial = None
        self._epoch_buffer = None
        self._decided_epoch = -1
        self._restored = False
        self._warned_weights = False
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
                f"({self._missing_state_cause or 'saved with save_weights_only=True or without the callback'}). "
                "Pruning restarts from empty scores."
            )
            self._restored = True  # warn once
        if self._harvest_epoch < epoch - 1 and self._epoch_buffer is not None:
            self._flush(trainer)
        started = time.perf_counter()
        selection = self.decide(epoch)
        self.overhead_seconds += time.perf_counter() - started
        # int32 while N < 2**31: half the memory traffic in the sampler's shuffle and gathers, half the checkpoint.
        self._subset = selection.indices.to(torch.int32 if self.num_samples < 2**31 else torch.int64)
        self._weights = None if selection.weights is None else selection.weights.to(torch.float32)
        self._subset_in_random_order = selection.in_random_order
        del self._kept_counts[epoch:]
        self._kept_counts.extend([self.num_samples] * (epoch - len(self._kept_counts)))  # epochs never decided
        self._kept_counts.append(int(self._subset.numel()))
        self._decided_epoch = epoch
        del self._trained_counts[epoch:]
        record: dict[str, float] = {
            "epoch": float(epoch),
            "kept_fraction": self.kept_fraction,
            "epoch_samples": float(self._subset.numel()),
            "samples_chosen": float(self.samples_chosen),
        }
        if self._weights is not None:
            record["mean_weight"] = float(self._weights.mean()) if self._weights.numel() else 1.0
            record["max_weight"] = float(self._weights.max()) if self._weights.numel() else 1.0
            self._warn_about_heavy_weights(epoch, record["mean_weight"])
        record.update(selection.stats)
        self.history = [entry for entry in self.history if entry["epoch"] < epoch] + [record]
        return self._subset

    def _warn_about_heavy_weights(self, epoch: int, mean_weight: float) -> None:
        """Warns once per fit when the loss weights multiply the effective learning rate by more than
        :data:`HEAVY_MEAN_WEIGHT`: with SGD a weighted mean loss scales every gradient step by the mean weight, and
        the benchmark saw such runs collapse to chance accuracy (InfoBatch at prune ratio 0.9, RePB at rho 0.7)."""
        if mean_weight <= HEAVY_MEAN_WEIGHT or self._warned_weights:
            return
        self._warned_weights = True
        rank_zero_warn(
            f"{type(self).__name__}: the loss weights of epoch {epoch} average {mean_weight:.2f}, so each step is "
            f"about {mean_weight:.1f}x larger than on the full data (the weights keep the gradient unbiased but "
            "raise the effective learning rate). If the loss jumps or accuracy collapses, lower the learning rate "
            "or the prune ratio."
        )

    def decide(self, epoch: int) -> Selection:
        """The decision for ``epoch`` from the current state: full data in warm-up/annealing epochs, else
        :meth:`select` with the generator of ``(seed, epoch)``. Call it once per epoch, in order."""
        if self.is_full_epoch(epoch):
            return Selection(torch.arange(self.num_samples))
        selection = self.select(epoch, make_generator(self._resolved_seed, epoch, DECISION_STREAM))
        self._check_selection(selection)
        return selection

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Pruned epochs differ in length, which Lightning's restart at an epoch's last batch does not expect.
        restart_after_epoch_end(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_epoch(trainer, pl_module)

    def _start_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Sets up the epoch's buffers: at epoch start, or at the first batch of an epoch resumed mid-way
        (Lightning does not call ``on_train_epoch_start`` then)."""
        datamodule = trainer.datamodule
        assert isinstance(datamodule, PruningDataModule)
        epoch = trainer.current_epoch
        sampler = datamodule.train_sampler
        if sampler is None or sampler.epoch != epoch or self._decided_epoch != epoch:
            raise RuntimeError(
                f"{type(self).__name__}: the training loader of epoch {epoch} was not built by PruningDataModule "
                "for this epoch's decision; keep reload_dataloaders_every_n_epochs=1 and do not replace the loader."
            )
        partial, self._restored_partial = self._restored_partial, None
        if (sampler.start > 0 or partial is not None) and (
            partial is None or partial[0] != epoch or partial[1].numel() != sampler.start
        ):
            have = "none" if partial is None else f"{partial[1].numel()} positions of epoch {partial[0]}"
            if partial is None and self._missing_state_cause is not None:
                have += f" ({self._missing_state_cause})"
            raise RuntimeError(
                f"{type(self).__name__}: the checkpoint resumes epoch {epoch} after {sampler.start} trained samples, "
                f"but the callback state holds the losses of {have}. The training loader's position and the "
                "callback's harvest come from different checkpoints or the loader was replaced; resume from a "
                "checkpoint saved by this callback with PruningDataModule's own training loader."
            )
        self._epoch_buffer = EpochBuffer(
            epoch=epoch,
            sampler=sampler,
            batch_size=datamodule.batch_size,
            device=pl_module.device,
            weights=self._weights,
            prefix=None if sampler.start == 0 or partial is None else (partial[1], partial[2]),
            last_batch_idx=trainer.num_training_batches - 1,
        )
        self._log_interval.check(trainer, type(self).__name__)
        record = self.history[-1]
        log_epoch_values(
            trainer, {f"pruning/{name}": value for name, value in record.items() if name not in _LOGGED_AT_EPOCH_END}
        )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        buffer = self._epoch_buffer
        if buffer is None:
            self._start_epoch(trainer, pl_module)  # resumed mid-epoch, or at an epoch's first batch
            buffer = self._epoch_buffer
            assert buffer is not None
        buffer.begin_batch(batch_idx)

    def weighted_mean(self, losses: Tensor) -> Tensor:
        """The batch mean of the current batch's per-sample weights times ``losses`` (no host-device sync)."""
        buffer = self._epoch_buffer
        if buffer is None:
            # The batch hooks are not running: Lightning's batch-size finder removes the callbacks for its trials.
            return losses.mean()
        return buffer.weighted_mean(losses)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        per_sample = outputs.get(PER_SAMPLE_LOSS_KEY) if isinstance(outputs, dict) else None
        if per_sample is None:
            raise ValueError(
                f"{type(self).__name__} needs the per-sample losses of every batch: end training_step with "
                "`return lightning_pruning.pruning_loss(self, F.cross_entropy(logits, y, reduction='none'))`."
            )
        buffer = self._epoch_buffer
        assert buffer is not None, "on_train_epoch_start did not run for this epoch"
        buffer.store(per_sample, type(self).__name__)
        if batch_idx >= buffer.last_batch_idx:
            # Fold the epoch in now, before validation and any end-of-epoch checkpoint.
            started = time.perf_counter()
            self._flush(trainer)
            self.overhead_seconds += time.perf_counter() - started

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._epoch_buffer is not None:
            if epoch_cut_short(trainer):
                # max_time / should_stop ended the epoch early: keep the harvest open, so a checkpoint saved now
                # resumes the rest of the epoch (see on_save_checkpoint); teardown folds it in otherwise.
                return
            self._flush(trainer)
        record = self.history[-1] if self.history else {}
        if record.get("epoch") == trainer.current_epoch and "trained_samples" in record:
            log_epoch_values(trainer, {f"pruning/{name}": record[name] for name in _LOGGED_AT_EPOCH_END[1:]})

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # The interrupted epoch's harvest so far, gathered from every rank (every rank saves together), so
        # a run resumed mid-epoch harvests the whole epoch without re-training any batch.
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if state is not None:
            state["partial"] = self._partial_harvest(trainer)
            if self._epoch_buffer is not None and epoch_cut_short(trainer):
                mark_mid_epoch(checkpoint)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # An epoch cut short by max_time / max_steps / should_stop stays open until every checkpoint of the run
        # (ModelCheckpoint(save_last=True) saves in on_train_end) is written; then its trained part counts.
        if stage == "fit" and self._epoch_buffer is not None:
            self._flush(trainer)
        if stage == "fit":
            self._end_fit(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._end_fit(trainer)

    def _end_fit(self, trainer: pl.Trainer) -> None:
        if getattr(trainer, CALLBACK_ATTRIBUTE, None) is self:
            setattr(trainer, CALLBACK_ATTRIBUTE, None)
        self._log_interval.remove()

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._missing_state_cause = describe_missing_state(self, checkpoint)

    def state_dict(self) -> dict[str, Any]:
        tables = {name: getattr(self, name) for name in self.state_attributes}
        method_state, subset = encode_state(tables, self._subset, self.num_samples)
        return {
            "version": _STATE_VERSION,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "decided_epoch": self._decided_epoch,
            "harvest_epoch": self._harvest_epoch,
            "subset": subset,
            "subset_in_random_order": self._subset_in_random_order,
            "weights": None if self._weights is None else encode(self._weights, table=True),
            "kept_counts": list(self._kept_counts),
            "trained_counts": list(self._trained_counts),
            "partial": None,
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
        # Version 2 checkpoints hold plain int64/float32 tensors, which decode() returns unchanged.
        tables, subset = decode_state(state_dict["method"], state_dict["subset"])
        self._subset = subset.to(torch.int32) if self.num_samples < 2**31 else subset.to(torch.int64)
        self._weights = decode(state_dict["weights"])
        self._subset_in_random_order = bool(state_dict.get("subset_in_random_order", False))
        self._kept_counts = list(state_dict["kept_counts"])
        self._trained_counts = list(state_dict.get("trained_counts", self._kept_counts[: self._harvest_epoch + 1]))
        partial = state_dict.get("partial")
        self._restored_partial = (
            None if partial is None else (int(partial["epoch"]), partial["losses"], partial["batch_idx"])
        )
        self._epoch_buffer = None
        self.history = [dict(entry) for entry in state_dict["history"]]
        for name, value in tables.items():
            setattr(self, name, value)
        self._restored = True

    # ------------------------------------------------------------------------------------------------
    # Internals.
    @property
    def _resolved_seed(self) -> int:
        return 0 if self.seed is None else self.seed

    def _check_selection(self, selection: Selection) -> None:
        indices = selection.indices
        if indices.dtype not in (torch.int64, torch.int32) or indices.ndim != 1:
            raise TypeError(
                f"{type(self).__name__}.select must return 1-D int64 (or int32) indices, got {indices.dtype}."
            )
        if indices.numel() == 0:
            raise ValueError(f"{type(self).__name__}.select chose no samples; every epoch needs at least one.")
        if int(indices.min()) < 0 or int(indices.max()) >= self.num_samples:
            raise ValueError(f"{type(self).__name__}.select returned indices outside [0, {self.num_samples}).")
        if selection.weights is not None and selection.weights.shape != indices.shape:
            raise ValueError(f"{type(self).__name__}.select returned weights not aligned with its indices.")

    def _partial_harvest(self, trainer: pl.Trainer) -> dict[str, Any] | None:
        """The interrupted epoch's harvest so far for a checkpoint (``None`` between epochs)."""
        buffer = self._epoch_buffer
        if buffer is None or not buffer.has_harvest:
            return None
        losses, batch_idx = buffer.gathered(trainer)
        return {"epoch": self._decided_epoch, "losses": losses.to(torch.float32), "batch_idx": batch_idx}

    def _flush(self, trainer: pl.Trainer) -> None:
        """Gathers the epoch's losses from every rank, checks them, and hands them to :meth:`update` (once per
        epoch: the only place the step path's device-side values are read on the host)."""
        buffer = self._epoch_buffer
        assert buffer is not None
        epoch, sampler = self._decided_epoch, buffer.sampler
        losses, batch_idx = buffer.gathered(trainer)
        self._epoch_buffer = None
        real = min(losses.numel(), sampler.subset.numel())  # positions past the subset are padding duplicates
        losses, batch_idx = losses[:real], batch_idx[:real]
        check_finite(losses, batch_idx, epoch=epoch, owner=type(self).__name__)
        harvest = Harvest(
            epoch=epoch,
            indices=sampler.global_order[:real].to(torch.int64),
            losses=losses,
            batch_idx=batch_idx,
            steps=batch_idx // trainer.accumulate_grad_batches,
        )
        self._harvest_epoch = epoch
        del self._trained_counts[epoch:]
        self._trained_counts.extend([self.num_samples] * (epoch - len(self._trained_counts)))
        self._trained_counts.append(real)
        if self.history and self.history[-1]["epoch"] == epoch:
            self.history[-1].update(
                trained_samples=float(real),
                samples_trained=float(self.samples_trained),
                saved_fraction=self.saved_fraction,
            )
        self.update(harvest)


def epoch_cut_short(trainer: pl.Trainer) -> bool:
    """Whether Lightning counts the current epoch as processed although its last batch was not trained
    (``max_time``, ``max_steps`` or ``should_stop`` ended it)."""
    progress = trainer.fit_loop.epoch_progress.current
    return progress.processed == progress.started and trained_batches(trainer) < trainer.num_training_batches


def mark_mid_epoch(checkpoint: dict[str, Any]) -> None:
    """Marks a checkpoint saved at the end of an epoch cut short as saved mid-epoch.

    Lightning counts an epoch ended by ``max_time`` or ``should_stop`` as processed, so a resumed run would skip
    the rest of it. Un-counting it makes the resumed run finish the epoch from the next batch, exactly like the
    uninterrupted run (the loader position and the harvest so far are in the checkpoint).
    """
    fit_loop = checkpoint.get("loops", {}).get("fit_loop")
    if fit_loop is None:
        return
    for counters in ("total", "current"):
        progress = fit_loop["epoch_progress"][counters]
        progress["processed"] = progress["completed"] = progress["started"] - 1


def epoch_steps(
    subset_size: int,
    *,
    batch_size: int,
    world_size: int = 1,
    drop_last: bool = False,
    accumulate_grad_batches: int = 1,
    limit_train_batches: int | float = 1.0,
) -> int:
    """Optimizer steps of one epoch over ``subset_size`` samples, as the trainer takes them.

    Each rank serves ``ceil(size / world)`` samples (the sampler pads), in ``floor`` (``drop_last``) or ``ceil``
    batches; ``limit_train_batches`` caps them as Lightning does; every ``accumulate_grad_batches`` batches and
    the epoch's last batch step the optimizer.
    """
    per_rank = -(-subset_size // world_size)
    batches = per_rank // batch_size if drop_last else -(-per_rank // batch_size)
    if isinstance(limit_train_batches, int):
        batches = min(batches, limit_train_batches)
    elif limit_train_batches != 1.0:
        batches = int(batches * limit_train_batches)
    return -(-batches // accumulate_grad_batches)


def warn_if_state_stays_in_workers(callback: Callback, trainer: pl.Trainer) -> None:
    """Warns that ``ddp_spawn``/``ddp_fork`` train in child processes, so the main process's callback keeps its
    pre-fit state (an empty ``history``)."""
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    if isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher):
        rank_zero_warn(
            f"{type(callback).__name__}: strategy {type(trainer.strategy).__name__} with start method "
            f"{trainer.strategy.launcher._start_method!r} trains in child processes; the callback object in your "
            "main process is not updated (its `history` stays empty, `saved_fraction` 0.0). Read the state in a "
            "hook on rank 0 (e.g. on_train_end), from a checkpoint's callback state, or launch with strategy='ddp'."
        )


def describe_missing_state(callback: PruningCallback, checkpoint: dict[str, Any]) -> str | None:
    """Why ``checkpoint`` holds no state under ``callback.state_key``, or ``None`` if it does."""
    states = checkpoint.get("callbacks")
    if states is None:
        return "saved with save_weights_only=True: it holds no callback states"
    if callback.state_key in states:
        return None
    others = [str(key) for key, value in states.items() if isinstance(value, dict) and "method" in value]
    if others:
        return (
            f"it was saved by {', '.join(others)}, this run uses {callback.state_key}: another pruning method or "
            "other arguments"
        )
    return "it was saved without a pruning callback"
