"""SeTa, Scale Efficient Training (Zhou, Gao, Wang; CVPR 2025, arXiv 2503.13385).

Every pruned epoch: (1) random pruning keeps a uniform ``r = 1 - prune_ratio`` share of the data,
(2) 1-D k-means splits the kept samples into ``k`` clusters by their last training loss, ordered easy
(low loss) to hard, and (3) a window of ``w = round(window_scale · k)`` consecutive clusters, sliding one
cluster per epoch from the easy end to the hard end and starting over, is trained. The final epochs
(``epoch >= floor(delta · max_epochs)``) "partially anneal": random pruning only. Plain batch mean, no
loss weights. See ``docs/methods/seta.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy
import torch
from torch import Tensor

from lightning_pruning.methods.base import Harvest, PruningCallback, Selection
from lightning_pruning.methods.ranking import random_choice, random_choice_mask
from lightning_pruning.methods.registry import register
from lightning_pruning.selection import mask_positions

#: Lloyd iterations at most (scikit-learn's default ``max_iter``); 1-D runs converge in far fewer.
KMEANS_MAX_ITER = 300
#: Edges of the dynamic-programming start of the 1-D k-means (its cost grows as edges · log(edges) per cluster).
KMEANS_BINS = 1024
#: The reference keeps at least this share of the data in the random step (InfoBatch's clamp).
MIN_KEEP_RATIO = 0.1


#: Values per block of the prefix-sum table (memory ``O(m / block)`` instead of float64 copies of the data).
_PREFIX_BLOCK = 64
#: Values converted to float64 at a time while summing blocks (a multiple of the block).
_PREFIX_CHUNK = 1 << 16
_BLOCK_OFFSETS = numpy.arange(_PREFIX_BLOCK)


class _PrefixSums:
    """Float64 sums of ``values - shift`` and of its square over ``values[:i]``, for any positions ``i``.

    Two float64 prefix arrays would cost 16 bytes per value; this keeps the sums at block boundaries only
    and adds the partial block on demand, so the clustering reads the sorted losses where they lie (a strided
    view is fine) without copying them.
    """

    def __init__(self, values: Tensor, shift: float) -> None:
        self.values = values
        self.shift = shift
        size = values.numel()
        blocks = -(-size // _PREFIX_BLOCK)
        sums = torch.zeros(blocks + 1, dtype=torch.float64)
        squares = torch.zeros(blocks + 1, dtype=torch.float64)
        # One float64 buffer, reused: fresh chunk-sized temporaries cost more in page faults than the arithmetic.
        buffer = torch.empty(min(_PREFIX_CHUNK, blocks * _PREFIX_BLOCK), dtype=torch.float64)
        for start in range(0, size, _PREFIX_CHUNK):
            chunk = values[start : start + _PREFIX_CHUNK]
            rows_now = -(-chunk.numel() // _PREFIX_BLOCK)
            part = buffer[: rows_now * _PREFIX_BLOCK]
            part[chunk.numel() :] = shift  # the padding of the last block adds 0 once centred
            part[: chunk.numel()] = chunk
            rows = part.sub_(shift).view(-1, _PREFIX_BLOCK)
            first_block = start // _PREFIX_BLOCK + 1
            torch.sum(rows, 1, out=sums[first_block : first_block + rows_now])
            torch.sum(rows.square_(), 1, out=squares[first_block : first_block + rows_now])
        self.sums = sums.cumsum_(0)
        self.squares = squares.cumsum_(0)

    def at(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Sums of ``values[:i] - shift`` and of their squares for every ``i`` in ``positions`` (int64)."""
        block, part = self._partial_blocks(positions)
        if isinstance(part, Tensor):
            return self.sums[block] + part.sum(1), self.squares[block] + part.square().sum(1)
        sums, squares = self.sums.numpy(), self.squares.numpy()
        return (
            torch.from_numpy(sums[block] + part.sum(1)),
            torch.from_numpy(squares[block] + numpy.square(part).sum(1)),
        )

    def sums_at(self, positions: Tensor) -> Tensor:
        """The first of :meth:`at`'s sums alone (what Lloyd's iterations need)."""
        block, part = self._partial_blocks(positions)
        if isinstance(part, Tensor):
            return self.sums[block] + part.sum(1)
        return torch.from_numpy(self.sums.numpy()[block] + part.sum(1))

    def _partial_blocks(self, positions: Tensor) -> tuple[Tensor | numpy.ndarray, Tensor | numpy.ndarray]:
        """The block of every position and the float64 ``values - shift`` of its block before it (0 after)."""
        values = _as_numpy(self.values)
        if values is None:
            block = positions // _PREFIX_BLOCK
            offsets = torch.arange(_PREFIX_BLOCK)
            inside = offsets < (positions - block * _PREFIX_BLOCK)[:, None]
            where = (block[:, None] * _PREFIX_BLOCK + offsets).clamp_max_(self.values.numel() - 1)
            return block, (self.values[where].to(torch.float64) - self.shift) * inside
        # numpy on these small arrays: Lloyd's iterations call this a few dozen times per decision, and torch's
        # per-operation overhead on tiny tensors is several times numpy's.
        at = positions.numpy()
        blocks = at // _PREFIX_BLOCK
        before = _BLOCK_OFFSETS < (at - blocks * _PREFIX_BLOCK)[:, None]
        gather = numpy.minimum(blocks[:, None] * _PREFIX_BLOCK + _BLOCK_OFFSETS, values.size - 1)
        return blocks, (values[gather].astype(numpy.float64) - self.shift) * before


