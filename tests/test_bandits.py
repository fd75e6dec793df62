"""ε-greedy and UCB, and the running loss statistics they share."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from helpers import ToyModel, toy_datamodule, trainer_kwargs
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_pruning.methods.bandits import (
    MAX_VISITS,
    UCB,
    EpsilonGreedy,
    UCBVariance,
    epsilon_greedy_select,
    ucb_index,
)
from lightning_pruning.methods.base import Harvest, PruningCallback
from lightning_pruning.methods.ranking import apply_ema, ema_step
from lightning_pruning.methods.registry import METHODS
from lightning_pruning.selection import make_generator

INF = math.inf


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def harvest(epoch: int, indices: list[int], losses: list[float]) -> Harvest:
    index = torch.tensor(indices, dtype=torch.int64)
    zeros = torch.zeros_like(index)
    return Harvest(epoch=epoch, indices=index, losses=torch.tensor(losses), batch_idx=zeros, steps=zeros)


def make(cls: type[EpsilonGreedy] | type[UCB], n: int, **kwargs: object) -> EpsilonGreedy | UCB:
    method = cls(seed=0, **kwargs)  # type: ignore[arg-type]
    method.num_samples = n
    method.reset(n)
    return method


# ---------------------------------------------------------------------------------------------------
# Running statistics.
def test_ema_step_hand_computed() -> None:
    mean = torch.tensor([INF, 1.0, 2.0], dtype=torch.float64)
    variance = torch.tensor([0.0, 0.5, 0.0], dtype=torch.float64)
    losses = torch.tensor([2.0, 3.0, 2.0], dtype=torch.float64)
    new_mean, new_variance = ema_step(mean, variance, losses, 0.5)
    assert new_mean.tolist() == [2.0, 2.0, 2.0]  # first observation sets the mean exactly
    assert new_variance.tolist() == [0.0, 0.5 * 0.5 + 0.5 * 4.0, 0.0]
    assert torch.isfinite(new_variance).all()
    latest_mean, latest_variance = ema_step(mean, variance, losses, 1.0)
    assert latest_mean.tolist() == [2.0, 3.0, 2.0] and latest_variance.tolist() == [0.0, 4.0, 0.0]


def test_running_statistics_after_several_updates() -> None:
    alpha = 0.3
    observations = {0: [1.0, 4.0, 2.0], 1: [5.0], 2: [0.5, 0.5, 3.0, 1.0]}
    epochs = max(len(values) for values in observations.values())
    mean = torch.full((4,), INF, dtype=torch.float64)
    variance = torch.zeros(4, dtype=torch.float64)
    for epoch in range(epochs):
        ids = [i for i, values in observations.items() if epoch < len(values)]
        losses = torch.tensor([observations[i][epoch] for i in ids], dtype=torch.float64)
        apply_ema(mean, variance, torch.tensor(ids), losses, alpha)
    for i, values in observations.items():
        mu, v = values[0], 0.0
        for loss in values[1:]:
            mu, v = (1 - alpha) * mu + alpha * loss, (1 - alpha) * v + alpha * (loss - mu) ** 2
        assert mean[i].item() == pytest.approx(mu, abs=1e-12)
        assert variance[i].item() == pytest.approx(v, abs=1e-12)
    assert mean[3].item() == INF and variance[3].item() == 0.0  # never observed


def test_callbacks_fold_harvests_into_their_tables() -> None:
    ucb = make(UCB, 3, ema=0.5, bonus="std")
    ucb.update(harvest(0, [0, 1, 2], [1.0, 2.0, 3.0]))
    ucb.update(harvest(1, [0, 2], [3.0, 3.0]))
    assert ucb.loss_mean.tolist() == [2.0, 2.0, 3.0]
    assert ucb.loss_variance.tolist() == [2.0, 0.0, 0.0]
    counting = make(UCB, 3, ema=0.5)
    counting.update(harvest(0, [0, 1, 2], [1.0, 2.0, 3.0]))
    counting.update(harvest(1, [0, 2], [3.0, 3.0]))
    assert counting.loss_mean.tolist() == [2.0, 2.0, 3.0] and counting.visits.tolist() == [2, 1, 2]
    greedy = make(EpsilonGreedy, 3, ema=0.5)
    greedy.update(harvest(0, [1], [4.0]))
    greedy.update(harvest(1, [1], [2.0]))
    assert greedy.loss_mean.tolist() == [INF, 3.0, INF]
    assert greedy.loss_variance.numel() == 0  # eps-greedy keeps no variance


# ---------------------------------------------------------------------------------------------------
# epsilon-greedy.
def test_epsilon_greedy_takes_exactly_round_eps_k_random_samples() -> None:
    n, k, random_picks, trials = 20, 10, 3, 1500
    mean = torch.randperm(n, generator=gen(7)).float()  # distinct means, rank order != index order
    order = torch.argsort(mean, descending=True)
    greedy, rest = order[:7], order[7:]
    counts = torch.zeros(n)
    for seed in range(trials):
        picked = epsilon_greedy_select(mean, k, random_picks, gen(seed))
        assert picked.numel() == k
        assert torch.isin(greedy, picked).all()
        assert int(torch.isin(rest, picked).sum()) == random_picks
        counts[picked] += 1
    # The fill is uniform over the 13 others, not the next-best ones.
    frequency = counts[rest] / trials
    expected = random_picks / rest.numel()
    assert (frequency - expected).abs().max() < 5 * math.sqrt(expected * (1 - expected) / trials)


def test_epsilon_greedy_extremes() -> None:
    mean = torch.tensor([0.1, 5.0, INF, 2.0, 0.3, 4.0])
    assert epsilon_greedy_select(mean, 3, 0, gen(0)).tolist() == [1, 2, 5]
    uniform = {tuple(epsilon_greedy_select(mean, 2, 2, gen(seed)).tolist()) for seed in range(200)}
    assert len(uniform) == 15  # every pair of the 6 samples
    with pytest.raises(ValueError):
        epsilon_greedy_select(mean, 3, 4, gen(0))


def test_epsilon_greedy_callback_decisions() -> None:
    method = make(EpsilonGreedy, 10, prune_ratio=0.5, epsilon=0.4)  # K = 5, round(2.0) = 2 random
    full = method.select(0, make_generator(0, 0))
    assert full.indices.tolist() == list(range(10)) and full.stats == {"never_seen_share": 1.0, "random_picks": 0.0}
    assert method.expected_subset_size(0) == 10 and method.expected_subset_size(1) == 5
    method.update(harvest(0, list(range(8)), [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6]))
    selection = method.select(1, make_generator(0, 1))
    assert selection.stats["random_picks"] == 2.0 and selection.weights is None
    picked = set(selection.indices.tolist())
    assert len(picked) == 5 and {8, 9, 1} <= picked  # the two never-trained, then the highest mean
    assert selection.stats["never_seen_share"] == 2 / 5


def test_epsilon_rounding() -> None:
    method = make(EpsilonGreedy, 96, prune_ratio=0.5, epsilon=0.1)  # K = 48, round(4.8) = 5
    method.update(harvest(0, list(range(96)), [float(i) for i in range(96)]))
    selection = method.select(1, make_generator(0, 1))
    assert selection.stats["random_picks"] == 5.0
    assert set(range(53, 96)) <= set(selection.indices.tolist())  # the 43 highest means
    assert len(set(selection.indices.tolist()) - set(range(53, 96))) == 5


# ---------------------------------------------------------------------------------------------------
# UCB.
def test_ucb_index_forms_order_differently() -> None:
    mean = torch.tensor([1.0, 0.7, INF])
    variance = torch.tensor([0.0, 0.25, 0.0])
    std_index = ucb_index(mean, 1.0, "std", variance=variance)
    var_index = ucb_index(mean, 1.0, "var", variance=variance)
    assert std_index.tolist() == [1.0, pytest.approx(1.2), INF]
    assert var_index.tolist() == [1.0, pytest.approx(0.95), INF]
    assert ucb_index(mean, 0.0, "std", variance=variance).tolist() == mean.tolist()
    visits = torch.tensor([4, 1, 0], dtype=torch.int16)
    count_index = ucb_index(mean, 2.0, "count", visits=visits, round_number=3)
    assert count_index.tolist() == [
        pytest.approx(1.0 + 2.0 * math.sqrt(math.log(3) / 4)),
        pytest.approx(0.7 + 2.0 * math.sqrt(math.log(3))),
        INF,
    ]
    # t = 1: ln 1 = 0, no bonus yet
    assert ucb_index(mean, 2.0, "count", visits=visits, round_number=1).tolist() == mean.tolist()
    with pytest.raises(ValueError, match="visits"):
        ucb_index(mean, 1.0, "count")
    with pytest.raises(ValueError, match="variance"):
        ucb_index(mean, 1.0, "std")


@pytest.mark.parametrize(("bonus", "expected"), [("std", [1, 2]), ("var", [0, 2])])
def test_ucb_variance_forms_keep_the_top_indices(bonus: str, expected: list[int]) -> None:
    method = make(UCB, 4, prune_ratio=0.5, c=1.0, ema=1.0, bonus=bonus)  # K = 2
    assert method.select(0, make_generator(0, 0)).indices.tolist() == [0, 1, 2, 3]
    method.update(harvest(0, [0, 1, 3], [1.0, 1.2, 0.1]))
    method.update(harvest(1, [0, 1, 3], [1.0, 0.7, 0.2]))  # ema = 1: mean = latest, v = (l - mu_old)^2
    assert method.loss_mean.tolist() == pytest.approx([1.0, 0.7, INF, 0.2])
    assert method.loss_variance.tolist() == pytest.approx([0.0, 0.25, 0.0, 0.01])
    assert method.visits.numel() == 0  # the variance forms keep no counts
    selection = method.select(2, make_generator(0, 2))
    assert selection.indices.tolist() == expected
    assert selection.stats == {"never_seen_share": 0.5}


def _drive(method: UCB, losses: list[float], epochs: int) -> list[list[int]]:
    """Runs ``method`` by hand on constant per-sample losses; returns each pruned epoch's picks."""
    method.prepare(len(losses))
    table = torch.tensor(losses)
    picks = []
    for epoch in range(epochs):
        chosen = method.decide(epoch).indices.sort().values
        if epoch:
            picks.append(chosen.tolist())
        zeros = torch.zeros_like(chosen)
        method.update(Harvest(epoch, chosen, table[chosen], zeros, zeros))
    return picks


