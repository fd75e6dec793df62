"""Sharded selection, simulated in one process: per-sample tables split across ranks, decided by
distributed thresholds instead of a replicated table.

Past one machine (10⁹–10¹⁰ samples) no rank can hold every score. Here rank ``r`` of ``R`` owns the
contiguous block of sample ids ``[bounds[r], bounds[r + 1])`` and only that block's tables. A decision
then needs only small collectives whose size does not grow with N (see ``docs/scaling.md``):

* a **global mean** (InfoBatch's threshold): one all-reduce of ``(sum, count)``;
* the **k largest keys** of every group (top-k of scores, uniform draws by random keys, RCAP's
  per-class Gumbel-top-k): a radix select on the keys' bits, one all-reduce of a ``G × 256`` histogram
  per 8-bit digit, then one all-gather of every rank's tie count per group;
* **per-sample randomness** from a counter-based hash of ``(seed, epoch, sample id)``
  (:func:`counter_keys`), so a sample's draw does not depend on which rank holds it or on the world size.

Under these rules the sharded decision is *identical* to the replicated decision with the same rule
(ties at a threshold go to the lowest sample ids), which the tests check for several world sizes.

The collectives are simulated by :class:`SimulatedGroup`, which also counts the bytes each rank sends.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

_DIGIT_BITS = 8
_BUCKETS = 1 << _DIGIT_BITS
_MASK_63 = (1 << 63) - 1
# SplitMix64 constants as signed int64 (torch has no uint64 arithmetic; products wrap modulo 2**64).
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX_1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX_2 = 0x94D049BB133111EB - (1 << 64)


@dataclass
class SimulatedGroup:
    """The collectives of ``world_size`` ranks, run in one process on lists of per-rank tensors.

    Attributes:
        world_size: number of ranks R.
        sent_bytes: bytes each rank has sent so far (all-reduce and all-gather payloads, as with a
            ring algorithm each rank sends about its payload size, up to the factor 2(R-1)/R).
        calls: number of collective calls so far (latency-bound steps).
    """

    world_size: int
    sent_bytes: int = 0
    calls: int = 0

    def all_reduce(self, per_rank: list[Tensor]) -> Tensor:
        """The elementwise sum over ranks, as every rank sees it after ``all_reduce(SUM)``."""
        self._check(per_rank)
        self.sent_bytes += per_rank[0].nbytes
        self.calls += 1
        return torch.stack(per_rank).sum(0)

    def all_gather(self, per_rank: list[Tensor]) -> Tensor:
        """The ``(R, ...)`` stack of every rank's tensor, as every rank sees it after ``all_gather``."""
        self._check(per_rank)
        self.sent_bytes += per_rank[0].nbytes
        self.calls += 1
        return torch.stack(per_rank)

    def _check(self, per_rank: list[Tensor]) -> None:
        if len(per_rank) != self.world_size:
            raise ValueError(f"expected one tensor per rank ({self.world_size}), got {len(per_rank)}")


