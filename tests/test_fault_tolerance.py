"""Fault tolerance (issue 10): every kind of interruption resumes exactly, plus the defects found on the way.

The per-method conformance of step-checkpoint resume lives in ``test_conformance.py``; this file covers the
other ways a run is interrupted (validation checkpoints, exceptions, time limits, accumulation, a changed
world size, multi-node) and the sizing / seeding / history behaviour around them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import IndexedToyDataset, ToyModel, TrainedIds, indexed_datamodule, trainer_kwargs
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, OnExceptionCheckpoint
from test_conformance import (
    CrashAt,
    HarvestRecorder,
    assert_same_batches,
    assert_same_decisions,
    assert_same_weights,
    epoch_ends,
    step_checkpoints,
)
from torch.utils.data import DataLoader

from lightning_pruning import METHODS, PruningCallback, PruningDataModule
from lightning_pruning.data.sampler import SubsetSampler
from lightning_pruning.methods.base import epoch_steps, warn_if_state_stays_in_workers

N = 96
BATCH = 8
EPOCHS = 4
ROOT = Path(__file__).resolve().parents[1]


def run(
    *extra: Callback,
    method: PruningCallback | None = None,
    name: str | None = "rcap",
    model: pl.LightningModule | None = None,
    datamodule: PruningDataModule | None = None,
    ckpt_path: str | Path | None = None,
    out: Path | None = None,
    reseed: bool = True,
    **overrides: Any,
) -> tuple[pl.LightningModule, TrainedIds, PruningCallback | None]:
    """One fit over the indexed toy data; ``name=None`` runs without a pruning callback. ``reseed`` gives every
    run the same initial weights (and torch.initial_seed() 0)."""
    if method is None and name is not None:
        method = METHODS[name](seed=0)
    ids = TrainedIds(out)
    if reseed:
        torch.manual_seed(0)
    model = model or ToyModel()
    overrides.setdefault("max_epochs", EPOCHS)
    overrides.setdefault("enable_checkpointing", any(isinstance(cb, ModelCheckpoint) for cb in extra))
    callbacks = [cb for cb in (method, ids, *extra) if cb is not None]
    trainer = pl.Trainer(callbacks=callbacks, **trainer_kwargs(**overrides))
    trainer.fit(model, datamodule=datamodule or indexed_datamodule(N, BATCH), ckpt_path=ckpt_path)
    return model, ids, method


def seeded(cls: type[ToyModel], *args: Any) -> ToyModel:
    """A model with the same initial weights as ``run``'s default ToyModel."""
    torch.manual_seed(0)
    return cls(*args)


# ---------------------------------------------------------------------------------------------------------
# Interruptions other than step checkpoints.
def test_full_data_run_without_callback_resumes_exactly(tmp_path: Path) -> None:
    reference, ids, _ = run(step_checkpoints(tmp_path), name=None)
    for step in (5, 12, 17):
        model, resumed, _ = run(name=None, ckpt_path=tmp_path / f"step={step}.ckpt")
        assert_same_batches(ids.batches[step:], resumed.batches)
        assert_same_weights(reference, model)


def test_resume_at_the_last_batch_before_a_longer_epoch_is_exact(tmp_path: Path) -> None:
    """Lightning restarts a checkpoint saved at an epoch's last batch in the next epoch and compares the saved
    batch count with the next epoch's length; a pruned epoch followed by a longer (annealing) one must still
    start that epoch at its first batch."""

    def annealing() -> PruningCallback:
        return METHODS["random"](prune_ratio=0.5, annealing_fraction=0.5, seed=0)  # epochs 2, 3 on full data

    reference, ids, method = run(step_checkpoints(tmp_path), method=annealing())
    ends = epoch_ends(ids.batches)
    assert ends[1] - ends[0] < ends[2] - ends[1], "epoch 2 must be longer than epoch 1"
    model, resumed, again = run(method=annealing(), ckpt_path=tmp_path / f"step={ends[1]}.ckpt")
    assert_same_batches(ids.batches[ends[1] :], resumed.batches)
    assert_same_weights(reference, model)
    assert method is not None and again is not None
    assert_same_decisions(method, again)


