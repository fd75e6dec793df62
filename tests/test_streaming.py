"""LitData StreamingDataset as a pruned training set: chunk-aware order, Lightning fits, DDP, resume, errors."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import trainer_kwargs
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import Tensor

from lightning_pruning import PruningDataModule, RandomPruning, SubsetSampler, pruning_loss
from lightning_pruning.data.streaming import (
    ChunkAwareOrder,
    RankLayout,
    StreamingMapDataset,
    adopt_streaming,
    chunk_aware_order,
    chunk_layout,
    random_order,
    rank_blocks,
)

# LitData asks PyPI for a newer version of itself whenever a dataset is built; tests stay offline.
os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")
litdata = pytest.importorskip("litdata")

NUM_SAMPLES = 240
ITEMS_PER_CHUNK = 8  # 30 chunks
FEATURES = 8
BATCH_SIZE = 16


def make_sample(index: int) -> dict[str, Any]:
    """Sample ``index`` of the test set; it carries its own index so tests see what was read."""
    rng = np.random.default_rng(index)
    label = index % 3
    x = rng.normal(size=FEATURES).astype(np.float32) + 2.0 * label
    return {"index": index, "x": x, "y": label}


@pytest.fixture(scope="module")
def optimized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("streamed")
    litdata.optimize(
        fn=make_sample,
        inputs=list(range(NUM_SAMPLES)),
        output_dir=str(out),
        chunk_size=ITEMS_PER_CHUNK,
        num_workers=1,
        start_method="fork",  # a spawned worker would re-import this module and its dependencies (seconds)
    )
    return out


def streaming(path: Path, **kwargs: Any) -> Any:
    return litdata.StreamingDataset(str(path), **kwargs)


def windows_are_contiguous(order: Tensor, chunk_of: Tensor, window: int) -> bool:
    """Whether ``order`` reads windows of ``window`` chunks one after another (chunks in first-read order)."""
    chunks = chunk_of[order]
    first_read: dict[int, int] = {}
    for chunk in chunks.tolist():
        first_read.setdefault(chunk, len(first_read))
    window_of = torch.tensor([first_read[chunk] // window for chunk in chunks.tolist()])
    return bool((window_of[1:] >= window_of[:-1]).all())


# --------------------------------------------------------------------------------------------------
# Pure functions
@st.composite
def chunked_subsets(draw: st.DrawFn) -> tuple[Tensor, Tensor]:
    sizes = draw(st.lists(st.integers(1, 6), min_size=1, max_size=12))
    chunk_of = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    picks = draw(st.lists(st.integers(0, chunk_of.numel() - 1), min_size=0, max_size=40))
    return torch.tensor(picks, dtype=torch.int64), chunk_of


@settings(max_examples=60, deadline=None)
@given(chunked_subsets(), st.integers(1, 5), st.integers(0, 2**31))
def test_chunk_aware_order_is_a_deterministic_permutation_in_windows(
    case: tuple[Tensor, Tensor], window: int, seed: int
) -> None:
    subset, chunk_of = case
    order = chunk_aware_order(subset, chunk_of, window, torch.Generator().manual_seed(seed))
    again = chunk_aware_order(subset, chunk_of, window, torch.Generator().manual_seed(seed))
    assert torch.equal(order, again)
    assert sorted(order.tolist()) == sorted(subset.tolist())
    assert windows_are_contiguous(order, chunk_of, window)


def test_chunk_aware_order_by_chunk_reads_each_chunk_once_and_shuffles_chunks() -> None:
    chunk_of = torch.arange(40).repeat_interleave(5)
    subset = torch.arange(200)
    orders = [chunk_aware_order(subset, chunk_of, 1, torch.Generator().manual_seed(s)) for s in range(3)]
    for order in orders:
        chunks = chunk_of[order]
        runs = int((chunks[1:] != chunks[:-1]).sum()) + 1
        assert runs == 40  # one contiguous run per chunk
    firsts = {tuple(chunk_of[order][::5].tolist()) for order in orders}
    assert len(firsts) == 3  # the chunk order changes with the generator
    with pytest.raises(ValueError, match="window"):
        chunk_aware_order(subset, chunk_of, 0, torch.Generator())


def test_rank_blocks_by_hand_through_the_sampler() -> None:
    order = torch.arange(7)
    assert rank_blocks(order, 3).tolist() == [0, 3, 5, 1, 4, 6, 2]
    sampler_orders = []
    for rank in range(3):
        sampler = SubsetSampler(
            torch.arange(7), epoch=0, seed=0, num_replicas=3, rank=rank, orderer=lambda s, g: rank_blocks(s, 3)
        )
        sampler_orders.append(sampler.rank_order.tolist())
    # Rank r reads block r in order; the sampler pads ranks 1 and 2 with the first indices of the order.
    assert sampler_orders == [[0, 1, 2], [3, 4, 0], [5, 6, 3]]


@settings(max_examples=60, deadline=None)
@given(chunked_subsets(), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**31))
def test_rank_blocks_cover_the_subset_and_keep_chunks_on_one_rank(
    case: tuple[Tensor, Tensor], window: int, replicas: int, seed: int
) -> None:
    subset, chunk_of = case
    orderer = ChunkAwareOrder(chunk_of, window, num_replicas=replicas)
    rank_orders = [
        SubsetSampler(subset, epoch=3, seed=seed, num_replicas=replicas, rank=rank, orderer=orderer).rank_order
        for rank in range(replicas)
    ]
    covered = torch.cat(rank_orders)
    assert covered.numel() == replicas * math.ceil(subset.numel() / replicas)
    assert set(covered.tolist()) == set(subset.tolist())
    # Each rank boundary splits at most one window, and padding adds at most one chunk per rank.
    chunk_reads = sum(len(set(chunk_of[order].tolist())) for order in rank_orders)
    distinct = len(set(chunk_of[subset].tolist()))
    assert chunk_reads <= distinct + (replicas - 1) * (window + 1)


def test_strided_layout_makes_every_rank_read_every_chunk() -> None:
    chunk_of = torch.arange(20).repeat_interleave(10)
    subset = torch.arange(200)
    reads = {}
    layouts: tuple[RankLayout, ...] = ("blocks", "strided")
    for layout in layouts:
        orderer = ChunkAwareOrder(chunk_of, 2, rank_layout=layout, num_replicas=2)
        orders = [
            SubsetSampler(subset, epoch=0, seed=1, num_replicas=2, rank=r, orderer=orderer).rank_order for r in (0, 1)
        ]
        reads[layout] = [len(set(chunk_of[order].tolist())) for order in orders]
    assert reads["strided"] == [20, 20]
    assert sum(reads["blocks"]) <= 20 + 2


# --------------------------------------------------------------------------------------------------
# LitData
def test_chunk_layout_matches_the_index_file(optimized: Path) -> None:
    chunks = json.loads((optimized / "index.json").read_text())["chunks"]
    chunk_of, files = chunk_layout(streaming(optimized))
    expected = torch.repeat_interleave(torch.arange(len(chunks)), torch.tensor([c["chunk_size"] for c in chunks]))
    assert torch.equal(chunk_of, expected)
    assert files == [c["filename"] for c in chunks]
    dataset = StreamingMapDataset(streaming(optimized))
    assert len(dataset) == NUM_SAMPLES
    for index in (0, 7, 8, 131, NUM_SAMPLES - 1):
        assert dataset[torch.tensor(index)]["index"] == index


class IndexRecordingModel(pl.LightningModule):
    """Trains a linear classifier on the streamed samples and records the indices of every batch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(FEATURES, 3)
        self.trained: list[list[int]] = []

    def on_train_epoch_start(self) -> None:
        self.trained.append([])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        self.trained[-1].extend(batch["index"].tolist())
        return pruning_loss(self, F.cross_entropy(self.layer(batch["x"]), batch["y"], reduction="none"))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class EpochLog(Callback):
    """Each epoch's subset and this rank's sampler order, written to ``out/rank{r}.pt`` at the end of fit."""

    def __init__(self, out: Path | None = None) -> None:
        self.out = out
        self.subsets: list[Tensor] = []
        self.orders: list[Tensor] = []
        self.global_orders: list[Tensor] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pruner = next(cb for cb in trainer.callbacks if isinstance(cb, RandomPruning))
        sampler = trainer.datamodule.train_sampler
        self.subsets.append(pruner.current_subset.clone())
        self.orders.append(sampler.rank_order.clone())
        self.global_orders.append(sampler.global_order.clone())

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.out is not None:
            trained = [torch.tensor(epoch) for epoch in pl_module.trained]  # type: ignore[attr-defined]
            state = {"subsets": self.subsets, "orders": self.orders, "global": self.global_orders, "trained": trained}
            torch.save(state, self.out / f"rank{trainer.global_rank}.pt")


