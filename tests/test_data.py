"""The sampler, the DataModule, label lookup and the offline Fashion-MNIST loader."""

from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import DictDataset, ToyDataset, ToyModel, trainer_kwargs
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from lightning_pruning import PruningDataModule, RandomPruning, SubsetSampler
from lightning_pruning.data import (
    LabelsNotFoundError,
    contiguous_labels,
    find_labels,
    load_fashion_mnist,
    load_fashion_mnist_lt,
    long_tailed_indices,
    resolve_labels,
)
from lightning_pruning.data.fashion_mnist import locate_fashion_mnist, long_tailed_class_sizes, read_idx

# --------------------------------------------------------------------------------------------------
# Sampler


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(1, 200),
    world=st.integers(1, 5),
    epoch=st.integers(0, 10),
    seed=st.integers(0, 1000),
)
def test_sampler_shards_are_equal_disjoint_and_cover_the_subset(size: int, world: int, epoch: int, seed: int) -> None:
    subset = torch.randperm(500, generator=torch.Generator().manual_seed(seed))[:size]
    shards = [
        SubsetSampler(subset, epoch=epoch, seed=seed, num_replicas=world, rank=rank).rank_order for rank in range(world)
    ]
    assert {shard.numel() for shard in shards} == {math.ceil(size / world)}
    merged = torch.cat(shards)
    assert set(merged.tolist()) == set(subset.tolist())
    # only the padding repeats indices, and there is less than one per rank
    assert merged.numel() - size < world
    # a pure function of (subset, epoch, seed)
    again = SubsetSampler(subset, epoch=epoch, seed=seed, num_replicas=world, rank=0).rank_order
    assert torch.equal(shards[0], again)


def test_sampler_order_changes_with_epoch_and_seed() -> None:
    subset = torch.arange(50)
    base = list(SubsetSampler(subset, epoch=0, seed=0))
    assert sorted(base) == list(range(50))
    assert base != list(SubsetSampler(subset, epoch=1, seed=0))
    assert base != list(SubsetSampler(subset, epoch=0, seed=1))
    sampler = SubsetSampler(subset, epoch=0, seed=0)
    sampler.set_epoch(5)  # Lightning calls this; the epoch is part of the construction
    assert list(sampler) == base


def test_sampler_is_a_distributed_sampler_so_lightning_does_not_rewrap_it() -> None:
    assert isinstance(SubsetSampler(torch.arange(4), epoch=0, seed=0), torch.utils.data.DistributedSampler)


# --------------------------------------------------------------------------------------------------
# DataModule


class NoLen(Dataset[int]):
    def __getitem__(self, index: int) -> int:
        return index


class Stream(IterableDataset[int]):
    def __iter__(self) -> Any:
        return iter(range(3))


def test_iterable_and_unsized_datasets_are_rejected() -> None:
    with pytest.raises(TypeError, match="IterableDataset"):
        PruningDataModule(Stream())
    with pytest.raises(TypeError, match="__len__"):
        PruningDataModule(NoLen())
    with pytest.raises(ValueError, match="train_dataset"):
        PruningDataModule()


class UserDataModule(pl.LightningDataModule):
    def __init__(self, sampler: str = "shuffle") -> None:
        super().__init__()
        self.sampler = sampler
        self.setup_stages: list[str] = []

    def setup(self, stage: str) -> None:
        self.setup_stages.append(stage)
        self.train, self.val = DictDataset(40), DictDataset(12, seed=1)

    def train_dataloader(self) -> DataLoader[Any]:
        if self.sampler == "custom":
            return DataLoader(self.train, batch_size=4, sampler=list(range(40)))
        return DataLoader(self.train, batch_size=4, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.val, batch_size=6)


class DictModel(ToyModel):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        assert isinstance(batch, dict) and set(batch) == {"x", "y"}, "the user's batch format must arrive unchanged"
        return super().training_step(batch, batch_idx)


def test_wrapping_a_lightning_datamodule_keeps_its_loaders_and_batch_format() -> None:
    inner = UserDataModule()
    datamodule = PruningDataModule(datamodule=inner, seed=0)
    model = DictModel()
    trainer = pl.Trainer(callbacks=[RandomPruning(0.5, seed=0)], **trainer_kwargs(max_epochs=2))
    trainer.fit(model, datamodule=datamodule)
    assert "fit" in inner.setup_stages
    assert datamodule.batch_size == 4 and datamodule.drop_last
    assert model.seen_batches == [4] * 5 * 2  # 20 samples per epoch, drop_last
    assert model.val_epochs[-1] == 1
    assert "val/worst_class_acc" in trainer.callback_metrics


def test_wrapped_datamodule_with_custom_sampler_is_rejected() -> None:
    datamodule = PruningDataModule(datamodule=UserDataModule(sampler="custom"))
    trainer = pl.Trainer(callbacks=[RandomPruning(0.5)], **trainer_kwargs(max_epochs=1))
    with pytest.raises(TypeError, match="custom sampler"):
        trainer.fit(ToyModel(), datamodule=datamodule)


