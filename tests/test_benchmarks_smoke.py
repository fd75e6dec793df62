"""The benchmark, the overhead micro-benchmark and the demo run end to end on tiny settings; the
report's statistics and the docs' generated figures on hand-made records."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "examples"))


def test_benchmark_smoke_profile_writes_results_and_resumes(tmp_path: Path) -> None:
    import run

    report = run.main(["--profile", "smoke", "--out", str(tmp_path), "--jobs", "2"])
    stored = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    # full + Random* on two datasets (MLP) and on the LT set (CNN), plus each Random* run's equal-budget
    # partner: 2 epochs at 50% saved -> full data for 1 epoch.
    assert len(stored) == 9
    # Every stored run names the code that made it (a commit here), so runs of older code can be told apart.
    assert {record["code"] for record in stored} == {run.code_version()} and run.code_version() != "unknown"
    partners = [r for r in stored if r["method"] == "full" and r["epochs"] == 1]
    assert sorted((r["dataset"], r["backbone"]) for r in partners) == [
        ("fashion_mnist", "mlp"),
        ("fashion_mnist_lt", "cnn"),
        ("fashion_mnist_lt", "mlp"),
    ]
    for record in stored:
        assert len(record["epoch_acc"]) == record["epochs"] == len(record["epoch_samples"])
        assert record["epoch_acc"][-1] == pytest.approx(record["test_acc"])  # last evaluation = final test
        expected = 150 if record["method"] == "random" else 300  # 300 training images, half kept
        assert record["epoch_samples"] == [expected] * record["epochs"]
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["summary"]
    assert {row["method"] for row in rows} == {"full", "Random*"}
    for row in rows:
        assert 0.0 <= row["test_acc"] <= 1.0
        if row["method"] == "Random*":
            assert row["saved_fraction"] == pytest.approx(0.5)
            (method_run,) = [
                r
                for r in stored
                if r["method"] == "random" and (r["dataset"], r["backbone"]) == (row["dataset"], row["backbone"])
            ]
            (partner,) = [r for r in partners if (r["dataset"], r["backbone"]) == (row["dataset"], row["backbone"])]
            assert row["delta_equal"] == pytest.approx(method_run["test_acc"] - partner["test_acc"])
            assert row["equal_budget_seeds"] == 1 and "1 seed" in row["beats_equal_budget"]
    text = report.read_text()
    assert "| Random* |" in text and "Δ vs equal budget" in text and "fashion_mnist_lt · cnn" in text
    for name in (
        "accuracy_fashion_mnist.png",
        "worst_class_fashion_mnist_lt.png",
        "accuracy_fashion_mnist_lt_cnn.png",
        "tta_fashion_mnist_r0.5.png",
        "tta_fashion_mnist_lt_cnn_r0.5.png",
    ):
        assert (tmp_path / name).stat().st_size > 1000
    assert "| Random* |" in (tmp_path / "verdicts.md").read_text()
    # The runner's own wall-clock is stored and reported; a resume that trains nothing adds no time.
    (timing,) = [json.loads(line) for line in (tmp_path / "timing.jsonl").read_text().splitlines()]
    assert timing["runs_trained"] == 9 and timing["wall_seconds"] > 0
    assert results["meta"]["wall_seconds"] == pytest.approx(timing["wall_seconds"])
    before = (tmp_path / "runs.jsonl").read_text()
    run.main(["--profile", "smoke", "--out", str(tmp_path), "--jobs", "1"])  # nothing new to compute
    assert (tmp_path / "runs.jsonl").read_text() == before
    assert len((tmp_path / "timing.jsonl").read_text().splitlines()) == 1
    assert json.loads((tmp_path / "results.json").read_text())["meta"]["wall_seconds"] == pytest.approx(
        timing["wall_seconds"]
    )


def test_profiles_pair_runs_and_keep_old_keys() -> None:
    import run

    full = run.make_profile("full")
    specs = full.specs()
    assert full.epochs == 30 and len(full.seeds) >= 3
    cnn = [s for s in specs if s.backbone == "cnn"]
    assert {s.dataset for s in cnn} == {"fashion_mnist_lt"}
    assert {dict(s.kwargs).get("prune_ratio") for s in cnn if s.method == "random"} == {0.5, 0.7}
    labels = {s.label for s in cnn}
    assert set(run.fixed_budget_methods()) <= labels and "InfoBatch" in labels
    assert len({s.key for s in specs}) == len(specs)
    # An MLP run's key is the format of the published results, so they stay reusable.
    spec = run.RunSpec("fashion_mnist", "random", (("prune_ratio", 0.5),), 0, 12, label="Random*")
    assert spec.key == '["fashion_mnist", "random", [["prune_ratio", 0.5]], 0, 12, null, null]'
    assert json.loads(run.RunSpec("fashion_mnist", None, (), 0, 12, backbone="cnn").key)[-2:] == ["cnn", "cosine_epoch"]
    # Equal budget: round half up, at least one epoch; the same partner for equal savings.
    assert [run.equal_budget_epochs(30, s) for s in (0.3, 0.5, 0.7, 0.9, 0.99)] == [21, 15, 9, 3, 1]
    assert run.equal_budget_epochs(3, 0.5) == 2 and run.equal_budget_epochs(12, 0.335) == 8
    partner = spec.partner(0.5)
    assert partner is not None and partner.method is None and partner.epochs == 6
    assert partner.key == spec.partner(0.52).key  # type: ignore[union-attr]
    assert run.RunSpec("fashion_mnist", None, (), 0, 12).partner(0.0) is None
    onecycle = run.RunSpec(
        "fashion_mnist", "random", (("prune_ratio", 0.5),), 0, 8, lr_schedule="onecycle_sized_pruned"
    )
    assert onecycle.partner(0.5).lr_schedule == "onecycle_sized_full"  # type: ignore[union-attr]
    estimate = run.estimate(full, run.EPOCH_SECONDS, jobs=2)
    assert estimate["wall_seconds"] == pytest.approx(estimate["core_seconds"] / 2)
    assert estimate["runs"] > len(specs)  # the equal-budget partners


def _record(method: str, seed: int, epochs: int, acc: float, saved: float = 0.0, **extra: Any) -> dict[str, Any]:
    kwargs = [["prune_ratio", 0.5]] if method != "full" else []
    return {
        "key": json.dumps(["d", None if method == "full" else method, kwargs, seed, epochs, None, None]),
        "label": "full" if method == "full" else "M",
        "method": method,
        "dataset": "d",
        "seed": seed,
        "epochs": epochs,
        "settings": {} if method == "full" else {"prune_ratio": 0.5},
        "test_acc": acc,
        "test_worst_class_acc": acc / 2,
        "saved_fraction": saved,
        "train_seconds": 10.0 * (1 - saved),
        "epoch_seconds": [10.0 * (1 - saved) / epochs] * epochs,
        "pruning_seconds": 0.1,
        "history": [],
        **extra,
    }


def test_report_pairs_seeds_with_their_equal_budget_run_and_says_when_one_is_missing() -> None:
    from report import interval95, passes_to_reach, summarise, verdict

    records = [
        _record("full", 0, 4, 0.80),
        _record("full", 1, 4, 0.82),
        _record("full", 2, 4, 0.81),
        _record("full", 0, 2, 0.70),
        _record("full", 1, 2, 0.74),
        # seed 2's 2-epoch partner is missing (seed 1 saved less, but 4·0.6 still rounds to 2 epochs)
        _record("m", 0, 4, 0.75, saved=0.5),
        _record("m", 1, 4, 0.78, saved=0.4),
        _record("m", 2, 4, 0.79, saved=0.5),
    ]
    rows = {(row["method"], row["epochs"]): row for row in summarise(records)}
    method = rows[("M", 4)]
    assert method["equal_budget_epochs"] == [2, 2, 2]  # 4·0.6 = 2.4 -> 2
    assert method["equal_budget_seeds"] == 2  # seeds 0 and 1 paired with the 2-epoch runs
    assert method["delta_equal"] == pytest.approx(((0.75 - 0.70) + (0.78 - 0.74)) / 2)
    assert method["delta_full"] == pytest.approx(((0.75 - 0.80) + (0.78 - 0.82) + (0.79 - 0.81)) / 3)
    assert method["passes_to_99"] is None and method["curve"] is None  # records without per-epoch accuracy
    assert rows[("full", 2)]["role"] == "equal_budget" and rows[("full", 2)]["settings"] == {"epochs": 2}
    assert rows[("full", 4)]["role"] == "full" and rows[("full", 4)]["settings"] == {}
    # the 95% t-interval: mean 2, sd 1, n 3 -> 4.303 / sqrt(3)
    assert interval95([1.0, 2.0, 3.0]) == pytest.approx(4.303 / math.sqrt(3))
    assert math.isnan(interval95([1.0]))
    assert verdict([0.02, 0.03, 0.025]) == "yes"
    assert verdict([-0.02, -0.03, -0.025]) == "no"
    assert verdict([0.02, -0.03, 0.01]) == "tie"
    assert verdict([]) == "no equal-budget run"
    assert verdict([0.01]).startswith("yes (1 seed")
    curve = {"passes": [0.5, 1.0, 1.5], "seconds": [1.0, 2.0, 3.0], "acc": [0.5, 0.79, 0.81]}
    assert passes_to_reach(curve, 0.79) == 1.0 and passes_to_reach(curve, 0.9) is None


def test_report_curves_and_passes_to_99_percent_of_full(tmp_path: Path) -> None:
    from report import build_report, summarise

    def curve_run(method: str, epochs: int, accs: list[float], kept: int, saved: float = 0.0) -> dict[str, Any]:
        return _record(
            method,
            0,
            epochs,
            accs[-1],
            saved=saved,
            num_train=100,
            epoch_samples=[kept] * epochs,
            epoch_acc=accs,
            backbone="mlp",
        )

    records = [
        curve_run("full", 4, [0.6, 0.7, 0.795, 0.80], 100),
        curve_run("full", 2, [0.6, 0.75], 100),
        curve_run("m", 4, [0.5, 0.7, 0.78, 0.795], 50, saved=0.5),
    ]
    rows = {(row["method"], row["epochs"]): row for row in summarise(records)}
    # 99% of full's final 0.80 is 0.792: full reaches it after 3 epochs, the method after 4 half epochs.
    assert rows[("full", 4)]["passes_to_99"] == pytest.approx(3.0)
    assert rows[("M", 4)]["passes_to_99"] == pytest.approx(2.0)
    assert rows[("M", 4)]["curve"]["passes"] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert rows[("M", 4)]["delta_equal"] == pytest.approx(0.795 - 0.75)
    report = build_report(records, tmp_path, command="test").read_text()
    assert "| M | prune_ratio=0.5 |" in report and "| 2.0 |" in report
    assert (tmp_path / "tta_d_r0.5.png").stat().st_size > 1000


def test_docs_marked_figures_are_filled_from_results() -> None:
    from docs_page import fill_figures, fill_marked

    history = [
        {"epoch": 0.0, "kept_fraction": 1.0, "well_learned_fraction": 0.0},
        {"epoch": 1.0, "kept_fraction": 0.6, "well_learned_fraction": 0.8},
        {"epoch": 2.0, "kept_fraction": 0.58, "well_learned_fraction": 0.84},
    ]
    runs = [
        {**_record("infobatch", seed, 3, 0.8, saved=saved), "history": history}
        for seed, saved in ((0, 0.3333), (1, 0.3471))
    ]
    summary = [
        {"dataset": "d", "method": "UCB", "settings": {"prune_ratio": 0.9}, "test_acc": 0.5, "backbone": "mlp"},
    ]
    sources = {"main": {"runs": runs, "summary": summary}}
    text = (
        "saved <!-- fig:saved_range:infobatch:prune_ratio=0.5 -->old<!-- /fig --> overall, "
        "<!-- fig:epoch_saved_range:infobatch:prune_ratio=0.5 -->old<!-- /fig --> per pruned epoch, "
        "|L|/N <!-- fig:well_learned_range:infobatch:prune_ratio=0.5 --><!-- /fig -->, "
        "<!-- fig:meta:epochs -->?<!-- /fig --> epochs"
    )
    filled = fill_marked(text, sources)
    assert filled == (
        "saved <!-- fig:saved_range:infobatch:prune_ratio=0.5 -->33.3–34.7%<!-- /fig --> overall, "
        "<!-- fig:epoch_saved_range:infobatch:prune_ratio=0.5 -->40–42%<!-- /fig --> per pruned epoch, "
        "|L|/N <!-- fig:well_learned_range:infobatch:prune_ratio=0.5 -->0.80–0.84<!-- /fig -->, "
        "<!-- fig:meta:epochs -->3<!-- /fig --> epochs"
    )
    assert fill_marked(filled, sources) == filled  # idempotent
    with pytest.raises(KeyError, match="no rcap run"):
        fill_marked("<!-- fig:saved_range:rcap:prune_ratio=0.5 --><!-- /fig -->", sources)
    # a renamed label falls back to the older one
    assert fill_figures("{{test_acc:d:UCB (variance)|UCB:prune_ratio=0.9}}", summary) == "50.00%"


def test_committed_docs_match_the_committed_results() -> None:
    """Every generated number in the docs equals what the committed results.json files give."""
    from docs_page import stale_pages

    assert stale_pages() == []


def test_step_schedule_sizing_matches_the_pruned_run_only_when_sized_by_the_callback() -> None:
    from lightning_pruning.experiment import run_experiment

    common: dict[str, Any] = dict(epochs=2, train_subset=256, test_subset=64, batch_size=32)
    pruned = run_experiment("random", {"prune_ratio": 0.5}, lr_schedule="onecycle_sized_pruned", **common)
    assert pruned.schedule_steps == pruned.optimizer_steps == 2 * 4  # 128 kept images / 32 per batch
    assert pruned.epoch_lr[-1] < 0.1 * 0.05  # OneCycle annealed (8 steps: the last is near its minimum)
    full = run_experiment("random", {"prune_ratio": 0.5}, lr_schedule="onecycle_sized_full", **common)
    assert (full.schedule_steps, full.optimizer_steps) == (2 * 8, 2 * 4)
    assert full.epoch_lr[-1] > 0.5 * 0.05  # stopped halfway through the cycle: the LR is still high
    with pytest.raises(ValueError, match="lr_schedule"):
        run_experiment(None, lr_schedule="cosine", **common)  # type: ignore[arg-type]


def test_overhead_quick_covers_every_registered_method(tmp_path: Path) -> None:
    import overhead

    from lightning_pruning.methods import METHODS

    result = overhead.main(["--quick", "--out", str(tmp_path), "--repeats", "1"])
    assert {row["method"] for row in result["selection"]} == set(METHODS)
    assert all(row["median_ms"] > 0 for row in result["selection"])
    assert result["harvest"]["ratio"] > 0
    assert "Selection time per epoch" in (tmp_path / "overhead-quick.md").read_text()


def test_overhead_times_the_baseline_and_the_method_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every round calls each function once, in order, with the next epoch; each minimum is over that function's
    own calls in the timed rounds (the warm-up round is not timed)."""
    import overhead

    clock = iter(range(1000))
    monkeypatch.setattr(overhead.time, "perf_counter", lambda: float(next(clock)))
    calls: list[tuple[str, int]] = []
    durations = {"baseline": [9, 5, 7], "method": [1, 8, 3]}  # warm-up (fastest: must not count), two rounds

    def timed(name: str) -> Any:
        def call(epoch: int) -> None:
            calls.append((name, epoch))
            for _ in range(durations[name][sum(1 for called, _ in calls if called == name) - 1] - 1):
                next(clock)  # the fake clock advances by the call's duration

        return call

    result = overhead.interleaved_ms({"baseline": timed("baseline"), "method": timed("method")}, repeats=2)
    assert calls == [("baseline", 1), ("method", 2), ("baseline", 3), ("method", 4), ("baseline", 5), ("method", 6)]
    assert result == {"baseline": 5000.0, "method": 3000.0}
    assert overhead.rounds_for(1_000_000, 5) == 25 and overhead.rounds_for(10_000_000, 5) == 5


def test_demo_prints_full_and_pruned_rows(capsys: pytest.CaptureFixture[str]) -> None:
    import fashion_mnist_demo

    full, pruned = fashion_mnist_demo.main(["--epochs", "1", "--train-subset", "400"])
    assert full.saved_fraction == 0.0 and pruned.saved_fraction == pytest.approx(0.5)
    out = capsys.readouterr().out
    assert "full data" in out and "random p=0.5" in out and "worst class" in out