def test_ucb_count_bonus_revisits_a_sample_left_out() -> None:
    # Samples 0, 1 lose 0.5 every time, samples 2, 3 lose 0; K = 2, c = 1, t = pruned epochs so far + 1.
    # t=1: ln 1 = 0, index = mean -> {0, 1}. t=2: 0.5 + sqrt(ln2/2) = 1.089 > sqrt(ln2) = 0.833 -> {0, 1}.
    # t=3: 0.5 + sqrt(ln3/3) = 1.105 > sqrt(ln3) = 1.048 -> {0, 1}.
    # t=4: 0.5 + sqrt(ln4/4) = 1.089 < sqrt(ln4) = 1.177 -> {2, 3}: the left-out samples come back.
    count = _drive(UCB(0.5, c=1.0, ema=1.0, bonus="count", seed=0), [0.5, 0.5, 0.0, 0.0], epochs=5)
    assert count == [[0, 1], [0, 1], [0, 1], [2, 3]]
    # Without counts a constant loss has no variance, so samples 2 and 3 are never picked again.
    for bonus in ("std", "var"):
        variance = _drive(UCB(0.5, c=1.0, ema=1.0, bonus=bonus, seed=0), [0.5, 0.5, 0.0, 0.0], epochs=12)  # type: ignore[arg-type]
        assert variance == [[0, 1]] * 11


