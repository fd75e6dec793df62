"""Regression with data pruning: per-sample mean squared error, no class labels.

Pruning scores samples by their loss, which works for any per-sample loss; for a vector target the squared
errors are averaged per sample:

    losses = per_sample_mean(F.mse_loss(prediction, y, reduction="none"))   # (batch, outputs) -> (batch,)
    return pruning_loss(self, losses)

The data are synthetic: a smooth function of 8 inputs with 2 outputs, plus noise. Methods that split their
budget over classes (RCAP, stratified Random*/RS2) need labels or groups; a regression set has none, so they
stop with an error that says what to do (``--method rcap`` shows it). Give them groups, e.g. binned targets,
with ``PruningDataModule(train_groups=...)`` if a class-like split makes sense for your data.

    python examples/regression.py --method infobatch --epochs 20
    python examples/regression.py --method none --epochs 20              # full-data baseline
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from lightning_pruning import RCAP, RS2, InfoBatch, PruningDataModule, RandomPruning, per_sample_mean, pruning_loss


def make_data(num_samples: int, seed: int, features: int = 8) -> TensorDataset:
    """``y = [sin(x·u), cos(x·v)] + noise`` with fixed directions ``u``, ``v``."""
    directions = torch.randn(features, 2, generator=torch.Generator().manual_seed(1234))
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, features, generator=generator)
    projected = x @ directions / features**0.5
    y = torch.stack([projected[:, 0].sin(), projected[:, 1].cos()], dim=1)
    return TensorDataset(x, y + 0.05 * torch.randn(num_samples, 2, generator=generator))


class Regressor(pl.LightningModule):
    def __init__(self, features: int = 8, hidden: int = 64, lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.out = nn.Linear(hidden, 2)
        self.val_mse: list[float] = []

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.net(x))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Any:
        x, y = batch
        losses = per_sample_mean(F.mse_loss(self(x), y, reduction="none"))  # <- pruning: one loss per sample
        return pruning_loss(self, losses)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val/mse", F.mse_loss(self(x), y))

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.val_mse.append(float(self.trainer.callback_metrics["val/mse"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])


def make_method(name: str, prune_ratio: float, seed: int) -> pl.Callback | None:
    methods: dict[str, Any] = {
        "infobatch": lambda: InfoBatch(prune_ratio=prune_ratio, seed=seed),
        "random": lambda: RandomPruning(prune_ratio, seed=seed),
        "rs2": lambda: RS2(prune_ratio, seed=seed),
        "rcap": lambda: RCAP(prune_ratio, seed=seed),  # needs labels: stops with a clear error here
        "stratified-random": lambda: RandomPruning(prune_ratio, stratified=True, seed=seed),  # likewise
    }
    return methods[name]() if name in methods else None


def main(argv: list[str] | None = None) -> pl.Trainer:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    choices = ["infobatch", "random", "rs2", "rcap", "stratified-random", "none"]
    parser.add_argument("--method", default="infobatch", choices=choices)
    parser.add_argument("--prune-ratio", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--num-samples", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="lightning_logs")
    args = parser.parse_args(argv)

    pl.seed_everything(args.seed)
    datamodule = PruningDataModule(
        make_data(args.num_samples, seed=0), make_data(1000, seed=1), batch_size=args.batch_size, seed=args.seed
    )
    model = Regressor()
    method = make_method(args.method, args.prune_ratio, args.seed)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="auto",
        devices=1,
        callbacks=[method] if method is not None else [],
        logger=pl.loggers.CSVLogger(args.output_dir, name="regression"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(model, datamodule=datamodule)
    saved = getattr(method, "saved_fraction", 0.0)
    print(f"{args.method}: val MSE {model.val_mse[-1]:.4f}, saved {100 * saved:.1f}% of the sample passes")
    return trainer


if __name__ == "__main__":
    main(sys.argv[1:])