@pytest.mark.parametrize("name", ["rcap", "repb"])
def test_mid_epoch_validation_checkpoints_resume_exactly(name: str, tmp_path: Path) -> None:
    """val_check_interval=0.5: the checkpoint written after the mid-epoch validation resumes exactly."""
    checkpoints = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}-{step}", save_top_k=-1)
    reference, ids, method = run(checkpoints, name=name, val_check_interval=0.5)
    ends = epoch_ends(ids.batches)
    mid_epoch_2 = [path for path in tmp_path.glob("epoch=2-*.ckpt") if int(path.stem.split("=")[-1]) < ends[2]]
    assert len(mid_epoch_2) == 1, sorted(path.name for path in tmp_path.iterdir())
    step = int(mid_epoch_2[0].stem.split("=")[-1])
    model, resumed, again = run(name=name, ckpt_path=mid_epoch_2[0], val_check_interval=0.5)
    assert_same_batches(ids.batches[step:], resumed.batches)
    assert_same_weights(reference, model)
    assert method is not None and again is not None
    assert_same_decisions(method, again)


class FailingModel(ToyModel):
    """Raises inside training_step at one global step (the batch is fetched but not trained)."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        if self.trainer.global_step == self.fail_at:
            raise RuntimeError("simulated failure in training_step")
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("where", ["training_step", "on_train_batch_start"])
def test_on_exception_checkpoint_resumes_exactly(where: str, tmp_path: Path) -> None:
    reference, ids, method = run(name="infobatch")
    fail_at = epoch_ends(ids.batches)[1] + 2  # mid epoch 2
    failing = seeded(FailingModel, fail_at) if where == "training_step" else None
    crash = [CrashAt(fail_at)] if where == "on_train_batch_start" else []
    with pytest.raises(RuntimeError, match="simulated"):
        run(OnExceptionCheckpoint(tmp_path), *crash, name="infobatch", model=failing, enable_checkpointing=True)
    model, resumed, again = run(name="infobatch", ckpt_path=tmp_path / "on_exception.ckpt")
    assert_same_batches(ids.batches[fail_at:], resumed.batches)
    assert_same_weights(reference, model)
    assert method is not None and again is not None
    assert_same_decisions(method, again)


class SigtermAt(Callback):
    """Flags SIGTERM at one step, as Lightning's SIGTERM handler does (a cluster preempting the job)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            trainer._signal_connector.received_sigterm = True  # what its SIGTERM handler sets


def test_sigterm_with_on_exception_checkpoint_resumes_exactly(tmp_path: Path) -> None:
    reference, ids, method = run()
    signalled = epoch_ends(ids.batches)[1] + 2  # Lightning stops after this batch: it is trained
    with pytest.raises(SystemExit):
        run(OnExceptionCheckpoint(tmp_path), SigtermAt(signalled), enable_checkpointing=True)
    model, resumed, again = run(ckpt_path=tmp_path / "on_exception.ckpt")
    assert_same_batches(ids.batches[signalled + 1 :], resumed.batches)
    assert_same_weights(reference, model)
    assert method is not None and again is not None
    assert_same_decisions(method, again)


class StopAtStep(Callback):
    """Stops training after optimizer step ``step``, exactly as Trainer(max_time=...)'s Timer does."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


def test_run_stopped_mid_epoch_like_max_time_resumes_the_rest_of_the_epoch(tmp_path: Path) -> None:
    reference, ids, method = run()
    stop = epoch_ends(ids.batches)[1] + 3
    _, stopped, partial = run(StopAtStep(stop), ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0))
    assert len(stopped.batches) == stop
    assert partial is not None and partial.history[-1]["trained_samples"] == 3 * BATCH  # the trained part counts
    model, resumed, again = run(ckpt_path=tmp_path / "last.ckpt")
    assert_same_batches(ids.batches[stop:], resumed.batches)
    assert_same_weights(reference, model)
    assert method is not None and again is not None
    assert_same_decisions(method, again)


class SlowModel(ToyModel):
    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        import time

        time.sleep(0.02)
        return super().training_step(batch, batch_idx)


def test_real_max_time_then_resume_trains_every_batch_once(tmp_path: Path) -> None:
    """Wherever the time limit falls, the stopped run plus the resumed run train the uninterrupted run's batches."""
    reference, ids, _ = run(model=seeded(SlowModel))
    _, stopped, _ = run(
        ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0),
        model=seeded(SlowModel),
        max_time=timedelta(seconds=0.5),
    )
    assert 0 < len(stopped.batches) < len(ids.batches)
    model, resumed, _ = run(model=seeded(SlowModel), ckpt_path=tmp_path / "last.ckpt", max_time=None)
    assert_same_batches(ids.batches, stopped.batches + resumed.batches)
    assert_same_weights(reference, model)


