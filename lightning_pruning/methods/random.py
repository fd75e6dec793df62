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
    """The endless walk through seeded permutations of ``range(n)`` that RS2 cuts into chunks of ``size``.

    Raw permutation ``q`` is a pure function of ``(seed, q, stream)``. A chunk that straddles the end of
    permutation ``q`` takes its last ``t`` items and completes itself from permutation ``q + 1``, whose
    copies of those ``t`` items are moved to its end. So no chunk repeats a sample, and every
    permutation still holds every sample once: each sample is trained once per cycle of ``n`` stream
    positions. Permutation ``q + 1`` depends on ``q`` through that tail, so the walk is computed forward
    from permutation 0 and the latest one is cached (consecutive epochs cost a slice).
    """

    def __init__(self, n: int, size: int, seed: int, stream: int) -> None:
        if not 0 < size <= n:
            raise ValueError(f"an RS2 chunk must hold 1..{n} samples, got {size}")
        self.n, self.size, self.seed, self.stream = n, size, seed, stream
        # int32 permutations are about twice as fast as int64 and cover any dataset below 2**31 samples.
        self._dtype = torch.int32 if n < 2**31 else torch.int64
        self._cached: tuple[int, Tensor] | None = None

    def _raw(self, index: int) -> Tensor:
        generator = make_generator(self.seed, index, self.stream)
        return torch.randperm(self.n, generator=generator, dtype=self._dtype)

    def permutation(self, index: int) -> Tensor:
        """Permutation ``index`` of the walk (after moving the previous chunk's items to its end)."""
        if self._cached is None or self._cached[0] > index:
            self._cached = (0, self._raw(0))
        current, permutation = self._cached
        while current < index:
            current += 1
            permutation = self._follow(current, permutation)
        self._cached = (current, permutation)
        return permutation

    def _follow(self, index: int, previous: Tensor) -> Tensor:
        """Permutation ``index`` given permutation ``index - 1`` of the walk."""
        raw = self._raw(index)
        straddling = (index * self.n) % self.size  # items of the previous permutation in the straddling chunk
        if straddling == 0:
            return raw
        taken = torch.zeros(self.n, dtype=torch.bool)
        taken[previous[self.n - straddling :]] = True
        moved = taken[raw]
        return torch.cat([raw[~moved], raw[moved]])

    def chunk(self, round_index: int) -> Tensor:
        """Items ``[round_index * size, (round_index + 1) * size)`` of the walk (int64, distinct)."""
        start = round_index * self.size
        first, offset = divmod(start, self.n)
        head = self.permutation(first)[offset : offset + self.size]
        if head.numel() < self.size:
            head = torch.cat([head, self.permutation(first + 1)[: self.size - head.numel()]])
        return head.to(torch.int64)


def random_star_subset(
    num_samples: int, size: int, generator: torch.Generator, layout: ClassLayout | None = None
) -> Tensor:
    """Random*'s draw: ``size`` distinct uniform indices, split over classes by size when ``layout`` is given."""
    if layout is None:
        return uniform_subset(num_samples, size, generator)
    return stratified_uniform_subset(layout, stratified_counts(layout.counts, size), generator)


def rs2_chunk(num_samples: int, size: int, round_index: int, seed: int) -> Tensor:
    """RS2 without replacement: the ``round_index``-th chunk of ``size`` distinct indices (pure function)."""
    return _PermutationStream(num_samples, size, seed, _RS2_STREAM).chunk(round_index)


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
        return Selection(random_star_subset(self.num_samples, size, generator, layout), in_random_order=layout is None)


@register("rs2")
class RS2(PruningCallback):
    """RS2 (Okanovic et al., ICLR 2024): repeated random sampling.

    Without replacement (the default, the paper's recommendation) the epochs walk through one shuffled
    permutation of the data in chunks of round((1-p)·N). When a permutation runs out mid-chunk, the chunk
    is completed from a fresh permutation without the samples it already holds (those move to the end of
    the fresh permutation), so no epoch repeats a sample and every sample is seen once per pass through
    the data (every ~1/(1-p) epochs). With replacement every epoch draws independently, like Random*.

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
        self._streams: list[_PermutationStream | None] = []
        self._streams_seed: int | None = None

    def reset(self, num_samples: int) -> None:
        self._streams = []
        self._streams_seed = None

    def expected_subset_size(self, epoch: int) -> int:
        return budget(self.prune_ratio, self.num_samples)

    def _permutation_streams(self, size: int) -> list[_PermutationStream | None]:
        """One walk for the whole set, or one per class; rebuilt when the seed changes (resume)."""
        if not self._streams or self._streams_seed != self._resolved_seed:
            seed = self._resolved_seed
            if self.stratified:
                assert self.class_layout is not None
                per_class = stratified_counts(self.class_layout.counts, size).tolist()
                # A class with no share of the budget never walks.
                self._streams = [
                    _PermutationStream(int(count), take, seed, _RS2_CLASS_STREAM_BASE + class_id) if take else None
                    for class_id, (count, take) in enumerate(
                        zip(self.class_layout.counts.tolist(), per_class, strict=True)
                    )
                ]
            else:
                self._streams = [_PermutationStream(self.num_samples, size, seed, _RS2_STREAM)]
            self._streams_seed = seed
        return self._streams

    def select(self, epoch: int, generator: torch.Generator) -> Selection:
        size = budget(self.prune_ratio, self.num_samples)
        if self.replacement:
            layout = self.class_layout if self.stratified else None
            return Selection(
                random_star_subset(self.num_samples, size, generator, layout), in_random_order=layout is None
            )
        round_index = epoch - self.warmup_epochs
        streams = self._permutation_streams(size)
        layout = self.class_layout
        if not self.stratified:
            stream = streams[0]
            assert stream is not None
            return Selection(stream.chunk(round_index))
        assert layout is not None
        picks = [
            layout.members(class_id)[stream.chunk(round_index)]
            for class_id, stream in enumerate(streams)
            if stream is not None
        ]
        return Selection(torch.cat(picks))