def test_ucb_count_state_is_six_bytes_a_sample_and_saturates() -> None:
    method = make(UCB, 5)
    assert method.loss_mean.dtype == torch.float32 and method.visits.dtype == torch.int16
    assert method.loss_variance.numel() == 0
    state = method.state_dict()["method"]
    assert sum(t.element_size() * t.numel() for t in state.values()) == 6 * 5
    method.visits[0] = MAX_VISITS
    method.update(harvest(0, [0, 1], [1.0, 2.0]))
    assert method.visits.tolist() == [MAX_VISITS, 1, 0, 0, 0]  # no int16 wrap-around
    variance_state = make(UCBVariance, 5).state_dict()["method"]
    assert sum(t.element_size() * t.numel() for t in variance_state.values()) == 8 * 5


def coverage(method: PruningCallback, num_samples: int = 1000, epochs: int = 30, seed: int = 0) -> int:
    """Samples trained in epoch 0 and never again over ``epochs`` of a synthetic run.

    Loss of sample i on its j-th training: ``d_i · exp(-0.2 j) · e``, difficulty ``d_i`` log-normal
    (right-skewed, like training losses) and noise ``e`` log-normal with sigma 0.3.
    """
    generator = torch.Generator().manual_seed(seed)
    difficulty = torch.randn(num_samples, generator=generator).exp()
    trained = torch.zeros(num_samples, dtype=torch.int64)
    method.prepare(num_samples)
    for epoch in range(epochs):
        chosen = method.decide(epoch).indices
        noise = (0.3 * torch.randn(chosen.numel(), generator=generator)).exp()
        losses = difficulty[chosen] * torch.exp(-0.2 * trained[chosen].float()) * noise
        trained[chosen] += 1
        zeros = torch.zeros_like(chosen)
        method.update(Harvest(epoch, chosen, losses, zeros, zeros))
    return int((trained == 1).sum())


