"""Finding the class label of every training sample without iterating the dataset.

Where labels are looked up, in order (:func:`find_labels`):

* a ``targets`` or ``labels`` attribute (torchvision datasets: ``ImageFolder``, ``DatasetFolder``, MNIST, CIFAR, ...);
* a Hugging Face ``datasets.Dataset``: the column named by ``label_column``, else its only ``ClassLabel``
  feature, else a column named ``label`` or ``labels``; read from the Arrow table (one column, no transform,
  no row decoding);
* a ``TensorDataset`` of two tensors whose second is a 1-D integer tensor (``TensorDataset(x, y)``);
* ``Subset`` and ``ConcatDataset`` (nested to any depth) of any of the above.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset

_LABEL_ATTRIBUTES = ("targets", "labels")
_HF_LABEL_COLUMNS = ("label", "labels")


class LabelsNotFoundError(ValueError):
    """Raised when a method needs class labels and none can be found."""


def _as_label_tensor(value: Any, name: str) -> Tensor:
    try:
        labels = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise LabelsNotFoundError(f"`{name}` could not be turned into a label tensor: {error}") from error
    if labels.ndim != 1:
        raise LabelsNotFoundError(f"`{name}` must be one integer label per sample, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        if labels.is_floating_point() and bool((labels == labels.round()).all()):
            return labels.to(torch.int64)
        raise LabelsNotFoundError(f"`{name}` must hold integer class labels, got dtype {labels.dtype}")
    return labels.to(torch.int64)


def is_hf_dataset(dataset: Any) -> bool:
    """Whether ``dataset`` is a Hugging Face ``datasets.Dataset`` (without importing ``datasets``)."""
    module = sys.modules.get("datasets")
    return module is not None and isinstance(dataset, module.Dataset)


def hf_label_column(dataset: Any, label_column: str | None = None) -> str | None:
    """The column of a Hugging Face dataset that holds the labels, or ``None``.

    ``label_column`` if given (it must exist), else the only ``ClassLabel`` feature, else a column named
    ``label`` or ``labels``.

    Raises:
        LabelsNotFoundError: if ``label_column`` is not a column of the dataset.
    """
    columns = list(dataset.column_names)
    if label_column is not None:
        if label_column not in columns:
            raise LabelsNotFoundError(
                f"label_column={label_column!r} is not a column of the Hugging Face dataset; its columns are {columns}."
            )
        return label_column
    class_labels = [name for name, feature in dataset.features.items() if type(feature).__name__ == "ClassLabel"]
    if len(class_labels) == 1:
        return class_labels[0]
    return next((name for name in _HF_LABEL_COLUMNS if name in columns), None)


def hf_column(dataset: Any, column: str) -> Tensor:
    """One column of a Hugging Face dataset as a tensor, read from its Arrow table.

    The column is read with the ``arrow`` format, so neither a transform set with ``set_transform`` /
    ``with_transform`` nor any other column (images, text) is touched; ``select``/``shuffle`` index
    mappings are respected.
    """
    values = dataset.with_format("arrow")[column]
    if values.null_count:
        raise LabelsNotFoundError(
            f"column {column!r} of the Hugging Face dataset has {values.null_count} missing values."
        )
    return _as_label_tensor(torch.tensor(values.to_numpy()), f"column {column!r}")


def find_labels(dataset: Dataset[Any], label_column: str | None = None) -> Tensor | None:
    """Labels stored on a dataset, or ``None``, found without loading a sample (see the module docs for where).

    Args:
        dataset: the dataset (a ``Subset``/``ConcatDataset`` is searched through).
        label_column: for Hugging Face datasets, the column with the labels (default: detected).
    """
    for attribute in _LABEL_ATTRIBUTES:
        value = getattr(dataset, attribute, None)
        if value is not None and not callable(value):
            return _as_label_tensor(value, f"{type(dataset).__name__}.{attribute}")
    if is_hf_dataset(dataset):
        column = hf_label_column(dataset, label_column)
        return None if column is None else hf_column(dataset, column)
    if isinstance(dataset, TensorDataset):
        tensors = dataset.tensors
        if len(tensors) == 2 and tensors[1].ndim == 1 and not tensors[1].is_floating_point():
            return _as_label_tensor(tensors[1], "TensorDataset.tensors[1]")
        return None
    if isinstance(dataset, Subset):
        inner = find_labels(dataset.dataset, label_column)
        if inner is None:
            return None
        return inner[torch.as_tensor(dataset.indices, dtype=torch.int64)]
    if isinstance(dataset, ConcatDataset):
        parts = [find_labels(part, label_column) for part in dataset.datasets]
        if any(part is None for part in parts):
            return None
        return torch.cat([part for part in parts if part is not None])
    return None


def resolve_labels(
    dataset: Dataset[Any],
    num_samples: int,
    explicit: Tensor | Sequence[int] | None = None,
    *,
    label_column: str | None = None,
    argument: str = "train_labels",
) -> Tensor:
    """The raw (not yet remapped) label of every training sample.

    Args:
        dataset: the training dataset.
        num_samples: its length.
        explicit: labels (or group ids) given by the user; they take precedence over anything on the dataset.
        label_column: for Hugging Face datasets, the column with the labels (default: detected).
        argument: the name of ``explicit`` in the user's code, for error messages.

    Raises:
        LabelsNotFoundError: if no labels are found or their count differs from the dataset's length.
    """
    if explicit is not None:
        labels = _as_label_tensor(explicit, argument)
    else:
        found = find_labels(dataset, label_column)
        if found is None:
            raise LabelsNotFoundError(
                "this pruning method splits its budget over classes (or groups) and needs the class label of "
                f"every training sample, but none were found on {type(dataset).__name__} (no `targets`/`labels` "
                "attribute, no label column, not a TensorDataset(x, y) of integer labels). Pass them: "
                "PruningDataModule(..., train_labels=<1-D integer tensor, one per training sample>) or "
                "train_groups=<group ids>; with your own DataModule, give its training dataset a `targets` "
                "attribute. Without labels (regression, language modelling) use a method that needs none, e.g. "
                "RandomPruning(stratified=False), RS2, InfoBatch, RePB, OrderDP."
            )
        labels = found
    if labels.numel() != num_samples:
        raise LabelsNotFoundError(
            f"found {labels.numel()} labels for a training set of {num_samples} samples; "
            f"`{argument}` must hold exactly one label (or group id) per training sample, in dataset order."
        )
    return labels


def contiguous_labels(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Maps arbitrary integer labels to ``0..C-1``.

    Returns:
        ``(mapped, classes)`` where ``classes[mapped[i]] == labels[i]`` and ``classes`` is sorted.
    """
    classes, mapped = torch.unique(labels, sorted=True, return_inverse=True)
    return mapped.to(torch.int64), classes
