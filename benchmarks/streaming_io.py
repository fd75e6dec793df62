"""IO amplification of pruned epochs over a LitData StreamingDataset: random vs chunk-aware order.

    .venv/bin/python benchmarks/streaming_io.py            # writes docs/benchmarks/streaming_io.{json,md}
    .venv/bin/python benchmarks/streaming_io.py --quick    # small dataset, one keep ratio (smoke test)

A dataset of samples of 1-4 KB is written with ``litdata.optimize`` into a temporary folder and read
back as if it were remote (``local:`` URL): LitData then fetches what it reads into a cache folder
capped by ``max_cache_size`` (a few chunks), evicting chunks like an out-of-memory run. One pruned
epoch (``RandomPruning``) is trained through ``PruningDataModule`` for every keep ratio and order,
each with an empty cache. The bytes LitData's downloader fetched are counted by
wrapping it; *amplification* is fetched bytes / payload bytes of the samples trained.

Chunks are fetched whole, as ``StreamingMapDataset`` asks by default (and as LitData does for
compressed or encrypted data). LitData's other mode for reads by index, one byte-range request per
sample, is not measured: its ``local:`` downloader serves a byte range by copying the whole file, so
only real object storage would show it. The per-rank table is computed from the orders alone (no
IO): chunks each rank touches in an epoch, summed over ranks, relative to one process.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")  # LitData asks PyPI for updates otherwise

import lightning.pytorch as pl
import litdata
import numpy as np
import torch
from litdata.streaming import downloader as litdata_downloader
from litdata.utilities.format import _convert_bytes_to_int

import lightning_pruning
from lightning_pruning import PruningDataModule, RandomPruning, SubsetSampler, pruning_loss
from lightning_pruning.data.streaming import ChunkAwareOrder, StreamingMapDataset, chunk_layout, random_order

ROOT = Path(__file__).resolve().parents[1]
MAX_ATTEMPTS = 5
EPOCH_TIMEOUT_S = 180
MARKER_BEGIN = "<!-- streaming_io:begin -->"
MARKER_END = "<!-- streaming_io:end -->"


def payload_size(index: int) -> int:
    """Payload bytes of sample ``index`` (1-4 KB, fixed by the index)."""
    return 1024 + int(np.random.default_rng(index).integers(0, 3072))


def make_sample(index: int) -> dict[str, Any]:
    rng = np.random.default_rng(index)
    size = 1024 + int(rng.integers(0, 3072))
    return {"index": index, "payload": rng.integers(0, 256, size=size, dtype=np.uint8), "y": float(index % 7)}


def collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    features = torch.tensor([float(s["payload"].mean()) / 255 for s in samples])
    return {
        "index": torch.tensor([s["index"] for s in samples]),
        "x": features,
        "y": torch.tensor([s["y"] for s in samples]),
    }


class TinyRegressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.trained: list[int] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        self.trained.extend(batch["index"].tolist())
        return pruning_loss(self, (self.weight * batch["x"] - batch["y"]) ** 2)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class FetchCounter:
    """Counts what LitData's local downloader copies into its cache (whole files) or reads (byte ranges)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.fetches = 0

    @contextmanager
    def installed(self) -> Iterator[None]:
        cls = litdata_downloader.LocalDownloader
        download_file, adownload_bytes = cls.download_file, cls.adownload_bytes
        counter = self

        def counting_download_file(self: Any, remote: str, local: str) -> None:
            fresh = not os.path.exists(local) and not remote.endswith("index.json")
            download_file(self, remote, local)
            if fresh:
                counter.fetches += 1
                counter.bytes += os.path.getsize(remote.replace("local:", ""))

        async def counting_adownload_bytes(self: Any, remote: str, offset: int, length: int, local: str) -> bytes:
            data = await adownload_bytes(self, remote, offset, length, local)
            counter.fetches += 1
            counter.bytes += len(data)
            return data

        cls.download_file = counting_download_file  # type: ignore[method-assign]
        cls.adownload_bytes = counting_adownload_bytes  # type: ignore[method-assign]
        try:
            yield
        finally:
            cls.download_file = download_file  # type: ignore[method-assign]
            cls.adownload_bytes = adownload_bytes  # type: ignore[method-assign]


def write_dataset(folder: Path, num_samples: int, chunk_bytes: str) -> None:
    litdata.optimize(
        fn=make_sample,
        inputs=list(range(num_samples)),
        output_dir=str(folder),
        chunk_bytes=chunk_bytes,
        num_workers=1,
        start_method="fork",
        mode="overwrite",
    )


