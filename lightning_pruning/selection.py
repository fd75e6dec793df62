"""Pure tensor helpers shared by the pruning methods.

Every function here is deterministic given its inputs and an explicit ``torch.Generator``; none of
them touches a global random number generator. They run on CPU tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

_MASK_63 = (1 << 63) - 1


def derive_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """Mixes ``(seed, epoch, stream)`` into one 63-bit seed (SplitMix64 finaliser).

    Distinct streams give independent generators for the same epoch (e.g. the method's decision and
    the sampler's shuffle), and the result is the same on every process and after a resume.
    """
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB) & ((1 << 64) - 1)
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & ((1 << 64) - 1)
    x ^= x >> 31
    return x & _MASK_63


def make_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU generator seeded from ``(seed, epoch, stream)``."""
    generator = torch.Generator()
    generator.manual_seed(derive_seed(seed, epoch, stream))
    return generator


def budget(prune_ratio: float, num_samples: int) -> int:
    """The per-epoch budget ``round((1 - p) * N)`` of the fixed-budget methods (at least 1 if N > 0)."""
    kept = round((1.0 - prune_ratio) * num_samples)
    return max(min(kept, num_samples), 1 if num_samples > 0 else 0)


def check_prune_ratio(prune_ratio: float, *, name: str = "prune_ratio", allow_one: bool = False) -> float:
    """Validates a prune ratio and returns it as a float.

    Raises:
        ValueError: if the ratio is not a finite number in ``[0, 1)`` (``[0, 1]`` with ``allow_one``).
    """
    value = float(prune_ratio)
    upper_ok = value <= 1.0 if allow_one else value < 1.0
    if not (value >= 0.0 and upper_ok):
        interval = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(
            f"`{name}` must be in {interval} (the fraction of the training set dropped per epoch), "
            f"got {prune_ratio!r}. Use e.g. {name}=0.5 to train on half of the data each epoch."
        )
    return value


def uniform_subset(num_samples: int, size: int, generator: torch.Generator) -> Tensor:
    """``size`` distinct indices drawn uniformly from ``[0, num_samples)`` (int64, random order)."""
    if not 0 <= size <= num_samples:
        raise ValueError(f"cannot draw {size} distinct samples out of {num_samples}")
    return torch.randperm(num_samples, generator=generator)[:size]


def _greedy_units(gain: Tensor, room: Tensor, units: int) -> Tensor:
    """Hands out ``units`` one at a time, each to the entry of largest ``gain`` (ties: lower index).

    An entry's gain drops by 1 with every unit it takes and it takes at most ``room`` units. Returns the
    units each entry took. Equivalent to the one-at-a-time loop but done in passes: a pass serves, in
    order, every entry within 1 of the best gain (none of them can come back before the pass ends), and
    when a pass would serve every entry with room, whole rounds are served at once.
    """
    taken = torch.zeros_like(room)
    excluded = torch.tensor(-math.inf, dtype=gain.dtype)
    while units > 0:
        left = room - taken
        eligible = left > 0
        key = torch.where(eligible, gain - taken, excluded)
        window = eligible & (key > key.max() - 1.0)
        size = int(window.sum())
        if size == int(eligible.sum()) and units >= size:
            rounds = min(units // size, int(left[eligible].min()))
            taken[eligible] += rounds
            units -= rounds * size
            continue
        serve = torch.argsort(-key, stable=True)[: min(units, size)]
        taken[serve] += 1
        units -= serve.numel()
    return taken


def largest_remainder_round(
    quotas: Tensor,
    total: int,
    *,
    lower: Tensor | None = None,
    upper: Tensor | None = None,
) -> Tensor:
    """Rounds non-negative real ``quotas`` to integers that sum to ``total`` exactly.

    Each entry gets ``floor(quota)`` first; the missing units go to the largest fractional remainders
    (ties to the lower index). ``lower`` / ``upper`` bound every entry; when the floors violate them the
    bounds win and the difference is taken from / given to the other entries by the same remainder rule.
    An entry raised to its lower bound already holds more than its quota, so its remainder no longer
    competes for the missing units (quotas ``[0.9, 1.4, 1.7]``, total 4, lower bounds 1 give
    ``[1, 1, 2]``).

    The result minimises ``sum((counts - quotas) ** 2)`` over the integer vectors within the bounds that
    sum to ``total`` (the distance the largest-remainder method minimises): units are added one at a
    time where ``quota - count`` is largest and removed where ``count - quota`` is largest.

    Args:
        quotas: real-valued shares, shape ``(C,)``.
        total: the exact sum wanted.
        lower: optional per-entry minimum (int64, ``(C,)``).
        upper: optional per-entry maximum (int64, ``(C,)``).

    Returns:
        int64 counts of shape ``(C,)`` with ``counts.sum() == total``.

    Raises:
        ValueError: if the bounds make ``total`` unreachable.
    """
    quotas = quotas.to(torch.float64).clamp_min(0.0)
    size = quotas.numel()
    low = torch.zeros(size, dtype=torch.int64) if lower is None else lower.to(torch.int64)
    high = torch.full((size,), total, dtype=torch.int64) if upper is None else upper.to(torch.int64)
    if int(low.sum()) > total or int(high.sum()) < total or bool((low > high).any()):
        raise ValueError(
            f"cannot split a total of {total} within bounds summing to [{int(low.sum())}, {int(high.sum())}]"
        )
    counts = torch.minimum(torch.maximum(quotas.floor().to(torch.int64), low), high)
    missing = total - int(counts.sum())
    if missing > 0:
        counts += _greedy_units(quotas - counts, high - counts, missing)
    elif missing < 0:
        counts -= _greedy_units(counts - quotas, counts - low, -missing)
    return counts


@dataclass(frozen=True)
class ClassLayout:
    """The training set's samples grouped by class, computed once and reused every epoch.

    Attributes:
        labels: int64 class id in ``0..C-1`` of every sample, shape ``(N,)``.
        order: sample indices sorted by class (stable), shape ``(N,)``.
        counts: samples per class, shape ``(C,)``.
        offsets: start of each class in ``order``, shape ``(C,)``.
    """

    labels: Tensor
    order: Tensor
    counts: Tensor
    offsets: Tensor

    @classmethod
    def from_labels(cls, labels: Tensor) -> ClassLayout:
        """Builds the layout from contiguous int64 labels ``0..C-1``."""
        labels = labels.to(torch.int64)
        num_classes = int(labels.max()) + 1 if labels.numel() else 0
        counts = torch.bincount(labels, minlength=num_classes)
        offsets = torch.cumsum(counts, 0) - counts
        order = torch.argsort(labels, stable=True)
        return cls(labels=labels, order=order, counts=counts, offsets=offsets)

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return int(self.counts.numel())

    def members(self, class_id: int) -> Tensor:
        """Indices of the samples of one class."""
        start = int(self.offsets[class_id])
        return self.order[start : start + int(self.counts[class_id])]


def stratified_counts(class_counts: Tensor, total: int) -> Tensor:
    """Splits ``total`` over classes in proportion to their sizes (largest remainder, exact sum)."""
    num_samples = int(class_counts.sum())
    quotas = class_counts.to(torch.float64) * (total / max(num_samples, 1))
    return largest_remainder_round(quotas, total, upper=class_counts)


def stratified_uniform_subset(layout: ClassLayout, per_class: Tensor, generator: torch.Generator) -> Tensor:
    """Draws ``per_class[c]`` distinct samples of every class c uniformly (one draw per class)."""
    picks = []
    for class_id in range(layout.num_classes):
        take = int(per_class[class_id])
        if take == 0:
            continue
        members = layout.members(class_id)
        picks.append(members[torch.randperm(members.numel(), generator=generator)[:take]])
    if not picks:
        return torch.empty(0, dtype=torch.int64)
    return torch.cat(picks)
