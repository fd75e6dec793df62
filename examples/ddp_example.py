"""Data pruning under DDP: two CPU processes, one pruning callback, identical decisions on every rank.

    python examples/ddp_example.py                       # RCAP, 2 processes on CPU
    python examples/ddp_example.py --method random --devices 2 --epochs 4
    python examples/ddp_example.py --accelerator gpu --devices 4 --num-samples 50000

Every rank prints, per epoch, the size and a checksum of the decided subset (the same on every rank: all
decisions come from the method's own seeded generator and losses gathered from all ranks) and how many
samples its own shard trained (a disjoint share of the subset). Nothing else changes for DDP: the
pruning callback and ``PruningDataModule`` handle the sampler, the loss gathering and the seeds.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.data import Dataset

from lightning_pruning.data.datamodule import PruningDataModule
from lightning_pruning.loss import pruning_loss
from lightning_pruning.methods.base import PruningCallback
from lightning_pruning.methods.random import RandomPruning
from lightning_pruning.metrics import WorstClassAccuracy


class Blobs(Dataset[tuple[Tensor, int]]):
    """Gaussian class blobs with a ``targets`` attribute (the same data on every rank: fixed seed)."""

    def __init__(self, num_samples: int, num_classes: int = 4, features: int = 16, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.targets = torch.arange(num_samples) % num_classes
        centers = torch.randn(num_classes, features, generator=generator) * 1.5
        self.inputs = centers[self.targets] + torch.randn(num_samples, features, generator=generator)

    def __len__(self) -> int:
        return int(self.targets.numel())

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.inputs[index], int(self.targets[index])


class Classifier(pl.LightningModule):
    """A small MLP that ends ``training_step`` with ``pruning_loss``."""

    def __init__(self, features: int = 16, num_classes: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, num_classes))
        self.worst = WorstClassAccuracy(num_classes)
        self.samples_this_epoch = 0

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def on_train_epoch_start(self) -> None:
        self.samples_this_epoch = 0

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Any:
        x, y = batch
        self.samples_this_epoch += int(y.numel())
        return pruning_loss(self, F.cross_entropy(self(x), y, reduction="none"))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.worst.update(self(x), y)
        self.log("val/worst_class_acc", self.worst, prog_bar=True)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class RankReport(Callback):
    """Prints what each rank did in every epoch."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pruner = next((cb for cb in trainer.callbacks if isinstance(cb, PruningCallback)), None)
        subset = pruner.current_subset if pruner is not None else torch.empty(0, dtype=torch.int64)
        checksum = int((subset.sort().values * torch.arange(1, subset.numel() + 1)).sum()) % 1_000_003
        trained = getattr(pl_module, "samples_this_epoch", 0)
        print(
            f"[rank {trainer.global_rank}/{trainer.world_size}] epoch {trainer.current_epoch}: subset of "
            f"{subset.numel()} samples (checksum {checksum}), this rank trained {trained} samples",
            flush=True,
        )


def make_callback(method: str, prune_ratio: float) -> PruningCallback:
    """RCAP or Random* (any registered method works the same way)."""
    if method == "random":
        return RandomPruning(prune_ratio=prune_ratio, seed=0)
    from lightning_pruning.methods.rcap import RCAP

    return RCAP(prune_ratio=prune_ratio, seed=0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="rcap", choices=["rcap", "random"])
    parser.add_argument("--prune-ratio", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)

    # The pruning/* values are identical on every rank (one shared decision), so averaging them is pointless.
    warnings.filterwarnings("ignore", message=r".*self\.log\('pruning/.*sync_dist=True.*")
    pl.seed_everything(0)
    torch.set_num_threads(1)  # two processes on a small CPU: do not oversubscribe the cores
    datamodule = PruningDataModule(Blobs(args.num_samples), Blobs(128, seed=0), batch_size=args.batch_size, seed=0)
    trainer = pl.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy="ddp",
        max_epochs=args.epochs,
        callbacks=[make_callback(args.method, args.prune_ratio), RankReport()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Classifier(), datamodule=datamodule)
    if trainer.is_global_zero:
        print(f"done: worst-class accuracy {float(trainer.callback_metrics['val/worst_class_acc']):.3f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