def fit_streamed(path: Path, epochs: int = 3, *, num_workers: int = 0, **overrides: Any) -> tuple[Any, EpochLog]:
    torch.manual_seed(0)
    model = IndexRecordingModel()
    log = EpochLog(overrides.pop("record_to", None))
    datamodule = PruningDataModule(
        streaming(path), batch_size=BATCH_SIZE, num_workers=num_workers, persistent_workers=num_workers > 0, seed=5
    )
    callbacks = [RandomPruning(0.5, seed=3), log, *overrides.pop("callbacks", [])]
    ckpt_path = overrides.pop("ckpt_path", None)
    trainer = pl.Trainer(callbacks=callbacks, **trainer_kwargs(max_epochs=epochs, **overrides))
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    return model, log


@pytest.mark.parametrize("num_workers", [0, 2])
def test_pruned_fit_on_a_streaming_dataset(optimized: Path, num_workers: int) -> None:
    model, log = fit_streamed(optimized, num_workers=num_workers)
    chunk_of, _ = chunk_layout(streaming(optimized))
    assert len(model.trained) == 3
    for trained, subset, order in zip(model.trained, log.subsets, log.orders, strict=True):
        assert subset.numel() == NUM_SAMPLES // 2
        assert trained == order.tolist()  # the samples read are the sampler's, in its order
        assert sorted(trained) == sorted(subset.tolist())
        assert windows_are_contiguous(order, chunk_of, 1)  # the default orderer: chunk by chunk
    assert not all(torch.equal(log.subsets[0], other) for other in log.subsets[1:])


