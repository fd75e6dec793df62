"""Shared machinery of the fixed-budget loss-ranking methods (OrderDP, ε-greedy, UCB).

* Exact top-k by threshold with random tie-breaking (:func:`top_k_mask`, :func:`top_k_random_ties`): the
  k-th largest value is found by selection, not by sorting (a full float sort of 10⁷ scores costs about
  a second on one CPU core), and the entries tied with it are broken uniformly at random with the
  method's generator. ``+inf`` scores (never-trained samples) rank above everything and are ordinary
  ties among themselves.
* A uniform subset as a boolean mask (:func:`uniform_subset_mask`), drawn the same way from random keys
  (cheaper than ``randperm`` at 10⁷ samples).
* Running (exponential moving) loss statistics per sample (:func:`ema_step`, :func:`apply_ema`).

All functions are pure apart from :func:`apply_ema` (which writes into the tables it is given) and
draw randomness only from the ``generator`` argument.
"""

from __future__ import annotations

import math

import numpy
import torch
from torch import Tensor

from lightning_pruning import host_ops
from lightning_pruning.selection import mask_positions

# Below this size the threshold is found by one exact selection (numpy's partition); above it a strided sample brackets
# the threshold first so that the exact selection runs on a thin band of values.
_EXACT_SELECT_MAX = 1 << 14
_SAMPLE_SIZE = 1 << 14
_MIN_SAMPLE_SIZE = 1 << 10
# Tie sets up to this size are broken with one randperm; larger ones with random keys.
_RANDPERM_TIES_MAX = 1 << 16
# Draws of at most an eighth of the population take the sparse path of random_choice (no key per member; measured
# faster up to about 15%), and so do the left-out members of draws of at least seven eighths.
_SPARSE_CHOICE_RATIO = 8


def _count(mask: Tensor) -> int:
    return host_ops.count_true(mask)


def _exact_threshold(values: Tensor, k: int) -> tuple[Tensor, int, int, Tensor | None]:
    threshold = host_ops.kth_smallest(values, values.numel() - k + 1)
    return threshold, _count(host_ops.greater(values, threshold)), _count(host_ops.equal(values, threshold)), None


