"""Overhead benchmark: every target of issue 14 as a ratio measured in one run, with its goal.

    .venv/bin/python benchmarks/overhead.py            # N up to 1e7; writes docs/benchmarks/overhead.{md,json}
    .venv/bin/python benchmarks/overhead.py --scale    # only the N = 1e8 runs (item 6); merged into the page
    .venv/bin/python benchmarks/overhead.py --quick    # small N, a few steps (smoke test)

All timings use one thread (``torch.set_num_threads(1)``) and take the minimum over repeats; every ratio
compares two timings taken in the same run, never across runs.

* **Selection** (items 3, 4): each registered method gets synthetic state (every sample trained once with
  an exponential loss; 10 classes for label-driven methods), then one pruned epoch is timed: the decision
  alone (``decide``) and the epoch pipeline (decision, ``SubsetSampler(...).rank_order`` and the dense
  per-sample weights of weighted methods), against ``torch.randperm(N)``: the three are called in turn in
  every round (25 rounds up to N = 1e6, 5 above), so each ratio compares minima over the same stretch of time.
* **Memory** (item 5), each method in a fresh subprocess: bytes per sample of the tensors the callback holds
  (its tables, the class layout and the base's stored subset/weights), of ``torch.save(state_dict())``
  after a decided epoch (the growth per sample from N = 1e4 to N: the few KB of framing and logged history
  are not per sample), and the peak RSS growth during one decision (``VmHWM`` reset through
  ``/proc/self/clear_refs``) against the size of the decided subset as int64 indices.
* **Scale** (item 6, ``--scale``): the same pipeline and peak RSS at N = 1e8, one subprocess per method.
* **Per-step cost** (items 1, 2): a real ``Trainer.fit`` where each training step also runs a
  re-implementation of the official InfoBatch ``update()`` work (index the weight table, store the losses
  in a score table, weighted mean) on the same losses; the step work of ours (``pruning_loss`` and the
  callback's ``on_train_batch_start`` / ``on_train_batch_end``) and of that baseline are timed in the same
  steps. The same steps count the calls that synchronise host and device on a GPU.
* **Harvesting** (context): Fashion-MNIST epochs with ``RandomPruning(prune_ratio=0)`` against none.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lightning_pruning  # noqa: E402
from benchmarks.run import code_version  # noqa: E402
from lightning_pruning.data.sampler import SubsetSampler  # noqa: E402
from lightning_pruning.methods import METHODS, Harvest, PruningCallback  # noqa: E402

GOALS = {
    "pipeline": 1.5,  # item 3: the epoch pipeline, x randperm(N)
    "decision": 1.5,  # the decision is part of that pipeline
    "rcap_1000_small": 5.0,  # item 4 at N = 1e5
    "rcap_1000_large": 1.0,  # item 4 at N = 1e7
    "checkpoint_bytes": 8.0,  # item 5, bytes per sample
    "memory_bytes": 16.0,
    "decision_peak": 2.0,  # peak RSS growth / subset index bytes
    "step_cost": 1.0,  # item 2, ours / official update()
    "step_syncs": 0.0,  # item 1, synchronising calls per step
    "class_logging": 1.05,  # issue 13 item 6: RCAP with 1000 classes, whole step / Random*'s
}


# ----------------------------------------------------------------------------------------------------
# Synthetic state and timing.
def prepared_method(name: str, num_samples: int, num_classes: int, seed: int = 0) -> PruningCallback:
    """A method with synthetic state: every sample trained once in epoch 0 with a random loss."""
    method = METHODS[name](seed=seed)
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (num_samples,), generator=generator) if method.needs_labels else None
    method.prepare(num_samples, labels=labels, max_epochs=1000)
    del labels
    method.decide(0)
    indices = torch.arange(num_samples)
    losses = torch.empty(num_samples).exponential_(generator=generator)  # right-skewed, like real losses
    batch_idx = indices // 128
    method.update(Harvest(epoch=0, indices=indices, losses=losses, batch_idx=batch_idx, steps=batch_idx))
    return method


def run_pipeline(method: PruningCallback, epoch: int) -> int:
    """One pruned epoch's work before its first step, as in a fit: the decision (stored by the base as in
    ``subset_for_epoch``), the sampler's epoch order, the epoch's loss buffer and weights, the first batch."""
    from lightning_pruning.methods.harvest import EpochBuffer

    subset = method.subset_for_epoch(SimpleNamespace(ckpt_path=None), epoch)  # type: ignore[arg-type]
    sampler = SubsetSampler(subset, epoch=epoch, seed=0, in_random_order=method.subset_in_random_order)
    order = sampler.rank_order
    EpochBuffer(
        epoch=epoch,
        sampler=sampler,
        batch_size=128,
        device=torch.device("cpu"),
        weights=method._weights,
        prefix=None,
        last_batch_idx=0,
    )
    next(iter(sampler))
    return int(order.numel())


def best_ms(function: Callable[[int], Any], repeats: int, first_epoch: int) -> float:
    """Minimum wall time in ms of ``function(epoch)`` over ``repeats`` calls (after one warm-up call)."""
    function(first_epoch)
    times = []
    for repeat in range(repeats):
        started = time.perf_counter()
        function(first_epoch + 1 + repeat)
        times.append(time.perf_counter() - started)
    return 1000 * min(times)


def randperm_ms(num_samples: int, repeats: int) -> float:
    generator = torch.Generator().manual_seed(0)
    return best_ms(lambda _: torch.randperm(num_samples, generator=generator), repeats, 0)


def rand_ms(num_samples: int, repeats: int) -> float:
    """``torch.rand(N)``: one random key per sample from torch's CPU generator, the draw most decisions make."""
    generator = torch.Generator().manual_seed(0)
    return best_ms(lambda _: torch.rand(num_samples, generator=generator), repeats, 0)


