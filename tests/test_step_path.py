"""The training-step path: no host-device sync, NaN found once per epoch, per-epoch logging, compact state,
and the sampler's positions / in-random-order serving."""

from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers import ToyModel, toy_datamodule, trainer_kwargs
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor

from lightning_pruning import InfoBatch, RandomPruning, pruning_loss
from lightning_pruning.data import sampler as sampler_module
from lightning_pruning.data.sampler import SHUFFLE_STREAM, SubsetSampler
from lightning_pruning.loss import CALLBACK_ATTRIBUTE
from lightning_pruning.methods import RCAP, Harvest, PruningCallback
from lightning_pruning.methods.bandits import UCBVariance
from lightning_pruning.methods.state_codec import (
    decode,
    decode_indices,
    decode_state,
    encode,
    encode_indices,
    encode_state,
    pack_bits,
    unpack_bits,
)
from lightning_pruning.selection import make_generator

# ----------------------------------------------------------------------------------------------------
# Recording synchronising calls.
_SYNC_NAMES = {"item", "__bool__", "tolist", "cpu", "__int__", "__float__", "__index__", "numpy"}


def _targets_cpu(args: Any, kwargs: Any) -> bool:
    values = list(args[1:]) + list((kwargs or {}).values())
    return any(
        (isinstance(value, str) and value.startswith("cpu"))
        or (isinstance(value, torch.device) and value.type == "cpu")
        for value in values
    )


class SyncRecorder(torch.overrides.TorchFunctionMode):
    """Records tensor calls that make the host wait for the device on a GPU.

    On CPU nothing waits, so the recorder counts the calls themselves: any ``.item()``, ``bool()``, ``int()``,
    ``float()``, ``.tolist()``, ``.cpu()``, ``.numpy()`` or ``.to("cpu")`` on a tensor.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in _SYNC_NAMES or (name == "to" and _targets_cpu(args, kwargs)):
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def test_the_recorder_sees_every_kind_of_sync() -> None:
    values = torch.arange(4.0)
    with SyncRecorder() as recorder:
        values.sum().item()
        bool(values.any())
        int(values[0])
        float(values[1])
        values.tolist()
        values.cpu()
        values.to("cpu")
        values.numpy()
        values.mean()  # not a sync
    assert recorder.calls == ["item", "__bool__", "__int__", "__float__", "tolist", "cpu", "to", "numpy"]


class RecordedModel(ToyModel):
    """Runs ``training_step`` (hence ``pruning_loss``) under a :class:`SyncRecorder`, per (epoch, batch)."""

    def __init__(self, nan_at: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.syncs: dict[tuple[int, int], list[str]] = {}
        self.nan_at = nan_at

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        x, y = batch
        key = (self.current_epoch, batch_idx)
        with SyncRecorder() as recorder:
            losses = F.cross_entropy(self(x), y, reduction="none")
            if key == self.nan_at:
                losses = losses * torch.tensor(math.nan)
            out = pruning_loss(self, losses)
        self.syncs.setdefault(key, []).extend(recorder.calls)
        return out


def record_hooks(callback: PruningCallback, syncs: dict[tuple[int, int], list[str]]) -> None:
    """Wraps the callback's batch hooks in a :class:`SyncRecorder` (the instance attributes Lightning calls)."""
    for name in ("on_train_batch_start", "on_train_batch_end"):
        hook = getattr(callback, name)

        def wrapper(trainer: pl.Trainer, module: pl.LightningModule, *args: Any, _hook: Any = hook) -> Any:
            with SyncRecorder() as recorder:
                result = _hook(trainer, module, *args)
            syncs.setdefault((trainer.current_epoch, args[-1]), []).extend(recorder.calls)
            return result

        setattr(callback, name, wrapper)


