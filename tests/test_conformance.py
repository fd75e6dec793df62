"""The contract every registered pruning method must honour, checked on tiny data.

A new method only registers itself (``@register("name")``); this suite then runs it through epoch
sizing, DDP on CPU, checkpoint resume, data-loader workers, gradient accumulation and bf16.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers import ToyDataset, ToyModel, TrainedIds, indexed_datamodule, toy_datamodule, trainer_kwargs
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_pruning import METHODS, PruningCallback, PruningDataModule
from lightning_pruning.methods.base import Harvest
from lightning_pruning.methods.state_codec import decode

NUM_SAMPLES = 96
BATCH_SIZE = 8
EPOCHS = 4
METHOD_NAMES = sorted(METHODS)


def make_method(name: str, **overrides: Any) -> PruningCallback:
    return METHODS[name](seed=0, **overrides)


class EpochRecorder(Callback):
    """Records, per epoch and rank, what the loader served and what Lightning thought it would serve."""

    def __init__(self, out: Path | None = None) -> None:
        self.out = out
        self.epochs: list[dict[str, Any]] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pruner = next(cb for cb in trainer.callbacks if isinstance(cb, PruningCallback))
        datamodule = trainer.datamodule
        assert isinstance(datamodule, PruningDataModule) and datamodule.train_sampler is not None
        self.epochs.append(
            {
                "epoch": trainer.current_epoch,
                "subset": pruner.current_subset.clone(),
                "rank_order": datamodule.train_sampler.rank_order.clone(),
                "num_training_batches": trainer.num_training_batches,
                "batches": 0,
                "validated": False,
            }
        )

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.epochs[-1]["batches"] += 1

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self.epochs:
            self.epochs[-1]["validated"] = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A run resumed from a checkpoint saved at validation end replays only this hook of the epoch.
        if self.epochs and self.epochs[-1]["epoch"] == trainer.current_epoch:
            pruner = next(cb for cb in trainer.callbacks if isinstance(cb, PruningCallback))
            self.epochs[-1]["state_after_harvest"] = pruner.state_dict()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.out is not None:
            pruner = next(cb for cb in trainer.callbacks if isinstance(cb, PruningCallback))
            payload = {"epochs": self.epochs, "state": pruner.state_dict()}
            torch.save(payload, self.out / f"rank{trainer.global_rank}.pt")


def fit(
    method: PruningCallback, *extra: Callback, datamodule: PruningDataModule | None = None, **overrides: Any
) -> tuple[ToyModel, EpochRecorder]:
    recorder = EpochRecorder(overrides.pop("record_to", None))
    torch.manual_seed(0)  # the same initial weights in every run, so runs are comparable
    model = overrides.pop("model", None) or ToyModel()
    ckpt_path = overrides.pop("ckpt_path", None)
    overrides.setdefault("max_epochs", EPOCHS)
    trainer = pl.Trainer(callbacks=[method, recorder, *extra], **trainer_kwargs(**overrides))
    trainer.fit(model, datamodule=datamodule or toy_datamodule(NUM_SAMPLES, BATCH_SIZE), ckpt_path=ckpt_path)
    return model, recorder


def sorted_ids(tensor: torch.Tensor) -> list[int]:
    return sorted(tensor.tolist())


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_epoch_sizes_follow_the_decision(name: str) -> None:
    method = make_method(name)
    _, recorder = fit(method)
    assert [entry["epoch"] for entry in recorder.epochs] == list(range(EPOCHS))
    for entry in recorder.epochs:
        expected_batches = math.ceil(entry["subset"].numel() / BATCH_SIZE)
        assert entry["num_training_batches"] == expected_batches
        assert entry["batches"] == expected_batches
        assert entry["validated"], f"validation skipped in epoch {entry['epoch']}"
        assert sorted_ids(entry["rank_order"]) == sorted_ids(entry["subset"])
    assert len(method.history) == EPOCHS
    trained = sum(entry["subset"].numel() for entry in recorder.epochs)
    assert method.saved_fraction == pytest.approx(1 - trained / (NUM_SAMPLES * EPOCHS))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_ddp_ranks_agree_and_cover_the_subset(name: str, tmp_path: Path) -> None:
    fit(make_method(name), record_to=tmp_path, strategy="ddp_fork", devices=2)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    for epoch in range(EPOCHS):
        first, second = (rank["epochs"][epoch] for rank in ranks)
        assert torch.equal(first["subset"], second["subset"]), "ranks decided different subsets"
        assert first["num_training_batches"] == second["num_training_batches"]
        assert first["batches"] == second["batches"]
        subset = first["subset"]
        covered = torch.cat([first["rank_order"], second["rank_order"]])
        assert covered.numel() == 2 * math.ceil(subset.numel() / 2)
        assert set(covered.tolist()) == set(subset.tolist())
    states = [rank["state"] for rank in ranks]
    for key, value in states[0]["method"].items():
        # Checkpointed tensors are stored compactly (bit-packed, narrowed): compare the decoded tables.
        value, other = decode(value), decode(states[1]["method"][key])
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other), f"method state {key!r} differs across ranks"
        else:
            assert value == other


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_ddp_decision_equals_single_process_decision(name: str, tmp_path: Path) -> None:
    """Replaying rank 0's gathered state in one process decides exactly the DDP run's next subsets."""
    fit(make_method(name), record_to=tmp_path, strategy="ddp_fork", devices=2)
    epochs = torch.load(tmp_path / "rank0.pt", weights_only=True)["epochs"]
    replay = make_method(name)
    labels = ToyDataset(NUM_SAMPLES).targets if replay.needs_labels else None
    replay.prepare(NUM_SAMPLES, labels=labels, max_epochs=EPOCHS)  # one process, no trainer
    for epoch in range(1, EPOCHS):
        replay.load_state_dict(epochs[epoch - 1]["state_after_harvest"])
        assert torch.equal(replay.decide(epoch).indices, epochs[epoch]["subset"])


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_resume_from_end_of_epoch_checkpoint_is_exact(name: str, tmp_path: Path) -> None:
    checkpoints = ModelCheckpoint(
        dirpath=tmp_path, filename="{epoch}", save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=False
    )
    model, uninterrupted = fit(make_method(name), checkpoints, enable_checkpointing=True)
    resume_from = tmp_path / "epoch=1.ckpt"
    stored = torch.load(resume_from, weights_only=True)
    assert any(key.startswith(METHODS[name].__name__) for key in stored["callbacks"]), "no callback state saved"

    resumed_model, resumed = fit(make_method(name), enable_checkpointing=False, ckpt_path=str(resume_from))
    assert [entry["epoch"] for entry in resumed.epochs] == [2, 3]
    for original, again in zip(uninterrupted.epochs[2:], resumed.epochs, strict=True):
        assert torch.equal(original["subset"], again["subset"])
        assert torch.equal(original["rank_order"], again["rank_order"])
    for key, value in model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), f"weights differ after resume: {key}"


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_workers_give_the_same_subsets(name: str) -> None:
    _, in_process = fit(make_method(name))
    datamodule = toy_datamodule(NUM_SAMPLES, BATCH_SIZE, num_workers=2, persistent_workers=True)
    _, with_workers = fit(make_method(name), datamodule=datamodule)
    for plain, workers in zip(in_process.epochs, with_workers.epochs, strict=True):
        assert torch.equal(plain["subset"], workers["subset"])
        assert torch.equal(plain["rank_order"], workers["rank_order"])


class HarvestSpy(Callback):
    """Wraps the pruning method's ``update`` to keep every harvest."""

    def __init__(self, method: PruningCallback) -> None:
        self.harvests: list[Harvest] = []
        original = method.update

        def spy(harvest: Harvest) -> None:
            self.harvests.append(harvest)
            original(harvest)

        method.update = spy  # type: ignore[method-assign]


