"""Tasks beyond classification: the per-sample reduction, and the language-model, regression and
segmentation examples run on tiny data."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_pruning import per_sample_mean
from lightning_pruning.data.labels import LabelsNotFoundError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"task_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------------------
# per_sample_mean
def test_per_sample_mean_by_hand() -> None:
    loss = torch.tensor([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 8.0, 0.0]])
    assert per_sample_mean(loss).tolist() == [2.5, 3.0]
    mask = torch.tensor([[True, True, False, False], [True, False, True, False]])
    assert per_sample_mean(loss, mask).tolist() == [1.5, 5.0]
    pixels = torch.arange(8.0).reshape(2, 2, 2)  # (B, H, W)
    assert per_sample_mean(pixels).tolist() == [1.5, 5.5]
    vector = torch.tensor([0.5, 0.25])
    assert per_sample_mean(vector) is vector  # already one loss per sample


def test_per_sample_mean_empty_mask_and_masked_nan() -> None:
    loss = torch.tensor([[1.0, float("nan")], [float("inf"), 3.0]])
    mask = torch.tensor([[True, False], [False, False]])
    assert per_sample_mean(loss, mask).tolist() == [1.0, 0.0]  # NaN/inf under the mask do not leak


def test_per_sample_mean_broadcasts_a_mask_and_rejects_bad_shapes() -> None:
    loss = torch.ones(2, 3, 4)
    keep_rows = torch.tensor([[[True], [False], [True]], [[False], [False], [True]]])  # (B, H, 1)
    assert per_sample_mean(loss * torch.arange(1.0, 4.0)[None, :, None], keep_rows).tolist() == [2.0, 3.0]
    with pytest.raises(ValueError, match="broadcast"):
        per_sample_mean(loss, torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="batch dimension"):
        per_sample_mean(torch.tensor(1.0))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.floats(0, 10), min_size=1, max_size=6), min_size=1, max_size=5), st.integers(0, 4))
def test_padding_does_not_change_a_sequence_loss(rows: list[list[float]], extra: int) -> None:
    """Padding a batch to any longer length, with any values in the padding, leaves every mean unchanged."""
    length = max(len(row) for row in rows) + extra
    loss = torch.full((len(rows), length), 123.0)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for index, row in enumerate(rows):
        loss[index, : len(row)] = torch.tensor(row)
        mask[index, : len(row)] = True
    expected = torch.tensor([sum(row) / len(row) for row in rows])
    torch.testing.assert_close(per_sample_mean(loss, mask), expected)


# ---------------------------------------------------------------------------------------------------------
# Language modelling
def test_char_transformer_sequence_loss_ignores_padding() -> None:
    example = load_example("language_model")
    torch.manual_seed(0)
    model = example.CharTransformer(max_len=32, dim=16, layers=1, heads=2).eval()
    short, long = torch.tensor(list(b"pruning data")), torch.tensor(list(b"a much longer line of text here"))
    with torch.no_grad():
        _, alone = model.sequence_losses(example.collate([short]))
        _, padded = model.sequence_losses(example.collate([short, long]))
    assert padded.shape == (2,)
    torch.testing.assert_close(padded[0], alone[0], rtol=1e-5, atol=1e-5)


def test_language_model_example_trains_with_infobatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = load_example("language_model")
    # 3 epochs: InfoBatch anneals from floor(0.875 * 3) = 2, so epoch 1 is pruned.
    args = ["--epochs", "3", "--max-lines", "200", "--dim", "32", "--max-len", "48", "--batch-size", "16"]
    trainer = example.main([*args, "--output-dir", str(tmp_path)])
    model = trainer.lightning_module
    (method,) = [callback for callback in trainer.callbacks if type(callback).__name__ == "InfoBatch"]
    assert method.num_samples == 180  # 200 lines, every 10th held out
    assert method.history[1]["epoch_samples"] < 180 and method.saved_fraction > 0
    # Learned something: far below the loss of a uniform guess over the byte vocabulary.
    assert len(model.val_token_loss) == 3 and model.val_token_loss[-1] < math.log(example.VOCAB) - 1.0
    assert "180 training lines" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------
# Regression
def test_regression_example_trains_with_infobatch(tmp_path: Path) -> None:
    example = load_example("regression")
    trainer = example.main(["--epochs", "4", "--num-samples", "512", "--output-dir", str(tmp_path)])
    model = trainer.lightning_module
    (method,) = [callback for callback in trainer.callbacks if type(callback).__name__ == "InfoBatch"]
    assert method.saved_fraction > 0
    target_variance = float(example.make_data(1000, seed=1).tensors[1].var(dim=0).mean())
    assert model.val_mse[-1] < 0.5 * target_variance


@pytest.mark.parametrize("method", ["rcap", "stratified-random"])
def test_methods_that_need_labels_stop_clearly_on_regression(method: str, tmp_path: Path) -> None:
    example = load_example("regression")
    with pytest.raises(LabelsNotFoundError, match=r"train_groups=.*Without labels \(regression"):
        example.main(["--method", method, "--epochs", "1", "--num-samples", "64", "--output-dir", str(tmp_path)])


# ---------------------------------------------------------------------------------------------------------
# Dense prediction
def test_segmentation_loss_is_the_mean_over_labelled_pixels() -> None:
    example = load_example("segmentation")
    _, masks = example.make_shapes(4, seed=3).tensors
    assert set(masks.unique().tolist()) == {0, 1, 2, example.IGNORE}
    logits = torch.randn(4, 3, example.SIZE, example.SIZE)
    pixel = torch.nn.functional.cross_entropy(logits, masks, reduction="none", ignore_index=example.IGNORE)
    per_image = per_sample_mean(pixel, mask=masks != example.IGNORE)
    for index in range(4):
        labelled = masks[index] != example.IGNORE
        expected = torch.nn.functional.cross_entropy(
            logits[index : index + 1], masks[index : index + 1], ignore_index=example.IGNORE
        )
        torch.testing.assert_close(per_image[index], expected)
        assert labelled.sum() == (example.SIZE - 2) ** 2


def test_segmentation_example_trains_with_random_pruning(tmp_path: Path) -> None:
    example = load_example("segmentation")
    args = ["--method", "random", "--epochs", "4", "--num-images", "256", "--batch-size", "16"]
    trainer = example.main([*args, "--output-dir", str(tmp_path)])
    (method,) = [callback for callback in trainer.callbacks if type(callback).__name__ == "RandomPruning"]
    assert [entry["epoch_samples"] for entry in method.history] == [128] * 4
    # Object pixels are found (an all-background prediction scores 0 here).
    assert trainer.lightning_module.val_pixel_acc[-1] > 0.6
