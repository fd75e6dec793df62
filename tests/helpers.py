"""Tiny data and models shared by the tests (module level, so ddp_spawn can pickle them)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from lightning_pruning import PruningDataModule, WorstClassAccuracy, pruning_loss


class ToyDataset(Dataset[tuple[Tensor, int]]):
    """Linearly separable-ish Gaussian blobs with a ``targets`` attribute."""

    def __init__(self, num_samples: int = 96, num_classes: int = 3, features: int = 8, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.targets = torch.arange(num_samples) % num_classes
        centers = torch.randn(num_classes, features, generator=generator) * 2
        self.inputs = centers[self.targets] + torch.randn(num_samples, features, generator=generator)
        self.num_classes = num_classes

    def __len__(self) -> int:
        return int(self.targets.numel())

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.inputs[index], int(self.targets[index])


class DictDataset(ToyDataset):
    """The same data as dict samples, to show the user's batch format reaches training_step."""

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        return {"x": self.inputs[index], "y": int(self.targets[index])}


class ToyModel(pl.LightningModule):
    """A linear classifier that trains with ``pruning_loss`` and reports worst-class accuracy."""

    def __init__(self, features: int = 8, num_classes: int = 3, lr: float = 0.1) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(features, num_classes)
        self.lr = lr
        self.worst = WorstClassAccuracy(num_classes)
        self.seen_batches: list[int] = []
        self.val_epochs: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)

    def _unpack(self, batch: Any) -> tuple[Tensor, Tensor]:
        if isinstance(batch, dict):
            return batch["x"], batch["y"]
        return batch[0], batch[1]

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        x, y = self._unpack(batch)
        self.seen_batches.append(int(y.numel()))
        return pruning_loss(self, F.cross_entropy(self(x), y, reduction="none"))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = self._unpack(batch)
        self.worst.update(self(x), y)
        self.log("val/worst_class_acc", self.worst, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        self.val_epochs.append(self.current_epoch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def toy_datamodule(num_samples: int = 96, batch_size: int = 8, **kwargs: Any) -> PruningDataModule:
    return PruningDataModule(
        ToyDataset(num_samples), ToyDataset(30, seed=1), batch_size=batch_size, seed=kwargs.pop("seed", 0), **kwargs
    )


def trainer_kwargs(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 3,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    kwargs.update(overrides)
    return kwargs


class WeightedGradientCheck(ToyModel):
    """Checks every step that the back-propagated gradient is that of ``mean(w_i * loss_i)``.

    Subclasses give the expected weights of a batch (computed independently of the callback); the
    gradient Lightning back-propagates is compared with a manual one in ``on_after_backward``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.expected_grads: list[Tensor] = []
        self.checked_steps = 0
        self.weighted_steps = 0

    def expected_weights(self, batch_indices: Tensor) -> Tensor:
        raise NotImplementedError

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        x, y = batch
        self.seen_batches.append(int(y.numel()))
        weights = self.expected_weights(self.trainer.datamodule.batch_indices(batch_idx))
        self.weighted_steps += int(bool((weights != 1.0).any()))
        losses = F.cross_entropy(self(x), y, reduction="none")
        out = pruning_loss(self, losses)
        manual = (weights * losses).mean()
        torch.testing.assert_close(out["loss"], manual)
        self.expected_grads = list(torch.autograd.grad(manual, list(self.parameters()), retain_graph=True))
        return out

    def on_after_backward(self) -> None:
        for parameter, expected in zip(self.parameters(), self.expected_grads, strict=True):
            assert parameter.grad is not None
            torch.testing.assert_close(parameter.grad, expected)
        self.checked_steps += 1


class IndexedToyDataset(ToyDataset):
    """The same data with each sample's dataset index as a third element, so a test can read the trained ids
    from the batches themselves (the library adds nothing to batches; this test dataset does)."""

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:  # type: ignore[override]
        return self.inputs[index], int(self.targets[index]), index


class TrainedIds(pl.Callback):
    """Records the dataset ids of every trained batch (from the batch itself), per epoch; optionally writes them
    to ``out/ids{rank}.pt`` at the end of training (DDP ranks run in other processes)."""

    def __init__(self, out: Any = None) -> None:
        self.out = out
        self.batches: list[tuple[int, int, Tensor]] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.batches.append((trainer.current_epoch, batch_idx, batch[2].detach().cpu().clone()))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.out is not None:
            torch.save(self.batches, self.out / f"ids{trainer.global_rank}.pt")


def indexed_datamodule(num_samples: int = 96, batch_size: int = 8, **kwargs: Any) -> PruningDataModule:
    return PruningDataModule(
        IndexedToyDataset(num_samples),
        ToyDataset(30, seed=1),
        batch_size=batch_size,
        seed=kwargs.pop("seed", 0),
        **kwargs,
    )
