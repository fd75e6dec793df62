"""The examples and the quickstart notebook run top to bottom on tiny local data."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("method", ["rcap", "random"])
def test_resnet18_example_on_fake_data(method: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = load_example("resnet18_cifar10")
    args = ["--fake-data", "24", "--epochs", "1", "--batch-size", "12", "--num-workers", "0"]
    trainer = example.main([*args, "--method", method, "--output-dir", str(tmp_path)])
    assert trainer.current_epoch == 1
    (pruner,) = [cb for cb in trainer.callbacks if type(cb).__name__ in ("RCAP", "RandomPruning")]
    assert pruner.history[0]["epoch_samples"] == 12  # half of 24
    assert (tmp_path / "resnet18_cifar10" / "version_0" / "metrics.csv").is_file()
    assert f"{method}: val acc" in capsys.readouterr().out


def test_resnet18_example_uses_the_two_line_integration() -> None:
    source = (EXAMPLES / "resnet18_cifar10.py").read_text()
    assert 'reduction="none"' in source and "return pruning_loss(self, losses)" in source
    assert "PruningDataModule(" in source


def test_ddp_example_two_cpu_processes() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "ddp_example.py"), "--epochs", "2", "--num-samples", "128"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=180,
    )
    # Every assertion shows what the two ranks printed, so a failure on CI can be read from its log alone.
    printed = f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode == 0, printed
    lines = re.findall(
        r"\[rank (\d)/2\] epoch (\d): subset of (\d+) samples \(checksum (\d+)\), this rank trained (\d+)",
        result.stdout,
    )
    by_epoch: dict[str, set[tuple[str, str]]] = {}
    ranks = set()
    for rank, epoch, size, checksum, trained in lines:
        ranks.add(rank)
        by_epoch.setdefault(epoch, set()).add((size, checksum))
        assert int(size) == 64 and int(trained) == 32, printed  # half of 128, split over two ranks
    assert ranks == {"0", "1"} and sorted(by_epoch) == ["0", "1"], printed
    # Both ranks decided the same subset in every epoch.
    assert all(len(decisions) == 1 for decisions in by_epoch.values()), printed
    assert "done: worst-class accuracy" in result.stdout, printed


def test_quickstart_notebook_runs_top_to_bottom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUICKSTART_EPOCHS", "2")
    monkeypatch.setenv("QUICKSTART_TRAIN_SUBSET", "1000")
    monkeypatch.setenv("QUICKSTART_EVAL_SUBSET", "200")
    notebook = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    text = "".join(output.get("text", "") for output in outputs if output.get("output_type") == "stream")
    assert "full data" in text and "RCAP" in text
    assert any("image/png" in output.get("data", {}) for output in outputs), "the figure was not drawn"
    # The budget table covers all ten classes.
    assert len(re.findall(r"^\S.*\s+\d+\s+\d+\s+\d\.\d\d$", text, flags=re.M)) == 10


def _message_fragments(node: ast.expr) -> list[str]:
    """The constant text pieces of a (possibly formatted) message expression."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        pieces, current = [], ""
        for value in node.values:
            if isinstance(value, ast.Constant):
                current += str(value.value)
            else:
                pieces.append(current)
                current = ""
        return [*pieces, current]
    if isinstance(node, ast.BinOp):
        return _message_fragments(node.left) + _message_fragments(node.right)
    return []


def library_messages() -> list[tuple[str, str]]:
    """``(where, longest constant piece)`` of every message raised or warned in the package."""
    found = []
    for path in sorted((ROOT / "lightning_pruning").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            call = node.exc if isinstance(node, ast.Raise) else node
            if not isinstance(call, ast.Call) or not call.args:
                continue
            name = getattr(call.func, "id", getattr(call.func, "attr", ""))
            if isinstance(node, ast.Raise) or name in ("rank_zero_warn", "rank_zero_info", "warn"):
                # Pieces between formatted values; leading punctuation belongs to the value before.
                pieces = [piece.lstrip(" .,:;)").strip() for piece in _message_fragments(call.args[0])]
                if pieces and max(map(len, pieces)) >= 8:
                    found.append((f"{path.relative_to(ROOT)}:{node.lineno}", max(pieces, key=len)))
    return found


def test_troubleshooting_lists_every_error_message() -> None:
    page = " ".join((ROOT / "docs" / "troubleshooting.md").read_text().split())
    messages = library_messages()
    assert len(messages) > 50
    missing = [(where, text) for where, text in messages if " ".join(text.split())[:40] not in page]
    assert not missing, "add these messages and their fix to docs/troubleshooting.md:\n" + "\n".join(
        f"{where}: {text}" for where, text in missing
    )
    assert "Fashion-MNIST not found" in page  # raised through a helper, so not seen above
