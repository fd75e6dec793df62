"""Turns stored benchmark runs into ``results.json``, ``results.md`` and PNG plots.

Every number and figure in ``docs/benchmarks.md`` comes from here; nothing is typed by hand.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

import lightning_pruning

# Two-sided 95% Student-t quantiles by degrees of freedom (no scipy dependency); 1.96 beyond 30.
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131]
_T95 += [2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def interval95(values: list[float]) -> float:
    """Half-width of the 95% t-interval of the mean (NaN with fewer than two values)."""
    if len(values) < 2:
        return float("nan")
    quantile = _T95[len(values) - 2] if len(values) - 2 < len(_T95) else 1.96
    return quantile * statistics.stdev(values) / math.sqrt(len(values))


def equal_budget_epochs(epochs: int, saved_fraction: float) -> int:
    """round(E·(1 − saved)), halves up, at least 1 (the runner's rule; see ``run.py``)."""
    return max(1, math.floor(epochs * (1.0 - saved_fraction) + 0.5))


def _full_schedule(schedule: str) -> str:
    return "onecycle_sized_full" if schedule.startswith("onecycle") else schedule


def _subset(record: dict[str, Any]) -> Any:
    return json.loads(record["key"])[5] if "key" in record else None


def _panel(record: dict[str, Any]) -> tuple[str, str, str, Any]:
    """(dataset, backbone, LR schedule of its full-data runs, train subset): runs comparable with each other."""
    return (
        record["dataset"],
        record.get("backbone", "mlp"),
        _full_schedule(record.get("lr_schedule", "cosine_epoch")),
        _subset(record),
    )


def panel_name(dataset: str, backbone: str) -> str:
    """Section name of a (dataset, backbone): the dataset for the MLP, ``dataset · cnn`` otherwise."""
    return dataset if backbone == "mlp" else f"{dataset} · {backbone}"


def curve(runs: list[dict[str, Any]]) -> dict[str, list[float]] | None:
    """Seed-mean time-to-accuracy curve of runs with per-epoch accuracy: cumulative sample passes (in
    full-data epochs), cumulative training seconds and accuracy after each epoch."""
    runs = [r for r in runs if r.get("epoch_acc") and r.get("num_train")]
    if not runs:
        return None
    length = min(len(r["epoch_acc"]) for r in runs)
    passes, seconds, acc = [], [], []
    for epoch in range(length):
        passes.append(_mean([sum(r["epoch_samples"][: epoch + 1]) / r["num_train"] for r in runs]))
        seconds.append(_mean([sum(r["epoch_seconds"][: epoch + 1]) for r in runs]))
        acc.append(_mean([r["epoch_acc"][epoch] for r in runs]))
    return {"passes": passes, "seconds": seconds, "acc": acc}


def passes_to_reach(points: dict[str, list[float]] | None, target: float) -> float | None:
    """Sample passes (full-data epochs) after which the curve first reaches ``target``; None if never."""
    if points is None:
        return None
    for passes, acc in zip(points["passes"], points["acc"], strict=True):
        if acc >= target:
            return passes
    return None


def verdict(deltas: list[float]) -> str:
    """Does pruning beat full-data training with the same sample passes? From the per-seed deltas."""
    if not deltas:
        return "no equal-budget run"
    mean = _mean(deltas)
    if len(deltas) == 1:
        return ("yes" if mean > 0 else "no" if mean < 0 else "tie") + " (1 seed, no interval)"
    half = interval95(deltas)
    if mean - half > 0:
        return "yes"
    if mean + half < 0:
        return "no"
    return "tie"


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, backbone, schedule, method label, settings, epochs): means and spreads over
    seeds; per-seed paired differences against full-data training for the same epochs ("Δ vs full")
    and for the same sample passes ("Δ vs equal budget", the run of round(E·(1 − realised saving))
    epochs of the same seed), with 95% intervals; speed-ups against the full-data run of the same seed;
    sample passes to reach 99% of full data's final accuracy."""
    full_runs = {(*_panel(r), r["seed"], r["epochs"]): r for r in records if r["method"] == "full"}
    reference_epochs: dict[tuple[str, str, str, Any], int] = {}
    for record in records:
        panel = _panel(record)
        reference_epochs[panel] = max(reference_epochs.get(panel, 0), record["epochs"])
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        settings = json.dumps(record["settings"], sort_keys=True)
        schedule = record.get("lr_schedule", "cosine_epoch")
        groups[(*_panel(record), schedule, record["label"], settings, record["epochs"])].append(record)
    full_final: dict[tuple[Any, ...], float] = {}
    for (*panel, _schedule, _label, _settings, epochs), runs in groups.items():
        if runs[0]["method"] == "full" and epochs == reference_epochs[tuple(panel)]:  # type: ignore[index]
            full_final[tuple(panel)] = _mean([r["test_acc"] for r in runs])
    rows = []
    for (dataset, backbone, full_schedule, subset, schedule, label, settings, epochs), runs in groups.items():
        panel = (dataset, backbone, full_schedule, subset)
        is_full = runs[0]["method"] == "full"
        role = "method"
        if is_full:
            role = "full" if epochs == reference_epochs[panel] else "equal_budget"
        row_settings = json.loads(settings)
        if role == "equal_budget":
            row_settings = {"epochs": epochs}
        references = [full_runs.get((*panel, r["seed"], r["epochs"])) for r in runs]
        partners = [
            full_runs.get((*panel, r["seed"], equal_budget_epochs(r["epochs"], r["saved_fraction"]))) for r in runs
        ]
        delta_full = [r["test_acc"] - f["test_acc"] for r, f in zip(runs, references, strict=True) if f is not None]
        delta_equal = [r["test_acc"] - p["test_acc"] for r, p in zip(runs, partners, strict=True) if p is not None]
        paired = [(r, p) for r, p in zip(runs, partners, strict=True) if p is not None]
        delta_equal_worst = [r["test_worst_class_acc"] - p["test_worst_class_acc"] for r, p in paired]
        speedups = [
            f["train_seconds"] / r["train_seconds"]
            for r, f in zip(runs, references, strict=True)
            if f is not None and r["train_seconds"] > 0
        ]
        saved = _mean([r["saved_fraction"] for r in runs])
        ideal = 1.0 / max(1.0 - saved, 1e-9)
        points = curve(runs)
        target = full_final.get(panel)
        reach = passes_to_reach(points, 0.99 * target) if target is not None else None
        rows.append(
            {
                "dataset": dataset,
                "backbone": backbone,
                "lr_schedule": schedule,
                "method": label,
                "role": role,
                "settings": row_settings,
                "epochs": epochs,
                "seeds": sorted(r["seed"] for r in runs),
                "test_acc": _mean([r["test_acc"] for r in runs]),
                "test_acc_spread": _spread([r["test_acc"] for r in runs]),
                "worst_class_acc": _mean([r["test_worst_class_acc"] for r in runs]),
                "worst_class_acc_spread": _spread([r["test_worst_class_acc"] for r in runs]),
                "saved_fraction": saved,
                "saved_fraction_min": min(r["saved_fraction"] for r in runs),
                "saved_fraction_max": max(r["saved_fraction"] for r in runs),
                "delta_full": _mean(delta_full),
                "delta_full_ci95": interval95(delta_full),
                "delta_full_seeds": len(delta_full),
                "delta_equal": _mean(delta_equal),
                "delta_equal_ci95": interval95(delta_equal),
                "delta_equal_worst": _mean(delta_equal_worst),
                "delta_equal_worst_ci95": interval95(delta_equal_worst),
                "equal_budget_epochs": [
                    equal_budget_epochs(r["epochs"], r["saved_fraction"]) for r in runs if r["method"] != "full"
                ],
                "equal_budget_seeds": len(delta_equal),
                "beats_equal_budget": verdict(delta_equal) if role == "method" else "",
                "passes_to_99": reach,
                "curve": points,
                "train_seconds": _mean([r["train_seconds"] for r in runs]),
                "speedup": _mean(speedups),
                "ideal_speedup": ideal,
                "speedup_vs_ideal": _mean(speedups) / ideal,
                "pruning_seconds": _mean([r["pruning_seconds"] for r in runs]),
                "pruning_share": _mean([r["pruning_seconds"] / r["train_seconds"] for r in runs if r["train_seconds"]]),
                "schedule_steps": _mean([float(r.get("schedule_steps", 0)) for r in runs]),
                "optimizer_steps": _mean([float(r.get("optimizer_steps", 0)) for r in runs]),
                "final_lr": _mean([r["epoch_lr"][-1] for r in runs if r.get("epoch_lr")]),
            }
        )
    order = {"full": 0, "method": 1, "equal_budget": 2}
    rows.sort(
        key=lambda row: (
            row["dataset"],
            row["backbone"],
            order[row["role"]],
            row["method"],
            row["lr_schedule"],
            row["saved_fraction"],
            row["epochs"],
        )
    )
    return rows