def interleaved_ms(functions: dict[str, Callable[[int], Any]], repeats: int) -> dict[str, float]:
    """Minimum wall time in ms of every ``function(epoch)``, the functions called in turn in each of ``repeats``
    rounds (after one warm-up round), each call with the next epoch number (1, 2, 3, ...: decisions see epochs in
    order, as in a fit).

    Each minimum is taken over the same stretch of time and the same number of calls, so a machine whose speed
    drifts (cores shared with other jobs, frequency scaling) favours no side of a ratio between them. A baseline
    timed on its own, or its minimum over more calls than the method gets, would.
    """
    times: dict[str, list[float]] = {name: [] for name in functions}
    epoch = 0
    for round_number in range(repeats + 1):
        for name, function in functions.items():
            epoch += 1
            started = time.perf_counter()
            function(epoch)
            if round_number:
                times[name].append(time.perf_counter() - started)
    return {name: 1000 * min(values) for name, values in times.items()}


def permutation_of(num_samples: int, generator: torch.Generator) -> Callable[[int], torch.Tensor]:
    """``epoch -> torch.randperm(num_samples)``: the baseline, called like the functions it is compared with."""
    return lambda _: torch.randperm(num_samples, generator=generator)


def rounds_for(num_samples: int, repeats: int) -> int:
    """Timing rounds at ``num_samples``: five times ``repeats`` up to N = 1e6, where a call takes milliseconds and
    a minimum over few calls is at the mercy of the machine's noise."""
    return repeats if num_samples > 1_000_000 else 5 * repeats


def selection_rows(sizes: list[int], repeats: int, rcap_sizes: list[int]) -> list[dict[str, Any]]:
    """Decision and pipeline timings of every method against randperm(N), timed in turn in the same rounds, plus
    RCAP with 1000 classes."""
    rows = []
    for num_samples in sizes:
        rounds = rounds_for(num_samples, repeats)
        keys = rand_ms(num_samples, rounds)
        generator = torch.Generator().manual_seed(0)
        for name in sorted(METHODS):
            method = prepared_method(name, num_samples, 10)
            timed = interleaved_ms(
                {
                    "randperm": permutation_of(num_samples, generator),
                    "decision": method.decide,
                    "pipeline": lambda epoch, m=method: run_pipeline(m, epoch),
                },
                rounds,
            )
            del method
            gc.collect()
            rows.append(
                {"method": name, "N": num_samples, "classes": 10 if METHODS[name].needs_labels else None}
                | {"decision_ms": timed["decision"], "pipeline_ms": timed["pipeline"], "randperm_ms": timed["randperm"]}
                | {"median_ms": timed["decision"], "min_ms": timed["decision"], "rounds": rounds}
            )
            print(
                f"  {name:<15} N={num_samples:>11,}  randperm {timed['randperm']:9.1f} ms  decision "
                f"{timed['decision']:9.1f} ms  pipeline {timed['pipeline']:9.1f} ms",
                flush=True,
            )
        keys = min(keys, rand_ms(num_samples, rounds))
        for row in rows:
            if row["N"] == num_samples:
                row["rand_ms"] = keys
    for num_samples in rcap_sizes:
        rounds = rounds_for(num_samples, repeats)
        generator = torch.Generator().manual_seed(0)
        method = prepared_method("rcap", num_samples, 1000)
        timed = interleaved_ms(
            {"randperm": permutation_of(num_samples, generator), "decision": method.decide},
            rounds,
        )
        del method
        gc.collect()
        rows.append(
            {"method": "rcap", "N": num_samples, "classes": 1000, "decision_ms": timed["decision"], "pipeline_ms": None}
            | {"median_ms": timed["decision"], "min_ms": timed["decision"], "randperm_ms": timed["randperm"]}
            | {"rounds": rounds}
        )
        print(
            f"  rcap/1000 classes N={num_samples:>11,}  randperm {timed['randperm']:9.1f} ms  decision "
            f"{timed['decision']:9.1f} ms",
            flush=True,
        )
    return rows


