"""The benchmark: every pruning method side by side on Fashion-MNIST and Fashion-MNIST-LT, against
full-data training for the same epochs AND for the same number of sample passes (equal budget).

    .venv/bin/python benchmarks/run.py --profile quick          # < 3 minutes on 2 cores, one seed
    .venv/bin/python benchmarks/run.py --profile full --docs docs/benchmarks
    .venv/bin/python benchmarks/run.py --profile full --estimate   # runtime estimate, trains nothing
    .venv/bin/python benchmarks/run.py --profile lr_schedule --docs docs/benchmarks/lr_schedule

Independent runs train in parallel worker processes (``--jobs``, default: every CPU core, one torch
thread each). Every finished run is appended to ``<out>/runs.jsonl`` and skipped when the command runs
again, so an interrupted benchmark resumes where it stopped. For every pruned run the runner adds its
equal-budget partner: full-data training for round(E·(1 − realised saving)) epochs with the same
optimizer and the same LR-schedule shape over its own length; runs that coincide (same dataset,
backbone, seed and epoch count) are trained once. At the end the report (``results.json``,
``results.md``, PNG plots) is rebuilt from all stored runs; see ``benchmarks/report.py``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import multiprocessing
import os
import subprocess
import sys
import time
import warnings
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from report import SETA_PRUNE_RATIO_FOR_TARGET, build_report  # noqa: E402

from lightning_pruning.experiment import run_in_worker  # noqa: E402

# Training-set sizes (for cost estimates; the runs themselves read the data).
TRAIN_SIZES = {"fashion_mnist": 60_000, "fashion_mnist_lt": 15_087}
# Seconds per epoch over 60k images on one core, for cost estimates and the ETA; override with
# --mlp-epoch-seconds / --cnn-epoch-seconds. MLP: ENVIRONMENT.md's single-process measurement. CNN (16/32
# channels, channels-last): 1.78 s per epoch over Fashion-MNIST-LT's 15k images alone on one core (7.1 s per
# 60k), plus a fifth for two parallel jobs sharing the 2-core machine's memory bandwidth.
EPOCH_SECONDS = {"mlp": 2.0, "cnn": 8.5}
# Per-epoch evaluation of the 10k test images, in the same unit (outside the training wall-clock); the CNN's
# was measured with the epoch time above (about 1.2 s per evaluation).
EVAL_SHARE = {"mlp": 0.05, "cnn": 0.17}
# Kept fraction assumed for progress/ETA before a loss-driven method has run.
ADAPTIVE_KEPT_GUESS = 0.65


def canonical_full_schedule(schedule: str) -> str:
    """The schedule a full-data run uses for ``schedule`` (both OneCycle sizings agree without pruning)."""
    return "onecycle_sized_full" if schedule.startswith("onecycle") else schedule


def round_half_up(value: float) -> int:
    """Rounds .5 up (Python's ``round`` rounds half to even: 1.5 -> 2 but 2.5 -> 2)."""
    return math.floor(value + 0.5)


def equal_budget_epochs(epochs: int, saved_fraction: float) -> int:
    """Epochs of full-data training with the sample passes of a pruned run: round(E·(1 − saved)), >= 1."""
    return max(1, round_half_up(epochs * (1.0 - saved_fraction)))


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
    backbone: str = "mlp"
    lr_schedule: str = "cosine_epoch"
    eval_every_epoch: bool = True

    @property
    def key(self) -> str:
        """Identity of the run in the results file (what makes a stored run reusable). Non-default
        backbone and schedule are appended, so keys of older stored MLP runs stay valid."""
        parts: list[Any] = [
            self.dataset,
            self.method,
            list(self.kwargs),
            self.seed,
            self.epochs,
            self.train_subset,
            self.test_subset,
        ]
        if self.backbone != "mlp" or self.lr_schedule != "cosine_epoch":
            parts += [self.backbone, self.lr_schedule]
        return json.dumps(parts)

    def run_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`lightning_pruning.experiment.run_in_worker`."""
        return dict(
            method=self.method,
            method_kwargs=dict(self.kwargs),
            dataset=self.dataset,
            epochs=self.epochs,
            seed=self.seed,
            backbone=self.backbone,
            train_subset=self.train_subset,
            test_subset=self.test_subset,
            eval_every_epoch=self.eval_every_epoch,
            lr_schedule=self.lr_schedule,
        )

    def expected_kept(self) -> float:
        """Kept share of the sample passes, as far as it is known before the run."""
        if self.method is None:
            return 1.0
        settings = dict(self.kwargs)
        if self.method in ("infobatch", "repb", "seta"):
            return ADAPTIVE_KEPT_GUESS
        return 1.0 - float(settings.get("prune_ratio", 0.5))

    def cost(self, epoch_seconds: dict[str, float] | None = None) -> float:
        """Estimated single-core seconds of the run (training and per-epoch evaluation)."""
        seconds = (epoch_seconds or EPOCH_SECONDS).get(self.backbone, EPOCH_SECONDS["cnn"])
        size = self.train_subset or TRAIN_SIZES.get(self.dataset, 60_000)
        train = self.epochs * self.expected_kept() * size / 60_000 * seconds
        evaluate = self.epochs * EVAL_SHARE.get(self.backbone, 0.1) * seconds if self.eval_every_epoch else 0.0
        return train + evaluate + 1.0  # + start-up

    def partner(self, saved_fraction: float) -> RunSpec | None:
        """The equal-budget full-data run of this pruned run (``None`` for a full-data run)."""
        if self.method is None:
            return None
        return replace(
            self,
            method=None,
            kwargs=(),
            label="full",
            epochs=equal_budget_epochs(self.epochs, saved_fraction),
            lr_schedule=canonical_full_schedule(self.lr_schedule),
        )


@dataclass
class Block:
    """Methods run on some datasets with one backbone and LR schedule."""

    datasets: list[str]
    fixed_budget: dict[str, tuple[str, dict[str, Any]]]  # label -> (method name, extra kwargs); swept over ratios
    fixed_ratios: list[float]
    adaptive: list[tuple[str, str, dict[str, Any]]]  # (label, method, kwargs) run as given
    backbone: str = "mlp"
    lr_schedules: list[str] = field(default_factory=lambda: ["cosine_epoch"])


@dataclass
class Profile:
    """Which runs a profile makes."""

    epochs: int
    seeds: list[int]
    blocks: list[Block]
    train_subset: int | None = None
    test_subset: int | None = None
    equal_budget: bool = True
    eval_every_epoch: bool = True

    def specs(self) -> list[RunSpec]:
        """The primary runs (equal-budget partners are derived from their results)."""
        runs: list[RunSpec] = []
        for block in self.blocks:
            for dataset in block.datasets:
                for seed in self.seeds:
                    for schedule in block.lr_schedules:
                        common = dict(
                            dataset=dataset,
                            seed=seed,
                            epochs=self.epochs,
                            train_subset=self.train_subset,
                            test_subset=self.test_subset,
                            backbone=block.backbone,
                            lr_schedule=schedule,
                            eval_every_epoch=self.eval_every_epoch,
                        )
                        # A full-data run has no pruned steps: both OneCycle sizings are the same run.
                        full_common = {**common, "lr_schedule": canonical_full_schedule(schedule)}
                        runs.append(RunSpec(method=None, kwargs=(), label="full", **full_common))  # type: ignore[arg-type]
                        for label, (method, extra) in block.fixed_budget.items():
                            for ratio in block.fixed_ratios:
                                kwargs = tuple(sorted({"prune_ratio": ratio, **extra}.items()))
                                runs.append(RunSpec(method=method, kwargs=kwargs, label=label, **common))  # type: ignore[arg-type]
                        for label, method, kwargs in block.adaptive:
                            runs.append(
                                RunSpec(method=method, kwargs=tuple(sorted(kwargs.items())), label=label, **common)  # type: ignore[arg-type]
                            )
        unique = {spec.key: spec for spec in runs}  # a full-data run shared by two blocks trains once
        return list(unique.values())


def fixed_budget_methods() -> dict[str, tuple[str, dict[str, Any]]]:
    """Benchmark label -> (registered method, extra constructor arguments) of the fixed-budget methods."""
    from lightning_pruning.methods import METHODS

    table: dict[str, tuple[str, dict[str, Any]]] = {"Random*": ("random", {}), "RS2": ("rs2", {})}
    if "orderdp" in METHODS:
        table["OrderDP"] = ("orderdp", {})
    if "epsilon_greedy" in METHODS:
        table["ε-greedy"] = ("epsilon_greedy", {})
    if "ucb" in METHODS:
        if "bonus" in inspect.signature(METHODS["ucb"]).parameters:
            table["UCB (count)"] = ("ucb", {"bonus": "count"})
            table["UCB (variance)"] = ("ucb", {"bonus": "std"})
        else:
            table["UCB"] = ("ucb", {})
    if "rcap" in METHODS:
        table["RCAP (loss)"] = ("rcap", {"class_signal": "loss"})
        table["RCAP (subset mass)"] = ("rcap", {"class_signal": "subset_mass"})
    return table


#: SeTa's random-pruning ratio whose realised saving lands near each target (5 clusters, window 0.9; measured
#: on Fashion-MNIST, MLP, 12 epochs: 0.33, 0.52, 0.70 saved). Above 0.7 SeTa needs prune_ratio > 0.6.
def adaptive_methods(ratios: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9)) -> list[tuple[str, str, dict[str, Any]]]:
    """Loss-driven methods: InfoBatch, RePB and SeTa at settings that move their saving towards ``ratios``."""
    from lightning_pruning.methods import METHODS

    runs: list[tuple[str, str, dict[str, Any]]] = []
    if "infobatch" in METHODS:
        runs += [("InfoBatch", "infobatch", {"prune_ratio": r}) for r in ratios]
    if "repb" in METHODS:
        runs += [("RePB", "repb", {"rho": rho}) for rho in ratios]
    if "seta" in METHODS:
        runs += [
            ("SeTa", "seta", {"prune_ratio": SETA_PRUNE_RATIO_FOR_TARGET[r], "num_groups": 5, "window_scale": 0.9})
            for r in ratios
            if r in SETA_PRUNE_RATIO_FOR_TARGET
        ]
    return runs


def make_profile(name: str) -> Profile:
    fixed = fixed_budget_methods()
    if name == "quick":
        return Profile(
            epochs=3,
            seeds=[0],
            blocks=[
                Block(
                    datasets=["fashion_mnist"],
                    fixed_budget={
                        label: fixed[label]
                        for label in ("Random*", "RS2", "OrderDP", "RCAP (subset mass)")
                        if label in fixed
                    },
                    fixed_ratios=[0.5],
                    adaptive=[entry for entry in adaptive_methods((0.5,)) if entry[0] != "SeTa"],
                )
            ],
        )
    if name == "smoke":  # the test suite's: a few hundred samples, both backbones
        return Profile(
            epochs=2,
            seeds=[0],
            blocks=[
                Block(
                    datasets=["fashion_mnist", "fashion_mnist_lt"],
                    fixed_budget={"Random*": ("random", {})},
                    fixed_ratios=[0.5],
                    adaptive=[],
                ),
                Block(
                    datasets=["fashion_mnist_lt"],
                    fixed_budget={"Random*": ("random", {})},
                    fixed_ratios=[0.5],
                    adaptive=[],
                    backbone="cnn",
                ),
            ],
            train_subset=300,
            test_subset=200,
        )
    if name == "tiny":  # every feature end to end in about a minute: equal budget, CNN, adaptive, curves
        return Profile(
            epochs=4,
            seeds=[0, 1],
            blocks=[
                Block(
                    datasets=["fashion_mnist", "fashion_mnist_lt"],
                    fixed_budget={label: fixed[label] for label in ("Random*", "RCAP (subset mass)")},
                    fixed_ratios=[0.5, 0.7],
                    adaptive=[entry for entry in adaptive_methods((0.5,)) if entry[0] == "InfoBatch"],
                ),
                Block(
                    datasets=["fashion_mnist_lt"],
                    fixed_budget={"Random*": fixed["Random*"]},
                    fixed_ratios=[0.5],
                    adaptive=[],
                    backbone="cnn",
                ),
            ],
            train_subset=3000,
            test_subset=1000,
        )
    if name == "rcap_sweep":  # RCAP's temperature and class signal at the hardest ratio
        return Profile(
            epochs=12,
            seeds=[0, 1],
            blocks=[
                Block(
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
            ],
            equal_budget=False,
            eval_every_epoch=False,
        )
    if name == "lr_schedule":  # sizing a per-step schedule for pruned runs: full-data length vs real steps
        return Profile(
            epochs=8,
            seeds=[0, 1],
            blocks=[
                Block(
                    datasets=["fashion_mnist"],
                    fixed_budget={label: fixed[label] for label in ("Random*", "RCAP (subset mass)")},
                    fixed_ratios=[0.5, 0.7],
                    adaptive=[],
                    lr_schedules=[
                        "cosine_epoch",
                        "onecycle_sized_full",
                        "onecycle_sized_trainer",
                        "onecycle_sized_pruned",
                    ],
                )
            ],
            equal_budget=False,
        )
    if name == "full12":  # the 12-epoch, 2-seed MLP benchmark of the first docs, with equal-budget runs
        return Profile(
            epochs=12,
            seeds=[0, 1],
            blocks=[
                Block(
                    datasets=["fashion_mnist", "fashion_mnist_lt"],
                    fixed_budget=fixed,
                    fixed_ratios=[0.3, 0.5, 0.7, 0.9],
                    adaptive=adaptive_methods(),
                )
            ],
        )
    if name == "full":
        # MLP on both datasets at every ratio; the 2-conv CNN on Fashion-MNIST-LT (a quarter of the
        # images, and where the methods differ most) at 0.5 and 0.7.
        return Profile(
            epochs=30,
            seeds=[0, 1, 2],
            blocks=[
                Block(
                    datasets=["fashion_mnist", "fashion_mnist_lt"],
                    fixed_budget=fixed,
                    fixed_ratios=[0.3, 0.5, 0.7, 0.9],
                    adaptive=adaptive_methods(),
                ),
                Block(
                    datasets=["fashion_mnist_lt"],
                    fixed_budget=fixed,
                    fixed_ratios=[0.5, 0.7],
                    adaptive=adaptive_methods((0.5, 0.7)),
                    backbone="cnn",
                ),
            ],
        )
    raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")


PROFILES = ("quick", "smoke", "tiny", "rcap_sweep", "lr_schedule", "full12", "full")


def load_runs(path: Path) -> dict[str, dict[str, Any]]:
    runs: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                runs[record["key"]] = record
    return runs


def estimate(profile: Profile, epoch_seconds: dict[str, float], jobs: int) -> dict[str, float]:
    """Single-core seconds and wall-clock on ``jobs`` cores of a whole profile, partners included
    (loss-driven methods' savings guessed)."""
    primary = profile.specs()
    partners: dict[str, RunSpec] = {}
    if profile.equal_budget:
        for spec in primary:
            partner = spec.partner(1.0 - spec.expected_kept())
            if partner is not None:
                partners.setdefault(partner.key, partner)
    every = {spec.key: spec for spec in primary} | partners
    core = sum(spec.cost(epoch_seconds) for spec in every.values())
    return {"runs": float(len(every)), "core_seconds": core, "wall_seconds": core / max(1, jobs)}


def _format_seconds(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.1f} min"


def record_wall_clock(folder: Path, seconds: float, *, trained: int, jobs: int) -> float | None:
    """Appends this invocation's training wall-clock to ``folder/timing.jsonl`` (when it trained anything) and
    returns the total over every invocation that trained, so a resumed profile reports its whole runtime."""
    path = folder / "timing.jsonl"
    if trained > 0:
        entry = {"wall_seconds": seconds, "runs_trained": trained, "jobs": jobs, "commit": code_version()}
        with path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")
    if not path.exists():
        return None
    return sum(json.loads(line)["wall_seconds"] for line in path.read_text().splitlines() if line.strip())


def code_version() -> str:
    """The commit of the code that trains (``+dirty`` with uncommitted changes), stored with every run: a stored
    run is reused by its key alone, so runs made by other code can be spotted (``unknown`` outside git)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "lightning_pruning", "benchmarks"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def execute(
    specs: list[RunSpec],
    store: Path,
    done: dict[str, dict[str, Any]],
    *,
    profile_name: str,
    jobs: int,
    equal_budget: bool,
) -> list[dict[str, Any]]:
    """Trains every spec not in ``done`` (and each pruned run's equal-budget partner), ``jobs`` at a
    time, appending each result to ``store`` as it finishes. Returns the records of the specs and
    partners, in spec order."""
    wanted: dict[str, RunSpec] = {spec.key: spec for spec in specs}
    queue: deque[RunSpec] = deque()

    def add_partner(spec: RunSpec, record: dict[str, Any]) -> None:
        partner = spec.partner(float(record["saved_fraction"])) if equal_budget else None
        if partner is None or partner.key in wanted:
            return
        wanted[partner.key] = partner
        if partner.key not in done:
            queue.append(partner)
            progress.total += partner.cost()
            progress.refresh()

    todo = sorted((s for s in specs if s.key not in done), key=lambda s: -s.cost())  # long runs first
    total = sum(s.cost() for s in todo)
    print(
        f"{len(specs)} runs in the '{profile_name}' profile, {len(specs) - len(todo)} already stored in {store}; "
        f"{jobs} parallel job(s)"
        + (", plus an equal-budget full-data run per distinct pruned saving" if equal_budget else ""),
        flush=True,
    )
    progress = tqdm(
        total=total,
        unit="s",
        dynamic_ncols=True,
        bar_format="{l_bar}{bar}| est. {n:.0f}/{total:.0f} core-s [{elapsed}<{remaining}] {postfix}",
    )
    queue.extend(todo)
    for spec in specs:
        if spec.key in done:
            add_partner(spec, done[spec.key])
    threads = max(1, (os.cpu_count() or 1) // jobs)
    version = code_version()
    older = sorted({str(done[s.key].get("code", "unrecorded")) for s in specs if s.key in done} - {version})
    if older:
        print(
            f"note: stored runs of this profile were made by other code ({', '.join(older)}; now {version}). They are "
            f"reused by key; if selection behaviour changed since, move {store} away to retrain them.",
            flush=True,
        )

    def finish(spec: RunSpec, result: dict[str, Any]) -> None:
        record = {"key": spec.key, "label": spec.label, "profile": profile_name, "code": version, **result}
        with store.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        done[spec.key] = record
        progress.update(spec.cost())
        progress.set_postfix_str(f"done: {spec.dataset} {spec.backbone} {spec.label} {dict(spec.kwargs)} s{spec.seed}")
        add_partner(spec, record)

    failures: list[str] = []
    if jobs == 1:
        while queue:
            spec = queue.popleft()
            finish(spec, run_in_worker(spec.run_kwargs(), threads))
    else:
        # spawn: a fresh interpreter per worker, no forked torch thread pools.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            running: dict[Future[dict[str, Any]], RunSpec] = {}
            while queue or running:
                while queue and len(running) < jobs:
                    spec = queue.popleft()
                    running[pool.submit(run_in_worker, spec.run_kwargs(), threads)] = spec
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    spec = running.pop(future)
                    try:
                        result = future.result()
                    except Exception as error:  # keep the other runs going; report every failure at the end
                        failures.append(f"{spec.key}: {type(error).__name__}: {error}")
                        tqdm.write(f"run failed: {failures[-1]}")
                        continue
                    finish(spec, result)
    progress.close()
    if failures:
        raise RuntimeError(
            f"{len(failures)} run(s) failed (the others are stored; run the command again to retry them):\n"
            + "\n".join(failures)
        )
    return [done[key] for key in wanted if key in done]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", choices=PROFILES)
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmark_results/<profile>)")
    parser.add_argument("--docs", type=Path, default=None, help="also write the report into this folder")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel runs (default: CPU cores)")
    parser.add_argument(
        "--import-runs",
        type=Path,
        default=None,
        help="a results.json whose runs are added to the store first (reuses published runs)",
    )
    parser.add_argument("--estimate", action="store_true", help="print the profile's estimated runtime and exit")
    parser.add_argument("--mlp-epoch-seconds", type=float, default=EPOCH_SECONDS["mlp"])
    parser.add_argument("--cnn-epoch-seconds", type=float, default=EPOCH_SECONDS["cnn"])
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    profile = make_profile(args.profile)
    if args.estimate:
        seconds = {"mlp": args.mlp_epoch_seconds, "cnn": args.cnn_epoch_seconds}
        numbers = estimate(profile, seconds, args.jobs)
        print(
            f"profile '{args.profile}': about {numbers['runs']:.0f} runs, {numbers['core_seconds'] / 3600:.1f} "
            f"core-hours, about {_format_seconds(numbers['wall_seconds'])} on {args.jobs} core(s) "
            f"(MLP epoch {seconds['mlp']} s, CNN epoch {seconds['cnn']} s per 60k images on one core)"
        )
        return Path()

    out = args.out or ROOT / "benchmark_results" / args.profile
    out.mkdir(parents=True, exist_ok=True)
    store = out / "runs.jsonl"
    done = load_runs(store)
    if args.import_runs is not None:
        imported = [r for r in json.loads(args.import_runs.read_text())["runs"] if r["key"] not in done]
        with store.open("a") as handle:
            for record in imported:
                handle.write(json.dumps(record) + "\n")
                done[record["key"]] = record
        print(f"imported {len(imported)} runs from {args.import_runs}")
    started = time.perf_counter()
    stored_before = len(done)  # execute() adds every run it trains to `done`
    records = execute(
        profile.specs(),
        store,
        done,
        profile_name=args.profile,
        jobs=args.jobs,
        equal_budget=profile.equal_budget,
    )
    elapsed = time.perf_counter() - started
    print(f"training took {elapsed:.0f} s")
    wall_seconds = record_wall_clock(store.parent, elapsed, trained=len(done) - stored_before, jobs=args.jobs)
    if args.profile in ("full", "full12") and not (out / "overhead.json").exists():
        print("overhead micro-benchmark (selection time against N, harvesting overhead) ...", flush=True)
        import overhead

        overhead.main(["--out", str(out)])
    command = f"python benchmarks/run.py --profile {args.profile}"
    report = build_report(records, out, command=command, wall_seconds=wall_seconds)
    if args.docs is not None:
        args.docs.mkdir(parents=True, exist_ok=True)
        for name in ("overhead.json", "overhead.md"):
            if (out / name).exists():
                (args.docs / name).write_text((out / name).read_text())
        build_report(records, args.docs, command=f"{command} --docs {args.docs}", wall_seconds=wall_seconds)
        from docs_page import write_all

        for path in write_all():
            print(f"wrote {path}")
    print(report.read_text())
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