def test_gradient_accumulation_step_checkpoints_resume_exactly(tmp_path: Path) -> None:
    reference, ids, method = run(step_checkpoints(tmp_path), accumulate_grad_batches=3)
    # Step checkpoints fall after optimizer steps: batch counts 3, 6, ..., and each epoch's last batch.
    batches_at_step: dict[int, int] = {}
    for path in tmp_path.glob("step=*.ckpt"):
        progress = torch.load(path, weights_only=True)["loops"]["fit_loop"]["epoch_loop.batch_progress"]
        batches_at_step[int(path.stem.split("=")[1])] = progress["total"]["processed"]
    ends = epoch_ends(ids.batches)
    for step in (2, min(s for s, b in batches_at_step.items() if b > ends[1])):
        model, resumed, again = run(ckpt_path=tmp_path / f"step={step}.ckpt", accumulate_grad_batches=3)
        assert_same_batches(ids.batches[batches_at_step[step] :], resumed.batches)
        assert_same_weights(reference, model)
        assert method is not None and again is not None
        assert_same_decisions(method, again)


# ---------------------------------------------------------------------------------------------------------
# Across world sizes.
def _epoch_ids(batches: list[tuple[int, int, torch.Tensor]], epoch: int, start: int = 0) -> torch.Tensor:
    return torch.cat([ids for e, b, ids in batches if e == epoch and b >= start])


def test_one_process_checkpoint_resumes_on_two_processes(tmp_path: Path) -> None:
    _, ids, _ = run(step_checkpoints(tmp_path / "steps"))
    ends = epoch_ends(ids.batches)
    step = ends[1] + 2  # epoch 2, after 2 of its batches
    out = tmp_path / "out"
    out.mkdir()
    run(
        HarvestRecorder(out),
        ckpt_path=tmp_path / "steps" / f"step={step}.ckpt",
        out=out,
        strategy="ddp_fork",
        devices=2,
    )
    ranks = [torch.load(out / f"ids{rank}.pt", weights_only=True) for rank in range(2)]
    rest = _epoch_ids(ids.batches, 2, start=2)  # what the uninterrupted run still trained in epoch 2
    for rank in range(2):
        served = _epoch_ids(ranks[rank], 2)
        # The rest of the epoch order, re-sharded: rank r serves every 2nd sample from r (plus padding at the end).
        assert torch.equal(served[: rest[rank::2].numel()], rest[rank::2])
        assert ranks[rank][0][:2] == (2, 2), "the resumed epoch must continue at batch 2 on every rank"
    harvests = [torch.load(out / f"harvest{rank}.pt", weights_only=True) for rank in range(2)]
    first = harvests[0][0]
    assert first["epoch"] == 2
    # The decided subset is kept and the interrupted epoch is harvested whole, every sample once.
    assert sorted(first["indices"].tolist()) == sorted(first["subset"].tolist())
    for a, b in zip(*harvests, strict=True):
        assert torch.equal(a["indices"], b["indices"]) and torch.equal(a["subset"], b["subset"])
    assert [h["epoch"] for h in harvests[0]] == [2, 3]


