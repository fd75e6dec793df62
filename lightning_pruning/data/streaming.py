"""LitData ``StreamingDataset`` as a pruned training set: random access by index, chunk-aware epoch order.

A streamed dataset lives in chunk files of many samples each. Reading a sample means fetching (or
decompressing) its chunk, and a small cache evicts chunks again. A pruned subset served in plain
random order jumps between chunks at nearly every sample, so every chunk is fetched many times per
epoch. The chunk-aware order shuffles the chunks, then shuffles the samples within windows of
consecutive chunks, so each chunk is fetched about once per epoch.

The default window is one chunk: LitData's reader releases a chunk for eviction as soon as reading
moves on to another chunk, so when the cache is smaller than the dataset, coming back to a chunk
(which a window of several chunks does within every batch) fetches it again, and can race with its
deletion. Wider windows mix more chunks per batch and suit local or byte-range reads.

The math is in small pure functions on tensors (:func:`chunk_aware_order`, :func:`rank_blocks`);
:class:`ChunkAwareOrder` is the ``orderer`` that :class:`~lightning_pruning.data.SubsetSampler`
calls once per epoch, and :class:`StreamingMapDataset` gives the ``StreamingDataset`` the map-style
face the sampler needs, without ever iterating it (LitData's own iteration shards and shuffles by
itself, which would contradict the sampler).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset

Orderer = Callable[[Tensor, torch.Generator], Tensor]
RankLayout = Literal["blocks", "strided"]


# --------------------------------------------------------------------------------------------------
# Pure orders
def random_order(subset: Tensor, generator: torch.Generator) -> Tensor:
    """The naive epoch order: a uniform permutation of ``subset`` (the sampler's default)."""
    return subset[torch.randperm(subset.numel(), generator=generator)]


def chunk_aware_order(subset: Tensor, chunk_of: Tensor, window: int, generator: torch.Generator) -> Tensor:
    """Orders ``subset`` chunk by chunk: chunks in random order, samples shuffled within windows of chunks.

    The distinct chunks of the subset are put in a random order and cut into consecutive windows of
    ``window`` chunks; the samples of each window are shuffled together, and the windows follow one
    another. A reader with room for ``window`` chunks therefore fetches each chunk once per epoch.

    Args:
        subset: int64 dataset indices of the epoch (duplicates allowed).
        chunk_of: int64 chunk id of every dataset index (length N).
        window: chunks whose samples are mixed together (1: chunk by chunk, shuffled within a chunk).
        generator: the source of every random draw (two draws: chunk order, then sample keys).

    Returns:
        A permutation of ``subset``.

    Raises:
        ValueError: if ``window < 1``.
    """
    if window < 1:
        raise ValueError(f"`window` must be >= 1 chunk, got {window}.")
    n = subset.numel()
    if n == 0:
        return subset.clone()
    _, chunk = torch.unique(chunk_of[subset], return_inverse=True)
    num_chunks = int(chunk.max()) + 1
    position = torch.empty(num_chunks, dtype=torch.int64)
    position[torch.randperm(num_chunks, generator=generator)] = torch.arange(num_chunks)
    window_of = position[chunk] // window
    # Distinct random tie-breakers make the sort key unique, so the result does not depend on the
    # sort's stability and every order within a window is equally likely.
    key = window_of * n + torch.randperm(n, generator=generator)
    return subset[torch.argsort(key)]


def rank_blocks(order: Tensor, num_replicas: int) -> Tensor:
    """Lays out ``order`` so that the sampler's striding gives each rank one contiguous block of it.

    :class:`~lightning_pruning.data.SubsetSampler` gives rank ``r`` the positions ``r, r + R, ...``. Fed
    a chunk-aware order directly, every rank would read every chunk of every window (``R`` fetches of
    each chunk per epoch). Here the order is cut into ``R`` consecutive blocks (sizes differ by at most
    one, larger first) and interleaved, so rank ``r`` reads block ``r`` in order and the ranks share
    almost no chunk. The result is still a permutation of ``order``, so the ranks still cover it exactly.

    Args:
        order: the epoch order over all ranks.
        num_replicas: the DDP world size ``R``.

    Returns:
        ``out`` with ``out[k * R + r] = block_r[k]``.
    """
    if num_replicas < 1:
        raise ValueError(f"`num_replicas` must be >= 1, got {num_replicas}.")
    n = order.numel()
    if num_replicas == 1 or n == 0:
        return order.clone()
    q, m = divmod(n, num_replicas)
    sizes = torch.full((num_replicas,), q, dtype=torch.int64)
    sizes[:m] += 1
    rank = torch.repeat_interleave(torch.arange(num_replicas), sizes)
    start = torch.cumsum(sizes, 0) - sizes
    position = (torch.arange(n) - start[rank]) * num_replicas + rank
    out = torch.empty_like(order)
    out[position] = order
    return out


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


class ChunkAwareOrder:
    """The ``orderer`` of a streamed training set: :func:`chunk_aware_order`, laid out per rank.

    Called by :class:`~lightning_pruning.data.SubsetSampler` once per epoch with the epoch's generator,
    so the order is the same on every rank and after a resume.

    Args:
        chunk_of: int64 chunk id of every dataset index.
        window: chunks mixed together (see :func:`chunk_aware_order`). 1 (the default) reads every chunk in one
            run, which LitData's reader needs to fetch it once when whole chunks are fetched into a cache smaller
            than the dataset; a wider window mixes more chunks per batch (for local data or byte-range reads).
        rank_layout: ``"blocks"`` gives every DDP rank a contiguous block of the order (each chunk is read by
            about one rank); ``"strided"`` hands the order round-robin to the ranks (every rank reads every
            chunk of every window).
        num_replicas: the world size the layout is made for; ``None`` reads it from ``torch.distributed``
            when the order is drawn (1 outside DDP).
    """

    def __init__(
        self,
        chunk_of: Tensor,
        window: int = 1,
        *,
        rank_layout: RankLayout = "blocks",
        num_replicas: int | None = None,
    ) -> None:
        if window < 1:
            raise ValueError(f"`window` must be >= 1 chunk, got {window}.")
        if rank_layout not in ("blocks", "strided"):
            raise ValueError(f"`rank_layout` must be 'blocks' or 'strided', got {rank_layout!r}.")
        self.chunk_of = chunk_of.to(torch.int64).cpu()
        self.window = window
        self.rank_layout = rank_layout
        self.num_replicas = num_replicas

    def __call__(self, subset: Tensor, generator: torch.Generator) -> Tensor:
        order = chunk_aware_order(subset, self.chunk_of, self.window, generator)
        replicas = self.num_replicas if self.num_replicas is not None else _world_size()
        if self.rank_layout == "blocks" and replicas > 1:
            order = rank_blocks(order, replicas)
        return order

    def __repr__(self) -> str:
        return f"{type(self).__name__}(samples={self.chunk_of.numel()}, window={self.window}, {self.rank_layout})"


# --------------------------------------------------------------------------------------------------
# LitData
def is_streaming_dataset(dataset: object) -> bool:
    """Whether ``dataset`` is a LitData ``StreamingDataset`` (litdata is not imported for the check)."""
    module = sys.modules.get("litdata.streaming.dataset")
    streaming_class = getattr(module, "StreamingDataset", None)
    return streaming_class is not None and isinstance(dataset, streaming_class)


def check_streaming_dataset(dataset: Any, argument: str = "train_dataset") -> None:
    """Rejects ``StreamingDataset`` settings that contradict pruning by index.

    Raises:
        ValueError: for ``shuffle=True`` (LitData's own shuffle) or ``window_direct_io=True`` (no random access).
    """
    name = f"`{argument}` (a litdata StreamingDataset)"
    if getattr(dataset, "shuffle", False):
        raise ValueError(
            f"{name} was built with shuffle=True. LitData shuffles and shards only when the dataset is iterated; "
            "data pruning never iterates it: it reads the samples it selected by index and shuffles each epoch "
            "itself, chunk-aware. Build it with `StreamingDataset(..., shuffle=False)`: the epochs stay shuffled."
        )
    if getattr(dataset, "window_direct_io", False):
        raise ValueError(
            f"{name} was built with window_direct_io=True, which turns off reading samples by index. Data pruning "
            "reads by index: build it with window_direct_io=False."
        )


def chunk_layout(dataset: Any) -> tuple[Tensor, list[str]]:
    """The chunk of every sample of a ``StreamingDataset``, read from its index, not from the samples.

    Sample ``i`` of ``dataset[i]`` lies in the chunk files in the order of ``dataset.subsampled_files``,
    each contributing its ``region_of_interest`` (all of it unless ``subsample`` was used).

    Returns:
        ``(chunk_of, files)``: int64 id of each sample's chunk file (length N) and the file of each id. A file
        listed twice (``subsample > 1``) keeps one id, since it is fetched once.
    """
    files: list[str] = list(dataset.subsampled_files)
    regions: list[tuple[int, int]] = list(dataset.region_of_interest)
    if len(files) != len(regions):
        raise ValueError(f"the StreamingDataset lists {len(files)} chunk files but {len(regions)} regions.")
    ids: dict[str, int] = {}
    file_ids = torch.tensor([ids.setdefault(name, len(ids)) for name in files], dtype=torch.int64)
    counts = torch.tensor([end - start for start, end in regions], dtype=torch.int64)
    return torch.repeat_interleave(file_ids, counts), list(ids)


class StreamingMapDataset(Dataset[Any]):
    """A LitData ``StreamingDataset`` read by index only, so the pruning sampler decides every epoch.

    ``len()`` is the whole dataset (a ``StreamingDataset``'s own ``len()`` is the share of the current rank
    and worker), and ``dataset[i]`` is the ``StreamingDataset``'s ``i``-th sample with its transform.
    :class:`~lightning_pruning.PruningDataModule` wraps a ``StreamingDataset`` in this for you.

    Args:
        dataset: the ``StreamingDataset``, built with ``shuffle=False``.
        whole_chunks: fetch whole chunks into LitData's cache (one request per chunk, which the chunk-aware
            order then uses up) rather than one byte-range request per sample, LitData's default for reads
            by index of uncompressed remote data. Compressed or encrypted data is always fetched by chunk.
    """

    def __init__(self, dataset: Any, *, whole_chunks: bool = True) -> None:
        if not is_streaming_dataset(dataset):
            raise TypeError(f"`dataset` must be a litdata StreamingDataset, got {type(dataset).__name__}.")
        check_streaming_dataset(dataset, "dataset")
        self.dataset = dataset
        self.whole_chunks = whole_chunks
        self.chunk_of, self.chunk_files = chunk_layout(dataset)
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self.chunk_of.numel())

    def __getitem__(self, index: int) -> Any:
        dataset = self.dataset
        if os.getpid() != self._pid:
            # A reader built in another process (e.g. the parent of a forked DataLoader worker) has lost its
            # prefetch thread; every process builds its own.
            dataset.cache = None
            dataset.shuffler = None
            self._pid = os.getpid()
        if dataset.cache is None:
            # Read when LitData builds the reader (its public setter needs the reader to exist already).
            dataset._on_demand_bytes = not self.whole_chunks
        return dataset[int(index)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(samples={len(self)}, chunks={len(self.chunk_files)})"


def adopt_streaming(
    dataset: Any, orderer: Orderer | None, argument: str = "train_dataset"
) -> tuple[Any, Orderer | None]:
    """What :class:`~lightning_pruning.PruningDataModule` does with a training set that may be streamed.

    A ``StreamingDataset`` is checked and wrapped in :class:`StreamingMapDataset`; a streamed set gets a
    :class:`ChunkAwareOrder` unless ``orderer`` is given. Anything else passes through unchanged.

    Raises:
        ValueError: for a ``StreamingDataset`` with settings that contradict pruning (see
            :func:`check_streaming_dataset`).
        TypeError: for other LitData iterable datasets, which cannot be read by index.
    """
    if is_streaming_dataset(dataset):
        check_streaming_dataset(dataset, argument)
        dataset = StreamingMapDataset(dataset)
    elif isinstance(dataset, IterableDataset) and type(dataset).__module__.startswith("litdata"):
        raise TypeError(
            f"`{argument}` is a litdata {type(dataset).__name__}, which can only be iterated: LitData then picks, "
            "shuffles and shards the samples across ranks and workers itself, while data pruning picks them by "
            "index. Pass a single `StreamingDataset(..., shuffle=False)` instead."
        )
    if isinstance(dataset, StreamingMapDataset) and orderer is None:
        orderer = ChunkAwareOrder(dataset.chunk_of)
    return dataset, orderer
