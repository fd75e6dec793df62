"""Per-class / worst-class and per-group / worst-group accuracy as torchmetrics ``Metric`` objects.

All four keep integer correct/total counts per bucket (a class, or a group such as class × attribute),
summed across DDP ranks, and score a bucket with no evaluation samples as NaN, so it can neither pose as
the worst nor drag a minimum down.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric


def _worst(per_bucket: Tensor) -> Tensor:
    """Minimum over the buckets that were counted (NaN if none)."""
    present = per_bucket[~torch.isnan(per_bucket)]
    return present.min() if present.numel() else torch.tensor(float("nan"), device=per_bucket.device)


class _BucketAccuracy(Metric):
    """Correct/total counts per bucket id in ``0..num_buckets-1``, the shared core of the metrics below."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: Tensor
    total: Tensor

    def __init__(self, num_buckets: int, argument: str, ignore_index: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_buckets < 1:
            raise ValueError(f"`{argument}` must be >= 1, got {num_buckets}.")
        self._argument = argument
        self.ignore_index = ignore_index
        self.add_state("correct", default=torch.zeros(num_buckets, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(num_buckets, dtype=torch.long), dist_reduce_fx="sum")

    def _count(self, preds: Tensor, target: Tensor, buckets: Tensor, name: str) -> None:
        """Adds one batch: ``preds`` are logits ``(..., C)`` or labels shaped like ``target``."""
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(dim=-1)
        if preds.shape != target.shape:
            raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} do not match.")
        if buckets.shape != target.shape:
            raise ValueError(f"{name} {tuple(buckets.shape)} and target {tuple(target.shape)} do not match.")
        target, buckets = target.long(), buckets.long()
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            preds, target, buckets = preds[keep], target[keep], buckets[keep]
        size = self.total.numel()
        if buckets.numel() and (int(buckets.min()) < 0 or int(buckets.max()) >= size):
            raise ValueError(f"{name} must be in [0, {size}) (`{self._argument}`={size}), got values outside it.")
        buckets = buckets.flatten()
        self.total += torch.bincount(buckets, minlength=size)
        self.correct += torch.bincount(buckets[(preds == target).flatten()], minlength=size)

    def compute(self) -> Tensor:
        """Accuracy of every bucket, NaN for buckets absent from the evaluation data."""
        total = self.total.to(torch.float32)
        return torch.where(self.total > 0, self.correct / total.clamp_min(1), torch.full_like(total, float("nan")))


class PerClassAccuracy(_BucketAccuracy):
    """Accuracy of every class, from correct/total counts summed across processes.

    A class with no evaluation samples scores NaN (not 0, as ``MulticlassAccuracy(average=None)``
    does), so it cannot pose as the worst class.

    Args:
        num_classes: number of classes C; targets must be in ``0..C-1``.
        ignore_index: a target value to skip (e.g. padding), or ``None``.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None, **kwargs: Any) -> None:
        super().__init__(num_classes, "num_classes", ignore_index, **kwargs)
        self.num_classes = num_classes

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Counts one batch.

        Args:
            preds: logits/probabilities of shape ``(B, C)`` or predicted labels of shape ``(B,)``.
            target: integer labels of shape ``(B,)``.
        """
        self._count(preds, target, target, "targets")


class WorstClassAccuracy(PerClassAccuracy):
    """The lowest per-class accuracy over the classes present in the evaluation targets.

    Log it like any torchmetrics metric: ``self.log("val/worst_class_acc", self.worst_class_acc)``.
    """

    def compute(self) -> Tensor:
        """Minimum accuracy over present classes (NaN if nothing was counted)."""
        return _worst(super().compute())


class PerGroupAccuracy(_BucketAccuracy):
    """Accuracy of every group, for any integer group ids (e.g. class × attribute, as in Waterbirds or CelebA).

    A prediction counts for the group of its sample; counts are summed across processes, and a group with
    no evaluation samples scores NaN. Build ids with :func:`lightning_pruning.data.groups.group_ids`.

    Args:
        num_groups: number of groups G; group ids must be in ``0..G-1``.
        ignore_index: a target value to skip (e.g. padding), or ``None``.
    """

    def __init__(self, num_groups: int, ignore_index: int | None = None, **kwargs: Any) -> None:
        super().__init__(num_groups, "num_groups", ignore_index, **kwargs)
        self.num_groups = num_groups

    def update(self, preds: Tensor, target: Tensor, groups: Tensor) -> None:
        """Counts one batch.

        Args:
            preds: logits/probabilities of shape ``(B, C)`` or predicted labels of shape ``(B,)``.
            target: integer labels of shape ``(B,)``.
            groups: integer group id of every sample, shape ``(B,)``.
        """
        self._count(preds, target, groups, "groups")


class WorstGroupAccuracy(PerGroupAccuracy):
    """The lowest per-group accuracy over the groups present in the evaluation data (worst-group accuracy).

    ``self.worst_group.update(logits, y, groups)``, then ``self.log("val/worst_group_acc", self.worst_group)``.
    """

    def compute(self) -> Tensor:
        """Minimum accuracy over present groups (NaN if nothing was counted)."""
        return _worst(super().compute())