def _settings_text(settings: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in settings.items() if key not in ("class_signal", "bonus")) or "-"


def _points(value: float) -> str:
    return f"{100 * value:+.2f}"


def _delta_text(mean: float, half: float, seeds: int, wanted: int) -> str:
    if seeds == 0:
        return "missing"
    text = _points(mean) + ("" if math.isnan(half) else f" ± {100 * half:.2f}")
    return text + ("" if seeds == wanted else f" ({seeds} of {wanted} seeds)")


def _passes_text(value: float | None, row: dict[str, Any]) -> str:
    if row["curve"] is None:
        return "-"
    return "not reached" if value is None else f"{value:.1f}"


def panels(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (dataset, backbone) pairs of the rows, MLP first."""
    return sorted({(row["dataset"], row["backbone"]) for row in rows}, key=lambda p: (p[1] != "mlp", p))


def markdown_table(rows: list[dict[str, Any]], dataset: str, backbone: str = "mlp") -> list[str]:
    lines = [
        "| method | settings | test acc % | Δ vs full | Δ vs equal budget | beats training less? | worst-class % "
        "| saved % | passes to 99% | train s | speed-up | of ideal | pruning logic |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if (row["dataset"], row["backbone"]) != (dataset, backbone) or row["role"] == "equal_budget":
            continue
        if row["lr_schedule"] != "cosine_epoch":
            continue
        seeds = len(row["seeds"])
        is_full = row["role"] == "full"
        versus_full = _delta_text(row["delta_full"], row["delta_full_ci95"], row["delta_full_seeds"], seeds)
        versus_equal = _delta_text(row["delta_equal"], row["delta_equal_ci95"], row["equal_budget_seeds"], seeds)
        lines.append(
            f"| {row['method']} | {_settings_text(row['settings'])} "
            f"| {100 * row['test_acc']:.2f} ± {100 * row['test_acc_spread']:.2f} "
            f"| {'' if is_full else versus_full} | {'' if is_full else versus_equal} "
            f"| {row['beats_equal_budget']} "
            f"| {100 * row['worst_class_acc']:.2f} ± {100 * row['worst_class_acc_spread']:.2f} "
            f"| {100 * row['saved_fraction']:.1f} | {_passes_text(row['passes_to_99'], row)} "
            f"| {row['train_seconds']:.1f} | {row['speedup']:.2f}x "
            f"| {row['speedup_vs_ideal']:.2f} | {row['pruning_seconds']:.2f} s ({100 * row['pruning_share']:.1f}%) |"
        )
    return lines


def equal_budget_table(rows: list[dict[str, Any]], dataset: str, backbone: str) -> list[str]:
    """Full-data training for fewer epochs: the equal-budget runs themselves."""
    shorter = [
        row
        for row in rows
        if (row["dataset"], row["backbone"]) == (dataset, backbone)
        and row["role"] in ("equal_budget", "full")
        and row["lr_schedule"] == "cosine_epoch"
    ]
    if len(shorter) < 2:
        return []
    lines = ["| full-data epochs | test acc % | worst-class % | seeds |", "|---|---|---|---|"]
    for row in sorted(shorter, key=lambda r: r["epochs"]):
        lines.append(
            f"| {row['epochs']} | {100 * row['test_acc']:.2f} ± {100 * row['test_acc_spread']:.2f} "
            f"| {100 * row['worst_class_acc']:.2f} ± {100 * row['worst_class_acc_spread']:.2f} "
            f"| {len(row['seeds'])} |"
        )
    return lines


#: SeTa's ``prune_ratio`` sets only its random step; the window drops more. The benchmark runs it (5 clusters, a
#: 0.9 window) at the ``prune_ratio`` that realises about each target saving, and files it under that target.
SETA_PRUNE_RATIO_FOR_TARGET = {0.3: 0.0, 0.5: 0.3, 0.7: 0.6}


def _ratio(row: dict[str, Any]) -> float | None:
    """The prune-ratio column of a row: ``prune_ratio`` (InfoBatch's too), RePB's ``rho``, SeTa's target."""
    settings = row["settings"]
    value = settings.get("prune_ratio", settings.get("rho"))
    if value is None:
        return None
    if row["method"] == "SeTa":
        target = {setting: target for target, setting in SETA_PRUNE_RATIO_FOR_TARGET.items()}
        return target.get(float(value), float(value))
    return float(value)


def verdict_table(rows: list[dict[str, Any]]) -> list[str]:
    """Per (dataset, backbone), per method and prune ratio: does pruning beat full-data training with the
    same sample passes? Generated from the per-seed paired differences."""
    method_rows = [r for r in rows if r["role"] == "method" and r["lr_schedule"] == "cosine_epoch"]
    if not any(r["equal_budget_seeds"] for r in method_rows):
        return ["*No equal-budget runs in these results yet: run the profile again (it adds them) to get the verdict.*"]
    counts = sorted({r["equal_budget_seeds"] for r in method_rows if r["equal_budget_seeds"]})
    seeds = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    lines = [
        "*yes*: the 95% interval of Δ vs equal budget (pruned minus full-data training with the same sample "
        f"passes, paired by seed) lies above 0; *no*: below 0; *tie*: it contains 0 (with {seeds} seeds the "
        "t-interval is wide: small differences read as ties). Each cell: the verdict on mean accuracy, "
        "Δ mean accuracy and Δ worst-class accuracy in points, and the realised saving. The ratio is "
        "`prune_ratio` (for InfoBatch the chance of dropping a below-mean sample, not its saving), RePB's "
        "`rho`, and for SeTa the saving its settings aim at (`prune_ratio` "
        + " / ".join(f"{setting}" for setting in SETA_PRUNE_RATIO_FOR_TARGET.values())
        + " with 5 clusters and a 0.9 window for "
        + " / ".join(f"{target}" for target in SETA_PRUNE_RATIO_FOR_TARGET)
        + ").",
    ]
    for dataset, backbone in panels(method_rows):
        subset = [r for r in method_rows if (r["dataset"], r["backbone"]) == (dataset, backbone)]
        ratios: list[float | None] = sorted({_ratio(r) for r in subset if _ratio(r) is not None})  # type: ignore[type-var]
        if any(_ratio(r) is None for r in subset):
            ratios.append(None)
        lines += ["", f"**{panel_name(dataset, backbone)}**", ""]
        lines.append("| method | " + " | ".join("at defaults" if r is None else f"ratio {r}" for r in ratios) + " |")
        lines.append("|---|" + "---|" * len(ratios))
        for method in sorted({r["method"] for r in subset}):
            cells = []
            for ratio in ratios:
                match = [r for r in subset if r["method"] == method and _ratio(r) == ratio]
                if not match:
                    cells.append("")
                    continue
                row = match[0]
                if not row["equal_budget_seeds"]:
                    cells.append("equal-budget run missing")
                    continue
                cells.append(
                    f"{row['beats_equal_budget']} ({_points(row['delta_equal'])} / "
                    f"{_points(row['delta_equal_worst'])}, {100 * row['saved_fraction']:.0f}% saved)"
                )
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def lr_schedule_table(rows: list[dict[str, Any]]) -> list[str]:
    """Methods under several LR schedules: accuracy, the schedule's planned and real steps, final LR."""
    scheduled = [r for r in rows if r["role"] != "equal_budget"]
    if len({r["lr_schedule"] for r in scheduled}) < 2:
        return []
    lines = [
        "| dataset | method | settings | LR schedule | test acc % | Δ vs full (same schedule) | planned steps "
        "| real steps | final LR |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(scheduled, key=lambda r: (r["dataset"], r["role"] != "full", r["method"], _ratio(r) or 0)):
        delta = (
            ""
            if row["role"] == "full"
            else _delta_text(row["delta_full"], row["delta_full_ci95"], row["delta_full_seeds"], len(row["seeds"]))
        )
        planned = f"{row['schedule_steps']:.0f}" if row["schedule_steps"] else "per epoch"
        lines.append(
            f"| {panel_name(row['dataset'], row['backbone'])} | {row['method']} | {_settings_text(row['settings'])} "
            f"| {row['lr_schedule']} | {100 * row['test_acc']:.2f} ± {100 * row['test_acc_spread']:.2f} | {delta} "
            f"| {planned} | {row['optimizer_steps']:.0f} | {row['final_lr']:.4f} |"
        )
    return lines


def plot_accuracy(rows: list[dict[str, Any]], dataset: str, key: str, path: Path, backbone: str = "mlp") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [
        row
        for row in rows
        if (row["dataset"], row["backbone"]) == (dataset, backbone) and row["lr_schedule"] == "cosine_epoch"
    ]
    figure, axis = plt.subplots(figsize=(8.5, 4.5))
    full = [row for row in mine if row["role"] == "full"]
    if full:
        axis.axhline(100 * full[0][key], color="black", linestyle="--", linewidth=1, label="full data")
    shorter = sorted((row["saved_fraction_epochs"], row[key]) for row in _equal_budget_points(mine))
    if shorter:
        axis.plot(
            [100 * s for s, _ in shorter],
            [100 * v for _, v in shorter],
            color="black",
            marker="s",
            linewidth=1.5,
            label="full data, fewer epochs (equal budget)",
        )
    methods = sorted({row["method"] for row in mine if row["role"] == "method"})
    for method in methods:
        points = sorted((row["saved_fraction"], row[key]) for row in mine if row["method"] == method)
        axis.plot([100 * s for s, _ in points], [100 * v for _, v in points], marker="o", label=method)
    axis.set_xlabel("saved fraction of sample passes (%)")
    axis.set_ylabel("test accuracy (%)" if key == "test_acc" else "worst-class test accuracy (%)")
    axis.set_title(
        f"{panel_name(dataset, backbone)}: {'mean' if key == 'test_acc' else 'worst-class'} accuracy against saving"
    )
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: the lines stay visible
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _equal_budget_points(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Full-data rows of fewer epochs, with the saving their epoch count stands for."""
    full = [row for row in rows if row["role"] == "full"]
    if not full:
        return []
    epochs = full[0]["epochs"]
    return [
        {**row, "saved_fraction_epochs": 1.0 - row["epochs"] / epochs} for row in rows if row["role"] == "equal_budget"
    ]


def plot_time_to_accuracy(rows: list[dict[str, Any]], dataset: str, backbone: str, ratio: float, path: Path) -> bool:
    """Accuracy against cumulative sample passes and against training wall-clock, every method at
    ``ratio`` (and those run at their defaults), with the full-data and equal-budget curves."""
    mine = [
        row
        for row in rows
        if (row["dataset"], row["backbone"]) == (dataset, backbone)
        and row["lr_schedule"] == "cosine_epoch"
        and row["curve"] is not None
    ]
    methods = [row for row in mine if row["role"] == "method" and _ratio(row) in (ratio, None)]
    if not methods:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    full = [row for row in mine if row["role"] == "full"]
    references: list[tuple[dict[str, Any], dict[str, Any]]] = []
    if full:
        references.append(
            (
                full[0],
                dict(
                    color="black", linewidth=2, marker="s", markersize=3, label=f"full data, {full[0]['epochs']} epochs"
                ),
            )
        )
        budget = equal_budget_epochs(full[0]["epochs"], ratio)
        partner = [row for row in mine if row["role"] == "equal_budget" and row["epochs"] == budget]
        if partner:
            references.append(
                (
                    partner[0],
                    dict(
                        color="black",
                        linestyle="--",
                        linewidth=2,
                        marker="D",
                        markersize=4,
                        label=f"full data, {budget} epoch{'s' if budget > 1 else ''} (equal budget)",
                    ),
                )
            )
    for axis, x in zip(axes, ("passes", "seconds"), strict=True):
        for row, style in references:
            axis.plot(row["curve"][x], [100 * a for a in row["curve"]["acc"]], **style)
        for row in sorted(methods, key=lambda r: r["method"]):
            label = row["method"] + ("" if _ratio(row) is not None else " (defaults)")
            label += f", {100 * row['saved_fraction']:.0f}% saved"
            axis.plot(row["curve"][x], [100 * a for a in row["curve"]["acc"]], marker=".", linewidth=1, label=label)
        axis.set_xlabel("sample passes (full-data epochs)" if x == "passes" else "training wall-clock (s)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    low = min(min(row["curve"]["acc"]) for row in methods + [r for r, _ in references])
    high = max(max(row["curve"]["acc"]) for row in methods + [r for r, _ in references])
    if full:
        target = 99 * full[0]["test_acc"]
        for axis in axes:
            axis.axhline(target, color="grey", linestyle=":", linewidth=1, label="99% of full data's final accuracy")
    # The last 15 points matter (where the methods differ); margins keep end points off the frame.
    axes[0].set_ylim(100 * max(low, high - 0.15) - 0.5, 100 * high + 0.5)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.suptitle(
        f"{panel_name(dataset, backbone)}, prune ratio {ratio}: accuracy after every epoch (mean over seeds)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


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


def build_report(records: list[dict[str, Any]], out: Path, *, command: str, wall_seconds: float | None = None) -> Path:
    """Writes ``results.json``, ``results.md``, ``verdicts.md`` and the plots into ``out``; returns the
    Markdown path. Works on any subset of a profile's runs: rows whose equal-budget partner (or per-epoch
    accuracy, in runs older than the time-to-accuracy curves) is missing say so."""
    out.mkdir(parents=True, exist_ok=True)
    rows = summarise(records)
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"
    versions = {
        "lightning_pruning": lightning_pruning.__version__,
        "torch": torch.__version__,
        "lightning": __import__("lightning").__version__,
        "torchmetrics": __import__("torchmetrics").__version__,
    }
    epochs = sorted({row["epochs"] for row in rows if row["role"] != "equal_budget"})
    seeds = sorted({r["seed"] for r in records})
    backbones = sorted({row["backbone"] for row in rows})
    meta: dict[str, Any] = {"epochs": epochs, "seeds": seeds, "backbones": backbones}
    if wall_seconds is not None:
        meta["wall_seconds"] = wall_seconds  # the runner's measured wall-clock, over every invocation that trained
    (out / "results.json").write_text(
        json.dumps(
            {
                "command": command,
                "machine": machine,
                "versions": versions,
                "meta": meta,
                "summary": rows,
                "runs": records,
            },
            indent=1,
        )
    )
    lines = [
        "<!-- generated by benchmarks/report.py; do not edit by hand -->",
        f"Command: `{command}`. Machine: {machine}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + f". Epochs: {', '.join(str(e) for e in epochs)}; seeds: {seeds}; backbones: {', '.join(backbones)}; "
        "SGD with cosine LR per epoch, batch 128.",
        "",
        "*Δ vs full*: test accuracy minus that of full-data training for the same epochs and seed; *Δ vs "
        "equal budget*: minus that of full-data training with the same number of sample passes "
        "(round(E·(1 − realised saving)) epochs, same seed, the cosine schedule over its own length); "
        "both in points, mean ± half-width of the 95% t-interval over seeds. *Passes to 99%*: sample passes "
        "(in full-data epochs) after which the seed-mean test accuracy first reached 99% of full data's "
        "final accuracy (- where the runs predate per-epoch evaluation). Speed-up is training wall-clock "
        "(evaluation excluded) of the full-data run of the same dataset and seed divided by the method's; "
        "*of ideal* divides it by 1/(1 - saved fraction). Accuracy is mean ± standard deviation over seeds.",
    ]
    for dataset, backbone in panels(rows):
        suffix = "" if backbone == "mlp" else f"_{backbone}"
        stem = f"{dataset}{suffix}"
        lines += ["", f"### {panel_name(dataset, backbone)}", "", *markdown_table(rows, dataset, backbone)]
        shorter = equal_budget_table(rows, dataset, backbone)
        if shorter:
            lines += ["", "Full-data training for fewer epochs (the equal-budget runs):", "", *shorter]
        for key, name in (("test_acc", "accuracy"), ("worst_class_acc", "worst_class")):
            plot_accuracy(rows, dataset, key, out / f"{name}_{stem}.png", backbone)
        lines += ["", f"![accuracy](accuracy_{stem}.png) ![worst-class](worst_class_{stem}.png)"]
        ratios = sorted(
            {
                _ratio(row)  # type: ignore[misc]
                for row in rows
                if (row["dataset"], row["backbone"]) == (dataset, backbone)
                and row["role"] == "method"
                and _ratio(row) is not None
            }
        )
        figures = [
            f"tta_{stem}_r{ratio}.png"
            for ratio in ratios
            if plot_time_to_accuracy(rows, dataset, backbone, ratio, out / f"tta_{stem}_r{ratio}.png")
        ]
        if figures:
            lines += ["", "Time to accuracy (left: against sample passes; right: against training wall-clock):", ""]
            lines += [f"![time to accuracy]({name})" for name in figures]
    schedules = lr_schedule_table(rows)
    if schedules:
        lines += ["", "### LR schedules with pruned epochs", "", *schedules]
    if plot_rcap_budgets(records, out / "rcap_budgets_fashion_mnist_lt.png"):
        lines += ["", "### RCAP's per-class budget over the epochs", "", "![rcap](rcap_budgets_fashion_mnist_lt.png)"]
    overhead_file = out / "overhead.json"
    if overhead_file.exists():
        plot_selection_times(json.loads(overhead_file.read_text()), out / "selection_time.png")
        lines += ["", "### Selection time", "", "![selection time](selection_time.png)"]
    (out / "verdicts.md").write_text(
        "<!-- generated by benchmarks/report.py; do not edit by hand -->\n" + "\n".join(verdict_table(rows)) + "\n"
    )
    path = out / "results.md"
    path.write_text("\n".join(lines) + "\n")
    return path