def shard_bounds(num_samples: int, world_size: int) -> list[int]:
    """Sample-id bounds of the contiguous shards: rank r owns ``[bounds[r], bounds[r + 1])`` (balanced)."""
    if world_size < 1 or num_samples < 0:
        raise ValueError(f"need world_size >= 1 and num_samples >= 0, got {world_size} and {num_samples}")
    return [num_samples * rank // world_size for rank in range(world_size + 1)]


def split(table: Tensor, bounds: list[int]) -> list[Tensor]:
    """Cuts a replicated per-sample table into the shards of ``bounds`` (views)."""
    return [table[start:stop] for start, stop in itertools.pairwise(bounds)]


def _shift_right(values: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 values (torch's ``>>`` is arithmetic on signed integers)."""
    return (values >> bits) & ((1 << (64 - bits)) - 1)


def counter_keys(seed: int, epoch: int, ids: Tensor, stream: int = 0) -> Tensor:
    """Uniform random 63-bit integer keys (int64 >= 0), a pure function of ``(seed, epoch, stream, id)``.

    SplitMix64's finaliser applied to a per-sample counter: any rank computes the same key for a sample,
    whatever the sharding. The ``m`` largest keys of a set are a uniform ``m``-subset of it.
    """
    base = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB) & ((1 << 64) - 1)
    base -= (1 << 64) if base >= 1 << 63 else 0
    x = ids.to(torch.int64) * _GOLDEN + base
    x = (x ^ _shift_right(x, 30)) * _MIX_1
    x = (x ^ _shift_right(x, 27)) * _MIX_2
    x = x ^ _shift_right(x, 31)
    return x & _MASK_63


def counter_uniform(seed: int, epoch: int, ids: Tensor, stream: int = 0) -> Tensor:
    """float64 uniforms in ``[0, 1)`` (53 bits) from :func:`counter_keys`."""
    return _shift_right(counter_keys(seed, epoch, ids, stream), 10).to(torch.float64) * 2.0**-53


def float_keys(values: Tensor) -> Tensor:
    """int64 keys in ``[0, 2**32)`` that order like float32 ``values`` (ascending; ``-inf`` lowest)."""
    bits = (values.to(torch.float32) + 0.0).view(torch.int32).to(torch.int64)  # + 0.0 turns -0.0 into +0.0
    # Sign-magnitude to two's complement order, then shifted to be non-negative.
    return torch.where(bits < 0, -(bits & 0x7FFFFFFF) - 1, bits) + (1 << 31)


def float_keys_random_ties(values: Tensor, seed: int, epoch: int, ids: Tensor) -> Tensor:
    """63-bit keys ordered by float32 ``values`` first and by a counter key among equal values.

    With these keys the top-k takes every value above the k-th largest and a *uniformly random* subset
    of the values tied with it, the tie rule of :func:`lightning_pruning.methods.ranking.top_k_mask`
    (same distribution, other draws), still identical for every world size.
    """
    return (float_keys(values) << 31) | _shift_right(counter_keys(seed, epoch, ids, stream=1), 32)


@dataclass(frozen=True)
class GroupThreshold:
    """Per group, the k-th largest key and how many of the group's picks lie strictly above it."""

    threshold: Tensor
    ties_needed: Tensor


def distributed_group_threshold(
    keys: list[Tensor], groups: list[Tensor] | None, take: Tensor, bits: int, comm: SimulatedGroup
) -> GroupThreshold:
    """The ``take[g]``-th largest key of every group ``g`` over all ranks, by a radix select on ``bits`` bits.

    Each round fixes the next 8-bit digit of every group's threshold from one all-reduced ``(G, 256)``
    histogram of the keys still matching the digits fixed so far. ``ceil(bits / 8)`` rounds.

    Args:
        keys: per rank, non-negative int64 keys ``< 2**bits``.
        groups: per rank, int64 group ids in ``[0, G)`` (``None``: one group).
        take: int64 ``(G,)`` entries wanted per group (``take = 0``: threshold ``2**63 - 1``, no ties).
        bits: key width (32 for :func:`float_keys`, 63 for :func:`counter_keys`).
        comm: the collectives.

    Returns:
        ``threshold[g]`` and ``ties_needed[g]``: how many entries equal to the threshold the group still
        needs after taking every entry above it.
    """
    num_groups = take.numel()
    groups = groups if groups is not None else [torch.zeros(part.numel(), dtype=torch.int64) for part in keys]
    prefix = torch.zeros(num_groups, dtype=torch.int64)
    need = take.to(torch.int64).clone()
    rounds = math.ceil(bits / _DIGIT_BITS)
    for round_index in range(rounds):
        shift = max(bits - _DIGIT_BITS * (round_index + 1), 0)
        digit_bits = bits - _DIGIT_BITS * round_index - shift
        histograms = []
        for part, group in zip(keys, groups, strict=True):
            high = _shift_right(part, shift)
            active = _shift_right(high, digit_bits) == prefix[group]
            digit = high[active] & ((1 << digit_bits) - 1)
            cell = group[active] * _BUCKETS + digit
            histograms.append(torch.bincount(cell, minlength=num_groups * _BUCKETS).view(num_groups, _BUCKETS))
        histogram = comm.all_reduce(histograms)
        # Entries in buckets above b, per group: a reversed cumulative sum.
        at_or_above = histogram.flip(1).cumsum(1).flip(1)
        above = at_or_above - histogram
        # The digit b of the k-th largest: the largest b with at_or_above[b] >= need.
        reaches = at_or_above >= need.unsqueeze(1)
        digit = (reaches * torch.arange(_BUCKETS)).amax(1)
        need -= above.gather(1, digit.unsqueeze(1)).squeeze(1)
        prefix = (prefix << digit_bits) | digit
    empty = take <= 0
    return GroupThreshold(torch.where(empty, _MASK_63, prefix), torch.where(empty, 0, need))


def sharded_group_top_k(
    keys: list[Tensor], groups: list[Tensor] | None, take: Tensor, bits: int, comm: SimulatedGroup
) -> list[Tensor]:
    """Per rank, the bool mask of its entries among the ``take[g]`` largest keys of every group.

    Ties at a group's threshold go to the lowest sample ids: ranks own increasing id blocks, so rank r
    takes what the ranks before it left, from its own lowest local positions (one all-gather of the
    per-rank tie counts).
    """
    num_groups = take.numel()
    groups = groups if groups is not None else [torch.zeros(part.numel(), dtype=torch.int64) for part in keys]
    found = distributed_group_threshold(keys, groups, take, bits, comm)
    tied = [part == found.threshold[group] for part, group in zip(keys, groups, strict=True)]
    tie_counts = comm.all_gather(
        [torch.bincount(group[mask], minlength=num_groups) for group, mask in zip(groups, tied, strict=True)]
    )
    before = tie_counts.cumsum(0) - tie_counts  # ties held by lower ranks, per group
    quota = (found.ties_needed.unsqueeze(0) - before).clamp(min=0).minimum(tie_counts)  # (R, G)
    masks = []
    for rank, (part, group, mask) in enumerate(zip(keys, groups, tied, strict=True)):
        chosen = part > found.threshold[group]
        positions = mask.nonzero().squeeze(1)
        tie_group = group[positions]
        # Rank of each tie among this rank's ties of the same group (positions ascend).
        order = torch.argsort(tie_group, stable=True)
        sorted_groups = tie_group[order]
        starts = torch.searchsorted(sorted_groups, sorted_groups, right=False)
        local_rank = torch.empty_like(order)
        local_rank[order] = torch.arange(order.numel()) - starts
        chosen[positions[local_rank < quota[rank][tie_group]]] = True
        masks.append(chosen)
    return masks


def replicated_group_top_k(keys: Tensor, groups: Tensor | None, take: Tensor) -> Tensor:
    """The same rule on one replicated table (reference): per group the ``take[g]`` largest keys, ties
    to the lowest ids; returns a bool mask."""
    groups = torch.zeros(keys.numel(), dtype=torch.int64) if groups is None else groups
    ids = torch.arange(keys.numel())
    order = torch.argsort(-keys, stable=True)  # descending key, ascending id among equal keys
    order = order[torch.argsort(groups[order], stable=True)]  # then group-major
    sorted_groups = groups[order]
    rank = ids - torch.searchsorted(sorted_groups, sorted_groups, right=False)
    mask = torch.zeros(keys.numel(), dtype=torch.bool)
    mask[order[rank < take[sorted_groups]]] = True
    return mask


# ----------------------------------------------------------------------------------------------------
# Methods' decisions with sharded tables (each returns per-rank masks of the kept samples).
def sharded_uniform(bounds: list[int], size: int, seed: int, epoch: int, comm: SimulatedGroup) -> list[Tensor]:
    """Random*: the ``size`` largest counter keys, a uniform subset of the N samples."""
    keys = [counter_keys(seed, epoch, torch.arange(start, stop)) for start, stop in itertools.pairwise(bounds)]
    return sharded_group_top_k(keys, None, torch.tensor([size]), 63, comm)


def sharded_top_k(
    scores: list[Tensor],
    k: int,
    comm: SimulatedGroup,
    *,
    random_ties: tuple[int, int] | None = None,
    bounds: list[int] | None = None,
) -> list[Tensor]:
    """The k highest scores over all ranks (greedy top-k; ``+inf`` first).

    Ties at the threshold go to the lowest ids, or, with ``random_ties=(seed, epoch)`` (and the shard
    ``bounds``), to a uniformly random subset of the tied samples (:func:`float_keys_random_ties`).
    """
    if random_ties is None:
        return sharded_group_top_k([float_keys(part) for part in scores], None, torch.tensor([k]), 32, comm)
    if bounds is None:
        raise ValueError("random_ties needs the shard bounds (the sample ids of every shard)")
    seed, epoch = random_ties
    keys = [
        float_keys_random_ties(part, seed, epoch, torch.arange(start, stop))
        for part, (start, stop) in zip(scores, itertools.pairwise(bounds), strict=True)
    ]
    return sharded_group_top_k(keys, None, torch.tensor([k]), 63, comm)


def sharded_orderdp(
    scores: list[Tensor],
    bounds: list[int],
    budget_size: int,
    candidates: int,
    seed: int,
    epoch: int,
    comm: SimulatedGroup,
) -> list[Tensor]:
    """OrderDP: s uniform candidates (counter keys), then their q highest scores."""
    pool = sharded_uniform(bounds, candidates, seed, epoch, comm)
    masked = [torch.where(mask, part, torch.tensor(-math.inf)) for part, mask in zip(scores, pool, strict=True)]
    return sharded_top_k(masked, budget_size, comm)


@dataclass(frozen=True)
class ShardedInfoBatch:
    """A sharded InfoBatch decision: per-rank kept masks and weights, and the global numbers."""

    kept: list[Tensor]
    weights: list[Tensor]
    threshold: float
    num_well_learned: int


def sharded_infobatch(
    scores: list[Tensor], bounds: list[int], keep_probability: float, seed: int, epoch: int, comm: SimulatedGroup
) -> ShardedInfoBatch:
    """InfoBatch: the mean by one all-reduce of float64 ``(sum, count)``; of the samples below it,
    ``floor(keep · |below|)`` with the largest counter keys are kept with weight ``1 / keep``."""
    totals = comm.all_reduce(
        [torch.stack([part.double().sum(), torch.tensor(float(part.numel()), dtype=torch.float64)]) for part in scores]
    )
    threshold = float(totals[0] / totals[1])
    below = [part.double() < threshold for part in scores]
    counts = comm.all_reduce([torch.tensor([int(mask.sum())]) for mask in below])
    num_below = int(counts[0])
    num_kept = math.floor(keep_probability * num_below * (1.0 + 1e-12))
    # Two groups: the samples above the mean (take none) and those below (take num_kept by key).
    keys = [counter_keys(seed, epoch, torch.arange(start, stop)) for start, stop in itertools.pairwise(bounds)]
    picked = sharded_group_top_k(keys, [mask.long() for mask in below], torch.tensor([0, num_kept]), 63, comm)
    kept = [~mask | pick for mask, pick in zip(below, picked, strict=True)]
    weights = [
        torch.where(pick, 1.0 / keep_probability, 1.0)[keep].float() for pick, keep in zip(picked, kept, strict=True)
    ]
    return ShardedInfoBatch(kept, weights, threshold, num_below)


def sharded_class_top_k(
    keys: list[Tensor], labels: list[Tensor], per_class: Tensor, comm: SimulatedGroup
) -> list[Tensor]:
    """RCAP's within-class step: the ``per_class[c]`` largest float keys (``score / beta + Gumbel``) of
    every class c over all ranks; the class budgets come from all-reduced per-class sums (C floats)."""
    return sharded_group_top_k([float_keys(part) for part in keys], labels, per_class, 32, comm)


def radix_select_bytes(num_groups: int, world_size: int, bits: int) -> int:
    """Bytes one rank sends for one :func:`sharded_group_top_k`: the histograms plus the tie counts."""
    return math.ceil(bits / _DIGIT_BITS) * num_groups * _BUCKETS * 8 + num_groups * 8