def test_ddp_ranks_cover_the_subset_in_chunk_blocks(optimized: Path, tmp_path: Path) -> None:
    fit_streamed(optimized, epochs=2, strategy="ddp_fork", devices=2, record_to=tmp_path)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    chunk_of, _ = chunk_layout(streaming(optimized))
    for epoch in range(2):
        subset = ranks[0]["subsets"][epoch]
        assert torch.equal(subset, ranks[1]["subsets"][epoch])
        assert torch.equal(ranks[0]["global"][epoch], ranks[1]["global"][epoch])
        trained = [rank["trained"][epoch] for rank in ranks]
        for rank in range(2):
            assert torch.equal(trained[rank], ranks[rank]["orders"][epoch])
        assert sorted(torch.cat(trained).tolist()) == sorted(subset.tolist())  # 120 samples: no padding
        # Rank blocks: rank 0's then rank 1's samples form one chunk-aware order.
        assert windows_are_contiguous(torch.cat(trained), chunk_of, 1)


def test_resume_at_an_epoch_boundary_repeats_subsets_and_orders(optimized: Path, tmp_path: Path) -> None:
    _, straight = fit_streamed(optimized, epochs=4)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
    fit_streamed(optimized, epochs=2, enable_checkpointing=True, callbacks=[checkpoint])
    saved = sorted(tmp_path.glob("epoch=1*.ckpt"))
    assert saved, list(tmp_path.iterdir())
    model, resumed = fit_streamed(optimized, epochs=4, ckpt_path=saved[0])
    assert len(resumed.subsets) == 2
    for epoch in (2, 3):
        assert torch.equal(resumed.subsets[epoch - 2], straight.subsets[epoch])
        assert torch.equal(resumed.orders[epoch - 2], straight.orders[epoch])
    assert model.trained == [order.tolist() for order in resumed.orders]


# --------------------------------------------------------------------------------------------------
# Errors and adoption
def test_litdata_shuffle_is_rejected_with_the_fix(optimized: Path) -> None:
    with pytest.raises(ValueError, match=r"shuffle=True.*StreamingDataset\(\.\.\., shuffle=False\)"):
        PruningDataModule(streaming(optimized, shuffle=True))


def test_iterable_only_litdata_datasets_are_rejected(optimized: Path) -> None:
    combined = litdata.CombinedStreamingDataset([streaming(optimized), streaming(optimized)])
    with pytest.raises(TypeError, match=r"CombinedStreamingDataset.*single `StreamingDataset"):
        PruningDataModule(combined)


class StreamingDataModule(pl.LightningDataModule):
    """A user's datamodule serving its StreamingDataset through LitData's own loader."""

    def __init__(self, path: Path, shuffle: bool = False) -> None:
        super().__init__()
        self.path = path
        self.shuffle = shuffle

    def train_dataloader(self) -> Any:
        return litdata.StreamingDataLoader(streaming(self.path, shuffle=self.shuffle), batch_size=12)


def test_wrapped_streaming_datamodule_is_read_by_index(optimized: Path) -> None:
    datamodule = PruningDataModule(datamodule=StreamingDataModule(optimized))
    datamodule.setup("fit")
    assert isinstance(datamodule.train_dataset, StreamingMapDataset)
    assert isinstance(datamodule.orderer, ChunkAwareOrder)
    assert datamodule.num_train_samples == NUM_SAMPLES and datamodule.batch_size == 12
    order = datamodule.train_dataloader().sampler.rank_order  # type: ignore[attr-defined]
    assert not torch.equal(order, order.sort().values)  # shuffled chunk-aware, though LitData's loader had no sampler
    chunk_of, _ = chunk_layout(streaming(optimized))
    assert windows_are_contiguous(order, chunk_of, 1)
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["index"].tolist() == order[:12].tolist()
    with pytest.raises(ValueError, match="shuffle=True"):
        PruningDataModule(datamodule=StreamingDataModule(optimized, shuffle=True)).setup("fit")


def test_explicit_orderer_wins_and_other_datasets_pass_through(optimized: Path) -> None:
    datamodule = PruningDataModule(streaming(optimized), orderer=random_order)
    assert datamodule.orderer is random_order
    plain = torch.utils.data.TensorDataset(torch.zeros(4))
    assert adopt_streaming(plain, None) == (plain, None)