@pytest.mark.parametrize(
    "make", [lambda: InfoBatch(prune_ratio=0.5, seed=0, delta=1.0), lambda: RandomPruning(0.5, seed=0)]
)
def test_training_steps_never_synchronise(make: Any) -> None:
    callback = make()
    model = RecordedModel()
    record_hooks(callback, model.syncs)
    batches: dict[int, int] = {}

    class CountBatches(pl.Callback):
        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            batches[trainer.current_epoch] = trainer.num_training_batches

    trainer = pl.Trainer(callbacks=[callback, CountBatches()], **trainer_kwargs(max_epochs=4))
    trainer.fit(model, datamodule=toy_datamodule())
    weighted = [record for record in callback.history if record.get("max_weight", 1.0) > 1.0]
    if isinstance(callback, InfoBatch):
        assert weighted, "the weighted path was not exercised"
    per_step = {key: calls for key, calls in model.syncs.items() if key[1] < batches[key[0]] - 1}
    assert len(per_step) == sum(batches.values()) - len(batches) >= 20
    assert all(calls == [] for calls in per_step.values()), {k: v for k, v in per_step.items() if v}
    # The epoch's last batch folds the harvest in: the once-per-epoch host read happens there.
    last = [model.syncs[(epoch, count - 1)] for epoch, count in batches.items()]
    assert all(calls for calls in last)


def test_pruning_loss_without_a_callback_is_the_plain_mean_and_never_synchronises() -> None:
    model = ToyModel()
    losses = torch.tensor([0.5, math.nan, 2.0, 1.25], requires_grad=True)
    with SyncRecorder() as recorder:
        out = pruning_loss(model, losses)
    assert recorder.calls == []
    torch.testing.assert_close(out["loss"], losses.mean(), equal_nan=True, rtol=0, atol=0)
    assert torch.isnan(out["loss"]) and not out["per_sample_loss"].requires_grad
    finite = torch.tensor([0.5, 0.25, 2.0, 1.25])
    assert torch.equal(pruning_loss(model, finite)["loss"], finite.mean())


@pytest.mark.parametrize("make", [lambda: InfoBatch(prune_ratio=0.5, seed=0), lambda: RandomPruning(0.5, seed=0)])
def test_a_nan_loss_raises_once_per_epoch_naming_epoch_and_batch(make: Any) -> None:
    callback = make()
    model = RecordedModel(nan_at=(1, 2))
    trainer = pl.Trainer(callbacks=[callback], **trainer_kwargs(max_epochs=4))
    with pytest.raises(ValueError, match=r"epoch 1 contain \d+ NaN/inf values, first in batch 2 ") as error:
        trainer.fit(model, datamodule=toy_datamodule())
    assert type(callback).__name__ in str(error.value)
    # Raised at the end of epoch 1, before any decision used the losses.
    assert callback._harvest_epoch == 0 and [r["epoch"] for r in callback.history] == [0.0, 1.0]
    assert getattr(trainer, CALLBACK_ATTRIBUTE) is None  # on_exception released the trainer


def test_the_callback_is_resolved_once_per_fit_and_released_after() -> None:
    callback = RandomPruning(0.5, seed=0)
    seen: list[Any] = []

    class Probe(ToyModel):
        def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
            seen.append(getattr(self.trainer, CALLBACK_ATTRIBUTE))
            return super().training_step(batch, batch_idx)

    model = Probe()
    trainer = pl.Trainer(callbacks=[callback], **trainer_kwargs(max_epochs=2))
    trainer.fit(model, datamodule=toy_datamodule())
    assert seen and all(entry is callback for entry in seen)
    assert getattr(trainer, CALLBACK_ATTRIBUTE) is None
    losses = torch.tensor([1.0, 3.0])
    assert torch.equal(pruning_loss(model, losses)["loss"], losses.mean())  # no callback any more: plain mean


