"""The user contract: pruning_loss, the worst-class metric, and clear errors for misuse."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers import ToyDataset, ToyModel, toy_datamodule, trainer_kwargs
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy

from lightning_pruning import PerClassAccuracy, PruningDataModule, RandomPruning, WorstClassAccuracy, pruning_loss
from lightning_pruning.methods.base import PruningCallback, Selection

# --------------------------------------------------------------------------------------------------
# pruning_loss


def test_without_a_callback_the_loss_is_exactly_the_plain_mean() -> None:
    losses = torch.tensor([0.5, 1.5, 2.0], requires_grad=True)
    out = pruning_loss(ToyModel(), losses)
    assert torch.equal(out["loss"], losses.mean())
    assert not out["per_sample_loss"].requires_grad


@pytest.mark.parametrize(
    ("losses", "message"),
    [
        (torch.tensor(1.0), "reduction='none'"),
        (torch.ones(2, 3), "one value per sample"),
        # NaN/inf values are found once per epoch by the pruning callback, not per step (that would stall a GPU
        # every step): see tests/test_step_path.py::test_a_nan_loss_raises_once_per_epoch_naming_epoch_and_batch.
    ],
)
def test_bad_losses_get_a_clear_error(losses: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pruning_loss(ToyModel(), losses)


class WeightedHalf(PruningCallback):
    """Keeps the first half of the data with weight 3, to check how weights reach the loss."""

    def select(self, epoch: int, generator: torch.Generator) -> Selection:
        indices = torch.arange(self.num_samples // 2)
        return Selection(indices, weights=torch.full((indices.numel(),), 3.0))


class GradientProbe(ToyModel):
    """Compares the gradient Lightning back-propagates with a manual weighted mean."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        losses = F.cross_entropy(self(x), y, reduction="none")
        manual = torch.autograd.grad((3.0 * losses).mean(), self.layer.weight, retain_graph=True)[0]
        out = pruning_loss(self, losses)
        produced = torch.autograd.grad(out["loss"], self.layer.weight, retain_graph=True)[0]
        torch.testing.assert_close(produced, manual)
        self.checked = getattr(self, "checked", 0) + 1
        return out


def test_weights_are_applied_to_the_backpropagated_loss() -> None:
    model = GradientProbe()
    pl.Trainer(callbacks=[WeightedHalf(seed=0)], **trainer_kwargs(max_epochs=1)).fit(model, datamodule=toy_datamodule())
    assert model.checked == 6  # 48 samples / batch 8


class WrongLength(ToyModel):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        return pruning_loss(self, F.cross_entropy(self(x), y, reduction="none")[:-1])


class ScalarOnly(ToyModel):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        return F.cross_entropy(self(x), y)


def test_wrong_length_and_missing_per_sample_losses_are_errors() -> None:
    with pytest.raises(ValueError, match="per-sample losses for a batch of 8"):
        pl.Trainer(callbacks=[RandomPruning(0.5)], **trainer_kwargs(max_epochs=1)).fit(
            WrongLength(), datamodule=toy_datamodule()
        )
    with pytest.raises(ValueError, match="pruning_loss"):
        pl.Trainer(callbacks=[RandomPruning(0.5)], **trainer_kwargs(max_epochs=1)).fit(
            ScalarOnly(), datamodule=toy_datamodule()
        )


# --------------------------------------------------------------------------------------------------
# Trainer set-up errors and warnings


class PlainLoaderModel(ToyModel):
    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(ToyDataset(16), batch_size=4)


def test_callback_without_the_pruning_datamodule_is_an_error() -> None:
    trainer = pl.Trainer(callbacks=[RandomPruning(0.5)], **trainer_kwargs(max_epochs=1))
    with pytest.raises(TypeError, match="PruningDataModule"):
        trainer.fit(PlainLoaderModel())


def test_overfit_batches_is_refused() -> None:
    trainer = pl.Trainer(callbacks=[RandomPruning(0.5)], **trainer_kwargs(max_epochs=1, overfit_batches=2))
    with pytest.raises(ValueError, match="overfit_batches"):
        trainer.fit(ToyModel(), datamodule=toy_datamodule())


def test_two_pruning_callbacks_are_refused() -> None:
    trainer = pl.Trainer(callbacks=[RandomPruning(0.5), RandomPruning(0.3)], **trainer_kwargs(max_epochs=1))
    with pytest.raises(ValueError, match="only one pruning callback"):
        trainer.fit(ToyModel(), datamodule=toy_datamodule())


def test_forgotten_reload_setting_is_handled() -> None:
    trainer = pl.Trainer(callbacks=[RandomPruning(0.5)], **trainer_kwargs(max_epochs=2))
    assert trainer.reload_dataloaders_every_n_epochs == 0
    trainer.fit(ToyModel(), datamodule=toy_datamodule())
    assert trainer.reload_dataloaders_every_n_epochs == 1


