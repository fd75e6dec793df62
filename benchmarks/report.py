"""Turns stored benchmark runs into ``results.json``, ``results.md`` and PNG plots.

Every number and figure in ``docs/benchmarks.md`` comes from here; nothing is typed by hand.
"""

from __future__ import annotations

import json
import platform
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

import lightning_pruning


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, method label, settings): means and spreads over seeds, speed-ups against
    the full-data run of the same dataset and seed."""
    full_seconds = {(r["dataset"], r["seed"]): r["train_seconds"] for r in records if r["method"] == "full"}
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        settings = json.dumps(record["settings"], sort_keys=True)
        groups[(record["dataset"], record["label"], settings)].append(record)
    rows = []
    for (dataset, label, settings), runs in groups.items():
        speedups = [
            full_seconds[(r["dataset"], r["seed"])] / r["train_seconds"]
            for r in runs
            if (r["dataset"], r["seed"]) in full_seconds and r["train_seconds"] > 0
        ]
        saved = _mean([r["saved_fraction"] for r in runs])
        ideal = 1.0 / max(1.0 - saved, 1e-9)
        rows.append(
            {
                "dataset": dataset,
                "method": label,
                "settings": json.loads(settings),
                "seeds": sorted(r["seed"] for r in runs),
                "test_acc": _mean([r["test_acc"] for r in runs]),
                "test_acc_spread": _spread([r["test_acc"] for r in runs]),
                "worst_class_acc": _mean([r["test_worst_class_acc"] for r in runs]),
                "worst_class_acc_spread": _spread([r["test_worst_class_acc"] for r in runs]),
                "saved_fraction": saved,
                "train_seconds": _mean([r["train_seconds"] for r in runs]),
                "speedup": _mean(speedups),
                "ideal_speedup": ideal,
                "speedup_vs_ideal": _mean(speedups) / ideal,
                "pruning_seconds": _mean([r["pruning_seconds"] for r in runs]),
                "pruning_share": _mean([r["pruning_seconds"] / r["train_seconds"] for r in runs if r["train_seconds"]]),
            }
        )
    order = {"full": 0}
    rows.sort(key=lambda row: (row["dataset"], order.get(row["method"], 1), row["method"], row["saved_fraction"]))
    return rows


def _settings_text(settings: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in settings.items() if key != "class_signal") or "-"


def markdown_table(rows: list[dict[str, Any]], dataset: str) -> list[str]:
    lines = [
        "| method | settings | test acc % | worst-class % | saved % | train s | speed-up | of ideal | pruning logic |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["dataset"] != dataset:
            continue
        lines.append(
            f"| {row['method']} | {_settings_text(row['settings'])} "
            f"| {100 * row['test_acc']:.2f} ± {100 * row['test_acc_spread']:.2f} "
            f"| {100 * row['worst_class_acc']:.2f} ± {100 * row['worst_class_acc_spread']:.2f} "
            f"| {100 * row['saved_fraction']:.1f} | {row['train_seconds']:.1f} | {row['speedup']:.2f}x "
            f"| {row['speedup_vs_ideal']:.2f} | {row['pruning_seconds']:.2f} s ({100 * row['pruning_share']:.1f}%) |"
        )
    return lines


def plot_accuracy(rows: list[dict[str, Any]], dataset: str, key: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8.5, 4.5))
    full = [row for row in rows if row["dataset"] == dataset and row["method"] == "full"]
    if full:
        axis.axhline(100 * full[0][key], color="black", linestyle="--", linewidth=1, label="full data")
    methods = sorted({row["method"] for row in rows if row["dataset"] == dataset and row["method"] != "full"})
    for method in methods:
        points = sorted(
            (row["saved_fraction"], row[key]) for row in rows if row["dataset"] == dataset and row["method"] == method
        )
        axis.plot([100 * s for s, _ in points], [100 * v for _, v in points], marker="o", label=method)
    axis.set_xlabel("saved fraction of sample passes (%)")
    axis.set_ylabel("test accuracy (%)" if key == "test_acc" else "worst-class test accuracy (%)")
    axis.set_title(f"{dataset}: {'mean' if key == 'test_acc' else 'worst-class'} accuracy against saving")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: the lines stay visible
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_rcap_budgets(records: list[dict[str, Any]], path: Path) -> bool:
    """RCAP's per-class budget over the epochs of one long-tailed run (the highest prune ratio, seed 0)."""
    candidates = [
        r
        for r in records
        if r["method"] == "rcap"
        and r["dataset"] == "fashion_mnist_lt"
        and r["history"]
        and r["seed"] == min(x["seed"] for x in records)
    ]
    if not candidates:
        return False
    run = max(candidates, key=lambda r: (r["settings"].get("prune_ratio", 0), r["settings"].get("class_signal", "")))
    history = run["history"]
    classes = sorted(
        {int(name.rsplit("_", 1)[1]) for entry in history for name in entry if name.startswith("budget_class_")}
    )
    if not classes:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    epochs = [int(entry["epoch"]) for entry in history]
    for class_id in classes:
        axis.plot(
            epochs,
            [entry.get(f"budget_class_{class_id}", float("nan")) for entry in history],
            label=f"class {class_id}",
        )
    axis.set_yscale("log")
    axis.set_xlabel("epoch")
    axis.set_ylabel("samples of the class trained in the epoch")
    axis.set_title(
        f"RCAP per-class budget, Fashion-MNIST-LT, {_settings_text(run['settings'])}, "
        f"{run['settings'].get('class_signal', '')}"
    )
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def plot_selection_times(overhead: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row in overhead["selection"]:
        name = row["method"] + (f" ({row['classes']} classes)" if row["classes"] else "")
        series[name].append((row["N"], row["median_ms"]))
    for name, points in sorted(series.items()):
        points.sort()
        axis.plot([n for n, _ in points], [ms for _, ms in points], marker="o", label=name)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("N (training samples)")
    axis.set_ylabel("selection time per epoch (ms)")
    axis.set_title("Per-epoch selection time against dataset size (CPU)")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def build_report(records: list[dict[str, Any]], out: Path, *, command: str) -> Path:
    """Writes ``results.json``, ``results.md`` and the plots into ``out``; returns the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    rows = summarise(records)
    datasets = sorted({row["dataset"] for row in rows})
    machine = f"{platform.machine()}, {torch.get_num_threads()} CPU threads, Python {platform.python_version()}"
    versions = {
        "lightning_pruning": lightning_pruning.__version__,
        "torch": torch.__version__,
        "lightning": __import__("lightning").__version__,
        "torchmetrics": __import__("torchmetrics").__version__,
    }
    settings = sorted({(r["epochs"], r.get("profile", "")) for r in records})
    (out / "results.json").write_text(
        json.dumps(
            {"command": command, "machine": machine, "versions": versions, "summary": rows, "runs": records}, indent=1
        )
    )
    lines = [
        "<!-- generated by benchmarks/report.py; do not edit by hand -->",
        f"Command: `{command}`. Machine: {machine}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + f". Epochs: {', '.join(str(e) for e, _ in settings)}; seeds: "
        f"{sorted({r['seed'] for r in records})}; MLP, SGD with cosine LR per epoch, batch 128.",
        "",
        "Speed-up is training wall-clock (evaluation excluded) of the full-data run of the same dataset and "
        "seed divided by the method's; *of ideal* divides it by 1/(1 - saved fraction). Accuracy is "
        "mean ± standard deviation over seeds.",
    ]
    for dataset in datasets:
        lines += ["", f"### {dataset}", "", *markdown_table(rows, dataset)]
        for key, stem in (("test_acc", "accuracy"), ("worst_class_acc", "worst_class")):
            plot_accuracy(rows, dataset, key, out / f"{stem}_{dataset}.png")
        lines += ["", f"![accuracy]({'accuracy_' + dataset}.png) ![worst-class]({'worst_class_' + dataset}.png)"]
    if plot_rcap_budgets(records, out / "rcap_budgets_fashion_mnist_lt.png"):
        lines += ["", "### RCAP's per-class budget over the epochs", "", "![rcap](rcap_budgets_fashion_mnist_lt.png)"]
    overhead_file = out / "overhead.json"
    if overhead_file.exists():
        plot_selection_times(json.loads(overhead_file.read_text()), out / "selection_time.png")
        lines += ["", "### Selection time", "", "![selection time](selection_time.png)"]
    path = out / "results.md"
    path.write_text("\n".join(lines) + "\n")
    return path