# ----------------------------------------------------------------------------------------------------
# Memory, in a fresh process per method.
def _proc_status(key: str) -> int:
    with open("/proc/self/status") as status:
        match = re.search(rf"{key}:\s+(\d+) kB", status.read())
    return 1024 * int(match.group(1)) if match else 0


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def held_tensor_bytes(method: PruningCallback) -> int:
    """Bytes of every tensor the callback keeps between epochs (its tables, layout, stored subset)."""
    seen: set[int] = set()
    total = 0
    values = list(vars(method).values())
    if method.class_layout is not None:
        values += list(vars(method.class_layout).values())
    for value in values:
        if isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() not in seen:
            seen.add(value.untyped_storage().data_ptr())
            total += value.untyped_storage().nbytes()
    return total


_SMALL_CHECKPOINT_N = 10_000


def checkpoint_bytes(method: PruningCallback) -> int:
    """Bytes of ``torch.save(method.state_dict())``."""
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def memory_worker(name: str, num_samples: int, pipeline: bool) -> dict[str, Any]:
    """Runs in a subprocess: tables, checkpoint and peak-RSS numbers of one method."""
    torch.set_num_threads(1)
    method = prepared_method(name, num_samples, 10)
    stub = SimpleNamespace(ckpt_path=None)
    method.subset_for_epoch(stub, 1)  # type: ignore[arg-type]  # the base stores the subset as in a fit
    gc.collect()
    held = held_tensor_bytes(method)
    checkpoint = checkpoint_bytes(method)
    # Per sample is what grows with N: the same state at a small N measures the fixed part (pickle and zip
    # framing, the history of logged statistics, a few KB), which is not per sample.
    small = prepared_method(name, _SMALL_CHECKPOINT_N, 10)
    small.subset_for_epoch(stub, 1)  # type: ignore[arg-type]
    per_sample = (checkpoint - checkpoint_bytes(small)) / (num_samples - _SMALL_CHECKPOINT_N)
    del small
    gc.collect()
    baseline = _proc_status("VmRSS")
    _reset_peak()
    started = time.perf_counter()
    if pipeline:
        kept = run_pipeline(method, 2)
    else:
        kept = int(method.decide(2).indices.numel())
    seconds = time.perf_counter() - started
    peak = _proc_status("VmHWM") - baseline
    return {
        "method": name,
        "N": num_samples,
        "kept": kept,
        "held_bytes_per_sample": held / num_samples,
        "checkpoint_bytes": checkpoint,
        "checkpoint_fixed_bytes": checkpoint - per_sample * num_samples,
        "checkpoint_bytes_per_sample": per_sample,
        "peak_growth_bytes": peak,
        "subset_index_bytes": 8 * kept,
        "peak_ratio": peak / (8 * kept),
        "seconds": seconds,
        "process_peak_rss_bytes": _proc_status("VmHWM"),
    }