# ----------------------------------------------------------------------------------------------------
# Logging once per epoch.
def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_pruning_values_go_to_the_loggers_once_per_epoch_not_through_self_log(tmp_path: Path) -> None:
    callback = RCAP(prune_ratio=0.5, seed=0)
    in_results: list[str] = []

    class WatchResults(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            in_results.extend(key for key in trainer._results if "pruning/" in key)

    logger = CSVLogger(tmp_path, name="run")
    kwargs = trainer_kwargs(max_epochs=3, logger=logger, log_every_n_steps=1)
    trainer = pl.Trainer(callbacks=[callback, WatchResults()], **kwargs)
    trainer.fit(ToyModel(), datamodule=toy_datamodule())
    assert in_results == []  # nothing entered Lightning's step-level metric collection
    rows = read_rows(Path(logger.log_dir) / "metrics.csv")
    starts = [row for row in rows if row.get("pruning/budget_total")]
    ends = [row for row in rows if row.get("pruning/saved_fraction")]
    assert [float(row["epoch"]) for row in starts] == [0.0, 1.0, 2.0]
    assert [float(row["epoch"]) for row in ends] == [0.0, 1.0, 2.0]
    for row, record in zip(starts, callback.history, strict=True):
        assert sum(float(row[f"pruning/budget_class_{c}"]) for c in range(3)) == record["budget_total"] == 48.0
        assert float(row["pruning/kept_fraction"]) == record["kept_fraction"]
    for row, record in zip(ends, callback.history, strict=True):
        assert float(row["pruning/saved_fraction"]) == pytest.approx(record["saved_fraction"])
        assert float(row["pruning/trained_samples"]) == record["trained_samples"]
    assert float(trainer.callback_metrics["pruning/budget_total"]) == 48.0
    assert float(trainer.callback_metrics["pruning/saved_fraction"]) == pytest.approx(callback.saved_fraction)


_LIGHTNING_INTERVAL = "is smaller than the logging interval"


def test_the_log_interval_warning_is_explained_once_and_lightnings_repeats_are_filtered(tmp_path: Path) -> None:
    callback = InfoBatch(prune_ratio=0.5, seed=0)
    kwargs = trainer_kwargs(max_epochs=5, logger=CSVLogger(tmp_path), log_every_n_steps=50)
    trainer = pl.Trainer(callbacks=[callback], **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(ToyModel(), datamodule=toy_datamodule())
        messages = [str(warning.message) for warning in caught]
        assert len({record["epoch_samples"] for record in callback.history}) > 1  # epochs of different lengths
        ours = [message for message in messages if "Pruned epochs are short" in message]
        assert len(ours) == 1 and "log_every_n_steps=50" in ours[0]
        assert not [message for message in messages if message.startswith("The number of training batches")]
        # The filter is gone with the fit: Lightning's message shows again outside it.
        from lightning.pytorch.utilities.warnings import PossibleUserWarning

        warnings.warn("The number of training batches (3) " + _LIGHTNING_INTERVAL, PossibleUserWarning, stacklevel=1)
        assert str(caught[-1].message).endswith(_LIGHTNING_INTERVAL)


def test_without_the_callback_lightnings_warning_is_untouched(tmp_path: Path) -> None:
    kwargs = trainer_kwargs(max_epochs=1, logger=CSVLogger(tmp_path), log_every_n_steps=50)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pl.Trainer(**kwargs).fit(ToyModel(), datamodule=toy_datamodule())
    assert any(_LIGHTNING_INTERVAL in str(warning.message) for warning in caught)


# ----------------------------------------------------------------------------------------------------
# Compact checkpoint state.
@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=0, max_size=300))
def test_bit_packing_round_trips(bits: list[bool]) -> None:
    mask = torch.tensor(bits, dtype=torch.bool)
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-len(bits) // 8)
    assert torch.equal(unpack_bits(packed, len(bits)), mask)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([torch.bool, torch.int64, torch.int32, torch.float32, torch.float64]),
    st.integers(0, 400),
    st.integers(-(2**40), 2**40),
    st.integers(0, 2**35),
    st.integers(1, 300),
)
def test_encoded_state_round_trips_exactly_through_a_weights_only_load(
    dtype: torch.dtype, size: int, low: int, span: int, distinct: int
) -> None:
    generator = torch.Generator().manual_seed(size + distinct)
    if dtype == torch.bool:
        value = torch.rand(size, generator=generator) < 0.3
    elif dtype.is_floating_point:
        table = torch.randn(distinct, generator=generator, dtype=torch.float64).to(dtype)
        value = table[torch.randint(0, distinct, (size,), generator=generator)]
    else:
        info = torch.iinfo(dtype)
        lo, hi = max(low, info.min), min(low + span, info.max)
        value = torch.randint(min(lo, hi), max(lo, hi) + 1, (size,), generator=generator, dtype=torch.int64)
        value = value.to(dtype)
    value = value.reshape(2, -1) if size % 2 == 0 and size else value
    buffer = io.BytesIO()
    torch.save({"v": encode(value, table=True)}, buffer)
    buffer.seek(0)
    restored = decode(torch.load(buffer, weights_only=True)["v"])
    assert restored.dtype == value.dtype and restored.shape == value.shape
    assert torch.equal(restored, value)


