"""Per-class and worst-class accuracy as torchmetrics ``Metric`` objects."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric


class PerClassAccuracy(Metric):
    """Accuracy of every class, from correct/total counts summed across processes.

    A class with no evaluation samples scores NaN (not 0, as ``MulticlassAccuracy(average=None)``
    does), so it cannot pose as the worst class.

    Args:
        num_classes: number of classes C; targets must be in ``0..C-1``.
        ignore_index: a target value to skip (e.g. padding), or ``None``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: Tensor
    total: Tensor

    def __init__(self, num_classes: int, ignore_index: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"`num_classes` must be >= 1, got {num_classes}.")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("correct", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Counts one batch.

        Args:
            preds: logits/probabilities of shape ``(B, C)`` or predicted labels of shape ``(B,)``.
            target: integer labels of shape ``(B,)``.
        """
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(dim=-1)
        if preds.shape != target.shape:
            raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} do not match.")
        target = target.long()
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            preds, target = preds[keep], target[keep]
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= self.num_classes):
            raise ValueError(f"targets must be in [0, {self.num_classes}), got values outside that range.")
        self.total += torch.bincount(target, minlength=self.num_classes)
        self.correct += torch.bincount(target[preds == target], minlength=self.num_classes)

    def compute(self) -> Tensor:
        """Per-class accuracy, NaN for classes absent from the evaluation targets."""
        total = self.total.to(torch.float32)
        return torch.where(self.total > 0, self.correct / total.clamp_min(1), torch.full_like(total, float("nan")))


class WorstClassAccuracy(PerClassAccuracy):
    """The lowest per-class accuracy over the classes present in the evaluation targets.

    Log it like any torchmetrics metric: ``self.log("val/worst_class_acc", self.worst_class_acc)``.
    """

    def compute(self) -> Tensor:
        """Minimum accuracy over present classes (NaN if nothing was counted)."""
        per_class = super().compute()
        present = per_class[~torch.isnan(per_class)]
        return present.min() if present.numel() else torch.tensor(float("nan"))