def test_without_validation_data_lightning_sees_no_val_loader() -> None:
    datamodule = PruningDataModule(ToyDataset(16), batch_size=4)
    model = ToyModel()
    trainer = pl.Trainer(**trainer_kwargs(max_epochs=1))
    trainer.fit(model, datamodule=datamodule)
    assert model.val_epochs == []
    assert len(model.seen_batches) == 4


def test_without_a_pruning_callback_every_epoch_is_the_full_shuffled_set() -> None:
    datamodule = PruningDataModule(ToyDataset(24), batch_size=5, seed=3)
    model = ToyModel()
    pl.Trainer(**trainer_kwargs(max_epochs=2)).fit(model, datamodule=datamodule)
    assert model.seen_batches == [5, 5, 5, 5, 4] * 2


def test_datamodule_pickles_for_spawned_processes() -> None:
    import pickle

    datamodule = PruningDataModule(ToyDataset(8), ToyDataset(4), batch_size=2, seed=0)
    clone = pickle.loads(pickle.dumps(datamodule))
    assert len(clone.val_dataloader()) == 2


# --------------------------------------------------------------------------------------------------
# Labels


class Plain(Dataset[int]):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        return index


def test_labels_found_through_subset_and_attributes() -> None:
    dataset = ToyDataset(12)
    assert torch.equal(find_labels(dataset), dataset.targets)
    subset = Subset(dataset, [3, 5, 7])
    assert find_labels(subset).tolist() == dataset.targets[[3, 5, 7]].tolist()
    assert find_labels(Plain()) is None


def test_missing_labels_error_says_how_to_pass_them() -> None:
    with pytest.raises(LabelsNotFoundError, match="train_labels="):
        resolve_labels(Plain(), 4)
    with pytest.raises(LabelsNotFoundError, match="exactly one label"):
        resolve_labels(Plain(), 4, explicit=[0, 1])
    assert resolve_labels(Plain(), 4, explicit=[1, 1, 0, 2]).tolist() == [1, 1, 0, 2]


def test_labels_are_remapped_to_contiguous_ids() -> None:
    mapped, classes = contiguous_labels(torch.tensor([7, 100, 3, 7]))
    assert mapped.tolist() == [1, 2, 0, 1]
    assert classes.tolist() == [3, 7, 100]


def test_stratified_method_without_labels_fails_early() -> None:
    class Unlabelled(ToyDataset):
        def __init__(self) -> None:
            super().__init__(16)
            self.inputs_only = self.targets
            del self.targets

        def __len__(self) -> int:
            return 16

        def __getitem__(self, index: int) -> Any:
            return self.inputs[index], int(self.inputs_only[index])

    trainer = pl.Trainer(callbacks=[RandomPruning(0.5, stratified=True)], **trainer_kwargs(max_epochs=1))
    with pytest.raises(LabelsNotFoundError, match="train_labels"):
        trainer.fit(ToyModel(), datamodule=PruningDataModule(Unlabelled(), batch_size=4))


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST from IDX files


def _write_idx(path: Path, tensor: torch.Tensor) -> None:
    header = bytes([0, 0, 0x08, tensor.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in tensor.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + tensor.to(torch.uint8).numpy().tobytes())


@pytest.fixture
def tiny_fashion(tmp_path: Path) -> Path:
    generator = torch.Generator().manual_seed(0)
    for prefix, count in (("train", 200), ("t10k", 50)):
        images = torch.randint(0, 256, (count, 28, 28), generator=generator, dtype=torch.int64)
        labels = torch.arange(count) % 10
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return tmp_path


def test_idx_reader_and_loader_on_a_written_folder(tiny_fashion: Path) -> None:
    labels = read_idx(tiny_fashion / "train-labels-idx1-ubyte.gz")
    assert labels.tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    train = load_fashion_mnist(tiny_fashion, train=True, download=False)
    test = load_fashion_mnist(tiny_fashion, train=False, download=False)
    assert len(train) == 200 and len(test) == 50
    image, label = train[3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and label == 3


def test_missing_fashion_mnist_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lightning_pruning.data.fashion_mnist.DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path, download=False)


def test_long_tailed_profile_matches_the_cifar10_lt_construction() -> None:
    sizes = long_tailed_class_sizes(torch.full((10,), 6000), 100.0)
    assert sizes[0] == 6000 and sizes[-1] == 60
    assert sizes.tolist() == [int(6000 * (0.01 ** (c / 9))) for c in range(10)]
    targets = torch.arange(60000) % 10
    picked = long_tailed_indices(targets, 100.0, seed=0)
    assert torch.bincount(targets[picked]).tolist() == sizes.tolist()
    assert torch.equal(picked, long_tailed_indices(targets, 100.0, seed=0))


def test_real_fashion_mnist_from_the_debian_package() -> None:
    # The README test command installs Debian's dataset-fashion-mnist; without it this fails on purpose.
    assert locate_fashion_mnist() is not None, "apt-get install dataset-fashion-mnist"
    train = load_fashion_mnist(download=False)
    assert len(train) == 60000
    assert torch.bincount(train.targets).tolist() == [6000] * 10
    long_tailed = load_fashion_mnist_lt(download=False)
    assert torch.bincount(long_tailed.targets)[-1] == 60
