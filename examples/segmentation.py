"""Dense prediction with data pruning: semantic segmentation, the per-pixel loss averaged per image.

A segmentation loss has one term per pixel; pruning scores images, so the pixel losses are averaged per
image (pixels marked ``IGNORE`` do not count):

    pixel_loss = F.cross_entropy(logits, masks, reduction="none", ignore_index=IGNORE)   # (batch, H, W)
    return pruning_loss(self, per_sample_mean(pixel_loss, mask=masks != IGNORE))         # (batch,)

The data are synthetic 24x24 images with a dim square and a bright disc on a noisy background (3 classes: background,
square, disc); a one-pixel border is left unlabelled (``IGNORE``), as annotation tools often do.

    python examples/segmentation.py --method infobatch --epochs 10
    python examples/segmentation.py --method none --epochs 10             # full-data baseline
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

from lightning_pruning import RS2, InfoBatch, PruningDataModule, RandomPruning, per_sample_mean, pruning_loss

IGNORE = 255
SIZE = 24


def make_shapes(num_images: int, seed: int) -> TensorDataset:
    """Images ``(N, 1, SIZE, SIZE)`` and masks ``(N, SIZE, SIZE)``: 0 background, 1 square, 2 disc."""
    generator = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    masks = torch.zeros(num_images, SIZE, SIZE, dtype=torch.long)
    corner = torch.randint(1, SIZE - 9, (num_images, 2), generator=generator)
    side = torch.randint(4, 9, (num_images,), generator=generator)
    centre = torch.randint(5, SIZE - 5, (num_images, 2), generator=generator)
    radius = torch.randint(2, 5, (num_images,), generator=generator)
    for image in range(num_images):
        square = (rows >= corner[image, 0]) & (rows < corner[image, 0] + side[image])
        square &= (cols >= corner[image, 1]) & (cols < corner[image, 1] + side[image])
        disc = (rows - centre[image, 0]) ** 2 + (cols - centre[image, 1]) ** 2 <= radius[image] ** 2
        masks[image][square] = 1
        masks[image][disc] = 2  # the disc lies on top
    brightness = torch.tensor([0.0, 0.7, 1.4])  # background, square, disc
    images = brightness[masks] + 0.3 * torch.randn(num_images, SIZE, SIZE, generator=generator)
    masks[:, [0, -1], :] = IGNORE
    masks[:, :, [0, -1]] = IGNORE
    return TensorDataset(images.unsqueeze(1), masks)


class TinySegmenter(pl.LightningModule):
    """Four 3x3 convolutions with batch norm (a 9x9 receptive field) and a 1x1 classifier."""

    def __init__(self, width: int = 16, lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        channels = 1
        for _ in range(4):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        self.net = nn.Sequential(*layers, nn.Conv2d(width, 3, 1))
        self.val_pixel_acc: list[float] = []

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Any:
        images, masks = batch
        pixel_loss = F.cross_entropy(self(images), masks, reduction="none", ignore_index=IGNORE)
        return pruning_loss(self, per_sample_mean(pixel_loss, mask=masks != IGNORE))  # <- pruning: per image

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, masks = batch
        labelled = masks != IGNORE
        correct = (self(images).argmax(1) == masks) & labelled
        self.log("val/pixel_acc", correct.sum() / labelled.sum(), reduce_fx="mean")
        # Accuracy on the object pixels alone: predicting "background" everywhere scores 0 here.
        objects = labelled & (masks > 0)
        self.log("val/object_pixel_acc", (correct & objects).sum() / objects.sum().clamp_min(1))

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.val_pixel_acc.append(float(self.trainer.callback_metrics["val/object_pixel_acc"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])


def make_method(name: str, prune_ratio: float, seed: int) -> pl.Callback | None:
    if name == "infobatch":
        return InfoBatch(prune_ratio=prune_ratio, seed=seed)
    if name == "random":
        return RandomPruning(prune_ratio, seed=seed)
    if name == "rs2":
        return RS2(prune_ratio, seed=seed)
    return None


def main(argv: list[str] | None = None) -> pl.Trainer:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="infobatch", choices=["infobatch", "random", "rs2", "none"])
    parser.add_argument("--prune-ratio", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="lightning_logs")
    args = parser.parse_args(argv)

    pl.seed_everything(args.seed)
    train, val = make_shapes(args.num_images, seed=0), make_shapes(max(args.num_images // 5, 32), seed=1)
    datamodule = PruningDataModule(train, val, batch_size=args.batch_size, seed=args.seed)
    model = TinySegmenter()
    method = make_method(args.method, args.prune_ratio, args.seed)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="auto",
        devices=1,
        callbacks=[method] if method is not None else [],
        logger=pl.loggers.CSVLogger(args.output_dir, name="segmentation"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(model, datamodule=datamodule)
    saved = getattr(method, "saved_fraction", 0.0)
    print(
        f"{args.method}: val object-pixel accuracy {model.val_pixel_acc[-1]:.3f}, "
        f"saved {100 * saved:.1f}% of the image passes"
    )
    return trainer


if __name__ == "__main__":
    main(sys.argv[1:])