@settings(max_examples=80, deadline=None)
@given(
    num_samples=st.integers(1, 3000),
    fraction=st.floats(0.0, 1.0),
    arrangement=st.sampled_from(["ascending", "random", "duplicates"]),
    dtype=st.sampled_from([torch.int32, torch.int64]),
)
def test_subsets_round_trip_with_their_order(num_samples: int, fraction: float, arrangement: str, dtype: Any) -> None:
    generator = torch.Generator().manual_seed(num_samples)
    size = round(fraction * num_samples)
    subset = torch.randperm(num_samples, generator=generator)[:size]
    if arrangement == "ascending":
        subset = subset.sort().values
    elif arrangement == "duplicates" and size:
        subset = torch.cat([subset, subset[:1]]).sort().values
    subset = subset.to(dtype)
    encoded = encode_indices(subset, num_samples)
    buffer = io.BytesIO()
    torch.save(encoded, buffer)
    buffer.seek(0)
    restored = decode_indices(torch.load(buffer, weights_only=True))
    assert restored.dtype == subset.dtype and torch.equal(restored, subset)
    if arrangement == "ascending" and size >= 64 and num_samples // 8 < size * subset.element_size():
        assert isinstance(encoded, dict) and "mask" in encoded  # stored as bits


def _bits(value: Tensor) -> Tensor:
    """The raw bits of a 4-byte tensor (NaN payloads and -0.0 compare exactly)."""
    return value.view(torch.int32)