COVERAGE_METHODS = {
    "ucb count (UCB1)": lambda p: UCB(p, bonus="count", seed=0),
    "ucb std": lambda p: UCB(p, bonus="std", seed=0),
    "ucb var": lambda p: UCB(p, bonus="var", seed=0),
    "epsilon_greedy": lambda p: EpsilonGreedy(p, seed=0),
}


def test_ucb_count_bonus_leaves_fewer_samples_behind() -> None:
    # p = 0.5: UCB1 trains every sample again; the variance forms leave some behind for good.
    assert coverage(UCB(0.5, bonus="count", seed=0)) == 0
    assert coverage(UCB(0.5, bonus="std", seed=0)) > 0 and coverage(UCB(0.5, bonus="var", seed=0)) > 0
    # p = 0.9 (100 of 1000 a epoch): the bonus grows only like sqrt(ln t), but UCB1 still leaves far fewer
    # samples behind than the variance forms and epsilon-greedy (numbers: python tests/test_bandits.py).
    left = {label: coverage(build(0.9)) for label, build in COVERAGE_METHODS.items()}
    assert left["ucb count (UCB1)"] < min(left["ucb std"], left["ucb var"], left["epsilon_greedy"]) / 3


def test_validation_and_registration() -> None:
    assert METHODS["epsilon_greedy"] is EpsilonGreedy and METHODS["ucb"] is UCB
    with pytest.raises(ValueError, match="epsilon"):
        EpsilonGreedy(epsilon=1.5)
    with pytest.raises(ValueError, match="ema"):
        EpsilonGreedy(ema=0.0)
    with pytest.raises(ValueError, match="`c`"):
        UCB(c=-1.0)
    with pytest.raises(ValueError, match="`c`"):
        UCB(c=math.inf)
    with pytest.raises(ValueError, match="bonus"):
        UCB(bonus="sqrt")  # type: ignore[arg-type]
    assert METHODS["ucb_variance"] is UCBVariance and UCBVariance().bonus == "std" and UCB().bonus == "count"
    with pytest.raises(ValueError, match="prune_ratio"):
        UCB(prune_ratio=-0.1)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 200),
    prune_ratio=st.floats(0.0, 0.95),
    epsilon=st.floats(0.0, 1.0),
    c=st.floats(0.0, 3.0),
    seen=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
    use_ucb=st.booleans(),
)
def test_budget_is_exact_unique_and_deterministic(
    n: int, prune_ratio: float, epsilon: float, c: float, seen: float, seed: int, use_ucb: bool
) -> None:
    method: EpsilonGreedy | UCB = (
        make(UCB, n, prune_ratio=prune_ratio, c=c)
        if use_ucb
        else make(EpsilonGreedy, n, prune_ratio=prune_ratio, epsilon=epsilon)
    )
    trained = torch.arange(int(seen * n))
    for epoch in range(2):
        losses = torch.rand(trained.numel(), generator=gen(seed + epoch)).round(decimals=1)
        method.update(Harvest(epoch, trained, losses, torch.zeros_like(trained), torch.zeros_like(trained)))
    first = method.select(2, make_generator(seed, 2))
    again = method.select(2, make_generator(seed, 2))
    k = method.expected_subset_size(2)
    assert first.indices.numel() == k and first.indices.unique().numel() == k
    assert 0 <= int(first.indices.min()) and int(first.indices.max()) < n
    assert torch.equal(first.indices, again.indices)
    never_seen = int(torch.isinf(method.loss_mean).sum())
    chosen = int(torch.isinf(method.loss_mean[first.indices]).sum())
    assert first.stats["never_seen_share"] == chosen / k
    if use_ucb:
        assert chosen == min(k, never_seen)  # never-trained samples are tried first


