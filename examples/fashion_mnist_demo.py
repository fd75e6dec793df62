"""The main job: Fashion-MNIST trained on the full data and with Random* pruning, side by side.

Run it with ``bash scripts/demo.sh`` (which installs everything first) or, inside the venv,
``python examples/fashion_mnist_demo.py --epochs 5 --prune-ratio 0.5``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from lightning_pruning.experiment import ExperimentResult, run_experiment


def main(argv: list[str] | None = None) -> list[ExperimentResult]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--prune-ratio", type=float, default=0.5)
    parser.add_argument("--method", default="random", help="any registered method name (default: Random*)")
    parser.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "fashion_mnist_lt"])
    parser.add_argument("--backbone", default="mlp", choices=["mlp", "cnn"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-subset", type=int, default=None, help="train on this many images only (smoke runs)")
    args = parser.parse_args(argv)
    # Keep the output to the results: Lightning's banner lines and the no-validation notice are noise here.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")

    common = dict(
        dataset=args.dataset, epochs=args.epochs, seed=args.seed, backbone=args.backbone, train_subset=args.train_subset
    )
    print(f"Fashion-MNIST ({args.dataset}), {args.backbone}, {args.epochs} epochs, seed {args.seed}", flush=True)
    print("training on the full data ...", flush=True)
    full = run_experiment(None, **common)
    print(f"training with {args.method} at prune ratio {args.prune_ratio} ...", flush=True)
    pruned = run_experiment(args.method, {"prune_ratio": args.prune_ratio}, **common)

    header = f"{'run':<22}{'test acc':>10}{'worst class':>13}{'saved':>8}{'train s':>9}{'speed-up':>10}"
    print("\n" + header + "\n" + "-" * len(header))
    for result in (full, pruned):
        name = "full data" if result.method == "full" else f"{result.method} p={args.prune_ratio}"
        speedup = full.train_seconds / result.train_seconds if result.train_seconds else float("nan")
        print(
            f"{name:<22}{100 * result.test_acc:>9.2f}%{100 * result.test_worst_class_acc:>12.2f}%"
            f"{100 * result.saved_fraction:>7.1f}%{result.train_seconds:>9.1f}{speedup:>9.2f}x"
        )
    print(
        f"\n{args.method} trained on {100 * (1 - pruned.saved_fraction):.0f}% of the sample passes; "
        f"pruning logic took {pruned.pruning_seconds:.2f} s in all."
    )
    return [full, pruned]


if __name__ == "__main__":
    main(sys.argv[1:])
