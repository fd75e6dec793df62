"""RCAP (Hassan, Khare, Paik; UAI 2025): robust, class-aware, probabilistic dynamic pruning.

Every pruned epoch RCAP splits the budget over the classes with a closed form (Theorem 3.1 of the
paper, water-filled at the ``alpha_j <= 1`` bound), rounds the split to integers that sum to the budget
exactly, and draws each class's share without replacement with probabilities ``softmax(score / beta)``
over that class's samples (Gumbel-top-k). See ``docs/methods/rcap.md``.

The per-sample tables live in the class-grouped order of :class:`ClassLayout` (``layout.order``): every
class is one contiguous slice, so the per-class sums, softmax masses and top-k of a selection read memory
sequentially instead of gathering ``N`` scattered values every epoch.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_pruning import host_ops
from lightning_pruning.methods.base import Harvest, PruningCallback, Selection
from lightning_pruning.methods.registry import register
from lightning_pruning.selection import (
    ClassLayout,
    budget,
    check_prune_ratio,
    index_dtype,
    largest_remainder_round,
    segmented_top_k,
)

ClassSignal = Literal["loss", "subset_mass"]
_CLASS_SIGNALS = ("loss", "subset_mass")
# Smallest uniform draw fed to the Gumbel transform: torch.rand can return exactly 0.
_TINY = torch.finfo(torch.float32).tiny
# exp(-60) is far above float32's smallest normal number (about exp(-87)).
_SAFE_SPAN = 60.0
# Block length of segment_sums' float32 partial sums: a sequential float32 sum of 256 values stays within
# about 1e-7 relative, like the cascade sum of torch.sum; the block sums are added in float64.
_SUM_BLOCK = 256
_LOOP_SUM_MIN_SIZE = 1 << 16


def class_fractions(signal: Tensor, counts: Tensor, total: int) -> tuple[Tensor, Tensor]:
    """The fraction ``alpha_j`` of every class to keep: RCAP's closed form with water-filling.

    Minimises ``sum_j L_j / alpha_j`` subject to ``sum_j alpha_j n_j = total`` and ``0 <= alpha_j <= 1``.
    Without the upper bound the optimum is ``alpha_j = total * sqrt(L_j / n_j) / sum_k sqrt(L_k n_k)``.
    Classes pushed above 1 are saturated at 1 and the *remaining* budget ``total - sum_sat n_j`` is split
    over the other classes with the same formula, until no fraction exceeds 1 (at most C rounds; a class
    over 1 in some round is also saturated at the true optimum, so saturating all of them at once is exact).
    When every remaining class has a zero signal any split is optimal; the remaining budget is then split
    as if their signals were equal (square-root-frequency), so the budget is never lost.

    Args:
        signal: non-negative class signal ``L_j``, shape ``(C,)``.
        counts: samples per class ``n_j`` (classes with 0 samples get ``alpha_j = 0``), shape ``(C,)``.
        total: the budget B, ``0 <= total <= sum(counts)``.

    Returns:
        ``(alpha, saturated)``: float64 fractions ``(C,)`` with ``sum(alpha * counts) == total`` (up to float
        rounding) and the bool mask of the classes kept entirely.
    """
    # numpy on these per-class arrays: each round is a handful of operations on C values.
    size = counts.to(torch.float64).cpu().numpy()
    signal_now = numpy.maximum(signal.detach().to(torch.float64).cpu().numpy(), 0.0)
    num_samples = int(counts.sum())
    if not 0 <= total <= num_samples:
        raise ValueError(f"cannot keep {total} samples out of {num_samples}")
    alpha = numpy.zeros_like(size)
    present = size > 0
    saturated = numpy.zeros_like(present)
    remaining = float(total)
    for _ in range(int(present.sum())):
        free = present & ~saturated
        if not free.any():
            break
        if remaining <= 0:  # defensive: saturation always leaves some budget for the classes still free
            alpha = numpy.where(free, 0.0, alpha)
            break
        free_signal = numpy.where(free, signal_now, 0.0)
        if float((free_signal * size).sum()) <= 0.0:
            free_signal = free.astype(numpy.float64)  # all remaining signals are zero: treat them as equal
        weight = numpy.sqrt(free_signal * size)  # sqrt(L_j n_j), the share of the budget
        share = remaining * weight / weight.sum()
        alpha = numpy.where(free, share / numpy.maximum(size, 1.0), alpha)
        over = free & (alpha > 1.0)
        if not over.any():
            break
        saturated |= over
        alpha = numpy.where(over, 1.0, alpha)
        remaining = total - float(size[saturated].sum())
    # A class the last round put exactly at 1 is kept whole as well.
    return torch.from_numpy(alpha), torch.from_numpy(saturated | (alpha >= 1.0))


def class_budgets(alpha: Tensor, counts: Tensor, total: int) -> Tensor:
    """Integer samples per class ``k_j`` from fractions ``alpha_j`` with largest-remainder rounding.

    ``sum_j k_j == total`` exactly, ``k_j <= n_j``, and every class with samples gets at least one when the
    budget covers one sample per class (``total >= number of classes with samples``).

    Args:
        alpha: float fractions per class, shape ``(C,)`` (from :func:`class_fractions`).
        counts: samples per class, shape ``(C,)``.
        total: the budget B.

    Returns:
        int64 counts ``(C,)``.
    """
    counts = counts.to(torch.int64)
    present = counts > 0
    at_least_one = total >= int(present.sum())
    lower = present.to(torch.int64) if at_least_one else torch.zeros_like(counts)
    quotas = alpha.to(torch.float64) * counts.to(torch.float64)
    return largest_remainder_round(quotas, total, lower=lower, upper=counts)


def segment_sums(values: Tensor, counts: Tensor) -> Tensor:
    """Sums of the consecutive slices of ``values`` of lengths ``counts`` (float64, ``(C,)``).

    A general helper for tables stored in class-grouped order (one contiguous slice per class). With
    fewer classes than ``N / 65536`` each slice is summed by ``torch.sum``. Otherwise there is no Python
    loop over the classes: every slice is cut into blocks of at most 256 entries, the blocks are summed in
    one segmented reduction (numpy's ``add.reduceat``, faster than ``torch.segment_reduce``;
    the float32 error of a block sum, like a cascade sum's), and the block sums are added per class in float64.
    """
    counts = counts.to(torch.int64)
    if counts.numel() == 0:
        return torch.zeros(0, dtype=torch.float64)
    if counts.numel() * _LOOP_SUM_MIN_SIZE <= values.numel():
        # Few, large classes (average >= 65536): torch.sum per slice is faster than a segmented reduction.
        return torch.stack([part.sum() for part in values.split(counts.tolist())]).to(torch.float64)
    sizes = counts.cpu().numpy()
    blocks = numpy.maximum(-(-sizes // _SUM_BLOCK), 1)  # an empty class has one empty block
    class_first_block = numpy.cumsum(blocks) - blocks
    block_lengths = numpy.full(int(blocks.sum()), _SUM_BLOCK, dtype=numpy.int64)
    block_lengths[class_first_block + blocks - 1] = sizes - _SUM_BLOCK * (blocks - 1)  # each class's last block
    if not host_ops.viewable(values):  # dtypes numpy lacks, strided or device tensors
        block_sums = torch.segment_reduce(values, "sum", lengths=torch.from_numpy(block_lengths), unsafe=True)
        # segment_reduce fills empty segments with 0 for "sum".
        block_totals = block_sums.to(torch.float64).cpu().numpy()
    else:
        block_starts = numpy.cumsum(block_lengths) - block_lengths
        block_totals = numpy.zeros(block_lengths.size)
        filled = block_lengths > 0
        if filled.any():
            # reduceat sums from each start to the next one given: with the empty blocks left out, each block.
            block_totals[filled] = numpy.add.reduceat(values.numpy(), block_starts[filled])
    return torch.from_numpy(numpy.add.reduceat(block_totals, class_first_block))


def gumbel_noise(num: int, generator: torch.Generator, *, out: Tensor | None = None) -> Tensor:
    """``num`` float32 standard Gumbel draws ``-log(-log(U))`` (``U`` kept away from 0).

    Args:
        num: how many draws.
        generator: the source of randomness.
        out: optional float32 buffer of ``num`` elements to fill (saves a large allocation per call).
    """
    uniform = torch.rand(num, generator=generator) if out is None else torch.rand(num, generator=generator, out=out)
    return uniform.clamp_min_(_TINY).log_().neg_().log_().neg_()


def sample_within_classes(
    grouped_scores: Tensor,
    beta: float,
    layout: ClassLayout,
    per_class: Tensor,
    generator: torch.Generator,
    *,
    workspace: Tensor | None = None,
) -> Tensor:
    """Draws ``per_class[j]`` samples of every class j without replacement, probabilities softmax(score / beta).

    Sequential sampling without replacement with probabilities proportional to ``exp(score_i / beta)``
    within a class is the same as keeping the class's ``k_j`` largest ``score_i / beta + G_i`` (Gumbel-top-k,
    ``G_i`` independent standard Gumbel noise). One noise draw covers the whole grouped table, and one
    :func:`~lightning_pruning.selection.segmented_top_k` takes every class's top ``k_j`` (no Python loop
    over small classes).

    Args:
        grouped_scores: per-sample scores in the class-grouped order of ``layout``, shape ``(N,)``.
        beta: the softmax temperature (> 0).
        layout: the samples grouped by class.
        per_class: int64 samples to draw per class, ``0 <= per_class[j] <= counts[j]``.
        generator: the source of the Gumbel noise.
        workspace: optional float32 buffer of ``N`` elements used for the keys.

    Returns:
        dataset indices (int32 while N < 2**31, else int64), in no particular order.
    """
    bad = (per_class > layout.counts) | (per_class < 0)
    if bool(bad.any()):
        j = int(torch.nonzero(bad)[0])
        raise ValueError(f"cannot draw {int(per_class[j])} samples from a class of {int(layout.counts[j])}")
    keys = gumbel_noise(layout.order.numel(), generator, out=workspace).add_(grouped_scores, alpha=1.0 / beta)
    positions = segmented_top_k(keys, layout.counts, per_class)
    del keys  # the keys (4 bytes per sample) are freed before the result is allocated
    # int32 like the positions while N < 2**31 (index_select: advanced indexing is slower on CPU).
    return torch.index_select(layout.order.to(positions.dtype), 0, positions)


def class_loss_signal(grouped_scores: Tensor, counts: Tensor) -> Tensor:
    """The ``"loss"`` signal: ``L_j`` = sum of the (clipped) scores of class j (float64, ``(C,)``).

    Args:
        grouped_scores: per-sample scores in class-grouped order.
        counts: samples per class.
    """
    return segment_sums(grouped_scores, counts)


def class_subset_mass(
    grouped_scores: Tensor,
    beta: float,
    counts: Tensor,
    previous: Tensor | None,
    *,
    workspace: Tensor | None = None,
) -> Tensor:
    """The ``"subset_mass"`` signal: the within-class softmax mass of last epoch's trained samples.

    ``L_j = sum_{i in S_j} softmax_j(score / beta)_i`` where ``S_j`` holds the class-j samples marked in
    ``previous``; ``previous=None`` means the whole class (``L_j = 1``).

    Args:
        grouped_scores: per-sample scores in class-grouped order, shape ``(N,)``.
        beta: the softmax temperature (> 0).
        counts: samples per class.
        previous: bool mask (class-grouped order) of the samples trained in the previous epoch, or None.
        workspace: optional float32 buffer of ``N`` elements reused for the exponentials.

    Returns:
        float64 ``(C,)``; 0 for classes without samples.
    """
    if previous is None:
        return (counts > 0).to(torch.float64)
    mass = torch.empty_like(grouped_scores) if workspace is None else workspace
    low, high = (float(value) for value in torch.aminmax(grouped_scores))
    # The ratio is invariant to a per-class shift. Shifting everything by the global maximum is enough
    # while the exponents span less than _SAFE_SPAN (nothing underflows); past that (small beta) each class
    # is shifted by its own maximum so no class's mass vanishes.
    if (high - low) / beta < _SAFE_SPAN:
        torch.sub(grouped_scores, high, out=mass).mul_(1.0 / beta).exp_()
    else:
        class_max = torch.segment_reduce(grouped_scores, "max", lengths=counts.to(torch.int64), unsafe=True)
        shift = torch.repeat_interleave(class_max.to(grouped_scores.dtype), counts)
        torch.sub(grouped_scores, shift, out=mass).mul_(1.0 / beta).exp_()
        del shift
    total = segment_sums(mass, counts)
    inside = segment_sums(host_ops.keep_where_(mass, previous), counts)  # in place: no float copy of the mask
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(torch.float64).tiny), 0.0)


@register("rcap")
class RCAP(PruningCallback):
    """RCAP: a class-aware budget split (closed form) and loss-driven softmax sampling within classes.

    Every pruned epoch trains on exactly ``round((1 - prune_ratio) * N)`` samples. Each class j gets
    ``k_j`` of them from the closed form of :func:`class_fractions` driven by ``class_signal``, rounded
    by :func:`class_budgets`; its ``k_j`` samples are drawn without replacement with probabilities
    ``softmax(score / beta)`` over the class. Scores are the latest training losses clipped to
    ``[0, clip]``; never-seen samples score ``clip``. Epoch 0 is already pruned: square-root-frequency
    split, uniform within classes. Needs the class label of every training sample (see
    ``PruningDataModule(train_labels=...)``); labels may be any integers.

    Logged per pruned epoch: ``budget_class_<label>`` (``k_j`` of every class, named by the original
    label value), ``saturated_classes`` (how many classes are kept entirely) and ``budget_total``.
    For notebooks: :attr:`class_budgets`, :attr:`saturated`, :attr:`budget_epochs`, :attr:`class_values`
    and :attr:`scores`.

    Args:
        prune_ratio: fraction of the training set dropped in every pruned epoch, in ``[0, 1)``.
        beta: softmax temperature of the within-class sampling (> 0). Small values approach "the
            highest losses of each class", large values approach uniform sampling. The default 1.0 won
            the benchmark sweep (docs/methods/rcap.md).
        clip: losses are clipped to ``[0, clip]`` before use (> 0); ``None`` takes ``ln C`` (the loss
            of a uniform prediction over C classes).
        class_signal: what drives the class split: ``"subset_mass"`` (the released code: softmax mass
            of the class's samples trained last epoch, close to square-root-frequency) or ``"loss"`` (the
            paper's wording: the class's summed loss). ``"subset_mass"`` won the benchmark sweep on
            worst-class accuracy; ``"loss"`` starves rare classes on long-tailed data.
        seed: seed of the draws (default: rank 0's ``torch.initial_seed()``).
        warmup_epochs: first epochs trained on the full data.
        annealing_fraction: final share of epochs trained on the full data.
    """

    needs_labels = True
    key_arguments = ("prune_ratio", "beta", "clip", "class_signal")
    state_attributes = (
        "grouped_scores",
        "previous_trained",
        "has_harvest",
        "class_budgets",
        "saturated",
        "budget_epochs",
    )

    def __init__(
        self,
        prune_ratio: float = 0.5,
        *,
        beta: float = 1.0,
        clip: float | None = None,
        class_signal: ClassSignal = "subset_mass",
        seed: int | None = None,
        warmup_epochs: int = 0,
        annealing_fraction: float = 0.0,
    ) -> None:
        super().__init__(seed=seed, warmup_epochs=warmup_epochs, annealing_fraction=annealing_fraction)
        self.prune_ratio = check_prune_ratio(prune_ratio)
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
            raise ValueError(
                f"`beta` must be a finite number > 0 (the softmax temperature of the within-class sampling), "
                f"got {beta!r}. Try beta=1.0; smaller values favour high-loss samples more strongly."
            )
        if clip is not None and not (isinstance(clip, (int, float)) and math.isfinite(clip) and clip > 0):
            raise ValueError(
                f"`clip` must be a finite number > 0 (losses are clipped to [0, clip]) or None for ln(C), got {clip!r}."
            )
        if class_signal not in _CLASS_SIGNALS:
            raise ValueError(
                f"`class_signal` must be one of {_CLASS_SIGNALS}, got {class_signal!r}: 'subset_mass' (the released "
                "code) or 'loss' (the class's summed loss)."
            )
        self.beta = float(beta)
        self.clip = None if clip is None else float(clip)
        self.class_signal: ClassSignal = class_signal
        #: Score of every sample, in the class-grouped order of ``class_layout`` (see :attr:`scores`).
        self.grouped_scores = torch.empty(0)
        #: Samples trained in the latest harvested epoch, class-grouped order (S for "subset_mass").
        self.previous_trained = torch.empty(0, dtype=torch.bool)
        self.has_harvest = False
        #: ``class_budgets[e][j]``: k_j of contiguous class j in the e-th pruned epoch (see budget_epochs).
        self.class_budgets: list[list[int]] = []
        #: Contiguous ids of the classes kept entirely, per pruned epoch.
        self.saturated: list[list[int]] = []
        #: The epoch of each entry of class_budgets / saturated.
        self.budget_epochs: list[int] = []
        self._position = torch.empty(0, dtype=torch.int32)
        self._budget_stat_names: list[str] = []

    @property
    def clip_value(self) -> float:
        """The clip actually used: ``clip`` or ``ln C``."""
        if self.clip is not None:
            return self.clip
        num_classes = self.class_layout.num_classes if self.class_layout is not None else 0
        return math.log(num_classes) if num_classes > 1 else 0.0

    @property
    def scores(self) -> Tensor:
        """The score table in dataset order (a copy)."""
        assert self.class_layout is not None
        table = torch.empty_like(self.grouped_scores)
        table[self.class_layout.order] = self.grouped_scores
        return table

    def reset(self, num_samples: int) -> None:
        layout = self.class_layout
        if layout is None:
            raise RuntimeError("RCAP needs the class layout (set by PruningCallback.prepare) before reset().")
        if self.clip is None and layout.num_classes < 2:
            rank_zero_warn(
                "RCAP: the training set has a single class, so the default clip ln(C) = 0 makes every score 0 "
                "and the sampling uniform. Pass `clip=` to weight samples by their loss."
            )
        # Where each dataset index sits in the grouped tables.
        dtype = index_dtype(num_samples)
        self._position = torch.empty(num_samples, dtype=dtype)
        self._position[layout.order] = torch.arange(num_samples, dtype=dtype)
        self.grouped_scores = torch.full((num_samples,), self.clip_value, dtype=torch.float32)
        self.previous_trained = torch.zeros(num_samples, dtype=torch.bool)
        self.has_harvest = False
        self.class_budgets = []
        self.saturated = []
        self.budget_epochs = []

    def update(self, harvest: Harvest) -> None:
        positions = self._position[harvest.indices]
        # Trained samples get their fresh loss; the others keep their stale score.
        self.grouped_scores[positions] = harvest.losses.to(torch.float32).clamp(0.0, self.clip_value)
        self.previous_trained = torch.zeros(self.num_samples, dtype=torch.bool)
        self.previous_trained[positions] = True
        self.has_harvest = True

    def expected_subset_size(self, epoch: int) -> int:
        return budget(self.prune_ratio, self.num_samples)

    def class_signal_values(self) -> Tensor:
        """The class signal ``L_j`` of the next decision (float64, ``(C,)``)."""
        layout = self.class_layout
        assert layout is not None
        if not self.has_harvest:
            # Nothing trained yet: equal signals, i.e. the square-root-frequency split of epoch 0.
            return (layout.counts > 0).to(torch.float64)
        if self.class_signal == "loss":
            return class_loss_signal(self.grouped_scores, layout.counts)
        return class_subset_mass(self.grouped_scores, self.beta, layout.counts, self.previous_trained)

    def select(self, epoch: int, generator: torch.Generator) -> Selection:
        layout = self.class_layout
        assert layout is not None
        total = budget(self.prune_ratio, self.num_samples)
        alpha, _ = class_fractions(self.class_signal_values(), layout.counts, total)
        per_class = class_budgets(alpha, layout.counts, total)
        indices = sample_within_classes(self.grouped_scores, self.beta, layout, per_class, generator)

        budgets = per_class.tolist()
        # Reported from the rounded counts: a class is saturated when all its samples are kept.
        saturated_ids = torch.nonzero(per_class == layout.counts).flatten().tolist()
        keep = [position for position, decided in enumerate(self.budget_epochs) if decided < epoch]
        self.class_budgets = [self.class_budgets[position] for position in keep] + [budgets]
        self.saturated = [self.saturated[position] for position in keep] + [saturated_ids]
        self.budget_epochs = [self.budget_epochs[position] for position in keep] + [epoch]

        if len(self._budget_stat_names) != len(self.class_values):  # formatted once, not every epoch
            self._budget_stat_names = [f"budget_class_{value}" for value in self.class_values]
        stats = dict(zip(self._budget_stat_names, map(float, budgets), strict=True))
        stats["saturated_classes"] = float(len(saturated_ids))
        stats["budget_total"] = float(sum(budgets))
        return Selection(indices, stats=stats)