def in_subprocess(name: str, num_samples: int, pipeline: bool, timeout: float) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--_worker", name, str(num_samples)]
    if pipeline:
        command.append("--_pipeline")
    # A fixed mmap threshold: every large tensor is mapped and unmapped on release, so RSS follows the
    # live tensors instead of glibc's free lists (whose dynamic threshold would hide reused memory).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    if done.returncode != 0:
        return {"method": name, "N": num_samples, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_rows(num_samples: int, timeout: float, fresh_process: bool = True) -> list[dict[str, Any]]:
    """Memory numbers of every method; ``fresh_process=False`` (smoke test) runs them in this process,
    where the peak-RSS figure means little."""
    rows = []
    for name in sorted(METHODS):
        if fresh_process:
            row = in_subprocess(name, num_samples, pipeline=False, timeout=timeout)
        else:
            row = memory_worker(name, num_samples, pipeline=False)
        rows.append(row)
        if "error" in row:
            print(f"  {name:<15} failed: {row['error']}", flush=True)
            continue
        print(
            f"  {name:<15} held {row['held_bytes_per_sample']:5.1f} B/sample  checkpoint "
            f"{row['checkpoint_bytes_per_sample']:5.1f} B/sample  decision peak {row['peak_ratio']:4.2f}x subset",
            flush=True,
        )
    return rows


def scale_rows(num_samples: int, timeout: float) -> dict[str, Any]:
    """Item 6: every method's epoch pipeline at ``num_samples`` in its own process."""
    started = time.perf_counter()
    reference = randperm_ms(num_samples, 1)
    print(f"  randperm({num_samples:,}) {reference / 1000:.1f} s", flush=True)
    rows = []
    for name in sorted(METHODS):
        row = in_subprocess(name, num_samples, pipeline=True, timeout=timeout)
        rows.append(row)
        if "error" in row:
            print(f"  {name:<15} failed: {row['error']}", flush=True)
            continue
        print(
            f"  {name:<15} pipeline {row['seconds']:6.1f} s  process peak RSS "
            f"{row['process_peak_rss_bytes'] / 2**30:5.2f} GiB  held {row['held_bytes_per_sample']:5.1f} B/sample  "
            f"peak {row['peak_ratio']:4.2f}x subset",
            flush=True,
        )
    return {"N": num_samples, "randperm_ms": reference, "rows": rows, "wall_s": time.perf_counter() - started}


# ----------------------------------------------------------------------------------------------------
# Per-step cost and synchronising calls, inside a real fit.
_SYNC_NAMES = {"item", "__bool__", "tolist", "cpu", "__int__", "__float__", "__index__", "numpy"}


class SyncRecorder(torch.overrides.TorchFunctionMode):
    """Counts tensor calls that wait for the device on a GPU (``.item()``, ``bool()``, ``.tolist()``, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if getattr(func, "__name__", "") in _SYNC_NAMES:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def step_cost(method_name: str, batch_size: int, steps: int, epochs: int = 3) -> dict[str, Any]:
    """Median per-step seconds of our step work and of the official update()'s work, same fit, same steps."""
    import lightning.pytorch as pl
    import torch.nn.functional as F
    from torch.utils.data import TensorDataset

    from lightning_pruning import PruningDataModule, pruning_loss

    num_samples = batch_size * steps
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(num_samples, 16, generator=generator)
    targets = torch.randint(0, 4, (num_samples,), generator=generator)
    dataset = TensorDataset(inputs, targets, torch.arange(num_samples))
    dataset.targets = targets  # type: ignore[attr-defined]
    ours: list[float] = []
    official: list[float] = []
    pending: list[float] = []  # start-hook times, folded into their steps after the fit
    syncs: dict[tuple[int, int], int] = {}  # (epoch, batch) -> synchronising calls, on untimed steps only
    # The official InfoBatch keeps a float32 score table and a weight table on the CPU.
    score_table = torch.zeros(num_samples)
    weight_table = torch.ones(num_samples)
    callback = METHODS[method_name](seed=0)

    def phase(trainer: pl.Trainer, batch_idx: int) -> str:
        """Steps of epochs >= 1 are timed (not the last batch, which folds the epoch in); batch 1 of each
        epoch is run under the sync recorder instead (the recorder's own overhead stays out of the timings)."""
        if batch_idx == 1:
            return "record"
        if trainer.current_epoch >= 1 and batch_idx < trainer.num_training_batches - 1:
            return "time"
        return "skip"

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(16, 4)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y, index = batch
            losses = F.cross_entropy(self.layer(x), y, reduction="none")
            mode = phase(self.trainer, batch_idx)
            # The official update(): weights of the batch, losses stored in the score table, weighted mean.
            started = time.perf_counter()
            weights = weight_table[index]
            score_table[index] = losses.detach().clone()
            baseline = (losses * weights).mean()
            middle = time.perf_counter()
            if mode == "record":
                with SyncRecorder() as recorder:
                    out = pruning_loss(self, losses)
                key = (self.current_epoch, batch_idx)
                syncs[key] = syncs.get(key, 0) + recorder.calls
            else:
                out = pruning_loss(self, losses)
            finished = time.perf_counter()
            if mode == "time":
                official.append(middle - started)
                ours.append(finished - middle)
            del baseline
            return out

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    def timed_hook(hook: Callable[..., Any], is_end: bool) -> Callable[..., Any]:
        def wrapper(trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> Any:
            batch_idx = args[-1]
            mode = phase(trainer, batch_idx)
            if mode == "record":
                with SyncRecorder() as recorder:
                    result = hook(trainer, module, *args)
                key = (trainer.current_epoch, batch_idx)
                syncs[key] = syncs.get(key, 0) + recorder.calls
                return result
            started = time.perf_counter()
            result = hook(trainer, module, *args)
            elapsed = time.perf_counter() - started
            if mode == "time":
                # The start hook runs before training_step appends the step's entry; the end hook after it.
                if is_end:
                    ours[-1] += elapsed
                else:
                    pending.append(elapsed)
            return result

        return wrapper

    callback.on_train_batch_start = timed_hook(callback.on_train_batch_start, False)  # type: ignore[method-assign]
    callback.on_train_batch_end = timed_hook(callback.on_train_batch_end, True)  # type: ignore[method-assign]
    datamodule = PruningDataModule(dataset, batch_size=batch_size, seed=0)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        num_sanity_val_steps=0,
    )
    trainer.fit(Model(), datamodule=datamodule)
    for position, elapsed in enumerate(pending[: len(ours)]):
        ours[position] += elapsed
    ours_us, official_us = 1e6 * statistics.median(ours), 1e6 * statistics.median(official)
    return {
        "method": method_name,
        "batch_size": batch_size,
        "steps": len(ours),
        "ours_us": ours_us,
        "official_update_us": official_us,
        "ratio": ours_us / official_us,
        "syncs_per_step": max(syncs.values()) if syncs else 0,
    }


def class_logging_step_cost(num_classes: int, repeats: int, per_class: int = 8, batch_size: int = 32) -> dict[str, Any]:
    """Whole training-step time of RCAP with ``num_classes`` classes against Random*, interleaved fits, one run.

    RCAP reports one budget per class every epoch; if those values went through Lightning's step-level metric
    collection, every step would pay for every key. A step is timed from one ``on_train_batch_start`` to the next
    (data, forward, backward, optimizer, every hook and Lightning's logging), with a CSV logger attached, over
    epochs >= 1 (the first step of each epoch is left out). Both methods keep half of the data, so the steps
    are the same size; the ratio of the medians is reported.
    """
    import tempfile

    import lightning.pytorch as pl
    import torch.nn.functional as F
    from torch.utils.data import TensorDataset

    from lightning_pruning import PruningDataModule, pruning_loss

    num_samples = num_classes * per_class
    generator = torch.Generator().manual_seed(0)
    targets = torch.arange(num_samples) % num_classes
    dataset = TensorDataset(torch.randn(num_samples, 16, generator=generator), targets)
    dataset.targets = targets  # type: ignore[attr-defined]

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(16, num_classes)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            return pruning_loss(self, F.cross_entropy(self.layer(x), y, reduction="none"))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class StepClock(pl.Callback):
        def __init__(self) -> None:
            self.gaps: list[float] = []
            self._last: float | None = None

        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self._last = None

        def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
            now = time.perf_counter()
            if self._last is not None and trainer.current_epoch >= 1:
                self.gaps.append(now - self._last)
            self._last = now

    seconds: dict[str, list[float]] = {"rcap": [], "random": []}
    with tempfile.TemporaryDirectory() as logs:
        for _ in range(repeats):
            for name in ("rcap", "random"):
                clock = StepClock()
                trainer = pl.Trainer(
                    max_epochs=3,
                    accelerator="cpu",
                    devices=1,
                    logger=pl.loggers.CSVLogger(logs, name=name),
                    log_every_n_steps=50,
                    enable_checkpointing=False,
                    enable_progress_bar=False,
                    enable_model_summary=False,
                    callbacks=[METHODS[name](prune_ratio=0.5, seed=0), clock],
                    num_sanity_val_steps=0,
                )
                torch.manual_seed(0)
                trainer.fit(Model(), datamodule=PruningDataModule(dataset, batch_size=batch_size, seed=0))
                seconds[name].extend(clock.gaps)
    rcap_us, random_us = (1e6 * statistics.median(seconds[name]) for name in ("rcap", "random"))
    return {
        "classes": num_classes,
        "batch_size": batch_size,
        "steps_each": len(seconds["random"]),
        "rcap_step_us": rcap_us,
        "random_step_us": random_us,
        "ratio": rcap_us / random_us,
    }


def sharded_rows(num_samples: int, world_size: int) -> list[dict[str, Any]]:
    """Item 7: the sharded decisions simulated at ``num_samples`` over ``world_size`` ranks, with the bytes
    each rank sends and the collective calls, and whether they equal the one-rank (replicated) decision."""
    from lightning_pruning import sharded as sh

    generator = torch.Generator().manual_seed(0)
    scores = torch.empty(num_samples).exponential_(generator=generator)
    labels = torch.randint(0, 1000, (num_samples,), generator=generator)
    keys = scores + torch.empty(num_samples).exponential_(generator=generator).log_().neg_()  # score + Gumbel
    per_class = torch.bincount(labels, minlength=1000) // 2
    q, s = num_samples // 2, num_samples * 5 // 8
    cases: dict[str, Callable[[list[int], sh.SimulatedGroup], list[torch.Tensor]]] = {
        "Random* (uniform subset by counter keys)": lambda b, c: sh.sharded_uniform(b, q, 0, 1, c),
        "greedy top-k, random ties (UCB, ε-greedy exploit)": lambda b, c: sh.sharded_top_k(
            sh.split(scores, b), q, c, random_ties=(0, 1), bounds=b
        ),
        "OrderDP (candidates, then top-q)": lambda b, c: sh.sharded_orderdp(sh.split(scores, b), b, q, s, 0, 1, c),
        "InfoBatch (mean, then keyed draw)": lambda b, c: (
            sh.sharded_infobatch(sh.split(scores, b), b, 0.5, 0, 1, c).kept
        ),
        "RCAP within-class draw, 1000 classes": lambda b, c: sh.sharded_class_top_k(
            sh.split(keys, b), sh.split(labels, b), per_class, c
        ),
    }
    rows = []
    for name, decide in cases.items():
        comm = sh.SimulatedGroup(world_size)
        sharded = torch.cat(decide(sh.shard_bounds(num_samples, world_size), comm))
        replicated = torch.cat(decide(sh.shard_bounds(num_samples, 1), sh.SimulatedGroup(1)))
        rows.append(
            {"decision": name, "N": num_samples, "world_size": world_size, "bytes_per_rank": comm.sent_bytes}
            | {"collective_calls": comm.calls, "equal_to_replicated": bool(torch.equal(sharded, replicated))}
        )
        print(
            f"  {name:<52} {comm.sent_bytes:>9,} B/rank  {comm.calls:>3} calls  equal {rows[-1]['equal_to_replicated']}"
        )
    return rows


def harvesting_overhead(epochs: int, repeats: int, train_subset: int | None) -> dict[str, Any]:
    """Median training-epoch seconds with RandomPruning(prune_ratio=0) against no callback."""
    from lightning_pruning.experiment import run_experiment

    plain: list[float] = []
    harvested: list[float] = []
    for repeat in range(repeats):
        for method, out in ((None, plain), ("random", harvested)):
            kwargs = {"prune_ratio": 0.0} if method else None
            result = run_experiment(method, kwargs, epochs=epochs, seed=repeat, train_subset=train_subset)
            out.extend(result.epoch_seconds)
    ratio = statistics.median(harvested) / statistics.median(plain)
    return {
        "epochs_each": len(plain),
        "median_epoch_s_without_callback": statistics.median(plain),
        "median_epoch_s_with_callback_p0": statistics.median(harvested),
        "ratio": ratio,
    }


# ----------------------------------------------------------------------------------------------------
# The targets table.
def target_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every issue-14 target as (item, what, value, goal, pass)."""
    rows: list[dict[str, Any]] = []

    def add(item: str, what: str, value: float | None, goal: float, unit: str = "x") -> None:
        # Bytes per sample are compared as shown, to the hundredth of a byte: the slope of a checkpoint's size also
        # holds the few bytes of alignment padding its tensor records get (8.000006 B for two float32 tables).
        shown = value if value is None or unit != "B" else round(value, 2)
        passed = None if shown is None else shown <= goal + 1e-12
        rows.append({"item": item, "target": what, "value": value, "goal": goal, "unit": unit, "pass": passed})

    for row in result["selection"]:
        if row["classes"] == 1000:
            key = "rcap_1000_small" if row["N"] <= 100_000 else "rcap_1000_large"
            add(
                "4",
                f"rcap, 1000 classes, decision / randperm, N={row['N']:.0e}",
                row["decision_ms"] / row["randperm_ms"],
                GOALS[key],
            )
            continue
        for kind in ("pipeline", "decision"):
            add(
                "3",
                f"{row['method']} {kind} / randperm, N={row['N']:.0e}",
                row[f"{kind}_ms"] / row["randperm_ms"],
                GOALS[kind],
            )
    for row in result.get("memory", []):
        if "error" in row:
            add("5", f"{row['method']} memory (failed: {row['error']})", None, GOALS["memory_bytes"], "B")
            continue
        n = f"N={row['N']:.0e}"
        add(
            "5",
            f"{row['method']} checkpoint bytes/sample (growth with N), {n}",
            row["checkpoint_bytes_per_sample"],
            GOALS["checkpoint_bytes"],
            "B",
        )
        add("5", f"{row['method']} held bytes/sample, {n}", row["held_bytes_per_sample"], GOALS["memory_bytes"], "B")
        add(
            "5",
            f"{row['method']} decision peak RSS / subset int64 bytes, {n}",
            row["peak_ratio"],
            GOALS["decision_peak"],
        )
    for row in result.get("sharded", []):
        what = f"sharded == replicated: {row['decision']}, {row['world_size']} ranks"
        add("7", what, 0.0 if row["equal_to_replicated"] else 1.0, 0.0, "")
    logging_row = result.get("class_logging")
    if logging_row:
        what = f"RCAP ({logging_row['classes']} classes) whole step / Random*'s, batch {logging_row['batch_size']}"
        add("13.6", what, logging_row["ratio"], GOALS["class_logging"])
    for row in result.get("steps", []):
        what = f"{row['method']} step work / official update(), batch {row['batch_size']}"
        add("2", what, row["ratio"], GOALS["step_cost"])
        add(
            "1",
            f"{row['method']} host-device syncs per step, batch {row['batch_size']}",
            row["syncs_per_step"],
            0.0,
            "",
        )
    scale = result.get("scale")
    if scale:
        for row in scale["rows"]:
            if "error" in row:
                add(
                    "6",
                    f"{row['method']} N={scale['N']:.0e} (failed: {row['error']})",
                    None,
                    GOALS["memory_bytes"],
                    "B",
                )
                continue
            add(
                "6",
                f"{row['method']} held bytes/sample, N={scale['N']:.0e}",
                row["held_bytes_per_sample"],
                GOALS["memory_bytes"],
                "B",
            )
            add(
                "6",
                f"{row['method']} pipeline peak RSS / subset int64 bytes, N={scale['N']:.0e}",
                row["peak_ratio"],
                GOALS["decision_peak"],
            )
    return rows


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "":
        return f"{value:g}"
    return f"{value:.2f}{' B' if unit == 'B' else 'x'}"


def write_markdown(result: dict[str, Any], path: Path) -> None:
    lines = [
        "<!-- generated by benchmarks/overhead.py; do not edit by hand -->",
        f"Machine: {result['machine']}; torch {result['versions']['torch']}, "
        f"lightning {result['versions']['lightning']}. Command: `{result['command']}`. One thread; "
        "every ratio compares timings of the same run (minimum over repeats; for a selection ratio, minima over "
        "the same rounds). "
        f"Load average (1, 5, 15 min) at the start, on 2 cores shared with other jobs: {result['load_average']}."
        + (f" Commit {result['commit']}." if "commit" in result else ""),
        "",
        "### Issue 14 targets",
        "",
    ]
    memory_run = result.get("memory_run")
    if memory_run:
        lines += [
            f"The memory rows (item 5) were re-measured on their own by `{memory_run['command']}` at commit "
            f"{memory_run['commit']} (load average {memory_run['load_average']}; peak RSS and bytes per sample do "
            "not depend on the load); the other rows come from the run above.",
            "",
        ]
    lines += [
        "| item | target | measured | goal | pass |",
        "|---|---|---|---|---|",
    ]
    for row in result["targets"]:
        verdict = "-" if row["pass"] is None else ("yes" if row["pass"] else "**no**")
        goal = f"≤ {_fmt(row['goal'], row['unit'])}"
        lines.append(f"| {row['item']} | {row['target']} | {_fmt(row['value'], row['unit'])} | {goal} | {verdict} |")
    lines += ["", "### Selection time per epoch (minimum, ms)", ""]
    lines.append("| method | classes | N | randperm(N) | rand(N) | decision | epoch pipeline |")
    lines.append("|---|---|---|---|---|---|---|")
    for row in result["selection"]:
        pipeline = "-" if row["pipeline_ms"] is None else f"{row['pipeline_ms']:.1f}"
        keys = f"{row['rand_ms']:.1f}" if "rand_ms" in row else "-"
        lines.append(
            f"| {row['method']} | {row['classes'] or '-'} | {row['N']:,} | {row['randperm_ms']:.1f} | {keys} | "
            f"{row['decision_ms']:.1f} | {pipeline} |"
        )
    scale = result.get("scale")
    if scale:
        lines += [
            "",
            f"### N = {scale['N']:,} on one machine (item 6; `{scale['command']}`)",
            "",
            f"`torch.randperm(N)`: {scale['randperm_ms'] / 1000:.1f} s. Load average (1, 5, 15 min) when it ended: "
            f"{scale['load_average']}"
            + (f", commit {scale['commit']}" if "commit" in scale else "")
            + ". Each method runs in its own process: synthetic state, then one epoch "
            "pipeline (decision, the sampler's order, the epoch's loss weights).",
            "",
            "| method | pipeline (s) | x randperm | process peak RSS (GiB) | held B/sample | pipeline peak / subset |",
            "|---|---|---|---|---|---|",
        ]
        for row in scale["rows"]:
            if "error" in row:
                lines.append(f"| {row['method']} | failed: {row['error']} | | | | |")
                continue
            lines.append(
                f"| {row['method']} | {row['seconds']:.1f} | {1000 * row['seconds'] / scale['randperm_ms']:.2f} | "
                f"{row['process_peak_rss_bytes'] / 2**30:.2f} | {row['held_bytes_per_sample']:.1f} | "
                f"{row['peak_ratio']:.2f} |"
            )
    if result.get("steps"):
        lines += [
            "",
            "### Per-step cost (median µs per step, same fit, same steps)",
            "",
            "| method | batch | ours | official update() | ratio | syncs/step |",
            "|---|---|---|---|---|---|",
        ]
        for row in result["steps"]:
            lines.append(
                f"| {row['method']} | {row['batch_size']} | {row['ours_us']:.1f} | {row['official_update_us']:.1f} | "
                f"{row['ratio']:.2f} | {row['syncs_per_step']} |"
            )
    if result.get("sharded"):
        first = result["sharded"][0]
        lines += [
            "",
            f"### Sharded selection, simulated (N = {first['N']:,}, {first['world_size']} ranks; docs/scaling.md)",
            "",
            "Bytes each rank sends per decision and the number of collective calls; the decision is compared with "
            "the same rule on one rank (target value 0 = identical).",
            "",
            "| decision | bytes per rank | collective calls | equal to replicated |",
            "|---|---|---|---|",
        ]
        for row in result["sharded"]:
            lines.append(
                f"| {row['decision']} | {row['bytes_per_rank']:,} | {row['collective_calls']} | "
                f"{'yes' if row['equal_to_replicated'] else '**no**'} |"
            )
    if result.get("harvest"):
        h = result["harvest"]
        lines += [
            "",
            "### Harvesting overhead (Fashion-MNIST, MLP, batch 128)",
            "",
            f"Median training epoch: {h['median_epoch_s_without_callback']:.3f} s without a callback, "
            f"{h['median_epoch_s_with_callback_p0']:.3f} s with `RandomPruning(prune_ratio=0)` "
            f"(ratio **{h['ratio']:.3f}x**, {h['epochs_each']} epochs each, interleaved).",
        ]
    path.write_text("\n".join(lines) + "\n")


def _load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small N, a few steps (smoke test)")
    parser.add_argument("--scale", action="store_true", help="only the N = 1e8 runs (item 6), merged into the page")
    parser.add_argument("--scale-n", type=int, default=100_000_000)
    parser.add_argument(
        "--memory", action="store_true", help="only the memory rows (item 5) at N = 1e7, merged into the page"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-harvest", action="store_true", help="skip the Fashion-MNIST harvesting runs")
    parser.add_argument("--_worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--_pipeline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker:
        print(json.dumps(memory_worker(args._worker[0], int(args._worker[1]), args._pipeline)))
        return {}
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    json_path = args.out / f"overhead{suffix}.json"

    if args.memory:
        # Peak RSS and bytes per sample do not depend on the machine's load, so the memory rows can be re-measured
        # on their own (e.g. beside a training benchmark); the page says which commit made them.
        result = json.loads(json_path.read_text())
        memory_n = 100_000 if args.quick else 10_000_000
        print(f"memory per method at N = {memory_n:,} (one process each):", flush=True)
        result["memory"] = memory_rows(memory_n, timeout=1200, fresh_process=True)
        result["memory_run"] = {
            "command": "python benchmarks/overhead.py --memory" + (" --quick" if args.quick else ""),
            "commit": code_version(),
            "load_average": _load_average(),
        }
        result["targets"] = target_rows(result)
        json_path.write_text(json.dumps(result, indent=2))
        write_markdown(result, args.out / f"overhead{suffix}.md")
        return {"memory": result["memory"]}

    if args.scale:
        result = json.loads(json_path.read_text()) if json_path.exists() else None
        print(f"epoch pipeline at N = {args.scale_n:,}:", flush=True)
        scale = scale_rows(args.scale_n, timeout=3000)
        scale["command"] = "python benchmarks/overhead.py --scale" + (" --quick" if args.quick else "")
        scale["load_average"] = _load_average()
        scale["commit"] = code_version()
        (args.out / f"overhead_scale{suffix}.json").write_text(json.dumps(scale, indent=2))
        if result is not None:
            result["scale"] = scale
            result["targets"] = target_rows(result)
            json_path.write_text(json.dumps(result, indent=2))
            write_markdown(result, args.out / f"overhead{suffix}.md")
        return {"scale": scale}

    result: dict[str, Any] = {
        "command": "python benchmarks/overhead.py" + (" --quick" if args.quick else ""),
        "commit": code_version(),
        "machine": f"{platform.machine()}, {threads} cores visible to torch, {platform.processor() or 'cpu'}",
        "load_average": _load_average(),
        "versions": {
            "lightning_pruning": lightning_pruning.__version__,
            "torch": torch.__version__,
            "lightning": __import__("lightning").__version__,
            "python": platform.python_version(),
        },
    }
    sizes = [10_000, 100_000] if args.quick else [1_000_000, 10_000_000]
    rcap_sizes = [10_000] if args.quick else [100_000, 10_000_000]
    print("selection (decision and epoch pipeline) against randperm(N):", flush=True)
    result["selection"] = selection_rows(sizes, 2 if args.quick else args.repeats, rcap_sizes)
    memory_n = 100_000 if args.quick else 10_000_000
    print(f"memory per method at N = {memory_n:,} (one process each):", flush=True)
    result["memory"] = memory_rows(memory_n, timeout=1200, fresh_process=not args.quick)
    print("per-step cost against the official update() (real fits):", flush=True)
    result["steps"] = []
    for method_name in ("infobatch",) if args.quick else ("infobatch", "random"):
        for batch_size in (32, 512):
            row = step_cost(method_name, batch_size, steps=20 if args.quick else 300, epochs=2 if args.quick else 3)
            result["steps"].append(row)
            print(
                f"  {method_name:<10} batch {batch_size:>4}: ours {row['ours_us']:7.1f} us, official "
                f"{row['official_update_us']:7.1f} us, ratio {row['ratio']:.2f}, syncs/step {row['syncs_per_step']}",
                flush=True,
            )
    print("per-class logging: RCAP with 1000 classes against Random*, whole steps (issue 13 item 6):", flush=True)
    result["class_logging"] = class_logging_step_cost(100 if args.quick else 1000, repeats=1 if args.quick else 3)
    row = result["class_logging"]
    print(
        f"  RCAP {row['rcap_step_us']:.0f} us, Random* {row['random_step_us']:.0f} us per step, "
        f"ratio {row['ratio']:.3f}",
        flush=True,
    )
    print("sharded selection, simulated (item 7):", flush=True)
    result["sharded"] = sharded_rows(10_000 if args.quick else 1_000_000, 8)
    if not args.no_harvest:
        print("harvesting overhead ...", flush=True)
        result["harvest"] = harvesting_overhead(
            epochs=1 if args.quick else 3, repeats=1 if args.quick else 3, train_subset=512 if args.quick else None
        )
        print(f"  ratio {result['harvest']['ratio']:.3f}x", flush=True)
    scale_path = args.out / f"overhead_scale{suffix}.json"
    if scale_path.exists():
        result["scale"] = json.loads(scale_path.read_text())
    result["targets"] = target_rows(result)
    print("\nissue 14 targets:")
    for row in result["targets"]:
        verdict = "-" if row["pass"] is None else ("pass" if row["pass"] else "FAIL")
        measured, goal = _fmt(row["value"], row["unit"]), _fmt(row["goal"], row["unit"])
        print(f"  [{row['item']}] {row['target']:<70} {measured:>9}  goal ≤ {goal:<7} {verdict}")
    json_path.write_text(json.dumps(result, indent=2))
    write_markdown(result, args.out / f"overhead{suffix}.md")
    print(f"wrote {args.out / f'overhead{suffix}.md'}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
