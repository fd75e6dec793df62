"""The benchmark, the overhead micro-benchmark and the demo run end to end on tiny settings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "examples"))


def test_benchmark_smoke_profile_writes_results_and_resumes(tmp_path: Path) -> None:
    import run

    report = run.main(["--profile", "smoke", "--out", str(tmp_path)])
    stored = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert len(stored) == 4  # full + Random* on two datasets
    results = json.loads((tmp_path / "results.json").read_text())
    assert {row["method"] for row in results["summary"]} == {"full", "Random*"}
    for row in results["summary"]:
        assert 0.0 <= row["test_acc"] <= 1.0
        if row["method"] == "Random*":
            assert row["saved_fraction"] == pytest.approx(0.5)
    assert "| Random* |" in report.read_text()
    for name in ("accuracy_fashion_mnist.png", "worst_class_fashion_mnist_lt.png"):
        assert (tmp_path / name).stat().st_size > 1000
    run.main(["--profile", "smoke", "--out", str(tmp_path)])  # nothing new to compute
    assert (tmp_path / "runs.jsonl").read_text().splitlines() == stored


def test_overhead_quick_covers_every_registered_method(tmp_path: Path) -> None:
    import overhead

    from lightning_pruning.methods import METHODS

    result = overhead.main(["--quick", "--out", str(tmp_path), "--repeats", "1"])
    assert {row["method"] for row in result["selection"]} == set(METHODS)
    assert all(row["median_ms"] > 0 for row in result["selection"])
    assert result["harvest"]["ratio"] > 0
    assert "Selection time per epoch" in (tmp_path / "overhead-quick.md").read_text()


def test_demo_prints_full_and_pruned_rows(capsys: pytest.CaptureFixture[str]) -> None:
    import fashion_mnist_demo

    full, pruned = fashion_mnist_demo.main(["--epochs", "1", "--train-subset", "400"])
    assert full.saved_fraction == 0.0 and pruned.saved_fraction == pytest.approx(0.5)
    out = capsys.readouterr().out
    assert "full data" in out and "random p=0.5" in out and "worst class" in out
