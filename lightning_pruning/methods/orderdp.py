"""OrderDP (Jin et al., ICLR 2026): a uniform candidate set, then its top-q samples by stale loss.

Every pruned epoch draws s candidates uniformly and trains on the q = round((1-p)·N) candidates with
the largest last-seen training loss. The plain batch mean over that subset is an unbiased gradient of
a surrogate loss, an L-statistic of the per-sample losses with the weights of
:func:`orderdp_surrogate_weights`. See ``docs/methods/orderdp.md``.
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_pruning import host_ops
from lightning_pruning.methods.base import Harvest, PruningCallback, Selection
from lightning_pruning.methods.ranking import top_k_mask, uniform_subset_mask
from lightning_pruning.methods.registry import register
from lightning_pruning.selection import budget, check_prune_ratio, mask_positions


def candidate_count(num_samples: int, budget_size: int, top_ratio: float) -> int:
    """The candidate-set size s = min(N, round(q / rho_q)) (never below q)."""
    return max(budget_size, min(num_samples, round(budget_size / top_ratio)))


def orderdp_positions(scores: Tensor, budget_size: int, candidates: int, generator: torch.Generator) -> Tensor:
    """One OrderDP decision: s uniform candidates, the q largest scores among them, as ascending dataset ids
    (int32 while N < 2**31).

    Ties (e.g. the ``+inf`` of never-trained samples) are broken uniformly at random.

    Args:
        scores: last-seen loss of every sample (float, ``+inf`` when never trained, no NaN).
        budget_size: q, the number of samples trained this epoch.
        candidates: s, the size of the uniform candidate set, ``q <= s <= N``.
        generator: source of all randomness.
    """
    num_samples = scores.numel()
    if not 0 <= budget_size <= candidates <= num_samples:
        raise ValueError(f"need 0 <= q <= s <= N, got q={budget_size}, s={candidates}, N={num_samples}")
    if candidates == num_samples:
        return mask_positions(top_k_mask(scores, budget_size, generator))
    # The top q of the candidates' own scores: the same threshold and, the candidates taken in index order, the
    # same tie draw as ranking all N with the non-candidates at -inf, without an N-sized masked copy.
    pool = mask_positions(uniform_subset_mask(num_samples, candidates, generator))
    top = top_k_mask(torch.index_select(scores, 0, pool), budget_size, generator)
    return torch.index_select(pool, 0, mask_positions(top))


def orderdp_select_mask(scores: Tensor, budget_size: int, candidates: int, generator: torch.Generator) -> Tensor:
    """:func:`orderdp_positions` as a boolean mask over the N samples with exactly q entries set."""
    chosen = torch.zeros(scores.numel(), dtype=torch.bool)
    chosen[orderdp_positions(scores, budget_size, candidates, generator).long()] = True
    return chosen


def orderdp_select(scores: Tensor, budget_size: int, candidates: int, generator: torch.Generator) -> Tensor:
    """The q dataset indices (int64, ascending) of :func:`orderdp_positions`."""
    return orderdp_positions(scores, budget_size, candidates, generator).to(torch.int64)


def orderdp_surrogate_weights(num_samples: int, candidates: int, budget_size: int) -> Tensor:
    """Selection probability w_j of the rank-j sample (j = 1 is the largest score) under OrderDP.

    ``w_j = Σ_{l=max(1, s-N+j)}^{min(q, j)} C(j-1, l-1)·C(N-j, s-l) / C(N, s)``. Equivalently
    ``w_j = (s/N)·P(X_{j-1} <= q-1)`` with ``X_k`` hypergeometric (population N-1 of which k successes,
    s-1 draws): the rank-j sample must be a candidate, and fewer than q of the other candidates may rank
    above it. Raising k by one lowers that CDF by ``h_k = P(X_k = q-1)·(s-q)/(N-1-k)``, and the h_k sum
    to 1, so ``P(X_{j-1} <= q-1) = Σ_{k >= j-1} h_k``. The point masses come from a cumulative sum of
    log-binomial ratios in float64 (no factorials, stable at any N), normalised to sum to 1, and the
    tail sums are taken from the small end so that small weights keep their relative precision.

    Properties: ``Σ w_j = q``; ``w_j = s/N`` for ``j <= q``; non-increasing; ``w_j = 0`` for
    ``j > N - s + q``. ``s = q`` gives the uniform q/N (Random*), ``s = N`` greedy top-q (w = 1 then 0).

    Args:
        num_samples: N.
        candidates: s, ``q <= s <= N``.
        budget_size: q, ``1 <= q``.

    Returns:
        float64 tensor of shape ``(N,)``; entry ``j-1`` is w_j.
    """
    n, s, q = num_samples, candidates, budget_size
    if not 1 <= q <= s <= n:
        raise ValueError(f"need 1 <= q <= s <= N, got q={q}, s={s}, N={n}")
    if s == q:
        return torch.full((n,), q / n, dtype=torch.float64)
    population, x, spare = n - 1, q - 1, s - q  # X_k = x needs k >= x and population - k >= spare
    k = torch.arange(x, population - spare + 1, dtype=torch.float64)
    # log P(X_{k+1} = x) - log P(X_k = x) = log[(k+1)/(k+1-x)] + log[(population-k-spare)/(population-k)].
    head = k[:-1]
    log_ratio = (
        torch.log(head + 1)
        - torch.log(head + 1 - x)
        + torch.log(population - head - spare)
        - torch.log(population - head)
    )
    log_mass = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(log_ratio, 0)])
    step = torch.exp(log_mass - log_mass.max()) * spare / (population - k)
    step = step / step.sum()
    tail = torch.flip(torch.cumsum(torch.flip(step, [0]), 0), [0]).clamp(max=1.0)  # P(X_k <= x) for k >= x
    weights = torch.zeros(n, dtype=torch.float64)
    weights[:q] = s / n
    weights[q : n - s + q] = (s / n) * tail[1:]
    return weights


@register("orderdp")
class OrderDP(PruningCallback):
    """OrderDP: train on the top-q of s uniform candidates by last-seen loss, exactly q samples per epoch.

    Args:
        prune_ratio: fraction of the training set dropped per epoch, in ``[0, 1)``; the epoch trains on
            exactly q = round((1-p)·N) samples.
        top_ratio: rho_q in ``(0, 1]``, the share of the candidates kept (exploitation knob). The candidate
            set has s = min(N, round(q/rho_q)) samples. rho_q = 1 is Random*; rho_q <= 1-p (s = N) is greedy
            top-q by stale loss. The default 0.8 is the reference ImageNet ResNet-50 recipe's value.
        seed: seed of the draws (default: rank 0's ``torch.initial_seed()``).
        warmup_epochs: first epochs trained on the full data.
        annealing_fraction: final share of epochs trained on the full data (the reference never anneals).
    """

    state_attributes = ("scores",)
    key_arguments = ("prune_ratio", "top_ratio")

    def __init__(
        self,
        prune_ratio: float = 0.3,
        top_ratio: float = 0.8,
        *,
        seed: int | None = None,
        warmup_epochs: int = 0,
        annealing_fraction: float = 0.0,
    ) -> None:
        super().__init__(seed=seed, warmup_epochs=warmup_epochs, annealing_fraction=annealing_fraction)
        self.prune_ratio = check_prune_ratio(prune_ratio)
        top_ratio = float(top_ratio)
        if not 0.0 < top_ratio <= 1.0:
            raise ValueError(
                f"`top_ratio` must be in (0, 1] (the share of the uniform candidates kept), got {top_ratio!r}. "
                "Use 1.0 for Random*, e.g. 0.8 to keep the top 80% of the candidates by loss."
            )
        self.top_ratio = top_ratio
        if top_ratio < 1.0 - self.prune_ratio:
            rank_zero_warn(
                f"OrderDP: top_ratio={top_ratio} is below the keep fraction 1 - prune_ratio = "
                f"{1 - self.prune_ratio:g}, so every sample is a candidate and the selection is greedy top-q by "
                "stale loss (no random candidate set). Use top_ratio > 1 - prune_ratio to keep the exploration."
            )
        self.scores = torch.empty(0)

    @property
    def budget_size(self) -> int:
        """q, the number of samples of a pruned epoch."""
        return budget(self.prune_ratio, self.num_samples)

    @property
    def candidates(self) -> int:
        """s, the size of the uniform candidate set."""
        return candidate_count(self.num_samples, self.budget_size, self.top_ratio)

    def surrogate_weights(self) -> Tensor:
        """The rank weights w_j of the surrogate objective this run optimises (see the module docs)."""
        return orderdp_surrogate_weights(self.num_samples, self.candidates, self.budget_size)

    def reset(self, num_samples: int) -> None:
        # +inf: an unseen candidate ranks above every seen one (candidates are subsampled, so full coverage
        # takes several epochs, not one).
        self.scores = torch.full((num_samples,), math.inf, dtype=torch.float32)

    def update(self, harvest: Harvest) -> None:
        self.scores[harvest.indices] = harvest.losses.to(torch.float32)

    def expected_subset_size(self, epoch: int) -> int:
        return self.budget_size

    def select(self, epoch: int, generator: torch.Generator) -> Selection:
        q, s = self.budget_size, self.candidates
        chosen = orderdp_positions(self.scores, q, s, generator)
        never_seen = host_ops.count_true(host_ops.equal(torch.index_select(self.scores, 0, chosen), math.inf))
        return Selection(chosen, stats={"candidates": float(s), "never_seen_share": never_seen / q})
