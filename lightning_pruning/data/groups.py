"""Group ids for group-aware pruning and worst-group reporting (e.g. class × spurious attribute).

A group is any integer stratum of the training set. Give them to
``PruningDataModule(train_groups=...)`` and the methods that split their budget over classes (RCAP,
``RandomPruning(stratified=True)``, ``RS2(stratified=True)``) split it over groups instead; report with
:class:`~lightning_pruning.metrics.WorstGroupAccuracy`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def group_ids(labels: Tensor | Sequence[int], attributes: Tensor | Sequence[int], num_attributes: int) -> Tensor:
    """The group ``label * num_attributes + attribute`` of every sample (class × attribute groups).

    With C classes the ids lie in ``0..C * num_attributes - 1``; group ``g`` is class ``g // num_attributes``
    with attribute ``g % num_attributes``. Pass ``num_attributes`` explicitly (not inferred from the data) so
    the training and evaluation sets number their groups alike.

    Args:
        labels: non-negative integer class of every sample.
        attributes: integer attribute of every sample, in ``0..num_attributes-1``.
        num_attributes: number of attribute values A.

    Raises:
        ValueError: on shapes that differ, negative labels or attributes outside ``0..A-1``.
    """
    labels, attributes = torch.as_tensor(labels), torch.as_tensor(attributes)
    if num_attributes < 1:
        raise ValueError(f"`num_attributes` must be >= 1, got {num_attributes}.")
    if labels.shape != attributes.shape or labels.ndim != 1:
        raise ValueError(
            f"`labels` {tuple(labels.shape)} and `attributes` {tuple(attributes.shape)} must be 1-D, one per sample."
        )
    if labels.is_floating_point() or attributes.is_floating_point():
        raise ValueError("`labels` and `attributes` must be integer tensors.")
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError("`labels` must be >= 0 (map them to 0..C-1 first).")
    if attributes.numel() and (int(attributes.min()) < 0 or int(attributes.max()) >= num_attributes):
        raise ValueError(f"`attributes` must be in [0, {num_attributes}) (`num_attributes`={num_attributes}).")
    return labels.long() * num_attributes + attributes.long()
