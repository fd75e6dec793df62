"""A user's own model and data, written as a user would (no project base classes), for the CLI tests.

Importable by class path (``cli_user.UserClassifier``) because ``tests/`` is on ``sys.path`` under pytest.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_pruning import PruningDataModule, WorstClassAccuracy, group_ids, pruning_loss


class UserClassifier(pl.LightningModule):
    """A small MLP classifier that ends ``training_step`` with ``pruning_loss``.

    Args:
        features: input size.
        num_classes: number of classes.
        hidden: hidden units.
        lr: SGD learning rate.
    """

    def __init__(self, features: int = 6, num_classes: int = 3, hidden: int = 16, lr: float = 0.2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, num_classes)
        )
        self.worst = WorstClassAccuracy(num_classes)
        #: Samples trained in each epoch, counted from the batches that reached training_step.
        self.trained_per_epoch: dict[int, int] = {}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        x, y = batch
        epoch = self.current_epoch
        self.trained_per_epoch[epoch] = self.trained_per_epoch.get(epoch, 0) + int(y.numel())
        return pruning_loss(self, F.cross_entropy(self.net(x), y, reduction="none"))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.worst.update(logits, y)
        self.log("val/acc", (logits.argmax(-1) == y).float().mean())
        self.log("val/worst_class_acc", self.worst)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"])


class UserDataModule(pl.LightningDataModule):
    """Gaussian blobs in ``TensorDataset(x, y)``; a plain LightningDataModule the CLI must wrap.

    Args:
        num_samples: training set size.
        features: input size.
        num_classes: number of classes.
        batch_size: batch size.
        num_workers: DataLoader workers.
    """

    def __init__(
        self, num_samples: int = 96, features: int = 6, num_classes: int = 3, batch_size: int = 16, num_workers: int = 0
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train: TensorDataset | None = None
        self.val: TensorDataset | None = None

    @staticmethod
    def _blobs_of(count: int, seed: int, features: int = 6, num_classes: int = 3) -> TensorDataset:
        generator = torch.Generator().manual_seed(seed)
        centers = 2 * torch.randn(num_classes, features, generator=torch.Generator().manual_seed(0))
        y = torch.arange(count) % num_classes
        return TensorDataset(centers[y] + torch.randn(count, features, generator=generator), y)

    def setup(self, stage: str) -> None:
        hp = self.hparams
        self.train = self._blobs_of(hp["num_samples"], 1, hp["features"], hp["num_classes"])
        self.val = self._blobs_of(30, 2, hp["features"], hp["num_classes"])

    def train_dataloader(self) -> DataLoader[Any]:
        assert self.train is not None
        return DataLoader(self.train, batch_size=self.hparams["batch_size"], shuffle=True)

    def val_dataloader(self) -> DataLoader[Any]:
        assert self.val is not None
        return DataLoader(self.val, batch_size=32)


class UserGroupData(PruningDataModule):
    """Subclassing PruningDataModule: plain arguments for the CLI, datasets built in ``__init__``, and
    groups (class × a binary attribute) handed to ``train_groups``.

    Args:
        num_samples: training set size.
        batch_size: batch size.
        use_groups: split class-aware budgets over the 6 groups instead of the 3 classes.
    """

    def __init__(self, num_samples: int = 96, batch_size: int = 16, use_groups: bool = True) -> None:
        train, val = UserDataModule._blobs_of(num_samples, 1), UserDataModule._blobs_of(30, 2)
        labels = train.tensors[1]
        attribute = (torch.arange(num_samples) % 4 == 0).long()  # a rare attribute: a quarter of the samples
        groups = group_ids(labels, attribute, num_attributes=2) if use_groups else None
        super().__init__(train, val, batch_size=batch_size, train_groups=groups)
        self.save_hyperparameters()