def test_two_process_checkpoint_resumes_on_one_process(tmp_path: Path) -> None:
    out = tmp_path / "ref"
    out.mkdir()
    run(step_checkpoints(tmp_path / "steps"), out=out, strategy="ddp_fork", devices=2)
    ranks = [torch.load(out / f"ids{rank}.pt", weights_only=True) for rank in range(2)]
    ends = epoch_ends(ranks[0])
    step = ends[1] + 1
    method = METHODS["rcap"](seed=0)
    spy = HarvestRecorder(tmp_path)
    _, resumed, _ = run(spy, method=method, ckpt_path=tmp_path / "steps" / f"step={step}.ckpt")
    served = _epoch_ids(resumed.batches, 2)
    rest = torch.stack([_epoch_ids(ranks[rank], 2, start=1) for rank in range(2)], dim=1).reshape(-1)
    subset = spy.harvests[0]["subset"]
    assert torch.equal(served, rest[: served.numel()])  # the two ranks' rest, interleaved in epoch order
    assert served.numel() == subset.numel() - 2 * BATCH  # no padding on one process
    assert sorted(spy.harvests[0]["indices"].tolist()) == sorted(subset.tolist())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_multi_node_simulated_every_method_identical_state_on_every_rank(tmp_path: Path) -> None:
    """Two 'nodes' of one process each, through Lightning's environment variables and strategy='ddp'."""
    script = ROOT / "tests" / "multinode_fit.py"
    port = str(_free_port())
    processes = []
    for node in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2", NODE_RANK=str(node))
        env.update(LOCAL_RANK="0", PYTHONPATH=f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}")
        command = [sys.executable, str(script), "--num-nodes", "2", "--epochs", "2", "--out", str(tmp_path)]
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    logs = [process.communicate(timeout=300)[0].decode() for process in processes]
    for process, log in zip(processes, logs, strict=True):
        assert process.returncode == 0, log[-3000:]
    check = subprocess.run([sys.executable, str(script), "--check", str(tmp_path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert len(list(tmp_path.glob("*-rank1.pt"))) == len(METHODS)


# ---------------------------------------------------------------------------------------------------------
# Defect 1: estimated_stepping_batches equals the real optimizer-step count.
def _real_epoch_steps(size: int, batch: int, world: int, drop_last: bool, accumulate: int) -> int:
    """Optimizer steps of rank 0 from the real sampler and DataLoader, stepping as Lightning does."""
    sampler = SubsetSampler(torch.arange(size), epoch=0, seed=0, num_replicas=world, rank=0)
    batches = len(DataLoader(range(size), batch_size=batch, sampler=sampler, drop_last=drop_last))
    steps = sum(1 for index in range(batches) if (index + 1) % accumulate == 0 or index == batches - 1)
    lengths = {
        len(
            DataLoader(
                range(size),
                batch_size=batch,
                drop_last=drop_last,
                sampler=SubsetSampler(torch.arange(size), epoch=0, seed=0, num_replicas=world, rank=rank),
            )
        )
        for rank in range(world)
    }
    assert len(lengths) == 1, "ranks must run the same number of batches"
    return steps


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 800),
    batch=st.integers(1, 70),
    world=st.integers(1, 8),
    drop_last=st.booleans(),
    accumulate=st.integers(1, 5),
)
def test_epoch_steps_equal_the_real_count(size: int, batch: int, world: int, drop_last: bool, accumulate: int) -> None:
    expected = _real_epoch_steps(size, batch, world, drop_last, accumulate)
    got = epoch_steps(size, batch_size=batch, world_size=world, drop_last=drop_last, accumulate_grad_batches=accumulate)
    assert got == expected


class OneCycleModel(ToyModel):
    """Sizes a OneCycleLR with the callback's estimate; OneCycleLR raises if stepped once too often."""

    def configure_optimizers(self) -> Any:
        method = next(cb for cb in self.trainer.callbacks if isinstance(cb, PruningCallback))
        self.estimate = method.estimated_stepping_batches(self.trainer)
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=self.estimate)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_train_end(self) -> None:
        assert self.trainer.global_step == self.estimate, (self.trainer.global_step, self.estimate)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_estimated_stepping_batches_under_ddp_drop_last(accumulate: int) -> None:
    """The issue's case: N=364, p=0.3, 2 ranks, drop_last (it estimated 9 steps against 12 real)."""
    datamodule = PruningDataModule(IndexedToyDataset(364), batch_size=8, drop_last=True, seed=0)
    run(
        method=METHODS["random"](prune_ratio=0.3, seed=0),
        model=seeded(OneCycleModel),
        datamodule=datamodule,
        max_epochs=1,
        strategy="ddp_fork",
        devices=2,
        accumulate_grad_batches=accumulate,
        limit_val_batches=0,
    )
    # 255 samples chosen, 128 per rank: 16 batches of 8 per rank, where size // (batch * world) gave 15.
    assert epoch_steps(255, batch_size=8, world_size=2, drop_last=True) == 16


# ---------------------------------------------------------------------------------------------------------
# Defect 2: a changed batch_size is honoured.
@pytest.mark.parametrize("with_callback", [True, False])
def test_changed_batch_size_is_used(with_callback: bool) -> None:
    datamodule = indexed_datamodule(N, BATCH)
    name = "rcap" if with_callback else None
    first, _, _ = run(name=name, datamodule=datamodule, max_epochs=1)
    assert max(first.seen_batches) == BATCH
    datamodule.batch_size = 32  # what Tuner.scale_batch_size does, or a user by hand
    second, ids, _ = run(name=name, datamodule=datamodule, max_epochs=2)
    assert max(second.seen_batches) == 32
    assert all(batch.numel() <= 32 for _, _, batch in ids.batches) and len(ids.batches[0][2]) == 32


