"""Language modelling with data pruning: a small character-level transformer, one loss per sequence.

Each training sample is one line of text (a variable-length sequence of bytes). The token losses are averaged
over each sequence's real tokens (padding masked out), and that per-sequence loss is what pruning scores:

    token_loss = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")   # (batch, time)
    return pruning_loss(self, per_sample_mean(token_loss, mask=mask))                  # (batch,)

The text ships with the project (its README and docs), so this runs offline anywhere; ``--text`` takes any
other UTF-8 files.

    python examples/language_model.py --method infobatch --epochs 10
    python examples/language_model.py --method none --epochs 10              # full-data baseline
    python examples/language_model.py --text my_corpus.txt --max-len 128
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from lightning_pruning import RS2, InfoBatch, PruningDataModule, RandomPruning, per_sample_mean, pruning_loss

ROOT = Path(__file__).resolve().parents[1]
PAD, BOS, VOCAB = 256, 257, 258  # bytes 0..255, then padding and start-of-sequence


def default_corpus() -> list[Path]:
    """The project's own README and docs: text guaranteed to be next to this example."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [path for path in files if path.is_file()]


class LineDataset(Dataset[Tensor]):
    """Every non-empty line of the given files as a byte sequence, at most ``max_len`` long."""

    def __init__(self, lines: list[str], max_len: int) -> None:
        self.sequences = [torch.tensor(list(line.encode("utf-8")[:max_len]), dtype=torch.long) for line in lines]

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> Tensor:
        return self.sequences[index]


def read_lines(paths: list[Path], min_chars: int = 8) -> list[str]:
    lines = []
    for path in paths:
        lines += [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    return [line for line in lines if len(line) >= min_chars]


def collate(sequences: list[Tensor]) -> dict[str, Tensor]:
    """Pads a batch: ``inputs`` start with BOS, ``targets`` are the sequence, ``mask`` marks real tokens."""
    length = max(int(sequence.numel()) for sequence in sequences)
    targets = torch.full((len(sequences), length), PAD, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        targets[row, : sequence.numel()] = sequence
    mask = targets != PAD
    inputs = torch.cat([torch.full((len(sequences), 1), BOS), targets[:, :-1]], dim=1)
    return {"inputs": inputs, "targets": targets, "mask": mask}


class CharTransformer(pl.LightningModule):
    """A causal transformer over bytes."""

    def __init__(self, max_len: int = 96, dim: int = 64, layers: int = 2, heads: int = 4, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(VOCAB, dim)
        self.position = nn.Parameter(torch.zeros(max_len, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, VOCAB)
        self.val_token_loss: list[float] = []
        self._val_sum = torch.zeros(())
        self._val_tokens = torch.zeros(())

    def forward(self, inputs: Tensor, mask: Tensor) -> Tensor:
        length = inputs.shape[1]
        hidden = self.embed(inputs) + self.position[:length]
        # Both masks boolean (True = may not attend): a later position, or padding.
        causal = torch.ones(length, length, dtype=torch.bool, device=inputs.device).triu(1)
        hidden = self.encoder(hidden, mask=causal, src_key_padding_mask=~mask, is_causal=True)
        return self.head(hidden)

    def sequence_losses(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Per-token losses ``(B, T)`` and the mean token loss of every sequence ``(B,)``."""
        logits = self(batch["inputs"], batch["mask"])
        token_loss = F.cross_entropy(logits.transpose(1, 2), batch["targets"], reduction="none")
        return token_loss, per_sample_mean(token_loss, mask=batch["mask"])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Any:
        _, per_sequence = self.sequence_losses(batch)
        return pruning_loss(self, per_sequence)  # <- pruning: one loss per sequence

    def on_validation_epoch_start(self) -> None:
        self._val_sum = torch.zeros((), device=self.device)
        self._val_tokens = torch.zeros((), device=self.device)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        token_loss, _ = self.sequence_losses(batch)
        self._val_sum += (token_loss * batch["mask"]).sum()
        self._val_tokens += batch["mask"].sum()

    def on_validation_epoch_end(self) -> None:
        loss = self._val_sum / self._val_tokens.clamp_min(1)  # mean over tokens, not sequences
        self.log("val/token_loss", loss)
        self.log("val/bits_per_byte", loss / math.log(2))
        if not self.trainer.sanity_checking:
            self.val_token_loss.append(float(loss))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams["lr"])


def make_method(name: str, prune_ratio: float, seed: int) -> pl.Callback | None:
    """Methods that need no class labels (a language model has none)."""
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
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=96, help="longest sequence, in bytes")
    parser.add_argument("--max-lines", type=int, default=0, help="use only the first N lines (0: all)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--text", nargs="*", type=Path, default=None, help="UTF-8 files (default: the docs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="lightning_logs")
    args = parser.parse_args(argv)

    pl.seed_everything(args.seed)
    lines = read_lines(args.text or default_corpus())
    if args.max_lines:
        lines = lines[: args.max_lines]
    if len(lines) < 20:
        parser.error(f"the text has only {len(lines)} usable lines; give a larger --text.")
    # Every 10th line is held out for validation.
    train = LineDataset([line for i, line in enumerate(lines) if i % 10], args.max_len)
    val = LineDataset(lines[::10], args.max_len)
    datamodule = PruningDataModule(train, val, batch_size=args.batch_size, collate_fn=collate, seed=args.seed)
    model = CharTransformer(max_len=args.max_len, dim=args.dim)
    method = make_method(args.method, args.prune_ratio, args.seed)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="auto",
        devices=1,
        callbacks=[method] if method is not None else [],
        logger=pl.loggers.CSVLogger(args.output_dir, name="language_model"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(model, datamodule=datamodule)
    saved = getattr(method, "saved_fraction", 0.0)
    print(
        f"{args.method}: {len(train)} training lines, val loss {model.val_token_loss[-1]:.3f} nats/byte, "
        f"saved {100 * saved:.1f}% of the sequence passes"
    )
    return trainer


if __name__ == "__main__":
    main(sys.argv[1:])
