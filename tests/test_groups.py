"""Groups: per-group / worst-group accuracy, group ids, and group budgets for RCAP and stratified Random*."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers import ToyDataset, ToyModel, trainer_kwargs
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.utils.data import TensorDataset

from lightning_pruning import (
    RCAP,
    RS2,
    PerClassAccuracy,
    PerGroupAccuracy,
    PruningDataModule,
    RandomPruning,
    WorstClassAccuracy,
    WorstGroupAccuracy,
    group_ids,
    pruning_loss,
)
from lightning_pruning.data.labels import LabelsNotFoundError


# ---------------------------------------------------------------------------------------------------------
# The metrics on hand-computed cases.
def test_per_group_accuracy_by_hand_and_absent_groups_are_nan() -> None:
    metric = PerGroupAccuracy(num_groups=4)
    preds = torch.tensor([0, 1, 1, 0, 1, 1])
    target = torch.tensor([0, 1, 0, 0, 1, 0])
    groups = torch.tensor([0, 0, 1, 1, 3, 3])  # group 2 never appears
    metric.update(preds, target, groups)
    result = metric.compute()
    assert result[[0, 1, 3]].tolist() == [1.0, 0.5, 0.5] and torch.isnan(result[2])
    worst = WorstGroupAccuracy(num_groups=4)
    worst.update(preds, target, groups)
    assert worst.compute().item() == 0.5  # the absent group 2 is ignored, not scored 0


def test_worst_group_accepts_logits_and_ignore_index() -> None:
    metric = WorstGroupAccuracy(num_groups=2, ignore_index=-100)
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    metric.update(logits, torch.tensor([0, 0, -100]), torch.tensor([0, 1, 1]))
    assert metric.compute().item() == 0.0  # group 1: one counted sample, wrong; the padded one is skipped
    assert metric.total.tolist() == [1, 1]


def test_worst_group_of_nothing_is_nan() -> None:
    assert torch.isnan(WorstGroupAccuracy(num_groups=3).compute())


def test_group_metric_rejects_bad_groups() -> None:
    metric = PerGroupAccuracy(num_groups=2)
    with pytest.raises(ValueError, match="groups must be in"):
        metric.update(torch.tensor([0]), torch.tensor([0]), torch.tensor([2]))
    with pytest.raises(ValueError, match="groups"):
        metric.update(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="num_groups"):
        PerGroupAccuracy(num_groups=0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=0, max_size=40))
def test_groups_equal_to_the_class_give_the_per_class_metric(pairs: list[tuple[int, int]]) -> None:
    preds = torch.tensor([pred for pred, _ in pairs], dtype=torch.long)
    target = torch.tensor([label for _, label in pairs], dtype=torch.long)
    per_group, per_class = PerGroupAccuracy(5), PerClassAccuracy(5)
    worst_group, worst_class = WorstGroupAccuracy(5), WorstClassAccuracy(5)
    per_group.update(preds, target, target)
    per_class.update(preds, target)
    worst_group.update(preds, target, target)
    worst_class.update(preds, target)
    torch.testing.assert_close(per_group.compute(), per_class.compute(), equal_nan=True)
    torch.testing.assert_close(worst_group.compute(), worst_class.compute(), equal_nan=True)


def test_group_ids_are_class_times_attribute() -> None:
    groups = group_ids(torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 1, 0, 1, 1]), num_attributes=2)
    assert groups.tolist() == [0, 1, 2, 3, 5]
    with pytest.raises(ValueError, match="attributes"):
        group_ids([0, 1], [0, 2], num_attributes=2)
    with pytest.raises(ValueError, match="1-D"):
        group_ids([0, 1], [0], num_attributes=2)


# ---------------------------------------------------------------------------------------------------------
# DDP: counts are summed across ranks before the minimum.
class RankSkewedGroupModel(ToyModel):
    def __init__(self, out: str) -> None:
        super().__init__()
        self.out = out
        self.worst_group = WorstGroupAccuracy(num_groups=3)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        # rank 0: group 0 right twice; rank 1: group 0 wrong twice, group 2 right once. Group 1 is absent.
        if self.trainer.global_rank == 0:
            preds, target, groups = torch.tensor([1, 1]), torch.tensor([1, 1]), torch.tensor([0, 0])
        else:
            preds, target, groups = torch.tensor([0, 0, 1]), torch.tensor([1, 1, 1]), torch.tensor([0, 0, 2])
        self.worst_group.update(preds, target, groups)

    def on_validation_epoch_end(self) -> None:
        value = self.worst_group.compute()  # synced: group 0 is 2 right out of 4; rank 0 alone would say 1.0
        self.worst_group.reset()
        if self.trainer.global_rank == 0 and not self.trainer.sanity_checking:
            Path(self.out, "worst_group.txt").write_text(str(float(value)))


def test_worst_group_counts_are_summed_across_ddp_ranks(tmp_path: Path) -> None:
    model = RankSkewedGroupModel(str(tmp_path))
    trainer = pl.Trainer(**trainer_kwargs(max_epochs=1, strategy="ddp_fork", devices=2, limit_train_batches=1))
    trainer.fit(model, datamodule=PruningDataModule(ToyDataset(8), ToyDataset(8), batch_size=4, seed=0))
    assert float((tmp_path / "worst_group.txt").read_text()) == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------------------
# A Waterbirds-like set: label y, attribute a equal to y in 90% of the samples. The attribute is a clean
# feature, the label a noisy one, so a linear model learns the shortcut: every class is ~90% right while
# the minority groups (a != y) are almost all wrong.
def spurious_set(num_samples: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(num_samples) % 2
    a = y.clone()
    minority = torch.arange(num_samples) % 20 < 2  # 10% of each class
    a[minority] = 1 - a[minority]
    spurious = (2 * a - 1).float() + 0.1 * torch.randn(num_samples, generator=generator)
    core = 0.3 * (2 * y - 1).float() + torch.randn(num_samples, generator=generator)
    return torch.stack([spurious, core], dim=1), y, group_ids(y, a, num_attributes=2)


class GroupModel(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)
        self.worst_group = WorstGroupAccuracy(num_groups=4)
        self.worst_class = WorstClassAccuracy(num_classes=2)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        x, y = batch
        return pruning_loss(self, F.cross_entropy(self.linear(x), y, reduction="none"))

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        x, y, groups = batch
        logits = self.linear(x)
        self.worst_group.update(logits, y, groups)
        self.worst_class.update(logits, y)
        self.log("val/worst_group_acc", self.worst_group)
        self.log("val/worst_class_acc", self.worst_class)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)


def fit_spurious(method: pl.Callback, with_groups: bool) -> tuple[pl.Trainer, Tensor]:
    x, y, groups = spurious_set(400, seed=0)
    val_x, val_y, val_groups = spurious_set(200, seed=1)
    datamodule = PruningDataModule(
        TensorDataset(x, y),
        TensorDataset(val_x, val_y, val_groups),
        batch_size=32,
        seed=0,
        train_groups=groups if with_groups else None,
    )
    torch.manual_seed(0)
    trainer = pl.Trainer(**trainer_kwargs(max_epochs=4, callbacks=[method]))
    trainer.fit(GroupModel(), datamodule=datamodule)
    return trainer, groups


def test_worst_group_is_not_the_worst_class_and_the_metric_sees_it() -> None:
    trainer, _ = fit_spurious(RandomPruning(0.5, seed=0), with_groups=False)
    metrics = trainer.callback_metrics
    assert float(metrics["val/worst_class_acc"]) >= 0.85  # each class is right on its 90% majority
    assert float(metrics["val/worst_group_acc"]) <= 0.15  # its minority group is wrong


def test_rcap_budgets_split_over_groups_instead_of_classes() -> None:
    by_class, groups = fit_spurious(RCAP(0.5, seed=0), with_groups=False)
    by_group, _ = fit_spurious(RCAP(0.5, seed=0), with_groups=True)
    (class_rcap,) = [cb for cb in by_class.callbacks if isinstance(cb, RCAP)]
    (group_rcap,) = [cb for cb in by_group.callbacks if isinstance(cb, RCAP)]
    assert class_rcap.class_layout is not None and class_rcap.class_layout.counts.tolist() == [200, 200]
    assert group_rcap.class_layout is not None and group_rcap.class_layout.counts.tolist() == [180, 20, 20, 180]
    assert group_rcap.class_values == [0, 1, 2, 3]
    for record in group_rcap.history:
        budgets = [record[f"budget_class_{group}"] for group in range(4)]
        assert sum(budgets) == 200 and "budget_class_2" not in class_rcap.history[-1]
    # Every epoch's subset holds exactly each group's budget.
    last = group_rcap.history[-1]
    kept = torch.bincount(groups[group_rcap.current_subset], minlength=4).tolist()
    assert kept == [last[f"budget_class_{group}"] for group in range(4)]
    # The group split keeps every minority-group sample, the class split only some of them.
    assert kept[1] == kept[2] == 20 and last["saturated_classes"] == 2
    kept_by_class = torch.bincount(groups[class_rcap.current_subset], minlength=4).tolist()
    assert kept_by_class[1] < 20 and kept_by_class[2] < 20
    # And the logged per-group keys reach the logger's metrics.
    assert float(by_group.callback_metrics["pruning/budget_class_1"]) == 20.0


@pytest.mark.parametrize("cls", [RandomPruning, RS2])
def test_stratified_random_keeps_every_groups_share(cls: type[RandomPruning] | type[RS2]) -> None:
    method = cls(0.5, stratified=True, seed=3)
    _, groups = fit_spurious(method, with_groups=True)
    assert method.class_layout is not None and method.class_layout.num_classes == 4
    kept = torch.bincount(groups[method.current_subset], minlength=4)
    assert kept.tolist() == [90, 10, 10, 90]  # half of every group, exactly


def test_train_groups_of_the_wrong_length_is_a_clear_error() -> None:
    x, y, groups = spurious_set(40, seed=0)
    datamodule = PruningDataModule(TensorDataset(x, y), batch_size=8, seed=0, train_groups=groups[:-1])
    trainer = pl.Trainer(**trainer_kwargs(max_epochs=1, callbacks=[RCAP(0.5, seed=0)]))
    with pytest.raises(LabelsNotFoundError, match="train_groups"):
        trainer.fit(GroupModel(), datamodule=datamodule)
