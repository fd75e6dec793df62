"""Data plumbing: the pruning DataModule and sampler, label lookup, and the offline datasets."""

from lightning_pruning.data.datamodule import PruningDataModule, SubsetProvider
from lightning_pruning.data.fashion_mnist import (
    TensorImageDataset,
    load_fashion_mnist,
    load_fashion_mnist_lt,
    long_tailed_indices,
)
from lightning_pruning.data.fashion_mnist_datamodule import FashionMNISTDataModule
from lightning_pruning.data.groups import group_ids
from lightning_pruning.data.labels import LabelsNotFoundError, contiguous_labels, find_labels, resolve_labels
from lightning_pruning.data.sampler import SubsetSampler

__all__ = [
    "FashionMNISTDataModule",
    "LabelsNotFoundError",
    "PruningDataModule",
    "SubsetProvider",
    "SubsetSampler",
    "TensorImageDataset",
    "contiguous_labels",
    "find_labels",
    "group_ids",
    "load_fashion_mnist",
    "load_fashion_mnist_lt",
    "long_tailed_indices",
    "resolve_labels",
]