def _as_numpy(values: Tensor) -> numpy.ndarray | None:
    """A numpy view of a CPU float tensor, strided or not (``None`` for dtypes numpy lacks, e.g. bfloat16)."""
    if values.device.type != "cpu" or values.dtype not in (torch.float32, torch.float64, torch.float16):
        return None
    return values.numpy()


def _count_at_most(sorted_values: Tensor, targets: Tensor) -> Tensor:
    """``searchsorted(sorted_values, targets, right=True)`` by a vectorised binary search that reads the values
    where they lie (``torch.searchsorted`` and ``numpy.searchsorted`` first copy a strided input); targets are
    float64."""
    size = sorted_values.numel()
    values = _as_numpy(sorted_values)
    if values is None:
        return _count_at_most_torch(sorted_values, targets)
    goal = targets.numpy()
    if values.flags.c_contiguous:
        # v <= t exactly when v <= the largest value of v's dtype not above t: numpy's own search then runs on the
        # values as they are (a float64 target would make it convert every value first).
        below = goal.astype(values.dtype)
        rounded_up = below > goal
        below[rounded_up] = numpy.nextafter(below[rounded_up], values.dtype.type(-numpy.inf))
        return torch.from_numpy(numpy.searchsorted(values, below, side="right").astype(numpy.int64))
    low = numpy.zeros(goal.size, dtype=numpy.int64)
    high = numpy.full(goal.size, size, dtype=numpy.int64)
    for _ in range(size.bit_length()):
        middle = (low + high) >> 1
        active = low < high
        below = (values[numpy.minimum(middle, size - 1)].astype(numpy.float64) <= goal) & active
        low, high = numpy.where(below, middle + 1, low), numpy.where(active & ~below, middle, high)
    return torch.from_numpy(low)


def _count_at_most_torch(sorted_values: Tensor, targets: Tensor) -> Tensor:
    size = sorted_values.numel()
    low = torch.zeros(targets.numel(), dtype=torch.int64)
    high = torch.full((targets.numel(),), size, dtype=torch.int64)
    for _ in range(size.bit_length()):
        middle = (low + high) // 2
        active = low < high
        below = (sorted_values[middle.clamp_max(size - 1)].to(torch.float64) <= targets) & active
        low, high = torch.where(below, middle + 1, low), torch.where(active & ~below, middle, high)
    return low


#: Up to this many edges the dynamic programme fills the whole (edges x edges) table; above, each layer is
#: solved by divide and conquer on the monotone split points (the same minima, ``O(edges · log edges)`` a layer).
_FULL_TABLE_EDGES = 96


