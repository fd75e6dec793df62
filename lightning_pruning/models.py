"""A ready image classifier that trains with ``pruning_loss`` and reports worst-class accuracy."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_pruning.loss import pruning_loss
from lightning_pruning.metrics import PerClassAccuracy, WorstClassAccuracy

Backbone = Literal["mlp", "cnn", "resnet18"]


def build_backbone(name: str, num_classes: int, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """A classifier network.

    Args:
        name: ``"mlp"`` (two hidden layers), ``"cnn"`` (two small conv blocks, 16 and 32 channels), or
            ``"resnet18"`` (torchvision, first layer adapted to small images and ``in_channels``).
        num_classes: number of output classes.
        in_channels: image channels.
        image_size: image side length (for the MLP's input size).
    """
    if name == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * image_size * image_size, 256),
            nn.ReLU(),
            nn.Linear(256, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )
    if name == "cnn":
        return nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * (image_size // 4) ** 2, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )
    if name == "resnet18":
        try:
            from torchvision.models import resnet18
        except ImportError as error:  # pragma: no cover - depends on the install
            raise ImportError(
                "backbone='resnet18' needs torchvision: pip install 'lightning-pruning[vision]'"
            ) from error
        model = resnet18(num_classes=num_classes)
        model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
        return model
    raise ValueError(f"unknown backbone {name!r}; choose 'mlp', 'cnn' or 'resnet18'.")


class ImageClassifier(pl.LightningModule):
    """Cross-entropy image classification, ready for any pruning callback.

    Logs ``train/loss``, ``val/acc``, ``val/worst_class_acc`` (and the same under ``test/``). The
    learning rate follows a cosine schedule stepped per epoch, so pruned epochs do not distort it.

    Args:
        backbone: ``"mlp"``, ``"cnn"`` or ``"resnet18"``.
        num_classes: number of classes.
        in_channels: image channels.
        image_size: image side length.
        lr: peak learning rate.
        weight_decay: weight decay.
        optimizer: ``"sgd"`` (momentum 0.9, nesterov) or ``"adamw"``.
    """

    def __init__(
        self,
        backbone: Backbone = "mlp",
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        lr: float = 0.05,
        weight_decay: float = 5e-4,
        optimizer: Literal["sgd", "adamw"] = "sgd",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = build_backbone(backbone, num_classes, in_channels, image_size)
        # Convolutions run about 2x faster on CPUs (and use tensor cores on GPUs) in channels-last layout.
        self._channels_last = backbone != "mlp"
        if self._channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.val_acc = PerClassAccuracy(num_classes)
        self.val_worst = WorstClassAccuracy(num_classes)
        self.test_per_class = PerClassAccuracy(num_classes)
        self.test_worst = WorstClassAccuracy(num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if self._channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        x, y = batch
        out = pruning_loss(self, F.cross_entropy(self(x), y, reduction="none"))
        self.log("train/loss", out["loss"], on_step=False, on_epoch=True)
        return out

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        x, y = batch
        logits = self(x)
        per_class, worst = (self.val_acc, self.val_worst) if stage == "val" else (self.test_per_class, self.test_worst)
        per_class.update(logits, y)
        worst.update(logits, y)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), on_epoch=True, sync_dist=True)
        self.log(f"{stage}/worst_class_acc", worst, on_epoch=True, prog_bar=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _log_mean_accuracy(self, stage: str) -> None:
        per_class = self.val_acc if stage == "val" else self.test_per_class
        correct, total = per_class.correct.sum(), per_class.total.sum()
        if self.trainer.world_size > 1:
            correct = self.trainer.strategy.reduce(correct, reduce_op="sum")
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
        self.log(f"{stage}/acc", correct / total.clamp_min(1), prog_bar=True)
        self.last_per_class_accuracy = per_class.compute().tolist()
        per_class.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_mean_accuracy("val")

    def on_test_epoch_end(self) -> None:
        self._log_mean_accuracy("test")

    def configure_optimizers(self) -> Any:
        params = self.parameters()
        hp = self.hparams
        lr, weight_decay = hp["lr"], hp["weight_decay"]
        if hp["optimizer"] == "adamw":
            optimizer: torch.optim.Optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        else:
            optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
