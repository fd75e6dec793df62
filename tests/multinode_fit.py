"""Runs every registered pruning method under multi-node DDP and checks that all ranks end with the same state.

On one machine (what ``tests/test_fault_tolerance.py`` does) start one process per simulated node with
Lightning's environment variables::

    MASTER_ADDR=127.0.0.1 MASTER_PORT=29511 WORLD_SIZE=2 NODE_RANK=0 LOCAL_RANK=0 \\
        python tests/multinode_fit.py --num-nodes 2 --out /tmp/mn &
    MASTER_ADDR=127.0.0.1 MASTER_PORT=29511 WORLD_SIZE=2 NODE_RANK=1 LOCAL_RANK=0 \\
        python tests/multinode_fit.py --num-nodes 2 --out /tmp/mn
    python tests/multinode_fit.py --check /tmp/mn

On a real cluster launch the same script on every node the usual way (``srun python tests/multinode_fit.py
--num-nodes 2 --devices 4 --accelerator gpu --out /shared/mn`` under SLURM, or ``torchrun``), with ``--out``
on a shared file system, then run ``--check`` on the output folder. Every rank writes the final state of
every method to ``<out>/<method>-rank<global rank>.pt``; ``--check`` fails unless all ranks agree.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import conftest  # noqa: F401  (registers every method)
from helpers import ToyModel, toy_datamodule

from lightning_pruning import METHODS, PruningCallback


class SaveState(pl.Callback):
    """Writes this rank's final pruning state and the subsets it trained."""

    def __init__(self, out: Path, name: str) -> None:
        self.out = out
        self.name = name
        self.subsets: list[torch.Tensor] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        method = next(cb for cb in trainer.callbacks if isinstance(cb, PruningCallback))
        self.subsets.append(method.current_subset.clone())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        method = next(cb for cb in trainer.callbacks if isinstance(cb, PruningCallback))
        payload = {"state": method.state_dict(), "subsets": self.subsets, "world_size": trainer.world_size}
        torch.save(payload, self.out / f"{self.name}-rank{trainer.global_rank}.pt")


def run(out: Path, num_nodes: int, devices: int, accelerator: str, epochs: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in sorted(METHODS):
        torch.manual_seed(0)
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=devices,
            num_nodes=num_nodes,
            strategy="ddp",
            max_epochs=epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[METHODS[name](seed=0), SaveState(out, name)],
        )
        trainer.fit(ToyModel(), datamodule=toy_datamodule(96, 8))


def check(out: Path) -> list[str]:
    """Problems found in ``out`` (empty when every method left identical state on every rank)."""
    problems: list[str] = []
    for name in sorted(METHODS):
        files = sorted(out.glob(f"{name}-rank*.pt"))
        if not files:
            problems.append(f"{name}: no rank wrote its state")
            continue
        states: list[dict[str, Any]] = [torch.load(path, weights_only=True) for path in files]
        world = states[0]["world_size"]
        if len(files) != world:
            problems.append(f"{name}: {len(files)} rank files for world size {world}")
        first = states[0]
        for path, other in zip(files[1:], states[1:], strict=True):
            if not _equal(first, other):
                problems.append(f"{name}: {path.name} differs from {files[0].name}")
    return problems


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_equal, a, b))
    return bool(a == b)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--check", type=Path, help="check the states written to this folder and exit")
    parser.add_argument("--num-nodes", type=int, default=2)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    if args.check is not None:
        found = check(args.check)
        print("\n".join(found) or f"all ranks agree for {len(METHODS)} methods")
        sys.exit(1 if found else 0)
    torch.set_num_threads(1)
    run(args.out, args.num_nodes, args.devices, args.accelerator, args.epochs)
    # Both "nodes" leave together: a rank that exits while the other still tears down gloo can abort
    # ("terminate called without an active exception"), seen once on a fresh-clone CI run.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
