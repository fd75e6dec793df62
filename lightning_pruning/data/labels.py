"""Finding the class label of every training sample without iterating the dataset."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset, Subset

_LABEL_ATTRIBUTES = ("targets", "labels")


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


def find_labels(dataset: Dataset[Any]) -> Tensor | None:
    """Labels stored on a dataset, or ``None``.

    Looks for a ``targets`` or ``labels`` attribute (torchvision style), and sees through
    ``torch.utils.data.Subset`` and ``ConcatDataset``.
    """
    for attribute in _LABEL_ATTRIBUTES:
        value = getattr(dataset, attribute, None)
        if value is not None and not callable(value):
            return _as_label_tensor(value, f"{type(dataset).__name__}.{attribute}")
    if isinstance(dataset, Subset):
        inner = find_labels(dataset.dataset)
        if inner is None:
            return None
        return inner[torch.as_tensor(list(dataset.indices), dtype=torch.int64)]
    if isinstance(dataset, ConcatDataset):
        parts = [find_labels(part) for part in dataset.datasets]
        if any(part is None for part in parts):
            return None
        return torch.cat([part for part in parts if part is not None])
    return None


def resolve_labels(dataset: Dataset[Any], num_samples: int, explicit: Tensor | Sequence[int] | None = None) -> Tensor:
    """The raw (not yet remapped) label of every training sample.

    Args:
        dataset: the training dataset.
        num_samples: its length.
        explicit: labels given by the user; they take precedence over anything on the dataset.

    Raises:
        LabelsNotFoundError: if no labels are found or their count differs from the dataset's length.
    """
    if explicit is not None:
        labels = _as_label_tensor(explicit, "labels")
    else:
        found = find_labels(dataset)
        if found is None:
            raise LabelsNotFoundError(
                f"this pruning method needs the class label of every training sample, but "
                f"{type(dataset).__name__} has no `targets` or `labels` attribute. Pass them explicitly: "
                "PruningDataModule(..., train_labels=<1-D integer tensor, one label per training sample>)."
            )
        labels = found
    if labels.numel() != num_samples:
        raise LabelsNotFoundError(
            f"found {labels.numel()} labels for a training set of {num_samples} samples; "
            "`train_labels` must hold exactly one label per training sample, in dataset order."
        )
    return labels


def contiguous_labels(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Maps arbitrary integer labels to ``0..C-1``.

    Returns:
        ``(mapped, classes)`` where ``classes[mapped[i]] == labels[i]`` and ``classes`` is sorted.
    """
    classes, mapped = torch.unique(labels, sorted=True, return_inverse=True)
    return mapped.to(torch.int64), classes
