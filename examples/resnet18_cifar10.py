"""ResNet-18 on CIFAR-10 with data pruning: an ordinary LightningModule plus two changes.

The module below is the usual CIFAR-10 ResNet-18 recipe. What data pruning changes is marked
``# <- pruning``: the loss is computed per sample and handed to ``pruning_loss``, the data goes through
``PruningDataModule``, and one callback is added to the Trainer.

    python examples/resnet18_cifar10.py --method rcap --prune-ratio 0.5 --epochs 30
    python examples/resnet18_cifar10.py --method random --prune-ratio 0.5 --epochs 30
    python examples/resnet18_cifar10.py --method none --epochs 30                 # full-data baseline
    python examples/resnet18_cifar10.py --fake-data 256 --epochs 1               # offline smoke run

CIFAR-10 is downloaded by torchvision into ``--data-dir`` (needs a network once). ``--fake-data N`` runs the
same code on N random 3x32x32 images with random labels, for machines without a network.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from lightning_pruning.data.datamodule import PruningDataModule
from lightning_pruning.loss import pruning_loss
from lightning_pruning.methods.base import PruningCallback
from lightning_pruning.methods.random import RandomPruning
from lightning_pruning.metrics import WorstClassAccuracy

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class CifarResNet18(pl.LightningModule):
    """torchvision's ResNet-18 with a 3x3 stem for 32x32 images, SGD and a per-epoch cosine schedule."""

    def __init__(self, num_classes: int = 10, lr: float = 0.1, weight_decay: float = 5e-4) -> None:
        super().__init__()
        from torchvision.models import resnet18

        self.save_hyperparameters()
        self.net = resnet18(num_classes=num_classes)
        self.net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.net.maxpool = nn.Identity()
        self.worst = WorstClassAccuracy(num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Any:
        x, y = batch
        losses = F.cross_entropy(self(x), y, reduction="none")  # <- pruning: one loss per sample
        return pruning_loss(self, losses)  # <- pruning: instead of `return losses.mean()`

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.worst.update(logits, y)
        self.log("val/acc", (logits.argmax(-1) == y).float().mean(), prog_bar=True, sync_dist=True)
        self.log("val/worst_class_acc", self.worst, prog_bar=True)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(
            self.parameters(),
            lr=self.hparams["lr"],
            momentum=0.9,
            nesterov=True,
            weight_decay=self.hparams["weight_decay"],
        )
        # Stepped per epoch, so pruned (shorter) epochs do not distort the schedule.
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(self.trainer.max_epochs or 1, 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class FakeCifar(Dataset[tuple[Tensor, int]]):
    """Random 3x32x32 images with a torchvision-style ``targets`` list (offline stand-in for CIFAR-10)."""

    def __init__(self, num_samples: int, num_classes: int = 10, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(num_samples, 3, 32, 32, generator=generator)
        self.targets = (torch.arange(num_samples) % num_classes).tolist()
        self.classes = [str(c) for c in range(num_classes)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], self.targets[index]


def cifar10(data_dir: str) -> tuple[Dataset[Any], Dataset[Any]]:
    """CIFAR-10 train (with the standard crop and flip augmentation) and test sets from torchvision."""
    from torchvision import datasets, transforms

    normalize = transforms.Normalize(CIFAR_MEAN, CIFAR_STD)
    augment = transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
    )
    plain = transforms.Compose([transforms.ToTensor(), normalize])
    train = datasets.CIFAR10(data_dir, train=True, download=True, transform=augment)
    test = datasets.CIFAR10(data_dir, train=False, download=True, transform=plain)
    return train, test


def make_callback(method: str, prune_ratio: float) -> PruningCallback | None:
    """The pruning callback for ``--method`` (``none``: full data)."""
    if method == "none":
        return None
    if method == "random":
        return RandomPruning(prune_ratio=prune_ratio)
    if method == "rcap":
        from lightning_pruning.methods.rcap import RCAP

        return RCAP(prune_ratio=prune_ratio)
    raise ValueError(f"unknown --method {method!r}; use rcap, random or none.")


def main(argv: list[str] | None = None) -> pl.Trainer:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="rcap", choices=["rcap", "random", "none"])
    parser.add_argument("--prune-ratio", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fake-data", type=int, default=0, metavar="N", help="train on N random images (offline)")
    parser.add_argument("--output-dir", default="lightning_logs", help="where the CSV log goes")
    args = parser.parse_args(argv)

    pl.seed_everything(args.seed)
    if args.fake_data:
        train, test = FakeCifar(args.fake_data, seed=args.seed), FakeCifar(max(args.fake_data // 4, 10), seed=1)
    else:
        train, test = cifar10(args.data_dir)
    datamodule = PruningDataModule(  # <- pruning: serves each epoch's subset (or PruningDataModule(datamodule=dm))
        train, test, batch_size=args.batch_size, eval_batch_size=512, num_workers=args.num_workers
    )
    callback = make_callback(args.method, args.prune_ratio)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="auto",
        devices=1,
        precision="bf16-mixed" if torch.cuda.is_available() else "32-true",
        callbacks=[callback] if callback is not None else [],  # <- pruning: one callback
        logger=pl.loggers.CSVLogger(args.output_dir, name="resnet18_cifar10"),
        enable_checkpointing=False,
        log_every_n_steps=10,
    )
    trainer.fit(CifarResNet18(lr=args.lr), datamodule=datamodule)
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
    saved = callback.saved_fraction if callback is not None else 0.0
    print(
        f"{args.method}: val acc {metrics.get('val/acc', float('nan')):.4f}, worst class "
        f"{metrics.get('val/worst_class_acc', float('nan')):.4f}, saved {100 * saved:.1f}% of the sample passes"
    )
    return trainer


if __name__ == "__main__":
    main(sys.argv[1:])