@pytest.mark.parametrize("name", METHOD_NAMES)
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_harvest_with_accumulation_and_precision(name: str, precision: str) -> None:
    """With a frozen model (lr=0) the harvested losses are exactly the model's per-sample losses."""
    method = make_method(name)
    spy = HarvestSpy(method)
    model = ToyModel(lr=0.0)
    _, recorder = fit(method, model=model, accumulate_grad_batches=2, precision=precision)
    dataset = ToyDataset(NUM_SAMPLES)
    with torch.no_grad():
        reference = F.cross_entropy(model(dataset.inputs), dataset.targets, reduction="none")
    assert len(spy.harvests) == EPOCHS
    for harvest, entry in zip(spy.harvests, recorder.epochs, strict=True):
        assert harvest.losses.dtype == torch.float32
        assert sorted_ids(harvest.indices) == sorted_ids(entry["subset"])
        assert torch.equal(harvest.steps, harvest.batch_idx // 2)
        tolerance = 1e-5 if precision == "32-true" else 0.05  # batched vs whole-set matmul rounding
        torch.testing.assert_close(harvest.losses, reference[harvest.indices], atol=tolerance, rtol=tolerance)
        positions = {index: position for position, index in enumerate(entry["rank_order"].tolist())}
        expected_batches = torch.tensor([positions[index] // BATCH_SIZE for index in harvest.indices.tolist()])
        assert torch.equal(harvest.batch_idx, expected_batches)


class HarvestRecorder(Callback):
    """Writes every harvest this rank's pruning method receives to ``out`` (DDP runs in other processes)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.harvests: list[dict[str, Any]] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        method = next(cb for cb in trainer.callbacks if isinstance(cb, PruningCallback))
        original = method.update

        def record(harvest: Harvest) -> None:
            self.harvests.append(
                {
                    "epoch": harvest.epoch,
                    "indices": harvest.indices,
                    "steps": harvest.steps,
                    "subset": method.current_subset,
                }
            )
            original(harvest)

        method.update = record  # type: ignore[method-assign]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.save(self.harvests, self.out / f"harvest{trainer.global_rank}.pt")


def test_under_ddp_a_step_holds_every_ranks_samples(tmp_path: Path) -> None:
    """RePB's windows are built from harvest.steps: one step must hold both ranks' batches of that step."""
    fit(make_method("repb"), HarvestRecorder(tmp_path), strategy="ddp_fork", devices=2)
    per_rank = [torch.load(tmp_path / f"harvest{rank}.pt", weights_only=True) for rank in range(2)]
    for first, second in zip(*per_rank, strict=True):
        assert torch.equal(first["indices"], second["indices"]) and torch.equal(first["steps"], second["steps"])
        _, counts = torch.unique(first["steps"], return_counts=True)
        # two ranks x a batch of 8 per step; only the epoch's last step may be short
        assert bool((counts[:-1] == 2 * BATCH_SIZE).all())
        assert first["indices"].unique().numel() == first["indices"].numel()


# ---------------------------------------------------------------------------------------------------------
# Exact resume from any training step (issue 10).
class CrashAt(Callback):
    """Raises at the start of the batch after optimizer step ``step`` (that step's checkpoint is saved)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


def step_checkpoints(directory: Path) -> ModelCheckpoint:
    return ModelCheckpoint(dirpath=directory, filename="{step}", every_n_train_steps=1, save_top_k=-1)


def fit_ids(
    name: str,
    *extra: Callback,
    out: Path | None = None,
    datamodule_kwargs: dict[str, Any] | None = None,
    **overrides: Any,
) -> tuple[ToyModel, TrainedIds, PruningCallback]:
    """A run over the indexed toy data recording the trained ids; returns (model, ids, method)."""
    method = make_method(name)
    ids = TrainedIds(out)
    torch.manual_seed(0)
    model = ToyModel()
    ckpt_path = overrides.pop("ckpt_path", None)
    overrides.setdefault("max_epochs", EPOCHS)
    overrides.setdefault("enable_checkpointing", any(isinstance(cb, ModelCheckpoint) for cb in extra))
    trainer = pl.Trainer(callbacks=[method, ids, *extra], **trainer_kwargs(**overrides))
    datamodule = indexed_datamodule(NUM_SAMPLES, BATCH_SIZE, **(datamodule_kwargs or {}))
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    return model, ids, method


def epoch_ends(batches: list[tuple[int, int, torch.Tensor]]) -> list[int]:
    """Cumulative batch count at the end of each epoch."""
    ends: dict[int, int] = {}
    for position, (epoch, _, _) in enumerate(batches):
        ends[epoch] = position + 1
    return [ends[epoch] for epoch in sorted(ends)]


def resume_points(batches: list[tuple[int, int, torch.Tensor]]) -> list[int]:
    """Steps to resume from: mid epoch 0, epoch 0's last batch, epoch 1's first and last batch, mid epoch 2."""
    ends = epoch_ends(batches)
    return [1, ends[0], ends[0] + 1, ends[1], (ends[1] + ends[2]) // 2]


def assert_same_batches(
    expected: list[tuple[int, int, torch.Tensor]], got: list[tuple[int, int, torch.Tensor]]
) -> None:
    assert [(epoch, batch) for epoch, batch, _ in got] == [(epoch, batch) for epoch, batch, _ in expected]
    for (epoch, batch, want), (_, _, have) in zip(expected, got, strict=True):
        assert torch.equal(want, have), f"epoch {epoch} batch {batch} trained other samples after resume"


def assert_same_weights(reference: pl.LightningModule, resumed: pl.LightningModule) -> None:
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), f"weights differ after resume: {key}"


def assert_same_decisions(reference: PruningCallback, resumed: PruningCallback) -> None:
    assert [entry["epoch_samples"] for entry in resumed.history] == [e["epoch_samples"] for e in reference.history]
    assert resumed.history == reference.history
    assert torch.equal(resumed.current_subset, reference.current_subset)
    for key, value in reference.state_dict()["method"].items():
        value, other = decode(value), decode(resumed.state_dict()["method"][key])
        assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, key


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_resume_from_any_step_is_exact(name: str, tmp_path: Path) -> None:
    """Resuming from a step checkpoint trains exactly the uninterrupted run's remaining batches, decides the
    same subsets and ends with bit-identical weights; checked at an epoch's first and last batch and mid-epoch."""
    reference, ids, method = fit_ids(name, step_checkpoints(tmp_path / "steps"))
    for step in resume_points(ids.batches):
        model, resumed_ids, resumed = fit_ids(name, ckpt_path=str(tmp_path / "steps" / f"step={step}.ckpt"))
        assert_same_batches(ids.batches[step:], resumed_ids.batches)
        assert_same_weights(reference, model)
        assert_same_decisions(method, resumed)
    # A real crash: the run dies mid epoch 2; the newest step checkpoint resumes it exactly.
    crash_step = resume_points(ids.batches)[-1] + 1
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit_ids(name, step_checkpoints(tmp_path / "crash"), CrashAt(crash_step))
    newest = max((tmp_path / "crash").glob("step=*.ckpt"), key=lambda path: int(path.stem.split("=")[1]))
    assert newest.name == f"step={crash_step}.ckpt"
    model, resumed_ids, resumed = fit_ids(name, ckpt_path=str(newest))
    assert_same_batches(ids.batches[crash_step:], resumed_ids.batches)
    assert_same_weights(reference, model)
    assert_same_decisions(method, resumed)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_resume_from_any_step_is_exact_with_workers(name: str, tmp_path: Path) -> None:
    workers = {"num_workers": 2, "persistent_workers": True}
    reference, ids, method = fit_ids(name, step_checkpoints(tmp_path), datamodule_kwargs=workers)
    ends = epoch_ends(ids.batches)
    for step in (ends[0] + 1, (ends[1] + ends[2]) // 2):  # epoch 1's first batch, mid epoch 2
        model, resumed_ids, resumed = fit_ids(
            name, ckpt_path=str(tmp_path / f"step={step}.ckpt"), datamodule_kwargs=workers
        )
        assert_same_batches(ids.batches[step:], resumed_ids.batches)
        assert_same_weights(reference, model)
        assert_same_decisions(method, resumed)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_resume_from_any_step_is_exact_under_ddp(name: str, tmp_path: Path) -> None:
    """Both ranks restart from the newest step checkpoint and continue exactly as the uninterrupted run."""
    ddp = {"strategy": "ddp_fork", "devices": 2}
    (tmp_path / "ref").mkdir()
    reference, _, _ = fit_ids(name, step_checkpoints(tmp_path / "steps"), out=tmp_path / "ref", **ddp)
    expected = [torch.load(tmp_path / "ref" / f"ids{rank}.pt", weights_only=True) for rank in range(2)]
    ends = epoch_ends(expected[0])
    for step in (ends[0], (ends[1] + ends[2]) // 2):  # epoch 0's last batch, mid epoch 2
        out = tmp_path / f"resume{step}"
        out.mkdir()
        model, _, _ = fit_ids(name, out=out, ckpt_path=str(tmp_path / "steps" / f"step={step}.ckpt"), **ddp)
        for rank in range(2):
            assert_same_batches(expected[rank][step:], torch.load(out / f"ids{rank}.pt", weights_only=True))
        assert_same_weights(reference, model)
