"""Dynamic data pruning for PyTorch Lightning: train every epoch on a well-chosen subset.

Add a pruning callback to the Trainer, serve the data through :class:`PruningDataModule`, and end
``training_step`` with :func:`pruning_loss`.
"""

from lightning_pruning.data import (
    FashionMNISTDataModule,
    PruningDataModule,
    SubsetSampler,
    group_ids,
    load_fashion_mnist,
    load_fashion_mnist_lt,
)
from lightning_pruning.loss import pruning_loss
from lightning_pruning.methods import (
    METHODS,
    RCAP,
    RS2,
    UCB,
    EpsilonGreedy,
    Harvest,
    InfoBatch,
    OrderDP,
    PruningCallback,
    RandomPruning,
    RePB,
    Selection,
    SeTa,
    UCBVariance,
)
from lightning_pruning.metrics import PerClassAccuracy, PerGroupAccuracy, WorstClassAccuracy, WorstGroupAccuracy
from lightning_pruning.models import ImageClassifier
from lightning_pruning.reduction import per_sample_mean

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "RCAP",
    "RS2",
    "UCB",
    "UCBVariance",
    "EpsilonGreedy",
    "FashionMNISTDataModule",
    "Harvest",
    "ImageClassifier",
    "InfoBatch",
    "OrderDP",
    "PerClassAccuracy",
    "PerGroupAccuracy",
    "PruningCallback",
    "PruningDataModule",
    "RandomPruning",
    "RePB",
    "SeTa",
    "Selection",
    "SubsetSampler",
    "WorstClassAccuracy",
    "WorstGroupAccuracy",
    "group_ids",
    "load_fashion_mnist",
    "load_fashion_mnist_lt",
    "per_sample_mean",
    "pruning_loss",
]
