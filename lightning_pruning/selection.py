"""Pure tensor helpers shared by the pruning methods.

Every function here is deterministic given its inputs and an explicit ``torch.Generator``; none of
them touches a global random number generator. They run on CPU tensors.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy
import torch
from torch import Tensor

from lightning_pruning import host_ops

_MASK_63 = (1 << 63) - 1
# Segments up to this size are ranked together by one sort in segmented_top_k; larger ones by a selection each.
_SMALL_SEGMENT = 2048
# Entries ranked per sort call in segmented_top_k (bounds its temporary memory).
_SORT_CHUNK = 1 << 20
# Larger segments up to this size find their threshold by one exact selection (numpy's partition of a copy of the
# segment); beyond it by a bracketing sample first (no full copy).
_EXACT_SEGMENT_MAX = 1 << 15
# Mask entries per numpy flatnonzero call in mask_positions (its int64 output is 8 bytes per hit).
_NONZERO_CHUNK = 1 << 20


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
    # An int32 permutation holds the same values as the int64 one for the same generator, in half the
    # memory and about 1.4x faster at 10^7; only the kept part is widened.
    return torch.randperm(num_samples, generator=generator, dtype=index_dtype(num_samples))[:size].to(torch.int64)


def _greedy_units(gain: numpy.ndarray, room: numpy.ndarray, units: int) -> numpy.ndarray:
    """Hands out ``units`` one at a time, each to the entry of largest ``gain`` (ties: lower index).

    An entry's gain drops by 1 with every unit it takes and it takes at most ``room`` units. Returns the
    units each entry took. Equivalent to the one-at-a-time loop but done in passes: a pass serves, in
    order, every entry within 1 of the best gain (none of them can come back before the pass ends), and
    when a pass would serve every entry with room, whole rounds are served at once. numpy on these
    per-class arrays: a handful of operations on C values each pass, where torch's per-call cost dominates.
    """
    taken = numpy.zeros_like(room)
    while units > 0:
        left = room - taken
        eligible = left > 0
        key = numpy.where(eligible, gain - taken, -numpy.inf)
        window = eligible & (key > key.max() - 1.0)
        size = int(numpy.count_nonzero(window))
        if size == int(numpy.count_nonzero(eligible)) and units >= size:
            rounds = min(units // size, int(left[eligible].min()))
            taken[eligible] += rounds
            units -= rounds * size
            continue
        serve = numpy.argsort(-key, kind="stable")[: min(units, size)]
        taken[serve] += 1
        units -= serve.size
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
    shares = numpy.maximum(quotas.detach().to(torch.float64).cpu().numpy(), 0.0)
    size = shares.size
    low = numpy.zeros(size, dtype=numpy.int64) if lower is None else lower.to(torch.int64).cpu().numpy()
    high = numpy.full(size, total, dtype=numpy.int64) if upper is None else upper.to(torch.int64).cpu().numpy()
    if int(low.sum()) > total or int(high.sum()) < total or bool((low > high).any()):
        raise ValueError(
            f"cannot split a total of {total} within bounds summing to [{int(low.sum())}, {int(high.sum())}]"
        )
    counts = numpy.minimum(numpy.maximum(numpy.floor(shares).astype(numpy.int64), low), high)
    missing = total - int(counts.sum())
    if missing > 0:
        counts += _greedy_units(shares - counts, high - counts, missing)
    elif missing < 0:
        counts -= _greedy_units(counts - shares, counts - low, -missing)
    return torch.from_numpy(counts)


@dataclass(frozen=True)
class ClassLayout:
    """The training set's samples grouped by class, computed once and reused every epoch.

    Only the grouped order and the class sizes are stored (4 bytes per sample while ``N < 2**31``):
    the per-sample labels are implied by them (:attr:`labels` rebuilds them on demand).

    Attributes:
        order: sample indices sorted by class (stable), shape ``(N,)``; int32 while ``N < 2**31``, else int64.
        counts: int64 samples per class, shape ``(C,)``.
        offsets: int64 start of each class in ``order``, shape ``(C,)``.
    """

    order: Tensor
    counts: Tensor
    offsets: Tensor

    @classmethod
    def from_labels(cls, labels: Tensor) -> ClassLayout:
        """Builds the layout from contiguous integer labels ``0..C-1``."""
        num_classes = int(labels.max()) + 1 if labels.numel() else 0
        counts = torch.bincount(labels.to(torch.int64), minlength=num_classes)
        offsets = torch.cumsum(counts, 0) - counts
        order = torch.argsort(labels, stable=True).to(index_dtype(labels.numel()))
        return cls(order=order, counts=counts, offsets=offsets)

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return int(self.counts.numel())

    @property
    def labels(self) -> Tensor:
        """The int64 class id of every sample in dataset order (rebuilt from the layout, ``(N,)``)."""
        labels = torch.empty(self.order.numel(), dtype=torch.int64)
        labels[self.order] = self.grouped_labels()
        return labels

    def grouped_labels(self, dtype: torch.dtype = torch.int64) -> Tensor:
        """The class id of every position of :attr:`order` (``(N,)``, non-decreasing)."""
        return torch.repeat_interleave(torch.arange(self.num_classes, dtype=dtype), self.counts)

    def members(self, class_id: int) -> Tensor:
        """Indices (int64) of the samples of one class."""
        start = int(self.offsets[class_id])
        return self.order[start : start + int(self.counts[class_id])].to(torch.int64)


def stratified_counts(class_counts: Tensor, total: int) -> Tensor:
    """Splits ``total`` over classes in proportion to their sizes (largest remainder, exact sum)."""
    num_samples = int(class_counts.sum())
    quotas = class_counts.to(torch.float64) * (total / max(num_samples, 1))
    return largest_remainder_round(quotas, total, upper=class_counts)


def stratified_uniform_subset(layout: ClassLayout, per_class: Tensor, generator: torch.Generator) -> Tensor:
    """Draws ``per_class[c]`` distinct samples of every class c uniformly (int64 indices, any order).

    One ``torch.rand(N)`` of random keys serves every class: the ``per_class[c]`` largest keys of a class
    are a uniform subset of it (:func:`segmented_top_k`), with no Python loop over small classes.
    """
    keys = torch.rand(layout.order.numel(), generator=generator)
    positions = segmented_top_k(keys, layout.counts, per_class).to(torch.int64)
    del keys
    return gather_in_place(layout.order, positions)


def index_dtype(num_samples: int) -> torch.dtype:
    """int32 for index tensors over fewer than ``2**31`` samples (half the memory), else int64."""
    return torch.int32 if num_samples < 2**31 else torch.int64


def mask_positions(
    mask: Tensor, *, invert: bool = False, out: Tensor | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """Ascending positions of the ``True`` entries of a 1-D bool ``mask`` (of the ``False`` ones with
    ``invert``), in :func:`index_dtype` of its length.

    ``torch.nonzero``, boolean indexing and ``masked_select`` all build an int64 position list of every hit
    (8 bytes each) and are several times slower on CPU than numpy's ``flatnonzero``. This runs
    ``flatnonzero`` over chunks of ``2**20`` entries and narrows each into the result, so a decision's peak
    memory holds the int32 result (4 bytes a hit) plus one chunk.

    Args:
        mask: 1-D bool tensor (decisions run on the host; a device tensor is copied to the CPU first).
        invert: take the ``False`` entries instead.
        out: optional 1-D CPU tensor of exactly the number of hits to write into (e.g. a slice of a larger
            result).
        dtype: the result's dtype when ``out`` is not given (default :func:`index_dtype`; ``torch.int64`` for
            callers that need it, written directly instead of widened from an int32 copy).
    """
    if mask.device.type != "cpu":
        mask = mask.cpu()
    if out is None:
        hits = host_ops.count_true(mask)
        out = torch.empty(mask.numel() - hits if invert else hits, dtype=dtype or index_dtype(mask.numel()))
    flags = mask.contiguous().numpy()
    target = out.numpy() if out.is_contiguous() else None
    filled = 0
    for start in range(0, flags.size, _NONZERO_CHUNK):
        chunk = flags[start : start + _NONZERO_CHUNK]
        positions = numpy.flatnonzero(~chunk if invert else chunk)
        end = filled + positions.size
        if end > out.numel():
            raise ValueError(f"`out` holds {out.numel()} entries, fewer than the mask's hits")
        if target is not None:
            numpy.add(positions, start, out=target[filled:end], casting="unsafe")
        else:
            out[filled:end] = torch.from_numpy(positions).add_(start)
        filled = end
    if filled != out.numel():
        raise ValueError(f"`out` holds {out.numel()} entries, the mask has {filled} hits")
    return out


def gather_in_place(table: Tensor, index: Tensor) -> Tensor:
    """Overwrites the int64 ``index`` with ``table[index]`` (widened) and returns it.

    Holds the int64 result plus one copy in ``table``'s dtype (4 bytes per entry for an int32 table),
    instead of an int64 index, the gathered copy and its int64 widening at once.
    """
    index.copy_(torch.index_select(table, 0, index))  # not table[index]: advanced indexing is slower on CPU
    return index


def segmented_top_k(
    keys: Tensor, counts: Tensor, take: Tensor, *, small_segment: int = _SMALL_SEGMENT, sort_chunk: int = _SORT_CHUNK
) -> Tensor:
    """Positions of the ``take[j]`` largest ``keys`` of every consecutive segment ``j`` of lengths ``counts``.

    The segments are consecutive slices of ``keys`` (a class-grouped table). Segments taken whole or
    not at all need no comparison. Partial segments of at most ``small_segment`` entries are sorted together,
    no Python loop over them: each in a row of a padded table, one numpy sort call per row width (each
    segment's ``take[j]``-th largest key is its threshold); larger ones, of which there
    are at most ``N / small_segment``, get their ``take[j]``-th largest key by selection each (the per-call
    overhead is small next to the segment's own cost; numpy's ``partition`` up to ``2**15`` entries, then
    :func:`~lightning_pruning.methods.ranking.threshold_with_counts`, which copies no whole segment). Keys tied
    at a segment's threshold are taken in position order.

    Args:
        keys: 1-D float keys without NaN, shape ``(N,)``.
        counts: int segment lengths, ``(C,)``, summing to ``N``.
        take: int entries to take per segment, ``0 <= take[j] <= counts[j]``.
        small_segment: the largest segment ranked by the padded-table sort.
        sort_chunk: about how many entries one padded table holds (whole segments per table; bounds the memory).

    Returns:
        ``sum(take)`` positions into ``keys`` (int32 while ``N < 2**31``, else int64), in no particular order.

    Raises:
        ValueError: if shapes disagree or some ``take[j]`` is outside ``[0, counts[j]]``.
    """

    # The per-segment bookkeeping runs on numpy: a few dozen operations on C values, where torch's per-call cost
    # would outweigh the work at many small classes.
    counts_now = counts.to(torch.int64).cpu().numpy()
    take_now = take.to(torch.int64).cpu().numpy()
    num = keys.numel()
    if counts_now.shape != take_now.shape or int(counts_now.sum()) != num:
        raise ValueError(
            f"segment counts {tuple(counts_now.shape)} summing to {int(counts_now.sum())} do not fit {num} keys"
        )
    out_of_range = (take_now < 0) | (take_now > counts_now)
    if out_of_range.any():
        bad = int(numpy.flatnonzero(out_of_range)[0])
        raise ValueError(f"cannot take {int(take_now[bad])} entries from segment {bad} of {int(counts_now[bad])}")
    dtype = index_dtype(num)
    starts = numpy.cumsum(counts_now) - counts_now
    partial = (take_now > 0) & (take_now < counts_now)
    small = partial & (counts_now <= small_segment)
    # The result is written in place, part by part, so no list of parts is concatenated (a second copy).
    result = torch.empty(int(take_now.sum()), dtype=dtype)
    filled = 0

    def put(part: Tensor, shift: int = 0) -> None:
        nonlocal filled
        target = result[filled : filled + part.numel()]
        target.copy_(part)
        if shift:
            target.add_(shift)
        filled += part.numel()

    whole = numpy.flatnonzero((take_now == counts_now) & (counts_now > 0))
    if whole.size:
        put(_segment_positions(torch.from_numpy(starts[whole]), torch.from_numpy(counts_now[whole]), dtype))

    small_ids = numpy.flatnonzero(small)
    if small_ids.size:
        # Chunks of whole segments bound the sort's working memory (about 40 bytes per ranked entry, 40 MB).
        ends = numpy.cumsum(counts_now[small_ids])
        marks = numpy.arange(max(sort_chunk, 1), int(ends[-1]), max(sort_chunk, 1))
        cuts = numpy.searchsorted(ends, marks, side="right").tolist()
        bounds = [0, *sorted(set(cuts) - {0}), small_ids.size]
        for first, last in itertools.pairwise(bounds):
            if first < last:
                put(_padded_segment_top_k(keys, small_ids[first:last], starts, counts_now, take_now, dtype))

    large = numpy.flatnonzero(partial & ~small)
    table = keys.numpy() if host_ops.viewable(keys) else None
    for start, size, count in zip(
        starts[large].tolist(), counts_now[large].tolist(), take_now[large].tolist(), strict=True
    ):
        if table is None:
            put(_segment_top_k_torch(keys[start : start + size], count), start)
            continue
        picked = _segment_top_k_numpy(table[start : start + size], count)
        numpy.add(picked, start, out=result.numpy()[filled : filled + count], casting="unsafe")
        filled += count
    return result


def _segment_top_k_numpy(values: numpy.ndarray, count: int) -> numpy.ndarray:
    """Positions (ascending) of the ``count`` largest ``values``, ties with the threshold taken in position order.

    The count-th largest by selection, then one pass for the entries at or above it (a second only when some tie
    with it). Not torch.topk: its CPU kernel copies the segment as (value, int64 index) pairs and took about five
    times as long per segment of a large table (1000 segments of 10^4 keys: 133 ms against 26 ms).
    """
    from lightning_pruning.methods.ranking import threshold_with_counts  # methods/ imports this module

    size = values.size
    if size <= _EXACT_SEGMENT_MAX:  # host_ops.kth_smallest's 0-dim tensor would cost more than this per segment
        kth = numpy.partition(values, size - count)[size - count]
    else:  # a bracketing sample first: no copy of the whole segment
        kth = threshold_with_counts(torch.from_numpy(values), count)[0].numpy()
    picked = numpy.flatnonzero(values >= kth)
    if picked.size > count:
        better = numpy.flatnonzero(values > kth)
        ties = numpy.flatnonzero(values == kth)[: count - better.size]
        picked = numpy.sort(numpy.concatenate([better, ties]))
    return picked


def _segment_top_k_torch(segment: Tensor, count: int) -> Tensor:
    """:func:`_segment_top_k_numpy` for keys numpy cannot view (bfloat16, strided)."""
    from lightning_pruning.methods.ranking import threshold_with_counts

    threshold = threshold_with_counts(segment, count)[0]
    above = mask_positions(host_ops.greater(segment, threshold))
    ties = mask_positions(host_ops.equal(segment, threshold))[: count - above.numel()]
    return torch.cat([above, ties]).sort().values


def _padded_segment_top_k(
    keys: Tensor,
    segment_ids: numpy.ndarray,
    starts: numpy.ndarray,
    counts: numpy.ndarray,
    take: numpy.ndarray,
    dtype: torch.dtype,
) -> Tensor:
    """:func:`segmented_top_k` for the given segments, each sorted in a row of a padded float32 table.

    Every segment's keys go into a row as wide as the next power of two of its length (at most twice the
    entries; the padding is ``-inf``, below every key), the rows of one width are sorted in one numpy call, and
    a row's ``take[j]``-th largest is its threshold. Short rows sort in cache, faster than one
    sort of (segment, key) composites of the same entries. Keys compare as float32. Returns positions in
    ascending order.
    """
    sizes = counts[segment_ids]
    if segment_ids.size == counts.size:
        positions = None  # every segment: the positions are 0..N-1 (no gather needed)
        chunk = keys
    else:
        positions = _segment_positions(torch.from_numpy(starts[segment_ids]), torch.from_numpy(sizes), dtype)
        chunk = torch.index_select(keys, 0, positions)
    values = chunk.to(torch.float32).numpy()
    need = take[segment_ids]
    widths = numpy.left_shift(1, numpy.frexp(sizes - 1)[1]).astype(numpy.int64)  # partial segments have >= 2
    by_width = numpy.argsort(widths, kind="stable")
    row_starts = numpy.empty_like(widths)
    row_starts[by_width] = numpy.cumsum(widths[by_width]) - widths[by_width]
    run_starts = numpy.cumsum(sizes) - sizes
    table = numpy.full(int(widths.sum()), -numpy.inf, dtype=numpy.float32)
    table[numpy.repeat(row_starts - run_starts, sizes) + numpy.arange(values.size)] = values
    offset = 0
    for width, rows in zip(*numpy.unique(widths, return_counts=True), strict=True):
        table[offset : offset + rows * width].reshape(rows, width).sort(axis=1)
        offset += rows * width
    thresholds = table[row_starts + widths - need]
    del table
    expanded = numpy.repeat(thresholds, sizes)
    at_least = values >= expanded
    picked = numpy.flatnonzero(at_least)
    if picked.size != need.sum():  # some segment has more keys tied at its threshold than it still needs
        better = values > expanded
        better_counts = numpy.add.reduceat(better, run_starts, dtype=numpy.int64)
        ties = numpy.flatnonzero(at_least & ~better)
        tie_segments = numpy.searchsorted(run_starts, ties, side="right") - 1
        # Rank of each tie within its segment's ties (positions ascend, so segments do too).
        within = numpy.arange(ties.size) - numpy.searchsorted(tie_segments, tie_segments, side="left")
        fill = ties[within < (need - better_counts)[tie_segments]]
        picked = numpy.sort(numpy.concatenate([numpy.flatnonzero(better), fill]))
    del expanded, at_least
    result = torch.from_numpy(picked).to(dtype)
    return result if positions is None else torch.index_select(positions, 0, result)


def _segment_positions(starts: Tensor, lengths: Tensor, dtype: torch.dtype) -> Tensor:
    """All positions ``start .. start + length - 1`` of the given segments, concatenated."""
    total = int(lengths.sum())
    run_starts = torch.cumsum(lengths, 0) - lengths
    # position = global offset of the entry - offset of its run + start of its segment
    shift = torch.repeat_interleave((starts - run_starts).to(dtype), lengths)
    return shift.add_(torch.arange(total, dtype=dtype))
