"""The sampler that serves one epoch's decided subset, sharded across DDP ranks, resumable mid-epoch."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DistributedSampler

from lightning_pruning.selection import derive_seed, make_generator

# Stream id of the sampler's shuffle; methods use other streams of the same (seed, epoch).
SHUFFLE_STREAM = 1
# Indices converted to Python ints at a time while the loader iterates.
_CHUNK = 4096
# How the epoch order is shuffled, recorded in a mid-epoch loader state so that a resume rebuilds the same order.
# "torch": torch.randperm (int32) plus an index_select gather, at every size; the default, and the only kind before
# loader states had a "shuffle" key. "pcg64": a subset of at least _IN_PLACE_FROM indices shuffled in place by
# numpy's PCG64 seeded from (seed, epoch), smaller ones as "torch"; the default of earlier versions (while the
# gather was an advanced-indexing one, several times slower), kept so that their mid-epoch states resume in the
# order they were trained in. With index_select the randperm path is the faster one at every size, and its
# permutation carries the loss weights (one gather instead of a second shuffle).
_SHUFFLE = "torch"
_LEGACY_SHUFFLE = "torch"
_IN_PLACE_SHUFFLE = "pcg64"
_IN_PLACE_FROM = 1 << 21

#: ``orderer(subset, generator) -> order``: a custom epoch order of the subset (a permutation of it).
Orderer = Callable[[Tensor, torch.Generator], Tensor]


def _pad(order: Tensor, multiple: int) -> Tensor:
    """Repeats ``order``'s first entries until its length divides ``multiple`` (as DistributedSampler pads)."""
    padding = -order.numel() % multiple
    if padding == 0 or order.numel() == 0:
        return order
    repeats = -(-padding // order.numel())
    return torch.cat([order, order.repeat(repeats)[:padding]])


def _shuffled_copy(values: Tensor, seed: int) -> Tensor:
    """A copy of 1-D CPU ``values`` shuffled in place by numpy's PCG64 seeded with ``seed``: the same seed gives
    the same permutation for any 4- or 8-byte dtype, so indices and their weights can be shuffled apart."""
    shuffled = values.numpy().copy()
    np.random.Generator(np.random.PCG64(seed)).shuffle(shuffled)
    return torch.from_numpy(shuffled)


class SubsetSampler(DistributedSampler):
    """Yields this rank's shard of an epoch's subset, in an order fixed by ``(subset, epoch, seed)``.

    The subset is shuffled with a generator seeded from ``(seed, epoch)`` (or ordered by ``orderer``),
    padded by repeating its first indices until its length divides the world size (as
    ``DistributedSampler`` pads), and rank ``r`` takes every ``num_replicas``-th index starting at ``r``.
    Every rank therefore yields the same number of samples, and the ranks together cover exactly the
    subset, padding aside. With ``shuffle=False`` the subset is served in index order.

    A run resumed mid-epoch calls :meth:`resume`: the sampler then yields only the part of the epoch
    order that was not trained yet, while ``len()`` still counts the trained part, so that the loader
    length is the one Lightning's restored batch counter runs up to.

    It subclasses ``DistributedSampler`` only so that Lightning does not wrap it in a second distributed
    sampler (which would pad the subset back to full size); ``set_epoch`` is ignored because the epoch
    is part of the sampler's construction.

    Args:
        subset: int64 (or int32) dataset indices trained this epoch (duplicates allowed).
        epoch: the epoch this subset belongs to.
        seed: seed of the shuffle, identical on every rank.
        num_replicas: number of processes (the DDP world size).
        rank: this process's rank.
        shuffle: whether to shuffle the subset; ``False`` serves it in index order.
        orderer: optional ``orderer(subset, generator)`` giving the epoch order when ``shuffle`` is on, instead
            of a uniform shuffle; it must be a pure function of its arguments (resume and DDP rely on it).
        in_random_order: the subset is already in uniformly random order drawn from ``(seed, epoch)`` (see
            :meth:`set_subset`); with ``shuffle`` on and no ``orderer`` it is served as it is.
    """

    def __init__(
        self,
        subset: Tensor,
        *,
        epoch: int,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        orderer: Orderer | None = None,
        in_random_order: bool = False,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        # Deliberately not calling DistributedSampler.__init__: it needs a dataset and, without explicit
        # arguments, an initialised process group. The attributes it would set are set here.
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.drop_last = False
        self.set_subset(subset, epoch=epoch, seed=seed, orderer=orderer, in_random_order=in_random_order)

    def set_subset(
        self,
        subset: Tensor,
        *,
        epoch: int,
        seed: int,
        orderer: Orderer | None = None,
        in_random_order: bool = False,
    ) -> None:
        """Points the sampler at a new epoch's subset (the DataLoader, and its workers, are reused).

        ``in_random_order`` says the subset is already in uniformly random order, drawn from the method's own
        ``(seed, epoch)`` generator (Random*'s prefix of a permutation): it is served as it is instead of being
        shuffled again, which keeps the order a pure function of ``(subset, epoch, seed)``.
        """
        # int32 while it holds every index: half the memory traffic of the shuffle and the gathers.
        if subset.dtype not in (torch.int32, torch.int64):
            subset = subset.to(torch.int64)
        self.subset = subset.cpu()
        self.epoch = epoch
        self.seed = seed
        self.orderer = orderer
        self.in_random_order = in_random_order
        self.num_samples = -(-self.subset.numel() // self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas
        #: Global positions of the epoch order trained before this run resumed (0 on a fresh epoch).
        self.start = 0
        #: Local positions Lightning's restored batch counter treats as already served (``batches * batch_size``).
        self.skipped = 0
        self._resumed_world = self.num_replicas
        self._global_order: Tensor | None = None
        self._rank_order: Tensor | None = None
        self._permutation: Tensor | None = None
        self._permutation_known = True
        self._ordered: Tensor | None = None
        self._in_place_seed: int | None = None
        self._shuffle_kind = _SHUFFLE

    def _epoch_order(self) -> Tensor:
        """The unpadded order of the whole epoch (before any resume); sets ``_permutation``, the subset positions
        in that order (``None``: the subset's own order)."""
        if self._ordered is not None:
            return self._ordered
        order = self.subset
        self._permutation = None
        self._permutation_known = True
        self._in_place_seed = None
        if not self.shuffle:
            if order.numel() > 1:
                order, self._permutation = torch.sort(order, stable=True)
        elif order.numel() > 1 and not (self.in_random_order and self.orderer is None):
            generator = make_generator(self.seed, self.epoch, SHUFFLE_STREAM)
            if self.orderer is not None:
                ordered = self.orderer(order.to(torch.int64), generator)
                if ordered.shape != order.shape:
                    raise ValueError(
                        f"the sampler's orderer returned {tuple(ordered.shape)} indices for a subset of "
                        f"{order.numel()}; it must return a permutation of the subset."
                    )
                self._permutation_known = False
                order = ordered.to(order.dtype)
            elif self._shuffle_kind != _IN_PLACE_SHUFFLE or order.numel() < _IN_PLACE_FROM:
                dtype = torch.int32 if order.numel() < 2**31 else torch.int64
                self._permutation = torch.randperm(order.numel(), generator=generator, dtype=dtype)
                # index_select, not order[permutation]: advanced indexing with an int32 index is several times slower.
                order = torch.index_select(order, 0, self._permutation)
            else:
                # In place on a copy of the indices: no permutation to build and gather through (half the
                # random memory traffic of randperm + gather); weights are then looked up by index.
                self._in_place_seed = derive_seed(self.seed, self.epoch, SHUFFLE_STREAM)
                order = _shuffled_copy(order, self._in_place_seed)
                self._permutation_known = False
        self._ordered = order
        return order

    def _arrange(self, sequence: Tensor) -> Tensor:
        """Pads an epoch-ordered ``sequence`` and applies the resume's re-sharding, as :attr:`global_order`."""
        if self.start == 0:
            return _pad(sequence, self.num_replicas)
        if self._resumed_world == self.num_replicas:
            return _pad(sequence, self._resumed_world)  # the same padding as the uninterrupted run
        return torch.cat([sequence[: self.start], _pad(sequence[self.start :], self.num_replicas)])

    @property
    def global_order(self) -> Tensor:
        """The padded epoch order over all ranks: the ``start`` positions trained before a resume, then
        the rest, padded to a multiple of the world size; rank ``r`` yields positions
        ``start + r, start + r + R, ...``."""
        if self._global_order is None:
            self._global_order = self._arrange(self._epoch_order())
        return self._global_order

    @property
    def rank_order(self) -> Tensor:
        """The indices this rank yields in this run, in order (int32 below 2**31 samples, else int64)."""
        if self._rank_order is None:
            self._rank_order = self.global_order[self.start + self.rank :: self.num_replicas].contiguous()
        return self._rank_order

    @property
    def rank_size(self) -> int:
        """How many indices this rank yields in this run."""
        return int(self.rank_order.numel())

    @property
    def rank_positions(self) -> Tensor | slice | None:
        """Positions in :attr:`subset` of the indices this rank yields, in order: a ``slice`` when the subset is
        served in its own order, ``None`` when the shuffle or a custom ``orderer`` does not track them (look
        values up by index instead)."""
        self._epoch_order()
        if not self._permutation_known:
            return None
        size = self.subset.numel()
        if self._permutation is None and self.start == 0 and size % self.num_replicas == 0:
            return slice(self.rank, size, self.num_replicas)
        permutation = self._permutation if self._permutation is not None else torch.arange(size)
        arranged = self._arrange(permutation)
        return arranged[self.start + self.rank :: self.num_replicas]

    def replayed_in_rank_order(self, values: Tensor) -> Tensor | None:
        """``values`` aligned with :attr:`subset` (e.g. loss weights), put in the order this rank serves its
        indices by replaying the epoch's in-place shuffle on a copy of them; ``None`` when the order is not an
        in-place shuffle (use :attr:`rank_positions`, or look values up by index for a custom ``orderer``).

        Served in that order, a batch's values are a slice: no position table and no dense table over the
        dataset's index range are needed.
        """
        self._epoch_order()
        if self._in_place_seed is None:
            return None
        if values.shape != self.subset.shape:
            raise ValueError(
                f"values of shape {tuple(values.shape)} are not aligned with a subset of {self.subset.numel()}"
            )
        arranged = self._arrange(_shuffled_copy(values, self._in_place_seed))
        return arranged[self.start + self.rank :: self.num_replicas].contiguous()

    def global_positions(self, local: Tensor) -> Tensor:
        """Positions in :attr:`global_order` of this rank's ``local`` positions (counted from ``skipped``)."""
        return self.start + local * self.num_replicas + self.rank

    # ----------------------------------------------------------------------------------------------
    # Resume.
    def position_state(self, batches: int, batch_size: int) -> dict[str, Any]:
        """The loader position after ``batches`` trained batches of this epoch (plain values)."""
        served = max(batches * batch_size - self.skipped, 0)
        position = min(self.start + served * self.num_replicas, self.global_order.numel())
        return {
            "epoch": self.epoch,
            "batches": batches,
            "position": position,
            "world_size": self.num_replicas,
            "subset_size": int(self.subset.numel()),
            "shuffle": self._shuffle_kind,
            "subset_sum": int(self.subset.sum()),
        }

    def resume(self, state: dict[str, Any], batch_size: int) -> None:
        """Continues the epoch from a :meth:`position_state` saved by an interrupted run.

        The first ``state["position"]`` entries of the epoch order are not yielded again. With the same
        world size every rank yields exactly the rest of its uninterrupted shard; with another world size
        the rest is re-sharded over the new ranks.

        Raises:
            ValueError: if the state belongs to another subset (the checkpoint's pruning state was not restored).
        """
        if state["subset_size"] != self.subset.numel() or state["subset_sum"] != int(self.subset.sum()):
            raise ValueError(
                f"the checkpoint was saved in the middle of epoch {self.epoch} on a subset of {state['subset_size']} "
                f"samples, but this run decided another subset ({self.subset.numel()} samples) for that epoch: the "
                "pruning callback's state was not restored from the checkpoint (another method or arguments, or "
                "save_weights_only=True). Resume with the same callback, or from an end-of-epoch checkpoint."
            )
        self._resumed_world = int(state["world_size"])
        shuffle_kind = str(state.get("shuffle", _LEGACY_SHUFFLE))
        if shuffle_kind != self._shuffle_kind:
            self._shuffle_kind = shuffle_kind
            self._ordered = None
        self.start = int(state["position"])
        self.skipped = int(state["batches"]) * batch_size
        self._global_order = None
        self._rank_order = None

    # ----------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[int]:
        # Converted to Python ints a chunk at a time: no list of the whole epoch at its start.
        order = self.rank_order
        for begin in range(0, order.numel(), _CHUNK):
            yield from order[begin : begin + _CHUNK].tolist()

    def __len__(self) -> int:
        # A resumed epoch counts its trained part, so len(loader) is what Lightning's restored batch counter
        # runs up to; only the rest is yielded.
        if self.start == 0:
            return self.num_samples
        return self.skipped + self.rank_order.numel()

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the epoch is fixed at construction (Lightning calls this on every epoch)."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(subset={self.subset.numel()}, epoch={self.epoch}, seed={self.seed}, "
            f"rank={self.rank}/{self.num_replicas})"
        )
