"""The sampler that serves one epoch's decided subset, sharded across DDP ranks."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import DistributedSampler

from lightning_pruning.selection import make_generator

# Stream id of the sampler's shuffle; methods use other streams of the same (seed, epoch).
SHUFFLE_STREAM = 1


class SubsetSampler(DistributedSampler):
    """Yields this rank's shard of an epoch's subset, in an order fixed by ``(subset, epoch, seed)``.

    The subset is shuffled with a generator seeded from ``(seed, epoch)``, padded by repeating its
    first indices until its length divides the world size (as ``DistributedSampler`` pads), and rank
    ``r`` takes every ``num_replicas``-th index starting at ``r``. Every rank therefore yields the same
    number of samples, and the ranks together cover exactly the subset, padding aside.

    It subclasses ``DistributedSampler`` only so that Lightning does not wrap it in a second distributed
    sampler (which would pad the subset back to full size); ``set_epoch`` is ignored because the epoch
    is part of the sampler's construction.

    Args:
        subset: int64 dataset indices trained this epoch (duplicates allowed).
        epoch: the epoch this subset belongs to.
        seed: seed of the shuffle, identical on every rank.
        num_replicas: number of processes (the DDP world size).
        rank: this process's rank.
        shuffle: whether to shuffle the subset; ``False`` keeps the given order.
        orderer: with ``shuffle``, the epoch order is ``orderer(subset, generator)`` instead of
            ``subset[randperm]`` (e.g. a chunk-aware order for streamed data); it must return a
            permutation of ``subset``.
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
        orderer: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        # Deliberately not calling DistributedSampler.__init__: it needs a dataset and, without explicit
        # arguments, an initialised process group. The attributes it would set are set here.
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.orderer = orderer
        self.drop_last = False
        self.set_subset(subset, epoch=epoch, seed=seed)

    def set_subset(self, subset: Tensor, *, epoch: int, seed: int) -> None:
        """Points the sampler at a new epoch's subset (the DataLoader, and its workers, are reused)."""
        self.subset = subset.to(torch.int64).cpu()
        self.epoch = epoch
        self.seed = seed
        self.num_samples = -(-self.subset.numel() // self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas
        self._global_order: Tensor | None = None
        self._rank_order: Tensor | None = None

    @property
    def global_order(self) -> Tensor:
        """The padded epoch order over all ranks; rank ``r`` owns positions ``r, r + R, r + 2R, ...``."""
        if self._global_order is None:
            order = self.subset
            if self.shuffle and order.numel() > 1:
                generator = make_generator(self.seed, self.epoch, SHUFFLE_STREAM)
                if self.orderer is not None:
                    order = self.orderer(order, generator)
                else:
                    order = order[torch.randperm(order.numel(), generator=generator)]
            padding = self.total_size - order.numel()
            if padding > 0:
                repeats = -(-padding // max(order.numel(), 1))
                order = torch.cat([order, order.repeat(repeats)[:padding]])
            self._global_order = order
        return self._global_order

    @property
    def rank_order(self) -> Tensor:
        """The indices this rank yields, in order (int64)."""
        if self._rank_order is None:
            self._rank_order = self.global_order[self.rank :: self.num_replicas].contiguous()
        return self._rank_order

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_order.tolist())

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the epoch is fixed at construction (Lightning calls this on every epoch)."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(subset={self.subset.numel()}, epoch={self.epoch}, seed={self.seed}, "
            f"rank={self.rank}/{self.num_replicas})"
        )
