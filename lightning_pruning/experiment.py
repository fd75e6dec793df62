"""One measured training run: the building block of the demo and the benchmark.

``run_experiment`` trains the :class:`~lightning_pruning.models.ImageClassifier` on Fashion-MNIST (or
its long-tailed variant) with one pruning method, or on the full data, and returns test mean and
worst-class accuracy, saved fraction and training wall-clock (validation excluded).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

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
    """
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
    callbacks.append(timer)
    datamodule = PruningDataModule(
        train, test_dataset=test, batch_size=batch_size, eval_batch_size=1024, seed=seed, num_workers=num_workers
    )
    model = ImageClassifier(backbone=backbone, num_classes=len(train.classes), lr=lr)  # type: ignore[arg-type]
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
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
    )
