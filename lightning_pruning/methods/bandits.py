"""ε-greedy and UCB data pruning (Raju, Daruwalla, Lipasti 2021): every sample is an arm, its reward its loss.

Both keep a running mean (UCB also a running variance) of each sample's training loss, updated from the
training forward passes only, and train on exactly K = round((1-p)·N) samples per pruned epoch. Epoch 0
trains on the full data to initialise the statistics. See ``docs/methods/bandits.md``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from lightning_pruning.methods.base import Harvest, PruningCallback, Selection
from lightning_pruning.methods.ranking import apply_ema, top_k_mask
from lightning_pruning.methods.registry import register
from lightning_pruning.selection import budget, check_prune_ratio

VarianceBonus = Literal["std", "var"]


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
        # Uniform over the rest: iid keys with the greedy picks pushed below every other key.
        keys = torch.rand(mean.numel(), generator=generator).masked_fill_(taken, -math.inf)
        taken |= top_k_mask(keys, random_picks, generator)
    return taken


def epsilon_greedy_select(mean: Tensor, budget_size: int, random_picks: int, generator: torch.Generator) -> Tensor:
    """The K dataset indices (int64, ascending) of :func:`epsilon_greedy_mask`."""
    return epsilon_greedy_mask(mean, budget_size, random_picks, generator).nonzero().squeeze(1)


def ucb_index(mean: Tensor, variance: Tensor, c: float, variance_bonus: VarianceBonus = "std") -> Tensor:
    """UCB index ``μ + c·sqrt(v)`` (``"std"``, textbook) or ``μ + c·v`` (``"var"``, the third-party code).

    Never-trained samples (``μ = +inf``, ``v = 0``) get ``+inf``.
    """
    bonus = variance.sqrt() if variance_bonus == "std" else variance
    return mean + c * bonus


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
        never_seen = int(torch.count_nonzero(chosen & (self.loss_mean == math.inf)))
        size = int(torch.count_nonzero(chosen))
        return Selection(chosen.nonzero().squeeze(1), stats={"never_seen_share": never_seen / max(size, 1), **stats})


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
    """UCB: the K highest upper confidence bounds ``μ + c·sqrt(v)`` of the running loss statistics.

    Running mean ``μ ← (1-a)·μ + a·l`` and variance ``v ← (1-a)·v + a·(l - μ_old)²`` each time a sample
    is trained; never-trained samples have ``μ = +inf`` and are tried first. Epoch 0 trains on the full data.

    Args:
        prune_ratio: fraction of the training set dropped per epoch, in ``[0, 1)``.
        c: weight of the exploration bonus, a finite number >= 0 (0 is greedy by running mean).
        ema: weight a of the newest loss in the running statistics, in ``(0, 1]``.
        variance_bonus: ``"std"`` adds ``c·sqrt(v)`` (the textbook form), ``"var"`` adds ``c·v`` (the form
            of the third-party re-implementation).
        seed: seed of the tie-breaking (default: rank 0's ``torch.initial_seed()``).
        warmup_epochs: first epochs trained on the full data (epoch 0 always is).
        annealing_fraction: final share of epochs trained on the full data.
    """

    track_variance = True
    state_attributes = ("loss_mean", "loss_variance")
    key_arguments = ("prune_ratio", "c", "ema", "variance_bonus")

    def __init__(
        self,
        prune_ratio: float = 0.5,
        c: float = 1.0,
        ema: float = 0.5,
        variance_bonus: VarianceBonus = "std",
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
        if variance_bonus not in ("std", "var"):
            raise ValueError(
                f"`variance_bonus` must be 'std' (add c·sqrt(v)) or 'var' (add c·v), got {variance_bonus!r}."
            )
        self.c = c
        self.variance_bonus: VarianceBonus = variance_bonus

    def select(self, epoch: int, generator: torch.Generator) -> Selection:
        if epoch == 0:
            return self._selection(torch.ones(self.num_samples, dtype=torch.bool))
        index = ucb_index(self.loss_mean, self.loss_variance, self.c, self.variance_bonus)
        return self._selection(top_k_mask(index, self.budget_size, generator))
