"""ε-greedy and UCB data pruning (Raju, Daruwalla, Lipasti 2021): every sample is an arm, its reward its loss.

Both keep a running mean of each sample's training loss (UCB also its visit count for the UCB1 bonus, or a
running variance for the variance bonuses), updated from the training forward passes only, and train on
exactly K = round((1-p)·N) samples per pruned epoch. Epoch 0 trains on the full data to initialise the
statistics. See ``docs/methods/bandits.md``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from lightning_pruning import host_ops
from lightning_pruning.methods.base import Harvest, PruningCallback, Selection
from lightning_pruning.methods.ranking import apply_ema, random_choice, top_k_mask
from lightning_pruning.methods.registry import register
from lightning_pruning.selection import budget, check_prune_ratio, mask_positions

UCBBonus = Literal["count", "std", "var"]
_BONUSES = ("count", "std", "var")
#: Visit counts are int16 (2 bytes a sample) and saturate here; ln(t)/n is flat long before.
MAX_VISITS = torch.iinfo(torch.int16).max


def epsilon_greedy_mask(mean: Tensor, budget_size: int, random_picks: int, generator: torch.Generator) -> Tensor:
    """The ``budget_size - random_picks`` highest running means, plus ``random_picks`` uniform others.

    Args:
        mean: running mean loss of every sample (``+inf`` when never trained, no NaN).
        budget_size: K, the number of samples selected.
        random_picks: how many of the K are drawn uniformly from the samples not taken greedily.
        generator: source of all randomness (greedy ties and the uniform fill).

    Returns:
        Boolean mask over the N samples with exactly K entries set.
    """
    if not 0 <= random_picks <= budget_size <= mean.numel():
        raise ValueError(f"need 0 <= random_picks <= K <= N, got {random_picks}, {budget_size}, {mean.numel()}")
    taken = top_k_mask(mean, budget_size - random_picks, generator)
    if random_picks:
        # Uniform over the rest: a uniform draw of positions among the samples not taken greedily (O(picks) work
        # when the picks are few, as with a small epsilon: no random key per sample).
        rest = mask_positions(taken, invert=True)
        picks = torch.index_select(rest, 0, random_choice(rest.numel(), random_picks, generator))
        taken.numpy()[picks.numpy()] = True
    return taken


def epsilon_greedy_select(mean: Tensor, budget_size: int, random_picks: int, generator: torch.Generator) -> Tensor:
    """The K dataset indices (int64, ascending) of :func:`epsilon_greedy_mask`."""
    return mask_positions(epsilon_greedy_mask(mean, budget_size, random_picks, generator), dtype=torch.int64)


def ucb_index(
    mean: Tensor,
    c: float,
    bonus: UCBBonus = "count",
    *,
    variance: Tensor | None = None,
    visits: Tensor | None = None,
    round_number: int = 1,
) -> Tensor:
    """The UCB index of every sample under one of three bonus forms.

    * ``"count"`` (UCB1, the textbook form): ``μ + c·sqrt(ln t / n)``, ``t = round_number``,
      ``n = visits``. A sample that is not picked gains bonus as ``t`` grows, so none is locked out.
    * ``"std"``: ``μ + c·sqrt(v)``, a variance bonus without counts (not UCB1).
    * ``"var"``: ``μ + c·v``, the form of the third-party re-implementation (not UCB1 either).

    Never-trained samples (``μ = +inf``, ``n = 0``, ``v = 0``) get ``+inf``.

    Args:
        mean: running mean loss μ of every sample (``+inf`` when never trained).
        c: weight of the bonus, >= 0.
        bonus: ``"count"``, ``"std"`` or ``"var"``.
        variance: running variance v (needed by ``"std"`` / ``"var"``).
        visits: times n each sample was trained (needed by ``"count"``; any integer dtype).
        round_number: t >= 1, the number of pruned epochs so far plus one (``"count"`` only).
    """
    if bonus == "count":
        if visits is None:
            raise ValueError("the count bonus needs `visits`")
        if round_number < 1:
            raise ValueError(f"`round_number` must be >= 1, got {round_number}")
        # One N-sized buffer, updated in place (a decision's peak memory is its temporaries); the same float32
        # operations in the same order as mean + c * sqrt(ln t / max(n, 1)) (torch computes a scalar over a
        # tensor as its reciprocal times the scalar). n = 0 only for never-trained
        # samples, whose μ is already +inf; the clamp avoids 0/0.
        index = host_ops.sqrt_(visits.to(mean.dtype).clamp_min_(1.0).reciprocal_().mul_(math.log(round_number)))
    else:
        if variance is None:
            raise ValueError(f"the {bonus!r} bonus needs `variance`")
        # A correctly rounded sqrt: the same index on every CPU build (host_ops.sqrt).
        index = host_ops.sqrt(variance) if bonus == "std" else variance.clone()
    return torch.add(mean, index.mul_(c), out=index)


def _check_ema(ema: float) -> float:
    value = float(ema)
    if not 0.0 < value <= 1.0:
        raise ValueError(
            f"`ema` must be in (0, 1] (the weight of the newest loss in the running mean), got {ema!r}. "
            "Use 1.0 to keep only the latest loss, e.g. 0.5 to average over the last few epochs."
        )
    return value


class _RunningLossBandit(PruningCallback):
    """Shared plumbing: running loss statistics, exact budget, full data at epoch 0."""

    track_variance = False

    def __init__(
        self,
        prune_ratio: float,
        ema: float,
        *,
        seed: int | None,
        warmup_epochs: int,
        annealing_fraction: float,
    ) -> None:
        super().__init__(seed=seed, warmup_epochs=warmup_epochs, annealing_fraction=annealing_fraction)
        self.prune_ratio = check_prune_ratio(prune_ratio)
        self.ema = _check_ema(ema)
        self.loss_mean = torch.empty(0)
        self.loss_variance = torch.empty(0)

    @property
    def budget_size(self) -> int:
        """K, the number of samples of a pruned epoch."""
        return budget(self.prune_ratio, self.num_samples)

    def reset(self, num_samples: int) -> None:
        # +inf: never-trained arms are tried first (and tie among themselves).
        self.loss_mean = torch.full((num_samples,), math.inf, dtype=torch.float32)
        self.loss_variance = torch.zeros(num_samples if self.track_variance else 0, dtype=torch.float32)

    def update(self, harvest: Harvest) -> None:
        variance = self.loss_variance if self.track_variance else None
        apply_ema(self.loss_mean, variance, harvest.indices, harvest.losses, self.ema)

    def expected_subset_size(self, epoch: int) -> int:
        return self.num_samples if epoch == 0 else self.budget_size

    def _selection(self, chosen: Tensor, **stats: float) -> Selection:
        """The Selection of a boolean mask, with the share of never-trained samples in it."""
        never_seen = host_ops.count_true(host_ops.equal(self.loss_mean, math.inf).logical_and_(chosen))
        size = host_ops.count_true(chosen)
        return Selection(mask_positions(chosen), stats={"never_seen_share": never_seen / max(size, 1), **stats})


@register("epsilon_greedy")
class EpsilonGreedy(_RunningLossBandit):
    """ε-greedy: the highest running-mean losses, with a fixed share ε of the budget drawn uniformly.

    Per pruned epoch, ``n_random = round(ε·K)`` samples are drawn uniformly from those not taken by the
    greedy part, which takes the ``K - n_random`` highest running means. Epoch 0 trains on the full data.

    Args:
        prune_ratio: fraction of the training set dropped per epoch, in ``[0, 1)``.
        epsilon: share of the budget drawn uniformly, in ``[0, 1]`` (constant over training).
        ema: weight a of the newest loss in the running mean ``μ ← (1-a)·μ + a·l``, in ``(0, 1]``.
        seed: seed of the draws (default: rank 0's ``torch.initial_seed()``).
        warmup_epochs: first epochs trained on the full data (epoch 0 always is).
        annealing_fraction: final share of epochs trained on the full data.
    """

    state_attributes = ("loss_mean",)
    key_arguments = ("prune_ratio", "epsilon", "ema")

    def __init__(
        self,
        prune_ratio: float = 0.5,
        epsilon: float = 0.1,
        ema: float = 0.5,
        *,
        seed: int | None = None,
        warmup_epochs: int = 0,
        annealing_fraction: float = 0.0,
    ) -> None:
        super().__init__(
            prune_ratio, ema, seed=seed, warmup_epochs=warmup_epochs, annealing_fraction=annealing_fraction
        )
        epsilon = float(epsilon)
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"`epsilon` must be in [0, 1] (the share of the budget drawn uniformly), got {epsilon!r}.")
        self.epsilon = epsilon

    def select(self, epoch: int, generator: torch.Generator) -> Selection:
        if epoch == 0:
            return self._selection(torch.ones(self.num_samples, dtype=torch.bool), random_picks=0.0)
        k = self.budget_size
        random_picks = round(self.epsilon * k)
        chosen = epsilon_greedy_mask(self.loss_mean, k, random_picks, generator)
        return self._selection(chosen, random_picks=float(random_picks))


@register("ucb")
class UCB(_RunningLossBandit):
    """UCB: the K samples with the highest upper confidence bound of their running loss.

    The running mean ``μ ← (1-a)·μ + a·l`` is updated each time a sample is trained; never-trained
    samples have ``μ = +inf`` and are tried first. Epoch 0 trains on the full data. The index is
    ``μ + bonus``, with the bonus chosen by ``bonus``:

    * ``"count"`` (default, UCB1): ``c·sqrt(ln t / n_i)``, ``n_i`` the times sample i was trained and
      ``t`` the number of pruned epochs so far plus one. A sample left out gains bonus every epoch, so
      none is locked out by a stale low loss.
    * ``"std"``: ``c·sqrt(v_i)`` and ``"var"``: ``c·v_i``, with the running variance
      ``v ← (1-a)·v + a·(l - μ_old)²``. No counts: a sample that is not picked keeps its index forever
      (see ``docs/methods/bandits.md`` for the coverage this costs). ``"var"`` is the form of the
      third-party re-implementation; neither is the textbook UCB1.

    Per-sample state: float32 mean plus int16 counts (6 bytes) for ``"count"``, float32 mean and
    variance (8 bytes) otherwise.

    Args:
        prune_ratio: fraction of the training set dropped per epoch, in ``[0, 1)``.
        c: weight of the exploration bonus, a finite number >= 0 (0 is greedy by running mean).
        ema: weight a of the newest loss in the running statistics, in ``(0, 1]``.
        bonus: ``"count"``, ``"std"`` or ``"var"`` (above).
        seed: seed of the tie-breaking (default: rank 0's ``torch.initial_seed()``).
        warmup_epochs: first epochs trained on the full data (epoch 0 always is).
        annealing_fraction: final share of epochs trained on the full data.
    """

    state_attributes = ("loss_mean", "loss_variance", "visits")
    key_arguments = ("prune_ratio", "c", "ema", "bonus")

    def __init__(
        self,
        prune_ratio: float = 0.5,
        c: float = 1.0,
        ema: float = 0.5,
        bonus: UCBBonus = "count",
        *,
        seed: int | None = None,
        warmup_epochs: int = 0,
        annealing_fraction: float = 0.0,
    ) -> None:
        super().__init__(
            prune_ratio, ema, seed=seed, warmup_epochs=warmup_epochs, annealing_fraction=annealing_fraction
        )
        c = float(c)
        if not (math.isfinite(c) and c >= 0.0):
            raise ValueError(f"`c` must be a finite number >= 0 (the weight of the exploration bonus), got {c!r}.")
        if bonus not in _BONUSES:
            raise ValueError(
                f"`bonus` must be 'count' (UCB1: c·sqrt(ln t / n)), 'std' (c·sqrt(v)) or 'var' (c·v), got {bonus!r}."
            )
        self.c = c
        self.bonus: UCBBonus = bonus
        self.track_variance = bonus != "count"
        self.visits = torch.empty(0, dtype=torch.int16)

    def reset(self, num_samples: int) -> None:
        super().reset(num_samples)
        self.visits = torch.zeros(num_samples if self.bonus == "count" else 0, dtype=torch.int16)

    def update(self, harvest: Harvest) -> None:
        super().update(harvest)
        if self.bonus == "count":
            # One harvest holds each trained sample once; saturate instead of wrapping around.
            visits = self.visits[harvest.indices]
            self.visits[harvest.indices] = torch.where(visits < MAX_VISITS, visits + 1, visits)

    def round_number(self, epoch: int) -> int:
        """t of a pruned ``epoch``: the number of pruned epochs before it plus one."""
        first_pruned = max(1, self.warmup_epochs)
        return max(epoch - first_pruned, 0) + 1

    def select(self, epoch: int, generator: torch.Generator) -> Selection:
        if epoch == 0:
            return self._selection(torch.ones(self.num_samples, dtype=torch.bool))
        index = ucb_index(
            self.loss_mean,
            self.c,
            self.bonus,
            variance=self.loss_variance,
            visits=self.visits,
            round_number=self.round_number(epoch),
        )
        chosen = top_k_mask(index, self.budget_size, generator)
        del index  # freed before the subset's indices are made
        stats: dict[str, float] = {}
        if self.bonus == "count":
            never_again = host_ops.count_true(host_ops.equal(self.visits, 1))
            stats["trained_once_fraction"] = never_again / max(self.num_samples, 1)
        return self._selection(chosen, **stats)


@register("ucb_variance")
class UCBVariance(UCB):
    """UCB with the variance bonus ``c·sqrt(v)`` by default (``bonus="std"``); see :class:`UCB`.

    Registered under its own name so the variance form runs through every conformance check too.
    """

    def __init__(
        self,
        prune_ratio: float = 0.5,
        c: float = 1.0,
        ema: float = 0.5,
        bonus: UCBBonus = "std",
        *,
        seed: int | None = None,
        warmup_epochs: int = 0,
        annealing_fraction: float = 0.0,
    ) -> None:
        super().__init__(
            prune_ratio,
            c,
            ema,
            bonus,
            seed=seed,
            warmup_epochs=warmup_epochs,
            annealing_fraction=annealing_fraction,
        )