def _optimal_segments(values: Tensor, sums: _PrefixSums, k: int, bins: int) -> Tensor:
    """Least-squares split of sorted ``values`` into ``k`` runs with ends on about ``bins`` edges.

    Dynamic programming over the edges (exact 1-D k-means when ``len(values) <= bins // 2``):
    ``D_j(i) = min_l D_{j-1}(l) + SSE(l, i)``, with each SSE from prefix sums.
    """
    m = values.numel()
    # Half the edges split the samples evenly, half the value range evenly (the sparse tail of a skewed
    # loss distribution is where k-means puts its small clusters).
    by_count = torch.round(torch.linspace(0, m, min(bins // 2, m) + 1, dtype=torch.float64)).to(torch.int64)
    levels = torch.linspace(float(values[0]), float(values[-1]), bins // 2 + 1, dtype=torch.float64)
    by_value = _count_at_most(values, levels)
    edges = torch.unique(torch.cat([by_count, by_value, torch.tensor([0, m])]))
    first, second = sums.at(edges)  # centred on the mean: smaller sums, less cancellation in the SSE
    layer = _layer_by_table if edges.numel() <= _FULL_TABLE_EDGES else _layer_by_halving
    table = _SegmentCosts(first.numpy(), second.numpy(), edges.numpy().astype(numpy.float64))
    # One run from edge 0 to edge i (infinite for i = 0: runs are never empty).
    best = table.cost(numpy.zeros(1, dtype=numpy.int64), numpy.arange(edges.numel()))
    choices = []
    for _ in range(1, k):
        best, choice = layer(table, best)
        choices.append(choice)
    ends = [edges.numel() - 1]
    for choice in reversed(choices):
        ends.append(int(choice[ends[-1]]))
    return edges[torch.tensor(ends[::-1])]


@dataclass(frozen=True)
class _SegmentCosts:
    """Sum of squared deviations of the run between two edges, from float64 prefix sums at the edges."""

    first: numpy.ndarray  # sums of the centred values before each edge
    second: numpy.ndarray  # sums of their squares
    count: numpy.ndarray  # samples before each edge (float64)

    def cost(self, start: numpy.ndarray, end: numpy.ndarray) -> numpy.ndarray:
        """SSE of the runs from edge ``start`` to edge ``end`` (broadcast); infinite where the run is empty."""
        gap = self.count[end] - self.count[start]
        between = self.first[end] - self.first[start]
        sse = self.second[end] - self.second[start] - numpy.square(between) / numpy.maximum(gap, 1.0)
        return numpy.where(gap > 0, numpy.maximum(sse, 0.0), numpy.inf)


def _layer_by_table(table: _SegmentCosts, best: numpy.ndarray) -> tuple[numpy.ndarray, numpy.ndarray]:
    """One layer of the dynamic programme over the whole table: for every end edge ``i``, the minimum over
    ``l`` of ``best[l] + SSE(l, i)`` and the first ``l`` reaching it."""
    size = best.size
    totals = best[:, None] + table.cost(numpy.arange(size)[:, None], numpy.arange(size)[None, :])
    choice = numpy.argmin(totals, axis=0)
    return totals[choice, numpy.arange(size)], choice


def _layer_by_halving(table: _SegmentCosts, best: numpy.ndarray) -> tuple[numpy.ndarray, numpy.ndarray]:
    """The layer of :func:`_layer_by_table` by divide and conquer: the SSE of sorted runs satisfies the
    quadrangle inequality, so the first minimising ``l`` never decreases with ``i``. Each round takes the middle
    end of every open range of ends, searches it over its range of split points only, and halves the ranges
    around the split it found: about ``2 · edges`` costs a round, ``log2(edges)`` rounds, all vectorised."""
    size = best.size
    new_best = numpy.full(size, numpy.inf)
    choice = numpy.zeros(size, dtype=numpy.int64)
    # Open ranges of ends [end_low, end_high] whose split lies in [split_low, split_high]; a split is below its end.
    end_low, end_high = numpy.array([1]), numpy.array([size - 1])
    split_low, split_high = numpy.array([0]), numpy.array([size - 2])
    while end_low.size:
        middle = (end_low + end_high) >> 1
        lengths = numpy.minimum(split_high, middle - 1) - split_low + 1
        offsets = numpy.concatenate([[0], numpy.cumsum(lengths)[:-1]])
        group = numpy.repeat(numpy.arange(middle.size), lengths)
        splits = split_low[group] + numpy.arange(group.size) - offsets[group]
        totals = best[splits] + table.cost(splits, middle[group])
        lowest = numpy.minimum.reduceat(totals, offsets)
        positions = numpy.where(totals == lowest[group], numpy.arange(group.size), group.size)
        found = splits[numpy.minimum.reduceat(positions, offsets)]
        new_best[middle], choice[middle] = lowest, found
        left, right = middle > end_low, middle < end_high
        end_low, end_high, split_low, split_high = (
            numpy.concatenate([end_low[left], middle[right] + 1]),
            numpy.concatenate([middle[left] - 1, end_high[right]]),
            numpy.concatenate([split_low[left], found[right]]),
            numpy.concatenate([found[left], split_high[right]]),
        )
    return new_best, choice


def kmeans_1d(sorted_values: Tensor, k: int, bins: int = KMEANS_BINS, max_iter: int = KMEANS_MAX_ITER) -> Tensor:
    """k-means on sorted 1-D data (clusters of consecutive values), returned as cluster end positions.

    In one dimension every k-means cluster is a run of consecutive sorted values. The runs start from the
    least-squares split with ends on about ``bins`` edges, half of them equal-count, half equal-width (dynamic
    programming; the exact k-means optimum when ``m <= bins // 2``), then Lloyd's iterations polish them on
    the full data (each costs ``O(k log m)`` with prefix sums; they never raise the within-cluster sum of
    squares): centres are run means, and each end moves to the midpoint between neighbouring centres (a value
    exactly on a midpoint joins the lower cluster, so equal values share a cluster). Deterministic, no random
    restarts. With fewer than ``k`` distinct values the data are cut into ``k`` equal-count slices instead
    (the reference does so when all values are equal). Sums are float64 whatever the input's dtype, kept at
    block boundaries (no float64 copy of the data), and the values are read in place, strided or not.

    Args:
        sorted_values: ascending float values, shape ``(m,)`` with ``m >= k``; any float dtype and stride.
        k: number of clusters, >= 1.
        bins: edges of the dynamic-programming start (time ``O(k · bins · log bins)``; the whole ``bins²``
            table only up to 96 edges).
        max_iter: Lloyd iterations at most.

    Returns:
        int64 end positions of the ``k`` clusters (cluster ``j`` is ``sorted_values[ends[j-1]:ends[j]]``,
        ``ends[-1] == m``); a cluster may be empty only when two centres coincide.
    """
    m = sorted_values.numel()
    if not 1 <= k <= m:
        raise ValueError(f"cannot split {m} values into {k} clusters")
    equal_slices = torch.round(torch.arange(1, k + 1, dtype=torch.float64) * (m / k)).to(torch.int64)
    if k == 1:
        return equal_slices
    values = _as_numpy(sorted_values)  # numpy's != and count_nonzero are about ten times torch's on CPU
    if values is None:
        distinct = int(torch.count_nonzero(sorted_values[1:] != sorted_values[:-1])) + 1
    else:
        distinct = int(numpy.count_nonzero(values[1:] != values[:-1])) + 1
    if distinct < k:
        return equal_slices
    total = sum(
        float(sorted_values[start : start + _PREFIX_CHUNK].sum(dtype=torch.float64))
        for start in range(0, m, _PREFIX_CHUNK)
    )
    sums = _PrefixSums(sorted_values, total / m)
    ends = _optimal_segments(sorted_values, sums, k, bins)
    # The iterations run on numpy's small arrays: a few dozen of them, each a handful of operations on k values,
    # where torch's per-operation overhead would dominate.
    centers = numpy.zeros(k)
    ends_now = ends.numpy()
    for _ in range(max_iter):
        sizes = ends_now - numpy.concatenate(([0], ends_now[:-1]))
        prefix = sums.sums_at(torch.from_numpy(ends_now)).numpy()
        run_sums = prefix - numpy.concatenate(([0.0], prefix[:-1]))  # the sum before position 0 is 0
        means = sums.shift + run_sums / numpy.maximum(sizes, 1)
        centers = numpy.where(sizes > 0, means, centers)  # an empty cluster keeps its last centre
        midpoints = (centers[:-1] + centers[1:]) / 2
        new_ends = numpy.append(_count_at_most(sorted_values, torch.from_numpy(midpoints)).numpy(), m)
        if numpy.array_equal(new_ends, ends_now):
            break
        ends_now = new_ends
    return torch.from_numpy(ends_now)


def window_start(iteration: int, num_groups: int, window: int) -> int:
    """First cluster of the window at the ``iteration``-th pruned epoch (0-based; 0 trains every cluster).

    The window slides one cluster per epoch from the easy end and wraps around after reaching the hard
    end: ``iteration mod (k - w + 1)``, as in the reference.
    """
    return iteration % (num_groups - window + 1)


@dataclass(frozen=True)
class SeTaDecision:
    """The outcome of one SeTa selection.

    Attributes:
        indices: dataset indices to train (int32 while N < 2**31 when read back from a mask, else int64).
        cluster_sizes: samples per cluster, easy to hard (empty for an epoch without clustering).
        start: first cluster of the window (-1 without clustering).
        low: smallest loss in the window (NaN without clustering).
        high: largest loss in the window (NaN without clustering).
    """

    indices: Tensor
    cluster_sizes: Tensor
    start: int
    low: float
    high: float


def _window(ends: Tensor, iteration: int, num_groups: int, window: int) -> tuple[Tensor, int, int, int]:
    """Cluster sizes, window start and the sorted positions ``[first, last)`` the window covers."""
    starts = torch.cat([torch.zeros(1, dtype=torch.int64), ends[:-1]])
    start = window_start(iteration, num_groups, window)
    return ends - starts, start, int(starts[start]), int(ends[start + window - 1])


def _splits_equal_values(sorted_scores: Tensor, first: int, last: int) -> bool:
    """Whether position ``first`` or ``last`` cuts through a run of equal sorted values."""
    size = sorted_scores.numel()
    cut_first = 0 < first < size and bool(sorted_scores[first - 1] == sorted_scores[first])
    return cut_first or (0 < last < size and bool(sorted_scores[last - 1] == sorted_scores[last]))


def _in_window(values: numpy.ndarray, low: float, high: float, taken: numpy.ndarray) -> Tensor:
    """The mask ``taken & (low <= values <= high)``, written into ``taken`` (one bool temporary)."""
    scratch = numpy.greater_equal(values, low)
    numpy.logical_and(taken, scratch, out=taken)
    numpy.less_equal(values, high, out=scratch)
    numpy.logical_and(taken, scratch, out=taken)
    return torch.from_numpy(taken)


def seta_select(
    scores: Tensor,
    keep: int,
    num_groups: int,
    window: int,
    iteration: int | None,
    generator: torch.Generator,
) -> SeTaDecision:
    """One SeTa decision on a score table (pure function).

    Args:
        scores: float loss of every sample, shape ``(N,)``, no NaN (impute unknown scores first).
        keep: m, the size of the uniform random subset.
        num_groups: k clusters.
        window: w clusters trained, ``1 <= w <= k``.
        iteration: index of the pruned epoch for the window position, or ``None`` for random pruning
            only (the first pruned epoch and the partial-annealing epochs).
        generator: source of the random subset (and of the order of equal losses).

    Returns:
        The decision: the ``m`` random samples (``iteration`` None or 0), or those of the window. The window is
        found on a sorted copy of the subset's losses alone (4 bytes per kept sample for float32) and read back
        as the subset's samples with a loss in ``[low, high]``, in index order. A window edge can cut through
        equal losses only when there are fewer distinct losses than clusters; then the equal losses are ordered
        at random instead (and so are those of dtypes numpy cannot read, such as bfloat16).
    """
    num_samples = scores.numel()
    if iteration is None or iteration == 0:
        return SeTaDecision(
            random_choice(num_samples, keep, generator), torch.empty(0, dtype=torch.int64), -1, math.nan, math.nan
        )
    taken = random_choice_mask(num_samples, keep, generator)
    values = _as_numpy(scores.contiguous())
    if values is not None:
        kept = values[taken.numpy()]
        kept.sort()  # in place: the only copy is the kept losses themselves
        sorted_scores = torch.from_numpy(kept)
        ends = kmeans_1d(sorted_scores, num_groups)
        sizes, start, first, last = _window(ends, iteration, num_groups, window)
        if last == first:  # only when coinciding centres emptied the whole window: train the random subset
            return SeTaDecision(mask_positions(taken), sizes, start, math.nan, math.nan)
        if not _splits_equal_values(sorted_scores, first, last):
            # No equal losses straddle the window's edges, so its samples are exactly those with a loss in range.
            low, high = float(sorted_scores[first]), float(sorted_scores[last - 1])
            del kept, sorted_scores
            chosen = _in_window(values, low, high, taken.numpy())
            return SeTaDecision(mask_positions(chosen), sizes, start, low, high)
    subset = mask_positions(taken, dtype=torch.int64)
    return _window_by_stable_sort(scores, subset, num_groups, window, iteration, generator)


def _window_by_stable_sort(
    scores: Tensor, subset: Tensor, num_groups: int, window: int, iteration: int, generator: torch.Generator
) -> SeTaDecision:
    """The window of :func:`seta_select` by a stable sort of the subset in random order: equal losses cut apart by
    a window edge are then taken at random. Returns the window's samples in loss order."""
    subset = subset[torch.randperm(subset.numel(), generator=generator)]
    sorted_scores, order = torch.sort(scores[subset], stable=True)
    ends = kmeans_1d(sorted_scores, num_groups)
    sizes, start, first, last = _window(ends, iteration, num_groups, window)
    if last == first:
        return SeTaDecision(subset, sizes, start, math.nan, math.nan)
    chosen = subset[order[first:last]]
    return SeTaDecision(chosen, sizes, start, float(sorted_scores[first]), float(sorted_scores[last - 1]))


@register("seta")
class SeTa(PruningCallback):
    """SeTa: random pruning, loss clustering and an easy-to-hard sliding window over the clusters.

    Per pruned epoch ``t`` (0-based, counted after the warm-up epochs):

    1. a uniform random subset of ``m = floor(r · N)`` samples, ``r = 1 - prune_ratio``;
    2. ``t = 0`` trains all of it (no losses yet); otherwise the ``m`` samples are clustered into ``k``
       clusters by their last training loss (1-D k-means), ordered from easy to hard;
    3. the ``w = round(window_scale · k)`` clusters starting at ``t mod (k - w + 1)`` are trained.

    Epochs ``e >= floor(delta · max_epochs)`` train on a fresh uniform ``m`` samples ("partial annealing").
    So the kept fraction is ``m / N`` in those epochs and ``(m / N) · s_t`` in a window epoch, where ``s_t``
    is the share of the ``m`` samples in the window's clusters (``w / k`` only if the clusters were equal;
    k-means clusters on skewed losses are not). Logged per epoch as ``window_share``.

    Samples never trained yet have no loss; they are clustered with the mean of the known losses (the
    reference gives them the constant 3).

    Args:
        prune_ratio: fraction dropped by the random step, in ``[0, 0.9]`` (the reference clamps the kept
            share to at least 0.1; larger values are refused rather than silently clamped).
        num_groups: number k of loss clusters, >= 1.
        window_scale: share of the clusters in the window, in ``(0, 1]``; ``w = round(window_scale · k)``
            with Python's round (half to even, as in the reference) must be >= 1.
        delta: the window runs while ``epoch < floor(delta · max_epochs)``; later epochs partially anneal.
            In ``(0, 1]``; ``1`` never anneals.
        seed: seed of the random draws (default: rank 0's ``torch.initial_seed()``).
        warmup_epochs: first epochs trained on the full data before SeTa starts (ours; the reference has none).
    """

    key_arguments = ("prune_ratio", "num_groups", "window_scale", "delta")
    state_attributes = ("scores", "scored")

    def __init__(
        self,
        prune_ratio: float = 0.1,
        num_groups: int = 5,
        window_scale: float = 0.9,
        delta: float = 0.875,
        *,
        seed: int | None = None,
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__(seed=seed, warmup_epochs=warmup_epochs)
        prune_ratio = float(prune_ratio)
        if not 0.0 <= prune_ratio <= 1.0 - MIN_KEEP_RATIO:
            raise ValueError(
                f"`prune_ratio` must be in [0, 0.9] (the share SeTa's random step drops; the reference keeps at "
                f"least 10%), got {prune_ratio!r}. Raise the saving with a smaller window_scale instead."
            )
        if isinstance(num_groups, bool) or int(num_groups) != num_groups or num_groups < 1:
            raise ValueError(f"`num_groups` must be an integer >= 1 (the number of loss clusters), got {num_groups!r}.")
        window_scale = float(window_scale)
        window = round(window_scale * int(num_groups)) if 0.0 < window_scale <= 1.0 else 0
        if window < 1:
            raise ValueError(
                f"`window_scale` must be in (0, 1] with round(window_scale * num_groups) >= 1 (the clusters trained "
                f"per epoch), got window_scale={window_scale!r}, num_groups={num_groups!r}."
            )
        delta = float(delta)
        if not 0.0 < delta <= 1.0:
            raise ValueError(
                f"`delta` must be in (0, 1] (the window runs while epoch < floor(delta * max_epochs), then random "
                f"pruning only), got {delta!r}. Use delta=0.875 as in the reference, or 1.0 to never anneal."
            )
        self.prune_ratio = prune_ratio
        self.num_groups = int(num_groups)
        self.window_scale = window_scale
        self.window = window
        self.delta = delta
        self.scores = torch.zeros(0)
        self.scored = torch.zeros(0, dtype=torch.bool)

    @property
    def keep(self) -> int:
        """m = floor(r · N), the size of the random subset (the reference's ``int(N * r)``)."""
        # The relative 1e-12 guards the floor against float noise (1 - 0.3 = 0.69999...).
        return math.floor((1.0 - self.prune_ratio) * self.num_samples * (1.0 + 1e-12))

    @property
    def anneal_from(self) -> int | None:
        """First partial-annealing epoch, ``floor(delta · max_epochs)`` (``None``: never)."""
        if self.delta >= 1.0 or self._max_epochs is None:
            return None
        return math.floor(self.delta * self._max_epochs * (1.0 + 1e-12))

    def reset(self, num_samples: int) -> None:
        if self.delta < 1.0 and self._max_epochs is None:
            raise ValueError("SeTa anneals from epoch floor(delta * max_epochs), which needs max_epochs (or delta=1).")
        if self.keep < self.num_groups:
            raise ValueError(
                f"SeTa keeps {self.keep} of {num_samples} samples in its random step, fewer than num_groups="
                f"{self.num_groups} clusters; lower num_groups or prune_ratio."
            )
        self.scores = torch.zeros(num_samples)
        self.scored = torch.zeros(num_samples, dtype=torch.bool)

    def update(self, harvest: Harvest) -> None:
        # The latest training loss overwrites the score, as in the reference.
        self.scores[harvest.indices] = harvest.losses.to(torch.float32)
        self.scored[harvest.indices] = True

    def expected_subset_size(self, epoch: int) -> int | None:
        iteration = self._iteration(epoch)
        return self.keep if iteration is None or iteration == 0 else None

    def _iteration(self, epoch: int) -> int | None:
        """The window's pruned-epoch index, or ``None`` in a partial-annealing epoch."""
        anneal_from = self.anneal_from
        if anneal_from is not None and epoch >= anneal_from:
            return None
        return epoch - self.warmup_epochs

    def select(self, epoch: int, generator: torch.Generator) -> Selection:
        iteration = self._iteration(epoch)
        scores = self.scores
        num_scored = int(torch.count_nonzero(self.scored))
        if iteration and 0 < num_scored < self.num_samples:
            # Unknown losses join the clustering at the mean of the known ones.
            mean = float(scores.sum()) / num_scored
            scores = torch.where(self.scored, scores, torch.tensor(mean, dtype=scores.dtype))
        decision = seta_select(scores, self.keep, self.num_groups, self.window, iteration, generator)
        keep = self.keep
        stats = {
            "random_kept_fraction": keep / self.num_samples,
            "window_share": decision.indices.numel() / keep,
            "window_start": float(decision.start),
            "annealing": float(iteration is None),
        }
        if decision.cluster_sizes.numel():
            stats["window_low_loss"] = decision.low
            stats["window_high_loss"] = decision.high
            stats["largest_cluster_share"] = float(decision.cluster_sizes.max()) / keep
        return Selection(decision.indices, stats=stats)
