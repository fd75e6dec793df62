"""Random* (a fresh uniform subset every epoch) and RS2 (repeated random sampling without replacement).

The score-free baselines every score-based method has to beat. See ``docs/methods/random.md``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_pruning.methods.base import PruningCallback, Selection
from lightning_pruning.methods.registry import register
from lightning_pruning.selection import (
    ClassLayout,
    budget,
    check_prune_ratio,
    make_generator,
    stratified_counts,
    stratified_uniform_subset,
    uniform_subset,
)

# Stream ids of RS2's permutations: one stream for the whole set, one per class when stratified.
_RS2_STREAM = 3
_RS2_CLASS_STREAM_BASE = 1000


class _PermutationStream:
    """The endless concatenation of seeded permutations of ``range(n)`` that RS2 walks through.

    Permutation ``p`` is a pure function of ``(seed, p, stream)``; the most recent one is cached so
    that consecutive epochs cost a slice, not a new permutation.
    """

    def __init__(self, n: int, seed: int, stream: int) -> None:
        self.n, self.seed, self.stream = n, seed, stream
        self._cached: tuple[int, Tensor] | None = None

    def permutation(self, index: int) -> Tensor:
        if self._cached is None or self._cached[0] != index:
            self._cached = (index, torch.randperm(self.n, generator=make_generator(self.seed, index, self.stream)))
        return self._cached[1]

    def chunk(self, round_index: int, size: int) -> Tensor:
        """Items ``[round_index * size, (round_index + 1) * size)`` of the stream (``size <= n``)."""
        start = round_index * size
        first, offset = divmod(start, self.n)
        head = self.permutation(first)[offset : offset + size]
        if head.numel() == size:
            return head
        # The permutation ran out: complete the chunk from a fresh one (excluding nothing, as in RS2).
        return torch.cat([head, self.permutation(first + 1)[: size - head.numel()]])


def random_star_subset(
    num_samples: int, size: int, generator: torch.Generator, layout: ClassLayout | None = None
) -> Tensor:
    """Random*'s draw: ``size`` distinct uniform indices, split over classes by size when ``layout`` is given."""
    if layout is None:
        return uniform_subset(num_samples, size, generator)
    return stratified_uniform_subset(layout, stratified_counts(layout.counts, size), generator)


def rs2_chunk(num_samples: int, size: int, round_index: int, seed: int) -> Tensor:
    """RS2 without replacement: the ``round_index``-th chunk of ``size`` indices (pure function)."""
    return _PermutationStream(num_samples, seed, _RS2_STREAM).chunk(round_index, size)


@register("random")
class RandomPruning(PruningCallback):
    """Random*: every pruned epoch trains on a fresh uniform subset of exactly round((1-p)·N) samples.

    Args:
        prune_ratio: fraction of the training set dropped in every pruned epoch, in ``[0, 1)``.
        stratified: split the budget across classes in proportion to their size (largest remainder,
            exact total), uniform within each class. Needs labels (see ``PruningDataModule``).
        seed: seed of the draws (default: rank 0's ``torch.initial_seed()``).
        warmup_epochs: first epochs trained on the full data.
        annealing_fraction: final share of epochs trained on the full data.
    """

    key_arguments = ("prune_ratio", "stratified")

    def __init__(
        self,
        prune_ratio: float = 0.5,
        *,
        stratified: bool = False,
        seed: int | None = None,
        warmup_epochs: int = 0,
        annealing_fraction: float = 0.0,
    ) -> None:
        super().__init__(seed=seed, warmup_epochs=warmup_epochs, annealing_fraction=annealing_fraction)
        self.prune_ratio = check_prune_ratio(prune_ratio)
        self.stratified = stratified
        self.needs_labels = stratified

    def expected_subset_size(self, epoch: int) -> int:
        return budget(self.prune_ratio, self.num_samples)

    def select(self, epoch: int, generator: torch.Generator) -> Selection:
        size = budget(self.prune_ratio, self.num_samples)
        layout = self.class_layout if self.stratified else None
        return Selection(random_star_subset(self.num_samples, size, generator, layout))


@register("rs2")
class RS2(PruningCallback):
    """RS2 (Okanovic et al., ICLR 2024): repeated random sampling.

    Without replacement (the default, the paper's recommendation) the epochs walk through one shuffled
    permutation of the data in chunks of round((1-p)·N), reshuffling when it runs out, so every sample is
    seen once every ~1/(1-p) epochs. With replacement every epoch draws independently, like Random*.

    Args:
        prune_ratio: fraction of the training set dropped in every pruned epoch, in ``[0, 1)``.
        replacement: draw every epoch independently (Random*) instead of walking a permutation.
        stratified: split the budget across classes in proportion to their size; each class walks its
            own permutation. Needs labels.
        seed: seed of the permutations (default: rank 0's ``torch.initial_seed()``).
        warmup_epochs: first epochs trained on the full data (they do not advance the permutation).
        annealing_fraction: final share of epochs trained on the full data.
    """

    key_arguments = ("prune_ratio", "replacement", "stratified")

    def __init__(
        self,
        prune_ratio: float = 0.5,
        *,
        replacement: bool = False,
        stratified: bool = False,
        seed: int | None = None,
        warmup_epochs: int = 0,
        annealing_fraction: float = 0.0,
    ) -> None:
        super().__init__(seed=seed, warmup_epochs=warmup_epochs, annealing_fraction=annealing_fraction)
        self.prune_ratio = check_prune_ratio(prune_ratio)
        self.replacement = replacement
        self.stratified = stratified
        self.needs_labels = stratified
        self._streams: list[_PermutationStream] = []

    def reset(self, num_samples: int) -> None:
        self._streams = []

    def expected_subset_size(self, epoch: int) -> int:
        return budget(self.prune_ratio, self.num_samples)

    def _permutation_streams(self) -> list[_PermutationStream]:
        """One stream for the whole set, or one per class; rebuilt when the seed changes (resume)."""
        if not self._streams or self._streams[0].seed != self._resolved_seed:
            if self.stratified:
                assert self.class_layout is not None
                self._streams = [
                    _PermutationStream(int(count), self._resolved_seed, _RS2_CLASS_STREAM_BASE + class_id)
                    for class_id, count in enumerate(self.class_layout.counts.tolist())
                ]
            else:
                self._streams = [_PermutationStream(self.num_samples, self._resolved_seed, _RS2_STREAM)]
        return self._streams

    def select(self, epoch: int, generator: torch.Generator) -> Selection:
        size = budget(self.prune_ratio, self.num_samples)
        if self.replacement:
            layout = self.class_layout if self.stratified else None
            return Selection(random_star_subset(self.num_samples, size, generator, layout))
        round_index = epoch - self.warmup_epochs
        streams = self._permutation_streams()
        if not self.stratified:
            return Selection(streams[0].chunk(round_index, size))
        layout = self.class_layout
        assert layout is not None
        per_class = stratified_counts(layout.counts, size)
        picks: list[Tensor] = []
        for class_id, stream in enumerate(streams):
            take = int(per_class[class_id])
            if take:
                picks.append(layout.members(class_id)[stream.chunk(round_index, take)])
        return Selection(torch.cat(picks))