def one_epoch(
    data: Path,
    cache: Path,
    keep: float,
    orderer: Callable[..., torch.Tensor],
    whole_chunks: bool,
    max_cache: str,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Trains one pruned epoch with an empty cache and counts what LitData fetched."""
    streamed = litdata.StreamingDataset(f"local:{data}", cache_dir=str(cache), max_cache_size=max_cache)
    dataset = StreamingMapDataset(streamed, whole_chunks=whole_chunks)
    datamodule = PruningDataModule(
        dataset, batch_size=32, collate_fn=collate, orderer=orderer, seed=0, num_workers=num_workers
    )
    model = TinyRegressor()
    trainer = pl.Trainer(
        callbacks=[RandomPruning(1 - keep, seed=0)],
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    counter = FetchCounter()
    with counter.installed():
        started = time.perf_counter()
        trainer.fit(model, datamodule=datamodule)
        seconds = time.perf_counter() - started
    trained = torch.tensor(model.trained)
    sample_bytes = sum(payload_size(index) for index in trained.tolist())
    return {
        "samples": trained.numel(),
        "sample_bytes": sample_bytes,
        "fetched_bytes": counter.bytes,
        "fetches": counter.fetches,
        "amplification": counter.bytes / sample_bytes,
        "seconds": seconds,
        "trained": model.trained,  # a list: it crosses a process boundary
    }


def isolated(function: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any] | str:
    """Runs one epoch in a forked process: a stalled LitData reader is stopped after ``EPOCH_TIMEOUT_S``.

    Returns:
        The epoch's measurements, or why it failed.
    """
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)

    def target() -> None:
        try:
            sender.send(function(*args))
        except Exception as error:  # reported to the parent, which retries
            sender.send(f"{type(error).__name__}: {error}")

    process = context.Process(target=target)
    process.start()
    outcome: dict[str, Any] | str = f"stalled for {EPOCH_TIMEOUT_S} s"
    if receiver.poll(EPOCH_TIMEOUT_S):
        outcome = receiver.recv()
    process.kill()
    process.join()
    return outcome


def rank_table(chunk_of: torch.Tensor, keeps: list[float], window: int, replicas: list[int]) -> list[dict[str, Any]]:
    """Chunks touched per epoch, summed over ranks, relative to the chunks of the subset (orders only)."""
    rows = []
    num_samples = chunk_of.numel()
    for keep in keeps:
        size = round(keep * num_samples)
        subset = torch.randperm(num_samples, generator=torch.Generator().manual_seed(0))[:size]
        distinct = len(set(chunk_of[subset].tolist()))
        for world in replicas:
            row: dict[str, Any] = {"keep": keep, "ranks": world}
            layouts: dict[str, Callable[..., torch.Tensor]] = {
                "random": random_order,
                "strided": ChunkAwareOrder(chunk_of, window, rank_layout="strided", num_replicas=world),
                "blocks": ChunkAwareOrder(chunk_of, window, rank_layout="blocks", num_replicas=world),
            }
            for name, orderer in layouts.items():
                touched = 0
                for rank in range(world):
                    sampler = SubsetSampler(subset, epoch=0, seed=0, num_replicas=world, rank=rank, orderer=orderer)
                    touched += len(set(chunk_of[sampler.rank_order].tolist()))
                row[name] = touched / distinct
            rows.append(row)
    return rows


def write_markdown(result: dict[str, Any], path: Path) -> str:
    s = result["settings"]
    lines = [
        "<!-- generated by benchmarks/streaming_io.py; do not edit -->",
        f"Dataset: {s['num_samples']} samples of 1-4 KB ({s['payload_mb']:.1f} MB of payload) in "
        f"{s['num_chunks']} chunks written by `litdata.optimize` (`chunk_bytes={s['chunk_bytes']}`), read through "
        f"a `local:` URL with `max_cache_size={s['max_cache_size']}` (about {s['cache_chunks']:.1f} chunks); "
        f"chunk-aware window {s['window']} chunks; one `RandomPruning` epoch per row, batch size 32, one process, "
        "an empty cache per row. *Amplification* = bytes LitData fetched / payload bytes of the samples trained; "
        "*ideal* = bytes of the chunks holding a trained sample / the same payload (each such chunk fetched once). "
        "*Failed attempts*: epochs that stopped with `FileNotFoundError` (LitData's reader deleted a chunk it was "
        f"re-reading) or stalled for {EPOCH_TIMEOUT_S} s, and were rerun with an empty cache before the measured one.",
        "",
        "| keep | order | samples | chunk fetches | fetched MB | amplification | ideal "
        "| epoch time vs chunk-aware | failed attempts |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['keep']} | {row['order']} | {row['samples']} | {row['fetches']} | "
            f"{row['fetched_bytes'] / 1e6:.2f} | {row['amplification']:.2f}x | {row['ideal']:.2f}x | "
            f"{row['time_ratio']:.1f}x | {row['failed_attempts']} |"
        )
    lines += [
        "",
        "Chunks each rank touches in one epoch, summed over the ranks, relative to the chunks holding the subset "
        "(computed from the orders, no IO; with a cache of `window` chunks per rank this is the chunk fetches "
        "relative to one process reading each needed chunk once):",
        "",
        "| keep | ranks | random | chunk-aware, strided | chunk-aware, blocks (default) |",
        "|---|---|---|---|---|",
    ]
    for row in result["ranks"]:
        lines.append(
            f"| {row['keep']} | {row['ranks']} | {row['random']:.2f}x | {row['strided']:.2f}x | {row['blocks']:.2f}x |"
        )
    lines += [
        "",
        f"Machine: {result['machine']}; torch {result['versions']['torch']}, "
        f"lightning {result['versions']['lightning']}, litdata {result['versions']['litdata']}. "
        f"Command: `{result['command']}`.",
    ]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def fill_docs_page(page: Path, report: str) -> None:
    """Replaces the generated section of ``docs/streaming.md`` with the new report."""
    if not page.exists():
        return
    text = page.read_text()
    if MARKER_BEGIN not in text or MARKER_END not in text:
        raise ValueError(f"{page} lacks the {MARKER_BEGIN} ... {MARKER_END} markers")
    head, rest = text.split(MARKER_BEGIN, 1)
    _, tail = rest.split(MARKER_END, 1)
    body = "\n".join(line for line in report.splitlines() if not line.startswith("<!-- generated"))
    page.write_text(f"{head}{MARKER_BEGIN}\n{body}\n{MARKER_END}{tail}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small dataset and one keep ratio (smoke test)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--window", type=int, default=1)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "litdata"):
        __import__("logging").getLogger(name).setLevel("ERROR")
    torch.set_num_threads(1)

    num_samples, chunk_bytes, max_cache, keeps = 1200, "100KB", "500KB", [0.3, 0.5, 0.7]
    if args.quick:
        num_samples, chunk_bytes, max_cache, keeps = 400, "100KB", "500KB", [0.5]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_dataset(data, num_samples, chunk_bytes)
        index = json.loads((data / "index.json").read_text())
        chunk_of, _ = chunk_layout(litdata.StreamingDataset(str(data)))
        chunk_sizes = torch.tensor([c["chunk_bytes"] for c in index["chunks"]], dtype=torch.float64)
        orders: dict[str, Callable[..., torch.Tensor]] = {
            "random": random_order,
            "chunk-aware": ChunkAwareOrder(chunk_of, args.window),
        }
        run = 0
        mode, whole_chunks = "whole chunks", True
        for keep in keeps:
            measured = {}
            failures: dict[str, int] = {}
            for order_name, orderer in orders.items():
                failures[order_name] = 0
                while order_name not in measured:
                    run += 1
                    cache = Path(tmp) / f"cache{run}"
                    outcome = isolated(one_epoch, data, cache, keep, orderer, whole_chunks, max_cache)
                    if isinstance(outcome, dict):
                        measured[order_name] = outcome
                        continue
                    # LitData's reader deleted a chunk it was re-reading, or waits for it forever.
                    print(f"{mode} keep={keep} {order_name}: attempt failed ({outcome})", flush=True)
                    failures[order_name] += 1
                    if failures[order_name] == MAX_ATTEMPTS:
                        raise RuntimeError(f"{order_name} at keep {keep} failed {MAX_ATTEMPTS} times: {outcome}")
            for order_name, m in measured.items():
                trained = torch.tensor(m.pop("trained"))
                needed = torch.unique(chunk_of[trained])
                ideal = float(chunk_sizes[needed].sum()) / m["sample_bytes"]
                rows.append(
                    {
                        "mode": mode,
                        "keep": keep,
                        "order": order_name,
                        **m,
                        "failed_attempts": failures[order_name],
                        "ideal": ideal,
                        "time_ratio": m["seconds"] / measured["chunk-aware"]["seconds"],
                    }
                )
                print(f"{mode:13s} keep={keep} {order_name:11s} amplification {m['amplification']:.2f}x", flush=True)
    payload = sum(payload_size(i) for i in range(num_samples))
    result: dict[str, Any] = {
        "settings": {
            "num_samples": num_samples,
            "payload_mb": payload / 1e6,
            "num_chunks": len(index["chunks"]),
            "chunk_bytes": chunk_bytes,
            "max_cache_size": max_cache,
            "cache_chunks": _convert_bytes_to_int(max_cache) / float(chunk_sizes.mean()),
            "window": args.window,
            "keeps": keeps,
        },
        "rows": rows,
        "ranks": rank_table(chunk_of, keeps, args.window, [2, 4]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "versions": {
            "torch": torch.__version__,
            "lightning": pl.__version__,
            "litdata": litdata.__version__,
            "lightning_pruning": lightning_pruning.__version__,
            "python": sys.version.split()[0],
        },
        "command": "python benchmarks/streaming_io.py" + (" --quick" if args.quick else ""),
    }
    suffix = "_quick" if args.quick else ""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"streaming_io{suffix}.json").write_text(json.dumps(result, indent=2))
    report = write_markdown(result, args.out / f"streaming_io{suffix}.md")
    if not args.quick and args.out == ROOT / "docs" / "benchmarks":
        fill_docs_page(ROOT / "docs" / "streaming.md", report)
    return result


if __name__ == "__main__":
    main()