def test_scale_batch_size_tuner_is_honoured() -> None:
    from lightning.pytorch.tuner import Tuner

    datamodule = indexed_datamodule(N, 4)
    torch.manual_seed(0)
    model = ToyModel()
    trainer = pl.Trainer(callbacks=[METHODS["random"](seed=0)], **trainer_kwargs(max_epochs=2))
    tuner = Tuner(trainer)
    found = tuner.scale_batch_size(
        model, datamodule=datamodule, mode="power", init_val=4, max_trials=3, steps_per_trial=1
    )
    assert found == datamodule.batch_size == 16
    model.seen_batches.clear()
    trainer.fit(model, datamodule=datamodule)
    assert max(model.seen_batches) == 16


# ---------------------------------------------------------------------------------------------------------
# Defect 3: seed=None is resolved per fit.
def test_seed_none_is_resolved_by_every_fit() -> None:
    method = METHODS["random"](prune_ratio=0.5)
    datamodule = PruningDataModule(IndexedToyDataset(N), batch_size=BATCH)
    seen: dict[int, tuple[int, int, list[int]]] = {}
    for seed in (1, 2, 1):
        pl.seed_everything(seed)
        _, ids, _ = run(method=method, datamodule=datamodule, max_epochs=2, reseed=False)
        assert method.seed is not None and datamodule.seed is not None
        state = (method.seed, datamodule.seed, ids.batches[-1][2].tolist())
        if seed in seen:
            assert seen[seed] == state  # the same seed_everything gives the same run
        seen[seed] = state
    assert seen[1][0] != seen[2][0] and seen[1][1] != seen[2][1] and seen[1][2] != seen[2][2]
    explicit = METHODS["random"](prune_ratio=0.5, seed=7)
    pl.seed_everything(3)
    run(method=explicit, max_epochs=1)
    assert explicit.seed == 7


# ---------------------------------------------------------------------------------------------------------
# Defect 4: a second fit with the same callback starts a new run, with a warning and a true history.
def test_second_fit_resets_with_a_warning_and_a_true_history() -> None:
    method = METHODS["random"](prune_ratio=0.5, seed=0)
    run(method=method, max_epochs=3)
    assert len(method.history) == 3
    with pytest.warns(UserWarning, match="second trainer.fit with the same callback"):
        _, ids, _ = run(method=method, max_epochs=2)
    assert [entry["epoch"] for entry in method.history] == [0.0, 1.0]
    trained = sum(batch.numel() for _, _, batch in ids.batches)
    assert method.samples_trained == trained
    assert method.saved_fraction == pytest.approx(1 - trained / (2 * N))


# ---------------------------------------------------------------------------------------------------------
# Defect 5: shuffle=False is respected.
class OrderedDataModule(pl.LightningDataModule):
    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(IndexedToyDataset(N), batch_size=BATCH, shuffle=False)


@pytest.mark.parametrize("wrapped", [True, False])
def test_shuffle_false_serves_the_subset_in_index_order(wrapped: bool) -> None:
    if wrapped:
        datamodule = PruningDataModule(datamodule=OrderedDataModule(), seed=0)
    else:
        datamodule = PruningDataModule(IndexedToyDataset(N), batch_size=BATCH, shuffle=False, seed=0)
    _, ids, method = run(datamodule=datamodule, max_epochs=3, name="random")
    for epoch in range(3):
        served = _epoch_ids(ids.batches, epoch)
        assert torch.equal(served, served.sort().values), f"epoch {epoch} was shuffled"
    assert method is not None and _epoch_ids(ids.batches, 2).numel() == N // 2