@settings(max_examples=120, deadline=None)
@given(
    num_samples=st.integers(1, 2000),
    fraction=st.floats(0.0, 1.0),
    ascending=st.booleans(),
    tables=st.lists(
        st.sampled_from(["losses", "signed", "minus_zero", "nan", "int32", "int16", "short", "flag"]), max_size=3
    ),
)
def test_state_round_trips_when_the_subset_rides_in_sign_bits(
    num_samples: int, fraction: float, ascending: bool, tables: list[str]
) -> None:
    """encode_state / decode_state restore every table bit for bit and the subset with its order, never touch the
    live tables, and drop the subset's mask exactly when a table with clear sign bits can carry it."""
    generator = torch.Generator().manual_seed(num_samples + len(tables))
    values: dict[str, Any] = {"epoch": 3}
    for position, kind in enumerate(tables):
        table = torch.empty(num_samples).exponential_(generator=generator)  # non-negative: can carry
        table[:: max(num_samples // 7, 1)] = math.inf
        if kind == "signed":
            table = table - 1.0
        elif kind == "minus_zero":
            table[num_samples // 2] = -0.0
        elif kind == "nan":
            table[0] = math.nan
            table.view(torch.int32)[-1] = -(2**22)  # 0xFFC00000: a NaN with its sign bit set
        elif kind == "int32":
            table = torch.randint(0, 2**31 - 1, (num_samples,), generator=generator, dtype=torch.int32)
        elif kind == "int16":
            table = torch.randint(-5, 5, (num_samples,), generator=generator, dtype=torch.int16)
        elif kind == "short":
            table = table[: num_samples // 2]
        elif kind == "flag":
            table = table < 1.0
        values[f"{kind}{position}"] = table
    originals = {name: value.clone() if isinstance(value, Tensor) else value for name, value in values.items()}
    subset = torch.randperm(num_samples, generator=generator)[: round(fraction * num_samples)].to(torch.int32)
    if ascending:
        subset = subset.sort().values
    encoded, encoded_subset = encode_state(values, subset, num_samples)
    buffer = io.BytesIO()
    torch.save({"method": encoded, "subset": encoded_subset}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    tables_back, subset_back = decode_state(loaded["method"], loaded["subset"])
    assert subset_back.dtype == subset.dtype and torch.equal(subset_back, subset)
    for name, value in originals.items():
        back = tables_back[name]
        if isinstance(value, Tensor) and value.element_size() == 4:
            assert torch.equal(_bits(values[name]), _bits(value)), name  # the live table is untouched
            assert back.dtype == value.dtype and torch.equal(_bits(back), _bits(value)), name
        else:
            assert torch.equal(back, value) if isinstance(value, Tensor) else back == value
    # The mask is dropped exactly when a whole per-sample 4-byte table has no sign bit set.
    as_mask = isinstance(encode_indices(subset, num_samples), dict) and "mask" in encode_indices(subset, num_samples)
    carriers = [
        name
        for name, value in originals.items()
        if isinstance(value, Tensor)
        and value.element_size() == 4
        and value.numel() == num_samples >= 64
        and bool((_bits(value) >= 0).all())
    ]
    carried = isinstance(encoded_subset, dict) and "flags_in" in encoded_subset
    assert carried == (as_mask and bool(carriers))
    if carried:
        assert encoded_subset["flags_in"] == carriers[0] and "mask" not in encoded_subset


def test_ucb_variance_checkpoints_eight_bytes_a_sample() -> None:
    """Mean and variance (float32 each) are the whole per-sample checkpoint: the subset rides in sign bits."""
    num_samples = 50_000
    method = hand_driven(UCBVariance(0.5, seed=0), num_samples)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    assert buffer.getbuffer().nbytes <= 8 * num_samples + 8_000  # the constant: pickle framing and history
    buffer.seek(0)
    restored = UCBVariance(0.5, seed=0)
    restored.prepare(num_samples, max_epochs=100)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(restored.current_subset, method.current_subset)
    assert torch.equal(restored.loss_mean, method.loss_mean)
    assert torch.equal(restored.loss_variance, method.loss_variance)
    assert torch.equal(restored.decide(2).indices, method.decide(2).indices)


def hand_driven(method: PruningCallback, num_samples: int) -> PruningCallback:
    """A method after one harvested epoch and a decided pruned epoch, driven without a Trainer."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (num_samples,), generator=generator) if method.needs_labels else None
    method.prepare(num_samples, labels=labels, max_epochs=100)
    method.subset_for_epoch(_NoCheckpoint(), 0)  # type: ignore[arg-type]
    indices = torch.arange(num_samples)
    losses = torch.empty(num_samples).exponential_(generator=generator)
    method.update(Harvest(epoch=0, indices=indices, losses=losses, batch_idx=indices // 64, steps=indices // 64))
    method.subset_for_epoch(_NoCheckpoint(), 1)  # type: ignore[arg-type]
    return method


class _NoCheckpoint:
    ckpt_path = None


@pytest.mark.parametrize("make", [lambda: InfoBatch(prune_ratio=0.5, seed=0), lambda: RandomPruning(0.5, seed=0)])
def test_checkpointed_state_is_compact_and_restores_the_same_epoch(make: Any) -> None:
    num_samples = 20_000
    method = hand_driven(make(), num_samples)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    size = buffer.getbuffer().nbytes
    # The subset as int32 (4 B per kept sample), weights as 1-byte codes, bool tables as bits.
    kept = method.current_subset.numel()
    assert method.current_subset.dtype == torch.int32
    method_tables = sum(
        value.numel() * value.element_size()
        for value in (getattr(method, name) for name in method.state_attributes)
        if isinstance(value, Tensor) and value.dtype != torch.bool
    )
    assert size <= method_tables + 4 * kept + kept + num_samples // 8 + 8_000
    buffer.seek(0)
    restored = make()
    restored.prepare(num_samples, labels=getattr(method.class_layout, "labels", None), max_epochs=100)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(restored.current_subset, method.current_subset)
    assert restored.subset_in_random_order == method.subset_in_random_order
    assert (restored._weights is None) == (method._weights is None)
    if method._weights is not None:
        assert torch.equal(restored._weights, method._weights)
    for name in method.state_attributes:
        ours, theirs = getattr(method, name), getattr(restored, name)
        assert torch.equal(ours, theirs) if isinstance(ours, Tensor) else ours == theirs
    assert torch.equal(restored.decide(2).indices, method.decide(2).indices)


def test_a_version_2_checkpoint_still_loads() -> None:
    method = hand_driven(InfoBatch(prune_ratio=0.5, seed=0), 1000)
    state = method.state_dict()
    old = {
        **{key: value for key, value in state.items() if key != "subset_in_random_order"},
        "version": 2,
        "subset": method.current_subset.to(torch.int64),
        "weights": method._weights.clone() if method._weights is not None else None,
        "method": {name: getattr(method, name).clone() for name in method.state_attributes},
    }
    restored = InfoBatch(prune_ratio=0.5, seed=0)
    restored.prepare(1000, max_epochs=100)
    restored.load_state_dict(old)
    assert restored.current_subset.dtype == torch.int32
    assert torch.equal(restored.current_subset, method.current_subset)
    assert torch.equal(restored.scores, method.scores) and torch.equal(restored.scored, method.scored)


def test_a_version_3_checkpoint_still_loads() -> None:
    """Version 3 stored the subset's mask beside the tables (no sign-bit carrier)."""
    method = hand_driven(UCBVariance(0.5, seed=0), 5000)
    state = method.state_dict()
    assert "flags_in" in state["subset"]  # version 4 carries the mask in a table's sign bits
    old = {
        **state,
        "version": 3,
        "subset": encode_indices(method.current_subset, 5000),
        "method": {name: encode(getattr(method, name)) for name in method.state_attributes},
    }
    assert "mask" in old["subset"]
    restored = UCBVariance(0.5, seed=0)
    restored.prepare(5000, max_epochs=100)
    restored.load_state_dict(old)
    assert torch.equal(restored.current_subset, method.current_subset)
    assert torch.equal(restored.loss_mean, method.loss_mean)
    assert torch.equal(restored.loss_variance, method.loss_variance)


# ----------------------------------------------------------------------------------------------------
# The sampler: positions of the served order, serving a subset already in random order.
@settings(max_examples=80, deadline=None)
@given(
    size=st.integers(1, 60),
    world=st.integers(1, 4),
    shuffle=st.booleans(),
    in_random_order=st.booleans(),
    resume_at=st.integers(0, 5),
    new_world=st.integers(1, 4),
)
def test_rank_positions_point_at_the_served_indices(
    size: int, world: int, shuffle: bool, in_random_order: bool, resume_at: int, new_world: int
) -> None:
    generator = torch.Generator().manual_seed(size * 7 + world)
    subset = torch.randperm(200, generator=generator)[:size]
    weights = torch.rand(size, generator=generator)
    dense = torch.zeros(200)
    dense[subset] = weights
    for rank in range(world):
        sampler = SubsetSampler(
            subset, epoch=3, seed=5, num_replicas=world, rank=rank, shuffle=shuffle, in_random_order=in_random_order
        )
        positions = sampler.rank_positions
        assert positions is not None  # small subsets: randperm + gather, positions tracked
        if positions is not None:
            assert torch.equal(subset[positions], sampler.rank_order)
            assert torch.equal(weights[positions], dense[sampler.rank_order.long()])
        assert list(sampler) == sampler.rank_order.tolist()
    # Resumed after some batches, possibly on another world size.
    batches = min(resume_at, -(-size // world) // 2)
    original = SubsetSampler(subset, epoch=3, seed=5, num_replicas=world, rank=0, shuffle=shuffle)
    state = original.position_state(batches, 1)
    for rank in range(new_world):
        resumed = SubsetSampler(subset, epoch=3, seed=5, num_replicas=new_world, rank=rank, shuffle=shuffle)
        if state["position"] > 0:
            resumed.resume(state, 1)
        positions = resumed.rank_positions
        assert positions is None or torch.equal(subset[positions], resumed.rank_order)


def test_a_subset_in_random_order_is_served_as_it_is_and_otherwise_shuffled() -> None:
    subset = torch.randperm(50, generator=torch.Generator().manual_seed(1))[:20].to(torch.int32)
    served = SubsetSampler(subset, epoch=2, seed=0, in_random_order=True)
    assert torch.equal(served.rank_order, subset)
    assert served.rank_positions == slice(0, 20, 1)
    shuffled = SubsetSampler(subset, epoch=2, seed=0)
    assert not torch.equal(shuffled.rank_order, subset)
    assert sorted(shuffled.rank_order.tolist()) == sorted(subset.tolist())
    in_order = SubsetSampler(subset, epoch=2, seed=0, shuffle=False, in_random_order=True)
    assert in_order.rank_order.tolist() == sorted(subset.tolist())  # shuffle=False still means index order


def test_random_pruning_serves_its_draw_without_a_second_shuffle() -> None:
    callback = RandomPruning(0.5, seed=0)
    datamodule = toy_datamodule()
    orders: list[tuple[Tensor, Tensor]] = []

    class Capture(pl.Callback):
        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            orders.append((callback.current_subset.clone(), datamodule.train_sampler.rank_order.clone()))

    pl.Trainer(callbacks=[callback, Capture()], **trainer_kwargs(max_epochs=2)).fit(ToyModel(), datamodule=datamodule)
    assert callback.subset_in_random_order
    assert all(torch.equal(subset, order) for subset, order in orders)


def test_large_epochs_are_handed_out_a_chunk_at_a_time() -> None:
    subset = torch.randperm(20_000, generator=torch.Generator().manual_seed(0))
    sampler = SubsetSampler(subset, epoch=0, seed=0)
    iterator = iter(sampler)
    first = [next(iterator) for _ in range(3)]
    assert first == sampler.rank_order[:3].tolist()
    assert first + list(iterator) == sampler.rank_order.tolist()


def test_the_in_place_shuffle_is_a_pure_function_of_subset_epoch_and_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sampler_module, "_SHUFFLE", "pcg64")  # the in-place kind (earlier versions' default)
    monkeypatch.setattr(sampler_module, "_IN_PLACE_FROM", 1000)  # the in-place path at a test's size
    subset = torch.randperm(5000, generator=torch.Generator().manual_seed(0))[:3000].sort().values.to(torch.int32)
    assert SubsetSampler(subset, epoch=4, seed=9).rank_positions is None  # shuffled in place: look up by index
    assert SubsetSampler(subset[:999], epoch=4, seed=9).rank_positions is not None
    first = SubsetSampler(subset, epoch=4, seed=9).rank_order
    assert torch.equal(first, SubsetSampler(subset.clone(), epoch=4, seed=9).rank_order)
    assert torch.equal(first.sort().values, subset)
    assert not torch.equal(first, SubsetSampler(subset, epoch=5, seed=9).rank_order)
    assert not torch.equal(first, SubsetSampler(subset, epoch=4, seed=8).rank_order)
    assert torch.equal(subset, SubsetSampler(subset, epoch=4, seed=9).subset)  # the subset itself is not touched


@pytest.mark.parametrize(("num_replicas", "rank", "resume_batches"), [(1, 0, 0), (2, 1, 0), (3, 2, 5), (2, 0, 7)])
def test_weights_replay_the_in_place_shuffle_in_rank_order(
    monkeypatch: pytest.MonkeyPatch, num_replicas: int, rank: int, resume_batches: int
) -> None:
    """Replaying the shuffle on subset-aligned values gives each served index its own value, on every rank, after
    the padding and after a mid-epoch resume, so weights can be sliced per batch with no dense table."""
    monkeypatch.setattr(sampler_module, "_SHUFFLE", "pcg64")
    monkeypatch.setattr(sampler_module, "_IN_PLACE_FROM", 1000)
    subset = torch.randperm(9000, generator=torch.Generator().manual_seed(1))[:3001].to(torch.int32)
    values = subset.to(torch.float32) * 0.5 + 1.0  # exact in float32: the value names its index
    sampler = SubsetSampler(subset, epoch=2, seed=3, num_replicas=num_replicas, rank=rank)
    if resume_batches:
        state = SubsetSampler(subset, epoch=2, seed=3, num_replicas=num_replicas, rank=rank).position_state(
            resume_batches, 16
        )
        sampler.resume(state, 16)
    replayed = sampler.replayed_in_rank_order(values)
    assert sampler.rank_positions is None and replayed is not None
    assert torch.equal(replayed, sampler.rank_order.to(torch.float32) * 0.5 + 1.0)
    assert SubsetSampler(subset[:999], epoch=2, seed=3).replayed_in_rank_order(values[:999]) is None  # randperm path
    with pytest.raises(ValueError, match="not aligned"):
        sampler.replayed_in_rank_order(values[:-1])


def test_a_mid_epoch_position_saved_before_the_in_place_shuffle_resumes_in_its_own_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Loader states without the "shuffle" key were saved by the randperm-and-gather shuffle: the resumed rest of
    the epoch must be that order's rest, or the harvest would pair losses with the wrong samples."""
    monkeypatch.setattr(sampler_module, "_SHUFFLE", "pcg64")
    monkeypatch.setattr(sampler_module, "_IN_PLACE_FROM", 100)
    subset = torch.randperm(400, generator=torch.Generator().manual_seed(2))[:150]
    generator = make_generator(7, 3, SHUFFLE_STREAM)
    legacy_order = subset[torch.randperm(150, generator=generator)]
    sampler = SubsetSampler(subset, epoch=3, seed=7)
    state = sampler.position_state(4, 10)
    assert state["shuffle"] == "pcg64"
    del state["shuffle"]
    resumed = SubsetSampler(subset, epoch=3, seed=7)
    resumed.resume(state, 10)
    assert torch.equal(resumed.rank_order.long(), legacy_order[40:])
    positions = resumed.rank_positions
    assert positions is not None and torch.equal(subset[positions], legacy_order[40:])
    current = SubsetSampler(subset, epoch=3, seed=7)
    current.resume(sampler.position_state(4, 10), 10)
    assert torch.equal(current.rank_order, sampler.rank_order[40:])


def test_epochs_shuffle_by_randperm_and_in_place_states_of_earlier_versions_resume_in_their_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default shuffle is randperm + gather at every size; a mid-epoch state saved while the default shuffled
    large subsets in place ("pcg64") still resumes with the rest of that in-place order."""
    monkeypatch.setattr(sampler_module, "_IN_PLACE_FROM", 100)
    subset = torch.randperm(400, generator=torch.Generator().manual_seed(4))[:300].to(torch.int32)
    current = SubsetSampler(subset, epoch=3, seed=7)
    permutation = torch.randperm(300, generator=make_generator(7, 3, SHUFFLE_STREAM), dtype=torch.int32)
    assert torch.equal(current.rank_order, subset[permutation.long()])
    assert current.position_state(4, 10)["shuffle"] == "torch"
    positions = current.rank_positions
    assert positions is not None and torch.equal(subset[positions], current.rank_order)  # weights: one gather
    monkeypatch.setattr(sampler_module, "_SHUFFLE", "pcg64")
    earlier = SubsetSampler(subset, epoch=3, seed=7)
    state = earlier.position_state(4, 10)
    assert state["shuffle"] == "pcg64" and not torch.equal(earlier.rank_order, current.rank_order)
    monkeypatch.setattr(sampler_module, "_SHUFFLE", "torch")
    resumed = SubsetSampler(subset, epoch=3, seed=7)
    resumed.resume(state, 10)
    assert torch.equal(resumed.rank_order, earlier.rank_order[40:])
    assert resumed.position_state(5, 10)["shuffle"] == "pcg64"  # a later save of that epoch keeps its kind


def test_weights_follow_the_in_place_shuffle_through_a_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """InfoBatch's weights reach the loss by index when the subset is shuffled in place (checked every step)."""
    monkeypatch.setattr(sampler_module, "_SHUFFLE", "pcg64")
    monkeypatch.setattr(sampler_module, "_IN_PLACE_FROM", 8)
    callback = InfoBatch(prune_ratio=0.5, seed=0)
    seen: list[bool] = []

    class Check(ToyModel):
        def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
            x, y = batch
            losses = F.cross_entropy(self(x), y, reduction="none")
            out = pruning_loss(self, losses)
            indices = self.trainer.datamodule.batch_indices(batch_idx).long()
            weights = torch.ones(96)
            if callback._weights is not None:
                weights[callback.current_subset.long()] = callback._weights
            torch.testing.assert_close(out["loss"], (losses * weights[indices]).mean())
            seen.append(self.trainer.datamodule.train_sampler.rank_positions is None)
            return out

    pl.Trainer(callbacks=[callback], **trainer_kwargs(max_epochs=4)).fit(Check(), datamodule=toy_datamodule())
    assert all(seen) and any(record.get("max_weight", 1.0) > 1.0 for record in callback.history)
