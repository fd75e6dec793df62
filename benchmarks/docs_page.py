"""Fills the documentation's numbers from the generated benchmark results, so none is typed by hand.

- ``docs/benchmarks.md`` is assembled from the hand-written reading in ``page_template.md`` /
  ``reading.md`` and the generated reports (tables, plots, verdicts, overhead figures); the reading
  quotes results through ``{{metric:dataset:method:key=value,...}}`` placeholders.
- Hand-written pages (``docs/concepts.md``, ``docs/methods/*.md``) mark each generated figure in place:
  ``<!-- fig:KIND:ARGS -->value<!-- /fig -->``. The value between the markers is rewritten from the
  results on every run, the rest of the page is left alone (see :func:`fill_marked`).

    python benchmarks/docs_page.py           # rewrite every page from the committed results
    python benchmarks/docs_page.py --check   # exit 1 if a page is stale
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = Path(__file__).resolve().parent / "page_template.md"
# The plain-language reading of the committed results, written by a person after looking at them.
READING = Path(__file__).resolve().parent / "reading.md"
# Generated part -> the report that holds it, relative to docs/.
PARTS = {
    "results": "benchmarks/results.md",
    "verdicts": "benchmarks/verdicts.md",
    "overhead": "benchmarks/overhead.md",
    "rcap_sweep": "benchmarks/rcap_sweep/results.md",
    "lr_schedule": "benchmarks/lr_schedule/results.md",
}
# Hand-written pages whose marked figures are filled from the results.
MARKED_PAGES = ("concepts.md", "methods/infobatch.md")
# Result files the marked figures read, relative to docs/.
SOURCES = {"main": "benchmarks/results.json", "lr": "benchmarks/lr_schedule/results.json"}


def _rebase_images(markdown: str, folder: str) -> str:
    """Image links of a report are relative to its folder; make them relative to docs/."""
    return re.sub(r"\]\(([^)/]+\.png)\)", lambda m: f"]({folder}/{m.group(1)})", markdown)


def _strip_generated_marker(markdown: str) -> str:
    return "\n".join(line for line in markdown.splitlines() if not line.startswith("<!-- generated"))


class MissingSource(KeyError):
    """A marked figure reads a result file that has not been generated yet."""


_METRICS = (
    "test_acc|worst_class_acc|saved_fraction|speedup|speedup_vs_ideal|delta_full|delta_equal|delta_equal_worst|"
    "beats_equal_budget|passes_to_99|final_lr|schedule_steps|optimizer_steps"
)
_FIGURE = re.compile(r"\{\{(" + _METRICS + r"):([^:}]+):([^:}]+):([^}]*)\}\}")


def _settings_match(settings: dict[str, object], wanted: str) -> bool:
    if wanted in ("", "-"):
        return not settings
    pairs = dict(item.split("=", 1) for item in wanted.split(","))
    return all(str(settings.get(key)) == value for key, value in pairs.items())


def _find_row(
    summary: list[dict[str, Any]], dataset: str, methods: str, wanted: str, schedule: str = "cosine_epoch"
) -> dict[str, Any]:
    """The one summary row of ``dataset`` (``name`` or ``name@backbone``), the first of the ``|``-separated
    method labels present (so a renamed label can keep its older name as a fallback) and the settings."""
    name, _, backbone = dataset.partition("@")
    for method in methods.split("|"):
        rows = [
            row
            for row in summary
            if row["dataset"] == name
            and row.get("backbone", "mlp") == (backbone or "mlp")
            and row.get("lr_schedule", "cosine_epoch") == schedule
            and row["method"] == method
            and _settings_match(row["settings"], wanted)
        ]
        if len(rows) == 1:
            return rows[0]
        if len(rows) > 1:
            raise KeyError(f"{dataset}:{method}:{wanted} matches {len(rows)} benchmark rows")
    raise KeyError(f"{dataset}:{methods}:{wanted} matches no benchmark row")


def format_metric(metric: str, row: dict[str, Any]) -> str:
    """A summary value as the docs print it."""
    value = row.get(metric)
    if metric in ("test_acc", "worst_class_acc"):
        return f"{100 * float(value):.2f}%"  # type: ignore[arg-type]
    if metric == "saved_fraction":
        return f"{100 * float(value):.1f}%"  # type: ignore[arg-type]
    if metric in ("delta_full", "delta_equal", "delta_equal_worst"):
        half = float(row.get(f"{metric}_ci95", float("nan")))
        if value is None or value != value:  # NaN: no partner run
            return "n/a (no equal-budget run)"
        return f"{100 * float(value):+.2f}" + ("" if half != half else f" ± {100 * half:.2f}") + " points"
    if metric == "beats_equal_budget":
        return str(value)
    if metric == "passes_to_99":
        if row.get("curve") is None:
            return "n/a (no per-epoch accuracy)"
        return "not reached" if value is None else f"{float(value):.1f} full-data epochs"
    if metric == "final_lr":
        return f"{float(value):.4f}"  # type: ignore[arg-type]
    if metric in ("schedule_steps", "optimizer_steps"):
        return f"{float(value):.0f}"  # type: ignore[arg-type]
    return f"{float(value):.2f}" + ("x" if metric == "speedup" else "")  # type: ignore[arg-type]


def fill_figures(text: str, summary: list[dict[str, Any]]) -> str:
    """Replaces ``{{metric:dataset:method:key=value,...}}`` by the number from the benchmark summary, so
    the reading quotes the measured results instead of retyping them. ``dataset`` may name a backbone
    (``fashion_mnist_lt@cnn``), ``method`` may list fallbacks (``UCB (variance)|UCB``).

    Raises:
        KeyError: if a placeholder matches no row (a stale reading must not pass silently).
    """

    def figure(match: re.Match[str]) -> str:
        metric, dataset, method, wanted = match.groups()
        return format_metric(metric, _find_row(summary, dataset, method, wanted))

    return _FIGURE.sub(figure, text)


def _runs_of(results: dict[str, Any], method: str, wanted: str) -> list[dict[str, Any]]:
    runs = [
        run
        for run in results["runs"]
        if run["method"] == method
        and run.get("backbone", "mlp") == "mlp"
        and run.get("lr_schedule", "cosine_epoch") == "cosine_epoch"
        and _settings_match(run["settings"], wanted)
    ]
    if not runs:
        raise KeyError(f"no {method} run with {wanted} in the results")
    return runs


def _percent_range(values: list[float], digits: int) -> str:
    low, high = f"{100 * min(values):.{digits}f}", f"{100 * max(values):.{digits}f}"
    return f"{low}%" if low == high else f"{low}–{high}%"


def marked_figure(kind: str, args: list[str], sources: dict[str, dict[str, Any]]) -> str:
    """The text of one ``<!-- fig:KIND:ARGS -->`` marker.

    Kinds:
        ``saved_range:METHOD:SETTINGS``: realised overall saved fraction, min–max over datasets and seeds.
        ``epoch_saved_range:METHOD:SETTINGS``: share of a pruned epoch dropped, min–max over every
            pruned epoch (kept fraction below 1) of those runs.
        ``well_learned_range:METHOD:SETTINGS``: |L|/N, the share below the mean loss, over those epochs.
        ``meta:epochs`` / ``meta:seeds`` / ``meta:datasets`` / ``meta:runs``: what the main results cover.
        ``meta:train_core_hours``: the main runs' training wall-clock added up, in hours.
        ``meta:wall_hours``: the runner's measured wall-clock of the whole profile (``timing.jsonl``).
        ``speedup_range``: min–max over the pruned rows of the wall-clock speed-up over the ideal one.
        ``row:METRIC:DATASET:LABEL:SETTINGS``: a main summary value (as ``{{...}}`` in the reading).
        ``lr:METRIC:LABEL:SETTINGS:SCHEDULE``: a value of the LR-schedule profile's summary.
        ``lr_meta:epochs``: the LR-schedule profile's epochs.
        ``estimate:PROFILE``: the runner's runtime estimate of a profile on 2 cores (``run.py --estimate``).
        ``lr_gain:LABEL:SETTINGS:SCHEDULE_A:SCHEDULE_B``: test accuracy under A minus under B, in points.
    """
    main = sources["main"]
    if kind == "saved_range":
        method, wanted = args
        return _percent_range([run["saved_fraction"] for run in _runs_of(main, method, wanted)], 1)
    if kind in ("epoch_saved_range", "well_learned_range"):
        method, wanted = args
        epochs = [entry for run in _runs_of(main, method, wanted) for entry in run["history"]]
        pruned = [entry for entry in epochs if entry["kept_fraction"] < 1.0]
        if kind == "epoch_saved_range":
            return _percent_range([1.0 - entry["kept_fraction"] for entry in pruned], 0)
        values = [entry["well_learned_fraction"] for entry in pruned if "well_learned_fraction" in entry]
        return f"{min(values):.2f}–{max(values):.2f}"
    if kind == "meta":
        (what,) = args
        if what == "epochs":
            return ", ".join(str(e) for e in sorted({run["epochs"] for run in main["runs"] if run["method"] != "full"}))
        if what == "seeds":
            return str(len({run["seed"] for run in main["runs"]}))
        if what == "datasets":
            return ", ".join(sorted({run["dataset"] for run in main["runs"]}))
        if what == "runs":
            return str(len(main["runs"]))
        if what == "wall_hours":  # the runner's own measured wall-clock of the whole profile
            seconds = main["meta"].get("wall_seconds")
            return "not recorded" if seconds is None else f"{seconds / 3600:.1f} hours"
        if what == "train_core_hours":  # the runs' own training wall-clock, added up (no evaluation, no startup)
            return f"{sum(run['train_seconds'] for run in main['runs']) / 3600:.1f}"
        raise KeyError(f"unknown meta figure {what!r}")
    if kind == "speedup_range":  # every pruned row's wall-clock speed-up as a share of 1 / (1 - saved)
        values = [
            row["speedup_vs_ideal"]
            for row in main["summary"]
            if row["role"] == "method" and row.get("lr_schedule", "cosine_epoch") == "cosine_epoch"
        ]
        return f"{min(values):.2f}–{max(values):.2f}"
    if kind == "row":
        metric, dataset, label, wanted = args
        return format_metric(metric, _find_row(main["summary"], dataset, label, wanted))
    if kind == "estimate":
        (profile,) = args
        import run  # the benchmark runner, next to this file

        numbers = run.estimate(run.make_profile(profile), run.EPOCH_SECONDS, jobs=2)
        seconds = run.EPOCH_SECONDS
        return (
            f"about {numbers['wall_seconds'] / 3600:.1f} hours on 2 cores ({numbers['runs']:.0f} runs, at "
            f"{seconds['mlp']:g} s per MLP epoch and {seconds['cnn']:g} s per CNN epoch over 60k images on one core)"
        )
    if kind in ("lr", "lr_meta", "lr_gain") and "lr" not in sources:
        raise MissingSource("the LR-schedule results are missing: run benchmarks/run.py --profile lr_schedule")
    if kind == "lr_meta":
        (what,) = args
        if what != "epochs":
            raise KeyError(f"unknown lr_meta figure {what!r}")
        return ", ".join(str(e) for e in sorted({run["epochs"] for run in sources["lr"]["runs"]}))
    if kind == "lr_gain":
        label, wanted, better, worse = args
        rows = [_find_row(sources["lr"]["summary"], "fashion_mnist", label, wanted, sched) for sched in (better, worse)]
        return f"{100 * (rows[0]['test_acc'] - rows[1]['test_acc']):+.2f}"
    if kind == "lr":
        metric, label, wanted, schedule = args
        return format_metric(metric, _find_row(sources["lr"]["summary"], "fashion_mnist", label, wanted, schedule))
    raise KeyError(f"unknown figure kind {kind!r}")


_MARKED = re.compile(r"(<!-- fig:([^>]*?) -->)(.*?)(<!-- /fig -->)", re.DOTALL)


def fill_marked(text: str, sources: dict[str, dict[str, Any]], *, keep_missing: bool = False) -> str:
    """Rewrites the value between every ``<!-- fig:KIND:ARGS -->`` and ``<!-- /fig -->`` of a page.

    Args:
        text: the page.
        sources: the result files, as :func:`load_sources` reads them.
        keep_missing: leave a marker whose result file does not exist yet as it is (instead of raising),
            so one profile's docs can be written before another profile has run.

    Raises:
        KeyError: if a marker matches no result (a stale page must not pass silently).
    """

    def replace(match: re.Match[str]) -> str:
        kind, *args = match.group(2).split(":")
        try:
            return match.group(1) + marked_figure(kind, args, sources) + match.group(4)
        except MissingSource as missing:
            if not keep_missing:
                raise
            print(f"kept {match.group(0)!r}: {missing}")
            return match.group(0)

    return _MARKED.sub(replace, text)


def load_sources(docs: Path) -> dict[str, dict[str, Any]]:
    """The result files the figures read (those that exist)."""
    return {name: json.loads((docs / path).read_text()) for name, path in SOURCES.items() if (docs / path).exists()}


def render_page(docs: Path = ROOT / "docs") -> str:
    """``docs/benchmarks.md`` as it should read: the template with every part filled."""
    page = TEMPLATE.read_text()
    reading = READING.read_text().strip() if READING.exists() else ""
    sources = load_sources(docs)
    if "main" in sources:
        reading = fill_figures(reading, sources["main"]["summary"])
    page = page.replace("{{reading}}", reading)
    if "main" in sources:
        page = fill_marked(page, sources, keep_missing=True)
    for name, relative in PARTS.items():
        report = docs / relative
        if report.exists():
            body = _rebase_images(_strip_generated_marker(report.read_text()), str(Path(relative).parent))
        else:
            body = f"*(not generated yet: run the command above; {relative} is missing)*"
        page = page.replace("{{" + name + "}}", body.strip())
    return "<!-- generated by benchmarks/docs_page.py from benchmarks/page_template.md -->\n" + page


def write_page(docs: Path = ROOT / "docs") -> Path:
    """Writes ``docs/benchmarks.md`` (see :func:`render_page`)."""
    target = docs / "benchmarks.md"
    target.write_text(render_page(docs))
    return target


def write_all(docs: Path = ROOT / "docs") -> list[Path]:
    """Writes the benchmarks page and refreshes the marked figures of the hand-written pages."""
    written = [write_page(docs)]
    sources = load_sources(docs)
    if "main" in sources:
        for name in MARKED_PAGES:
            page = docs / name
            text = page.read_text()
            filled = fill_marked(text, sources, keep_missing=True)
            if filled != text:
                page.write_text(filled)
                written.append(page)
    return written


def stale_pages(docs: Path = ROOT / "docs") -> list[str]:
    """Pages whose generated numbers differ from what the committed results give."""
    stale = []
    if (docs / "benchmarks.md").read_text() != render_page(docs):
        stale.append("benchmarks.md")
    sources = load_sources(docs)
    for name in MARKED_PAGES:
        text = (docs / name).read_text()
        if "main" in sources and fill_marked(text, sources) != text:
            stale.append(name)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="report stale pages instead of writing them")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_pages()
        for name in stale:
            print(f"stale: docs/{name} (run python benchmarks/docs_page.py)")
        return 1 if stale else 0
    for path in write_all():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