def test_orderer_gives_the_epoch_order() -> None:
    def reverse(subset: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return subset.sort(descending=True).values

    datamodule = PruningDataModule(IndexedToyDataset(N), batch_size=BATCH, orderer=reverse, seed=0)
    _, ids, _ = run(datamodule=datamodule, max_epochs=2, name="random")
    served = _epoch_ids(ids.batches, 1)
    assert torch.equal(served, served.sort(descending=True).values)


# ---------------------------------------------------------------------------------------------------------
# Defect 6: an empty training set gives one clear error.
@pytest.mark.parametrize("name", ["rs2", "orderdp", None])
def test_empty_training_set_is_one_clear_error(name: str | None) -> None:
    datamodule = PruningDataModule(IndexedToyDataset(0), batch_size=BATCH, seed=0)
    with pytest.raises(ValueError, match="the training set is empty"):
        run(name=name, datamodule=datamodule)
    with pytest.raises(ValueError, match="the training set is empty"):
        METHODS["rs2"](seed=0).prepare(0)


# ---------------------------------------------------------------------------------------------------------
# Defect 7: the history counts the samples actually trained.
def test_history_counts_trained_samples_under_limit_train_batches() -> None:
    method = METHODS["random"](prune_ratio=0.5, warmup_epochs=1, seed=0)
    datamodule = PruningDataModule(IndexedToyDataset(140), batch_size=16, seed=0)
    _, ids, _ = run(method=method, datamodule=datamodule, max_epochs=2, limit_train_batches=4)
    first, second = method.history
    assert (first["epoch_samples"], first["trained_samples"]) == (140, 64)
    assert (second["epoch_samples"], second["trained_samples"]) == (70, 64)
    assert method.samples_trained == sum(batch.numel() for _, _, batch in ids.batches) == 128
    assert method.saved_fraction == pytest.approx(1 - 128 / 280)
    assert first["saved_fraction"] == pytest.approx(1 - 64 / 140)


class HistoryFile(Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        method = next(cb for cb in trainer.callbacks if isinstance(cb, PruningCallback))
        payload = {"history": method.history, "saved_fraction": method.saved_fraction}
        torch.save(payload, self.out / f"history{trainer.global_rank}.pt")


def test_history_counts_trained_samples_under_ddp_drop_last(tmp_path: Path) -> None:
    """701 samples, 2 ranks, batch 64, drop_last: each rank trains 5 full batches, 640 samples in all."""
    datamodule = PruningDataModule(IndexedToyDataset(701), batch_size=64, drop_last=True, seed=0)
    method = METHODS["random"](prune_ratio=0.5, warmup_epochs=1, seed=0)
    run(HistoryFile(tmp_path), method=method, datamodule=datamodule, max_epochs=1, strategy="ddp_fork", devices=2)
    for rank in range(2):
        payload = torch.load(tmp_path / f"history{rank}.pt", weights_only=True)
        (record,) = payload["history"]
        assert (record["epoch_samples"], record["trained_samples"]) == (701, 640)
        assert payload["saved_fraction"] == pytest.approx(1 - 640 / 701)
    # Defect 8: the main process's callback is not updated under ddp_fork / ddp_spawn ...
    assert method.history == []


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork"])
def test_child_process_strategies_warn_that_the_main_process_callback_stays_empty(strategy: str) -> None:
    """... and the run says so (the warning is raised in the workers; checked here on the same trainer setup)."""
    trainer = pl.Trainer(**trainer_kwargs(strategy=strategy, devices=2))
    with pytest.warns(UserWarning, match="the callback object in your main process is not updated"):
        warn_if_state_stays_in_workers(METHODS["random"](seed=0), trainer)
    single = pl.Trainer(**trainer_kwargs())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_state_stays_in_workers(METHODS["random"](seed=0), single)


# ---------------------------------------------------------------------------------------------------------
# Defect 9: resuming with another method or ratio names the real cause.
def test_resume_with_other_arguments_names_them(tmp_path: Path) -> None:
    checkpoints = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", every_n_epochs=1, save_top_k=-1)
    run(checkpoints, method=METHODS["rcap"](prune_ratio=0.3, seed=0), max_epochs=2)
    with pytest.warns(UserWarning, match=r"saved by RCAP\{'prune_ratio': 0.3.*this run uses RCAP\{'prune_ratio': 0.5"):
        run(method=METHODS["rcap"](prune_ratio=0.5, seed=0), ckpt_path=tmp_path / "epoch=0.ckpt", max_epochs=2)


def test_mid_epoch_resume_with_another_method_fails_clearly(tmp_path: Path) -> None:
    _, ids, _ = run(step_checkpoints(tmp_path), method=METHODS["rcap"](prune_ratio=0.5, seed=0))
    step = epoch_ends(ids.batches)[1] + 1
    with pytest.raises(ValueError, match="the pruning callback's state was not restored"):
        run(method=METHODS["random"](prune_ratio=0.3, seed=0), ckpt_path=tmp_path / f"step={step}.ckpt")


def test_checkpoints_load_with_weights_only(tmp_path: Path) -> None:
    _, ids, _ = run(step_checkpoints(tmp_path), name="repb")
    step = epoch_ends(ids.batches)[1] + 2
    stored = torch.load(tmp_path / f"step={step}.ckpt", weights_only=True)
    state = next(value for key, value in stored["callbacks"].items() if str(key).startswith("RePB"))
    assert state["partial"]["epoch"] == 2 and state["partial"]["losses"].numel() == 2 * BATCH
    assert stored["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches"] == 2