@pytest.mark.parametrize("cls", [EpsilonGreedy, UCB, UCBVariance])
def test_lightning_fit(cls: type[EpsilonGreedy] | type[UCB]) -> None:
    method = cls(seed=0)  # defaults: p = 0.5
    trainer = pl.Trainer(callbacks=[method], **trainer_kwargs(max_epochs=3))
    model = ToyModel()
    trainer.fit(model, datamodule=toy_datamodule(96, 8))
    assert [entry["epoch_samples"] for entry in method.history] == [96, 48, 48]
    assert sum(model.seen_batches) == 96 + 48 + 48
    assert torch.isfinite(method.loss_mean).all()  # epoch 0 trained everything
    assert [entry["never_seen_share"] for entry in method.history] == [1.0, 0.0, 0.0]
    if cls is EpsilonGreedy:
        assert [entry["random_picks"] for entry in method.history] == [0.0, 5.0, 5.0]
    elif cls is UCB:
        assert isinstance(method, UCB) and int(method.visits.sum()) == 96 + 48 + 48
        # decided before epoch 2: 48 of the 96 samples had been trained in epoch 0 only
        assert method.history[-1]["trained_once_fraction"] == 0.5
    else:
        assert isinstance(method, UCB) and bool((method.loss_variance[method.current_subset] >= 0).all())
        assert float(method.loss_variance.sum()) > 0  # samples trained twice have a spread


if __name__ == "__main__":
    # The coverage table of docs/methods/bandits.md: python tests/test_bandits.py
    print("| method | p | trained in epoch 0 only (of 1000, 30 epochs) |")
    print("|---|---|---|")
    for ratio in (0.5, 0.9):
        for label, build in COVERAGE_METHODS.items():
            print(f"| {label} | {ratio} | {coverage(build(ratio))} |")
