"""Fashion-MNIST (and its long-tailed variant) as a ready :class:`PruningDataModule` with plain arguments.

Every constructor argument is a plain number, string or flag, so the DataModule can be configured from
the command line or a YAML file (``lightning-pruning fit --data.long_tailed true``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
from torch.utils.data import DataLoader

from lightning_pruning.data.datamodule import PruningDataModule, _eval_loader
from lightning_pruning.data.fashion_mnist import TensorImageDataset, load_fashion_mnist, long_tailed_indices

# Seed of the fixed draws that shape the data (long-tailed subsample, `train_subset`): the data must not
# change with the shuffle seed, so two runs with different seeds train on the same training set.
_DATA_SEED = 0


@lru_cache(maxsize=4)
def _cached_split(root: str | None, train: bool) -> TensorImageDataset:
    # Decoding the IDX files takes about a second; repeated runs in one process (tests, notebooks) reuse it.
    return load_fashion_mnist(root, train=train)


class FashionMNISTDataModule(PruningDataModule):
    """Fashion-MNIST (60k training, 10k test images of 10 classes), served with data pruning.

    Reads the IDX files from ``root``, ``$FASHION_MNIST_DIR`` or Debian's ``dataset-fashion-mnist``
    package (offline). Fashion-MNIST has no official validation split: the 10k test images serve as
    validation and test set (``eval_subset`` shortens both).

    Args:
        root: folder holding the four IDX files (default: ``$FASHION_MNIST_DIR``, then
            ``/usr/share/datasets/fashion-mnist``).
        long_tailed: train on Fashion-MNIST-LT, the training set subsampled to an exponential class
            profile (the evaluation sets stay balanced).
        imbalance: ratio between the largest and the smallest class of the long-tailed training set.
        batch_size: training batch size.
        eval_batch_size: batch size of the validation and test loaders.
        num_workers: DataLoader worker processes.
        seed: seed of the per-epoch shuffle (``None``: follows ``seed_everything``).
        train_subset: train on only this many images (a fixed random draw), for quick trials.
        eval_subset: validate and test on only the first this many test images, for quick trials.
    """

    def __init__(
        self,
        root: str | None = None,
        long_tailed: bool = False,
        imbalance: float = 100.0,
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        num_workers: int = 0,
        seed: int | None = None,
        train_subset: int | None = None,
        eval_subset: int | None = None,
    ) -> None:
        if imbalance < 1:
            raise ValueError(f"`imbalance` must be >= 1 (largest / smallest class size), got {imbalance}.")
        for name, value in (("train_subset", train_subset), ("eval_subset", eval_subset)):
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be None (all images) or >= 1, got {value}.")
        # The images load in `setup`; until then the training set is an empty placeholder.
        placeholder = TensorImageDataset(torch.empty(0, 1, 28, 28), torch.empty(0, dtype=torch.int64))
        super().__init__(
            placeholder,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            seed=seed,
        )
        self.save_hyperparameters()
        self.root = root
        self.long_tailed = long_tailed
        self.imbalance = imbalance
        self.train_subset = train_subset
        self.eval_subset = eval_subset
        self._loaded = False

    @property
    def num_classes(self) -> int:
        """Number of classes (10)."""
        return 10

    def load(self) -> None:
        """Reads the images (once); called by ``setup``."""
        if self._loaded:
            return
        train = _cached_split(self.root, True)
        if self.long_tailed:
            train = train.subset(long_tailed_indices(train.targets, self.imbalance, _DATA_SEED))
        if self.train_subset is not None and self.train_subset < len(train):
            generator = torch.Generator().manual_seed(_DATA_SEED)
            train = train.subset(torch.randperm(len(train), generator=generator)[: self.train_subset])
        evaluation = _cached_split(self.root, False)
        if self.eval_subset is not None and self.eval_subset < len(evaluation):
            evaluation = evaluation.subset(torch.arange(self.eval_subset))
        self.train_dataset = train
        self.val_dataset = evaluation
        self.test_dataset = evaluation
        self._labels = None
        self._loaded = True

    def setup(self, stage: str) -> None:
        """Loads the images, then lets :class:`PruningDataModule` fix the shuffle seed."""
        self.load()
        super().setup(stage)

    def val_dataloader(self) -> DataLoader[Any]:
        """The validation loader (the Fashion-MNIST test images, fixed order)."""
        assert self.val_dataset is not None, "call setup() first"
        return _eval_loader(self, self.val_dataset)

    def test_dataloader(self) -> DataLoader[Any]:
        """The test loader (the Fashion-MNIST test images, fixed order)."""
        assert self.test_dataset is not None, "call setup() first"
        return _eval_loader(self, self.test_dataset)
