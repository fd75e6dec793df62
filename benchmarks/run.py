"""The benchmark: every pruning method side by side on Fashion-MNIST and Fashion-MNIST-LT.

    .venv/bin/python benchmarks/run.py --profile quick   # ~3 minutes: a few methods, 2 epochs, one seed
    .venv/bin/python benchmarks/run.py --profile full    # about an hour: every method and ratio, 2 seeds

Every finished run is appended to ``<out>/runs.jsonl`` and skipped when the command runs again, so an
interrupted benchmark resumes where it stopped. At the end the report (``results.json``,
``results.md`` and PNG plots) is rebuilt from all stored runs; see ``benchmarks/report.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from report import build_report  # noqa: E402

from lightning_pruning.experiment import run_experiment  # noqa: E402


@dataclass(frozen=True)
class RunSpec:
    """One training run of the benchmark."""

    dataset: str
    method: str | None
    kwargs: tuple[tuple[str, Any], ...]
    seed: int
    epochs: int
    train_subset: int | None = None
    test_subset: int | None = None
    label: str = ""

    @property
    def key(self) -> str:
        """Identity of the run in the results file (what makes a stored run reusable)."""
        return json.dumps(
            [self.dataset, self.method, list(self.kwargs), self.seed, self.epochs, self.train_subset, self.test_subset]
        )


@dataclass
class Profile:
    """Which runs a profile makes."""

    epochs: int
    seeds: list[int]
    datasets: list[str]
    fixed_budget: dict[str, dict[str, Any]]  # label -> (method name, extra kwargs); swept over ratios
    fixed_ratios: list[float]
    adaptive: list[tuple[str, str, dict[str, Any]]]  # (label, method, kwargs) run as given
    train_subset: int | None = None
    test_subset: int | None = None
    overhead: list[str] = field(default_factory=list)

    def specs(self) -> list[RunSpec]:
        runs: list[RunSpec] = []
        for dataset in self.datasets:
            for seed in self.seeds:
                common = dict(
                    dataset=dataset,
                    seed=seed,
                    epochs=self.epochs,
                    train_subset=self.train_subset,
                    test_subset=self.test_subset,
                )
                runs.append(RunSpec(method=None, kwargs=(), label="full", **common))
                for label, (method, extra) in self.fixed_budget.items():
                    for ratio in self.fixed_ratios:
                        kwargs = tuple(sorted({"prune_ratio": ratio, **extra}.items()))
                        runs.append(RunSpec(method=method, kwargs=kwargs, label=label, **common))
                for label, method, kwargs in self.adaptive:
                    runs.append(RunSpec(method=method, kwargs=tuple(sorted(kwargs.items())), label=label, **common))
        return runs


def fixed_budget_methods() -> dict[str, tuple[str, dict[str, Any]]]:
    """Benchmark label -> (registered method, extra constructor arguments) of the fixed-budget methods."""
    from lightning_pruning.methods import METHODS

    table: dict[str, tuple[str, dict[str, Any]]] = {"Random*": ("random", {}), "RS2": ("rs2", {})}
    if "orderdp" in METHODS:
        table["OrderDP"] = ("orderdp", {})
    if "epsilon_greedy" in METHODS:
        table["ε-greedy"] = ("epsilon_greedy", {})
    if "ucb" in METHODS:
        table["UCB"] = ("ucb", {})
    if "rcap" in METHODS:
        table["RCAP (loss)"] = ("rcap", {"class_signal": "loss"})
        table["RCAP (subset mass)"] = ("rcap", {"class_signal": "subset_mass"})
    return table


def adaptive_methods() -> list[tuple[str, str, dict[str, Any]]]:
    """InfoBatch and RePB at their defaults and at settings that move their saving towards the targets."""
    from lightning_pruning.methods import METHODS

    runs: list[tuple[str, str, dict[str, Any]]] = []
    if "infobatch" in METHODS:
        runs += [("InfoBatch", "infobatch", {"prune_ratio": r}) for r in (0.3, 0.5, 0.7, 0.9)]
    if "repb" in METHODS:
        runs += [("RePB", "repb", {"rho": rho}) for rho in (0.3, 0.5, 0.7, 0.9)]
    return runs


def make_profile(name: str) -> Profile:
    if name == "quick":
        fixed = fixed_budget_methods()
        return Profile(
            epochs=3,
            seeds=[0],
            datasets=["fashion_mnist"],
            fixed_budget={
                label: fixed[label] for label in ("Random*", "RS2", "OrderDP", "RCAP (subset mass)") if label in fixed
            },
            fixed_ratios=[0.5],
            adaptive=[entry for entry in adaptive_methods() if entry[2] in ({"prune_ratio": 0.5}, {"rho": 0.5})],
        )
    if name == "smoke":  # the test suite's: a few hundred samples
        return Profile(
            epochs=2,
            seeds=[0],
            datasets=["fashion_mnist", "fashion_mnist_lt"],
            fixed_budget={"Random*": ("random", {})},
            fixed_ratios=[0.5],
            adaptive=[],
            train_subset=300,
            test_subset=200,
        )
    if name == "rcap_sweep":  # RCAP's temperature and class signal at the hardest ratio
        return Profile(
            epochs=12,
            seeds=[0, 1],
            datasets=["fashion_mnist_lt", "fashion_mnist"],
            fixed_budget={
                "Random*": ("random", {}),
                **{
                    f"RCAP ({signal}, β={beta})": ("rcap", {"class_signal": signal, "beta": beta})
                    for signal in ("loss", "subset_mass")
                    for beta in (0.25, 0.5, 1.0, 2.0)
                },
            },
            fixed_ratios=[0.9],
            adaptive=[],
        )
    if name == "full":
        return Profile(
            epochs=12,
            seeds=[0, 1],
            datasets=["fashion_mnist", "fashion_mnist_lt"],
            fixed_budget=fixed_budget_methods(),
            fixed_ratios=[0.3, 0.5, 0.7, 0.9],
            adaptive=adaptive_methods(),
        )
    raise ValueError(f"unknown profile {name!r}")


def load_runs(path: Path) -> dict[str, dict[str, Any]]:
    runs: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                runs[record["key"]] = record
    return runs


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", choices=["quick", "full", "smoke", "rcap_sweep"])
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmark_results/<profile>)")
    parser.add_argument("--docs", type=Path, default=None, help="also write the report into this folder")
    args = parser.parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    out = args.out or ROOT / "benchmark_results" / args.profile
    out.mkdir(parents=True, exist_ok=True)
    store = out / "runs.jsonl"
    done = load_runs(store)
    specs = make_profile(args.profile).specs()
    todo = [spec for spec in specs if spec.key not in done]
    print(f"{len(specs)} runs in the '{args.profile}' profile, {len(specs) - len(todo)} already stored in {store}")
    with tqdm(total=len(specs), initial=len(specs) - len(todo), unit="run", dynamic_ncols=True) as progress:
        for spec in todo:
            progress.set_description(f"{spec.dataset} {spec.label} {dict(spec.kwargs)} seed {spec.seed}")
            result = run_experiment(
                spec.method,
                dict(spec.kwargs),
                dataset=spec.dataset,
                epochs=spec.epochs,
                seed=spec.seed,
                train_subset=spec.train_subset,
                test_subset=spec.test_subset,
            )
            record = {"key": spec.key, "label": spec.label, "profile": args.profile, **result.as_dict()}
            with store.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            done[spec.key] = record
            progress.update(1)
    if args.profile == "full" and not (out / "overhead.json").exists():
        print("overhead micro-benchmark (selection time against N, harvesting overhead) ...", flush=True)
        import overhead

        overhead.main(["--out", str(out)])
    records = [done[spec.key] for spec in specs]
    report = build_report(records, out, command=f"python benchmarks/run.py --profile {args.profile}")
    if args.docs is not None:
        args.docs.mkdir(parents=True, exist_ok=True)
        for name in ("overhead.json", "overhead.md"):
            if (out / name).exists():
                (args.docs / name).write_text((out / name).read_text())
        build_report(
            records, args.docs, command=f"python benchmarks/run.py --profile {args.profile} --docs {args.docs}"
        )
        from docs_page import write_page

        print(f"wrote {write_page()}")
    print(report.read_text())
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