def test_reload_every_other_epoch_is_overridden_with_a_warning() -> None:
    trainer = pl.Trainer(
        callbacks=[RandomPruning(0.5)], **trainer_kwargs(max_epochs=1, reload_dataloaders_every_n_epochs=2)
    )
    with pytest.warns(UserWarning, match="overridden to 1"):
        trainer.fit(ToyModel(), datamodule=toy_datamodule())


def test_annealing_without_max_epochs_is_an_error() -> None:
    trainer = pl.Trainer(
        callbacks=[RandomPruning(0.5, annealing_fraction=0.2)], **trainer_kwargs(max_epochs=-1, max_steps=4)
    )
    with pytest.raises(ValueError, match="max_epochs"):
        trainer.fit(ToyModel(), datamodule=toy_datamodule())


def test_checkpoint_without_callback_state_warns_on_resume(tmp_path: Path) -> None:
    """A checkpoint of a run without the pruning callback restarts pruning from scratch, loudly."""
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="last")
    pl.Trainer(callbacks=[checkpoint], **trainer_kwargs(max_epochs=1, enable_checkpointing=True)).fit(
        ToyModel(), datamodule=toy_datamodule()
    )
    resumed = pl.Trainer(callbacks=[RandomPruning(0.5)], **trainer_kwargs(max_epochs=3))
    with pytest.warns(UserWarning, match="holds no state for this callback"):
        resumed.fit(ToyModel(), datamodule=toy_datamodule(), ckpt_path=str(tmp_path / "last.ckpt"))


def test_estimated_stepping_batches_counts_pruned_epochs() -> None:
    method = RandomPruning(0.5, seed=0, warmup_epochs=1)
    trainer = pl.Trainer(callbacks=[method], **trainer_kwargs(max_epochs=3, accumulate_grad_batches=2))
    trainer.fit(ToyModel(), datamodule=toy_datamodule(96, 8))
    # epoch 0: 96 samples = 12 batches = 6 steps; epochs 1-2: 48 samples = 6 batches = 3 steps
    assert method.estimated_stepping_batches(trainer) == 6 + 3 + 3


def test_prune_ratio_is_validated_at_construction() -> None:
    with pytest.raises(ValueError, match="prune_ratio"):
        RandomPruning(1.2)


# --------------------------------------------------------------------------------------------------
# Metrics


def test_worst_class_ignores_absent_classes() -> None:
    preds = torch.tensor([0, 0, 1, 1, 1])
    target = torch.tensor([0, 0, 1, 0, 1])
    metric = WorstClassAccuracy(num_classes=4)
    metric.update(preds, target)
    # class 0: 2/3, class 1: 2/2, classes 2 and 3 absent
    assert metric.compute().item() == pytest.approx(2 / 3)
    per_class = PerClassAccuracy(num_classes=4)
    per_class.update(preds, target)
    values = per_class.compute()
    assert values[:2].tolist() == pytest.approx([2 / 3, 1.0])
    assert math.isnan(values[2]) and math.isnan(values[3])
    # torchmetrics scores absent classes 0, so its minimum would be wrong
    reference = MulticlassAccuracy(num_classes=4, average=None)
    assert reference(preds, target).min().item() == 0.0


def test_metric_accepts_logits_and_accumulates_batches() -> None:
    metric = WorstClassAccuracy(num_classes=2)
    metric.update(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    metric.update(torch.tensor([1, 1]), torch.tensor([1, 1]))
    assert metric.compute().item() == pytest.approx(0.5)


def test_metric_rejects_out_of_range_targets() -> None:
    with pytest.raises(ValueError, match="targets must be in"):
        WorstClassAccuracy(num_classes=2).update(torch.tensor([0]), torch.tensor([5]))


def test_metric_counts_are_summed_across_ddp_ranks(tmp_path: Path) -> None:
    """Each rank sees different classes; the logged worst class must come from the summed counts."""
    model = RankSkewedMetricModel(str(tmp_path))
    trainer = pl.Trainer(**trainer_kwargs(max_epochs=1, strategy="ddp_fork", devices=2, limit_train_batches=1))
    trainer.fit(model, datamodule=PruningDataModule(ToyDataset(8), ToyDataset(8), batch_size=4, seed=0))
    assert float((tmp_path / "worst.txt").read_text()) == pytest.approx(0.5)


class RankSkewedMetricModel(ToyModel):
    def __init__(self, out: str) -> None:
        super().__init__()
        self.out = out
        self.per_class = PerClassAccuracy(num_classes=2)
        self.worst_metric = WorstClassAccuracy(num_classes=2)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        # rank 0: class 0 always right; rank 1: class 0 always wrong, class 1 right
        rank = self.trainer.global_rank
        target = torch.tensor([0, 0]) if rank == 0 else torch.tensor([0, 0, 1])
        preds = torch.tensor([0, 0]) if rank == 0 else torch.tensor([1, 1, 1])
        self.worst_metric.update(preds, target)

    def on_validation_epoch_end(self) -> None:
        value = self.worst_metric.compute()  # synced: class 0 is 2 right out of 4
        self.worst_metric.reset()
        if self.trainer.global_rank == 0 and not self.trainer.sanity_checking:
            Path(self.out, "worst.txt").write_text(str(float(value)))