def _threshold(values: Tensor, k: int) -> tuple[Tensor, int, int, Tensor | None]:
    """:func:`threshold_with_counts`, plus the positions of the ties when they came for free (band case)."""
    n = values.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if n <= _EXACT_SELECT_MAX:
        return _exact_threshold(values, k)
    # A sample of about n / 64 values (at most _SAMPLE_SIZE): its sort stays a small share of the passes over n.
    # numpy's sort: several times faster than torch's on CPU; only the sorted values are used (descending).
    sample = torch.from_numpy(
        numpy.sort(values[:: n // min(_SAMPLE_SIZE, max(_MIN_SAMPLE_SIZE, n // 64))].numpy())[::-1].copy()
    )
    m = sample.numel()
    position = k / n * m
    # Four standard deviations of the sample quantile (in sample ranks), plus slack for tiny fractions.
    margin = 4.0 * math.sqrt(m * (k / n) * (1.0 - k / n)) + 8.0
    upper = sample[max(0, int(position - margin))]
    lower = sample[min(m - 1, int(position + margin))]
    at_least_upper_mask = host_ops.greater_equal(values, upper)
    at_least_upper = _count(at_least_upper_mask)
    if at_least_upper >= k:
        greater = _count(host_ops.greater(values, upper))
        if greater < k:
            return upper, greater, at_least_upper - greater, None  # a large tie holds the k-th value
        return _exact_threshold(values, k)
    band_mask = host_ops.and_(host_ops.greater(values, lower), at_least_upper_mask, invert=True)  # lower < v < upper
    band_positions = mask_positions(band_mask)
    if at_least_upper + band_positions.numel() >= k:
        band = torch.index_select(values, 0, band_positions)
        rank = k - at_least_upper  # rank inside the band, counted from its largest entry
        threshold = host_ops.kth_smallest(band, band.numel() - rank + 1)
        # Every tie of a threshold strictly inside the bracket lies in the band.
        tied = band_positions[band == threshold]
        return threshold, at_least_upper + _count(band > threshold), tied.numel(), tied
    greater = at_least_upper + band_positions.numel()  # entries above lower
    at_least_lower = _count(host_ops.greater_equal(values, lower))
    if at_least_lower >= k:
        return lower, greater, at_least_lower - greater, None
    return _exact_threshold(values, k)


def threshold_with_counts(values: Tensor, k: int) -> tuple[Tensor, int, int]:
    """The k-th largest entry ``t`` of a 1-D float tensor, with ``#{v > t}`` and ``#{v == t}``.

    Selection, not sorting: for large inputs a strided sample of the values brackets ``t``, one pass
    counts the entries at or above the bracket and the exact selection (numpy's ``partition``) runs only on
    the thin band inside it, which also holds every tie of ``t``. A bracket the sample got wrong falls
    back to the exact selection on all values: the sample only affects speed, never the result.
    ``+inf`` counts as the largest value; large ties (the ``+inf`` of never-trained samples) at the
    bracket's ends are recognised without a band.

    Args:
        values: 1-D float tensor without NaN.
        k: rank wanted, ``1 <= k <= values.numel()``.

    Returns:
        ``(t, greater, equal)`` with ``greater < k <= greater + equal``.

    Raises:
        ValueError: if ``k`` is out of range.
    """
    threshold, greater, equal, _ = _threshold(values, k)
    return threshold, greater, equal


def kth_largest(values: Tensor, k: int) -> Tensor:
    """The k-th largest entry of a 1-D float tensor (0-dim), without sorting; see :func:`threshold_with_counts`."""
    return _threshold(values, k)[0]


def random_choice(population: int, size: int, generator: torch.Generator) -> Tensor:
    """``size`` distinct positions drawn uniformly from ``[0, population)`` (int64, any order)."""
    if not 0 <= size <= population:
        raise ValueError(f"cannot draw {size} distinct positions out of {population}")
    if size == population:
        return torch.arange(population)
    if population <= _RANDPERM_TIES_MAX:
        return torch.randperm(population, generator=generator)[:size]
    if size * _SPARSE_CHOICE_RATIO <= population:
        return _sparse_random_choice(population, size, generator)
    if _draws_left_out(population, size):
        return mask_positions(_left_out_mask(population, size, generator), dtype=torch.int64)
    # The `size` largest of iid random keys (their own ties broken at random) are a uniform subset.
    keys = torch.rand(population, generator=generator)
    return mask_positions(top_k_mask(keys, size, generator), dtype=torch.int64)


def random_choice_mask(population: int, size: int, generator: torch.Generator) -> Tensor:
    """The draw of :func:`random_choice` (the same positions for the same generator state) as a boolean mask."""
    if not 0 <= size <= population:
        raise ValueError(f"cannot draw {size} distinct positions out of {population}")
    if population > _RANDPERM_TIES_MAX and _draws_left_out(population, size):
        return _left_out_mask(population, size, generator)
    mask = torch.zeros(population, dtype=torch.bool)
    mask.numpy()[random_choice(population, size, generator).numpy()] = True
    return mask


def _draws_left_out(population: int, size: int) -> bool:
    """Whether :func:`random_choice` draws the few members left out instead of those taken."""
    return size < population and (population - size) * _SPARSE_CHOICE_RATIO <= population


def _left_out_mask(population: int, size: int, generator: torch.Generator) -> Tensor:
    """Nearly everything is taken: the few left out are drawn the sparse way (the complement of a uniform subset
    is uniform) and the mask inverted."""
    taken = _sparse_mask(population, population - size, generator)
    return torch.from_numpy(numpy.logical_not(taken, out=taken))


def _sparse_mask(population: int, size: int, generator: torch.Generator) -> numpy.ndarray:
    """A uniform ``size``-subset of ``[0, population)`` as a bool mask, for ``size`` up to about an eighth of it.

    Rounds of iid uniform positions are marked until at least ``size`` are; the few surplus are then unmarked by
    further uniform draws that hit marked positions, in draw order. O(size) random draws and writes plus one count
    of the mask per round: no sort of the picks (at 10^8 samples sorting 10^7 picks costs more than a key per
    sample). Every step commutes with relabelling the population and the count ends exact, so the marked set is a
    uniform ``size``-subset.
    """
    mask = numpy.zeros(population, dtype=bool)
    marked = 0
    while marked < size:
        missing = size - marked
        # m draws repeat one another or a marked position about m * (marked + m / 2) / population times: draw that
        # many more, plus a few standard deviations of that count, so that one round nearly always suffices and
        # leaves a small surplus.
        repeats = missing * (2 * marked + missing) // (2 * population)
        draws = torch.randint(population, (missing + repeats + 4 * math.isqrt(repeats) + 16,), generator=generator)
        mask[draws.numpy()] = True
        marked = int(numpy.count_nonzero(mask))
    while marked > size:
        surplus = marked - size
        expected = surplus * population // marked  # a draw hits a marked position marked / population of the time
        draws = torch.randint(population, (expected + 4 * math.isqrt(expected) + 16,), generator=generator)
        distinct, first = numpy.unique(draws.numpy(), return_index=True)
        hit = mask[distinct]
        unmark = distinct[hit][numpy.argsort(first[hit], kind="stable")][:surplus]  # the first hits, in draw order
        mask[unmark] = False
        marked -= unmark.size
    return mask


def _sparse_random_choice(population: int, size: int, generator: torch.Generator) -> Tensor:
    """:func:`random_choice` for ``size`` much smaller than ``population``: O(size) work instead of a key per member.

    Rounds of iid uniform draws are merged into a sorted set of distinct values until it holds ``size``; a
    uniform draw of the surplus is then dropped. Every step commutes with relabelling the population, so the
    result, whose size is always ``size``, is a uniform ``size``-subset (ascending).
    """
    chosen = numpy.empty(0, dtype=numpy.int64)
    while chosen.size < size:
        missing = size - chosen.size
        # A draw repeats an earlier one about (chosen + missing / 2) / population of the time: draw about twice that
        # many more (and a margin) so that one round nearly always suffices; a surplus is dropped below.
        extra = missing * (chosen.size + missing) // population + missing // 32 + 16
        draws = torch.randint(population, (missing + extra,), generator=generator).numpy()
        merged = numpy.sort(numpy.concatenate([chosen, draws]))
        distinct = numpy.empty(merged.size, dtype=bool)
        distinct[0] = True
        numpy.not_equal(merged[1:], merged[:-1], out=distinct[1:])
        chosen = merged[distinct]
    if chosen.size > size:
        # Dropping a uniform draw of the few surplus members costs O(surplus) (no permutation of all of them).
        keep = numpy.ones(chosen.size, dtype=bool)
        keep[random_choice(chosen.size, chosen.size - size, generator).numpy()] = False
        chosen = chosen[keep]
    return torch.from_numpy(chosen)


def top_k_mask(values: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Boolean mask of exactly ``k`` entries holding the ``k`` largest values, ties broken at random.

    Every entry strictly above the k-th largest value is taken; the remaining places go to a uniformly
    random subset of the entries equal to it (drawn from ``generator``). ``+inf`` is the largest value,
    ``-inf`` the smallest (use it to exclude entries).

    Args:
        values: 1-D float tensor without NaN.
        k: number of entries to take, ``0 <= k <= values.numel()``.
        generator: source of the tie-breaking randomness.

    Raises:
        ValueError: if ``k`` is out of range or ``values`` holds NaN.
    """
    n = values.numel()
    if not 0 <= k <= n:
        raise ValueError(f"cannot take the top {k} of {n} values")
    if k == n:
        return torch.ones(n, dtype=torch.bool)
    if k == 0:
        return torch.zeros(n, dtype=torch.bool)
    threshold, greater, equal, tied = _threshold(values, k)
    need = k - greater
    if not 0 < need <= equal:
        raise ValueError("top-k selection needs scores without NaN")
    if need == equal:
        return host_ops.greater_equal(values, threshold)  # every tie is taken: no draw needed
    mask = host_ops.greater(values, threshold)
    if tied is None:
        tied = mask_positions(host_ops.equal(values, threshold))
    mask[tied[random_choice(tied.numel(), need, generator)]] = True
    return mask


def top_k_random_ties(values: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Indices (int64, ascending) of the ``k`` largest entries of ``values``, ties broken at random.

    See :func:`top_k_mask`.
    """
    return mask_positions(top_k_mask(values, k, generator), dtype=torch.int64)


def uniform_subset_mask(num_samples: int, size: int, generator: torch.Generator) -> Tensor:
    """Boolean mask of ``size`` distinct samples drawn uniformly from ``[0, num_samples)``.

    The same distribution as :func:`lightning_pruning.selection.uniform_subset`, drawn as the ``size``
    largest of iid random keys, which is cheaper than a full permutation for millions of samples; above
    ``2**16`` samples a draw of at most an eighth (or of all but at most an eighth) takes the sparse draws of
    :func:`random_choice` instead.
    """
    if not 0 <= size <= num_samples:
        raise ValueError(f"cannot draw {size} distinct samples out of {num_samples}")
    if size == num_samples:
        return torch.ones(num_samples, dtype=torch.bool)
    if size == 0:
        return torch.zeros(num_samples, dtype=torch.bool)
    if num_samples > _RANDPERM_TIES_MAX:
        # Few taken or few left out: O(picks) sparse draws instead of a random key per sample (as random_choice).
        if _draws_left_out(num_samples, size):
            return _left_out_mask(num_samples, size, generator)
        if size * _SPARSE_CHOICE_RATIO <= num_samples:
            return torch.from_numpy(_sparse_mask(num_samples, size, generator))
    return top_k_mask(torch.rand(num_samples, generator=generator), size, generator)


def ema_step(mean: Tensor, variance: Tensor, losses: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """One exponential-moving-average update of per-sample loss statistics.

    ``μ ← (1-a)·μ + a·l`` and ``v ← (1-a)·v + a·(l - μ_old)²``. A never-observed sample (``μ = +inf``,
    ``v = 0``) takes ``μ = l`` and ``v = 0`` exactly, without inf arithmetic.

    Args:
        mean: current running means of the observed samples (``+inf`` where never observed).
        variance: current running variances, aligned with ``mean``.
        losses: the new losses, aligned with ``mean``.
        alpha: weight of the new observation, in ``(0, 1]``.

    Returns:
        The new means and variances (new tensors).
    """
    first = torch.isposinf(mean)
    previous = torch.where(first, losses, mean)  # a first observation has no deviation to add
    new_mean = torch.where(first, losses, (1.0 - alpha) * previous + alpha * losses)
    new_variance = torch.where(
        first, torch.zeros_like(variance), (1.0 - alpha) * variance + alpha * (losses - previous) ** 2
    )
    return new_mean, new_variance


def apply_ema(mean: Tensor, variance: Tensor | None, indices: Tensor, losses: Tensor, alpha: float) -> None:
    """Folds one epoch's losses into the per-sample tables ``mean`` (and ``variance``) in place.

    ``indices`` must be distinct (one harvest holds every trained sample once).
    """
    old_variance = variance[indices] if variance is not None else torch.zeros_like(losses)
    new_mean, new_variance = ema_step(mean[indices], old_variance, losses.to(mean.dtype), alpha)
    mean[indices] = new_mean
    if variance is not None:
        variance[indices] = new_variance
