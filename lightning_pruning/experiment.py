"""One measured training run: the building block of the demo and the benchmark.

``run_experiment`` trains the :class:`~lightning_pruning.models.ImageClassifier` on Fashion-MNIST (or
its long-tailed variant) with one pruning method, or on the full data, and returns test mean and
worst-class accuracy, saved fraction and training wall-clock (validation excluded). With
``eval_every_epoch`` it also records the test accuracy after every epoch (time-to-accuracy curves);
``lr_schedule`` swaps the per-epoch cosine for a per-step OneCycle schedule sized by the full-data
step count or by the pruned run's real one.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_pruning.data.datamodule import PruningDataModule
from lightning_pruning.data.fashion_mnist import TensorImageDataset, load_fashion_mnist, load_fashion_mnist_lt
from lightning_pruning.methods.base import PruningCallback
from lightning_pruning.methods.registry import METHODS
from lightning_pruning.models import ImageClassifier


class TrainingTimer(Callback):
    """Wall-clock of the training batches of every epoch (from epoch start to the last batch's end),
    so validation and checkpointing are excluded."""

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        batch_idx = args[-1]
        if batch_idx + 1 >= trainer.num_training_batches:
            self.epoch_seconds.append(time.perf_counter() - self._start)

    @property
    def total(self) -> float:
        """Seconds spent in training batches over the whole run."""
        return float(sum(self.epoch_seconds))


class EpochRecorder(Callback):
    """Per epoch: samples trained, validation accuracy (when a validation set is attached) and the
    learning rate at the epoch's end. Reads only host values Lightning already synchronised."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self.acc: list[float] = []
        self.worst_class_acc: list[float] = []
        self.lr: list[float] = []
        self._count = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._count = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        batch = args[1]
        self._count += int(batch[1].shape[0])  # a shape, not a tensor value: no device sync

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning validates before on_train_epoch_end, so val/* hold this epoch's evaluation.
        self.samples.append(self._count)
        metrics = trainer.callback_metrics
        if "val/acc" in metrics:
            self.acc.append(float(metrics["val/acc"]))
            self.worst_class_acc.append(float(metrics["val/worst_class_acc"]))
        self.lr.append(float(trainer.optimizers[0].param_groups[0]["lr"]))


LRSchedule = Literal["cosine_epoch", "onecycle_sized_full", "onecycle_sized_trainer", "onecycle_sized_pruned"]
LR_SCHEDULES: tuple[str, ...] = (
    "cosine_epoch",
    "onecycle_sized_full",
    "onecycle_sized_trainer",
    "onecycle_sized_pruned",
)


class _StepScheduleClassifier(ImageClassifier):
    """The classifier with a OneCycle LR schedule stepped per optimizer step, sized by ``sizing``:
    ``"full"`` = max_epochs full-data epochs (what ``len(dataset)`` arithmetic gives), ``"trainer"`` =
    ``trainer.estimated_stepping_batches`` (max_epochs times the first epoch's loader length), or
    ``"pruned"`` = the pruning callback's ``estimated_stepping_batches(trainer)`` (the real steps)."""

    def __init__(
        self, sizing: Literal["full", "trainer", "pruned"], pruner: PruningCallback | None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._sizing = sizing
        self._pruner = pruner
        self.schedule_steps = 0

    def configure_optimizers(self) -> Any:
        optimizer = super().configure_optimizers()["optimizer"]
        trainer = self.trainer
        if self._sizing == "pruned" and self._pruner is not None:
            self.schedule_steps = self._pruner.estimated_stepping_batches(trainer)
        elif self._sizing == "full":
            datamodule = trainer.datamodule
            batches = -(-datamodule.num_train_samples // datamodule.batch_size)
            self.schedule_steps = int(trainer.max_epochs or 1) * batches
        else:
            self.schedule_steps = int(trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams["lr"], total_steps=self.schedule_steps
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


@dataclass
class ExperimentResult:
    """What one run measured."""

    method: str
    dataset: str
    seed: int
    epochs: int
    settings: dict[str, Any]
    test_acc: float
    test_worst_class_acc: float
    per_class_acc: list[float]
    saved_fraction: float
    train_seconds: float
    epoch_seconds: list[float]
    pruning_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    backbone: str = "mlp"
    num_train: int = 0
    epoch_samples: list[int] = field(default_factory=list)
    epoch_acc: list[float] = field(default_factory=list)
    epoch_worst_class_acc: list[float] = field(default_factory=list)
    epoch_lr: list[float] = field(default_factory=list)
    lr_schedule: str = "cosine_epoch"
    schedule_steps: int = 0
    optimizer_steps: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Plain values, ready for JSON."""
        return asdict(self)


_DATA_CACHE: dict[tuple[str, str | None], tuple[TensorImageDataset, TensorImageDataset]] = {}


def load_dataset(name: str, root: str | None = None) -> tuple[TensorImageDataset, TensorImageDataset]:
    """``(train, test)`` for ``"fashion_mnist"`` or ``"fashion_mnist_lt"`` (cached in this process)."""
    key = (name, root)
    if key not in _DATA_CACHE:
        test = load_fashion_mnist(root, train=False)
        if name == "fashion_mnist":
            train = load_fashion_mnist(root, train=True)
        elif name == "fashion_mnist_lt":
            train = load_fashion_mnist_lt(root)
        else:
            raise ValueError(f"unknown dataset {name!r}: use 'fashion_mnist' or 'fashion_mnist_lt'.")
        _DATA_CACHE[key] = (train, test)
    return _DATA_CACHE[key]


def run_experiment(
    method: str | None,
    method_kwargs: dict[str, Any] | None = None,
    *,
    dataset: str = "fashion_mnist",
    epochs: int = 5,
    seed: int = 0,
    backbone: str = "mlp",
    batch_size: int = 128,
    lr: float = 0.05,
    train_subset: int | None = None,
    test_subset: int | None = None,
    data_root: str | None = None,
    num_workers: int = 0,
    eval_every_epoch: bool = False,
    lr_schedule: LRSchedule = "cosine_epoch",
) -> ExperimentResult:
    """Trains once and measures.

    Args:
        method: a name of :data:`~lightning_pruning.methods.METHODS`, or ``None`` for full data.
        method_kwargs: constructor arguments of the method (``seed`` defaults to ``seed``).
        dataset: ``"fashion_mnist"`` or ``"fashion_mnist_lt"``.
        epochs: training epochs (the cosine LR schedule spans them).
        seed: seeds the model initialisation, the shuffle and the method.
        backbone: ``"mlp"`` or ``"cnn"`` (see :func:`~lightning_pruning.models.build_backbone`).
        batch_size: training batch size.
        lr: peak SGD learning rate.
        train_subset: use only the first ``train_subset`` training images of a seeded shuffle (smoke runs).
        test_subset: likewise for the test set.
        data_root: folder with the IDX files (default: Debian's package location).
        num_workers: DataLoader workers.
        eval_every_epoch: evaluate on the test set after every epoch (outside the training wall-clock)
            and record the accuracies in ``epoch_acc`` / ``epoch_worst_class_acc``.
        lr_schedule: ``"cosine_epoch"`` (the model's cosine over epochs), or OneCycle per step sized by
            the full-data step count (``"onecycle_sized_full"``), by ``trainer.estimated_stepping_batches``
            (``"onecycle_sized_trainer"``) or by the pruning callback's ``estimated_stepping_batches``
            (``"onecycle_sized_pruned"``).
    """
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; use one of {', '.join(LR_SCHEDULES)}.")
    train, test = load_dataset(dataset, data_root)
    if train_subset is not None:
        train = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:train_subset])
    if test_subset is not None:
        test = test.subset(torch.arange(min(test_subset, len(test))))
    pl.seed_everything(seed, verbose=False)
    callbacks: list[Callback] = []
    pruner: PruningCallback | None = None
    kwargs = dict(method_kwargs or {})
    if method is not None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; registered: {', '.join(sorted(METHODS))}.")
        kwargs.setdefault("seed", seed)
        pruner = METHODS[method](**kwargs)
        callbacks.append(pruner)
    timer = TrainingTimer()
    recorder = EpochRecorder()
    callbacks += [timer, recorder]
    datamodule = PruningDataModule(
        train,
        val_dataset=test if eval_every_epoch else None,
        test_dataset=test,
        batch_size=batch_size,
        eval_batch_size=1024,
        seed=seed,
        num_workers=num_workers,
    )
    model_kwargs: dict[str, Any] = dict(backbone=backbone, num_classes=len(train.classes), lr=lr)
    if lr_schedule == "cosine_epoch":
        model = ImageClassifier(**model_kwargs)
    else:
        sizing = lr_schedule.removeprefix("onecycle_sized_")
        model = _StepScheduleClassifier(sizing, pruner, **model_kwargs)  # type: ignore[arg-type]
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(num_workers|LeafSpec|log_every_n_steps).*")
        trainer.fit(model, datamodule=datamodule)
        (metrics,) = trainer.test(model, datamodule=datamodule, verbose=False)
    return ExperimentResult(
        method=method or "full",
        dataset=dataset,
        seed=seed,
        epochs=epochs,
        settings={key: value for key, value in kwargs.items() if key != "seed"},
        test_acc=float(metrics["test/acc"]),
        test_worst_class_acc=float(metrics["test/worst_class_acc"]),
        per_class_acc=list(model.last_per_class_accuracy),
        saved_fraction=pruner.saved_fraction if pruner is not None else 0.0,
        train_seconds=timer.total,
        epoch_seconds=timer.epoch_seconds,
        pruning_seconds=pruner.overhead_seconds if pruner is not None else 0.0,
        history=list(pruner.history) if pruner is not None else [],
        backbone=backbone,
        num_train=len(train),
        epoch_samples=recorder.samples,
        epoch_acc=recorder.acc,
        epoch_worst_class_acc=recorder.worst_class_acc,
        epoch_lr=recorder.lr,
        lr_schedule=lr_schedule,
        schedule_steps=model.schedule_steps if isinstance(model, _StepScheduleClassifier) else 0,
        optimizer_steps=int(trainer.global_step),
    )


def run_in_worker(kwargs: dict[str, Any], threads: int = 1) -> dict[str, Any]:
    """:func:`run_experiment` for a worker process of the parallel benchmark: pins torch to ``threads``
    intra-op threads (independent runs share the cores instead of oversubscribing them), silences
    Lightning's per-run chatter and returns the result as plain values.

    Args:
        kwargs: keyword arguments of :func:`run_experiment` (``method`` included).
        threads: torch threads of this process.
    """
    torch.set_num_threads(threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs = dict(kwargs)
        method = kwargs.pop("method")
        method_kwargs = kwargs.pop("method_kwargs", None)
        return run_experiment(method, method_kwargs, **kwargs).as_dict()
