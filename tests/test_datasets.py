"""Real-project training sets: Hugging Face ``datasets``, torchvision ImageFolder/DatasetFolder, Subset and
ConcatDataset; labels are found without loading a sample, and the user's batches arrive unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers import trainer_kwargs
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.utils.data import ConcatDataset, Subset, TensorDataset

from lightning_pruning import RCAP, PruningDataModule, RandomPruning, pruning_loss
from lightning_pruning.data.labels import LabelsNotFoundError, find_labels, resolve_labels

datasets = pytest.importorskip("datasets")
torchvision = pytest.importorskip("torchvision")


def hf_set(num_samples: int = 30, num_classes: int = 3, seed: int = 0) -> Any:
    """Rows of a feature vector, a text field and a ClassLabel column (in memory)."""
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.arange(num_samples) * 7 % num_classes).tolist()
    features = (torch.randn(num_samples, 4, generator=generator) + torch.tensor(labels)[:, None]).tolist()
    table = {"features": features, "caption": [f"sample {i}" for i in range(num_samples)], "label": labels}
    dataset = datasets.Dataset.from_dict(table)
    return dataset.cast_column("label", datasets.ClassLabel(num_classes=num_classes))


class CountingTransform:
    """A ``with_transform`` function that counts the rows it decodes."""

    def __init__(self) -> None:
        self.rows = 0

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, Any]:
        self.rows += len(batch["label"])
        return {
            "x": [torch.tensor(row, dtype=torch.float32) for row in batch["features"]],
            "caption": batch["caption"],
            "label": batch["label"],
        }


# ---------------------------------------------------------------------------------------------------------
# Hugging Face datasets
def test_hf_labels_come_from_the_classlabel_column_without_decoding_a_row() -> None:
    transform = CountingTransform()
    dataset = hf_set().with_transform(transform)
    labels = find_labels(dataset)
    assert transform.rows == 0  # read from Arrow, the transform never ran
    assert labels is not None and labels.dtype == torch.int64
    assert labels.tolist() == [i * 7 % 3 for i in range(30)]


def test_hf_labels_follow_select_and_shuffle_index_mappings() -> None:
    base = hf_set()
    shuffled = base.shuffle(seed=4).select(range(5, 20))
    labels = find_labels(shuffled)
    assert labels is not None
    assert labels.tolist() == [row["label"] for row in shuffled]  # (iterating here only to check)


def test_hf_label_column_by_name_explicit_and_errors() -> None:
    plain = datasets.Dataset.from_dict({"x": [1.0, 2.0, 3.0], "label": [2, 0, 2], "y": [5, 6, 7]})
    assert find_labels(plain).tolist() == [2, 0, 2]  # type: ignore[union-attr]  # a column named "label"
    assert find_labels(plain, label_column="y").tolist() == [5, 6, 7]  # type: ignore[union-attr]
    with pytest.raises(LabelsNotFoundError, match=r"label_column='target' .* columns are \['x', 'label', 'y'\]"):
        find_labels(plain, label_column="target")
    unlabelled = datasets.Dataset.from_dict({"x": [1.0, 2.0], "value": [0.5, 0.7]})
    assert find_labels(unlabelled) is None
    with pytest.raises(LabelsNotFoundError, match="integer"):
        find_labels(unlabelled, label_column="value")
    with pytest.raises(LabelsNotFoundError, match="train_labels="):
        resolve_labels(unlabelled, 2)


def test_hf_inside_subset_and_concat() -> None:
    first, second = hf_set(30, seed=0), hf_set(12, seed=1)
    nested = Subset(ConcatDataset([Subset(first, [0, 4, 8, 29]), second]), [1, 3, 4, 15])
    labels = find_labels(nested)
    expected = [nested[i]["label"] for i in range(len(nested))]
    assert labels is not None and labels.tolist() == expected


class HFModel(pl.LightningModule):
    """Trains on the user's HF batch: a dict built by the user's collate, checked on arrival."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.batches: list[dict[str, Any]] = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        assert set(batch) == {"x", "y", "captions", "collated_by"}, "the user's batch must arrive unchanged"
        assert batch["collated_by"] == "hf_collate" and isinstance(batch["captions"], list)
        self.batches.append(batch)
        return pruning_loss(self, F.cross_entropy(self.linear(batch["x"]), batch["y"], reduction="none"))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def hf_collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "x": torch.stack([row["x"] for row in rows]),
        "y": torch.tensor([row["label"] for row in rows]),
        "captions": [row["caption"] for row in rows],
        "collated_by": "hf_collate",
    }


def test_rcap_trains_on_a_hf_dataset_with_a_transform_and_a_collate() -> None:
    transform = CountingTransform()
    dataset = hf_set(30).with_transform(transform)
    datamodule = PruningDataModule(dataset, batch_size=4, collate_fn=hf_collate, seed=0)
    model, method = HFModel(), RCAP(0.5, seed=0)
    trainer = pl.Trainer(**trainer_kwargs(max_epochs=2, callbacks=[method]))
    trainer.fit(model, datamodule=datamodule)
    assert method.class_layout is not None and method.class_layout.counts.tolist() == [10, 10, 10]
    assert [entry["epoch_samples"] for entry in method.history] == [15, 15]
    # Only the trained rows were decoded: labels cost nothing, and each epoch decoded its 15 rows.
    assert transform.rows == 30
    captions = [caption for batch in model.batches[-4:] for caption in batch["captions"]]
    assert sorted(captions) == sorted(f"sample {int(i)}" for i in method.current_subset)


def test_hf_label_column_argument_of_the_datamodule() -> None:
    dataset = datasets.Dataset.from_dict({"x": [[0.0] * 4] * 6, "kind": [0, 1, 1, 0, 1, 1]}).with_format("torch")
    datamodule = PruningDataModule(dataset, batch_size=2, label_column="kind", seed=0)
    labels, classes = datamodule.train_labels()
    assert labels.tolist() == [0, 1, 1, 0, 1, 1] and classes.tolist() == [0, 1]


# ---------------------------------------------------------------------------------------------------------
# torchvision folders
@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    from PIL import Image

    root = tmp_path / "images"
    for label, name in enumerate(["cat", "dog", "fox"]):
        (root / name).mkdir(parents=True)
        for index in range(4 + 2 * label):  # 4, 6, 8 images: unequal classes
            colour = (80 * label, 10 * index, 200 - 60 * label)
            Image.new("RGB", (8, 8), colour).save(root / name / f"{index}.png")
    return root


class ImageModel(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3 * 8 * 8, 3)
        self.seen = 0

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        images, labels = batch
        self.seen += int(labels.numel())
        return pruning_loss(self, F.cross_entropy(self.linear(images.flatten(1)), labels, reduction="none"))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_image_folder_trains_with_rcap_and_labels_from_targets(image_folder: Path) -> None:
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(str(image_folder), transform=transforms.ToTensor())
    assert find_labels(dataset).tolist() == [0] * 4 + [1] * 6 + [2] * 8  # type: ignore[union-attr]
    model, method = ImageModel(), RCAP(0.5, seed=0)
    trainer = pl.Trainer(**trainer_kwargs(max_epochs=2, callbacks=[method]))
    trainer.fit(model, datamodule=PruningDataModule(dataset, batch_size=4, seed=0))
    assert method.class_layout is not None and method.class_layout.counts.tolist() == [4, 6, 8]
    assert model.seen == 18  # 9 of 18 images in each of the 2 epochs


def test_dataset_folder_subset_and_concat_labels(tmp_path: Path, image_folder: Path) -> None:
    from torchvision.datasets import DatasetFolder, ImageFolder

    for label, name in enumerate(["low", "high"]):
        (tmp_path / "numbers" / name).mkdir(parents=True)
        for index in range(3):
            (tmp_path / "numbers" / name / f"{index}.txt").write_text(f"{label + index / 10}")
    numbers = DatasetFolder(
        str(tmp_path / "numbers"), loader=lambda path: float(Path(path).read_text()), extensions=(".txt",)
    )
    images = ImageFolder(str(image_folder))
    combined = ConcatDataset([Subset(images, [17, 0, 5]), numbers])
    labels = find_labels(Subset(combined, [0, 1, 2, 3, 8]))
    assert labels is not None and labels.tolist() == [2, 0, 1, 0, 1]  # high=0, low=1 (sorted folder names)


def test_stratified_random_on_a_subset_of_an_image_folder(image_folder: Path) -> None:
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    dataset = Subset(ImageFolder(str(image_folder), transform=transforms.ToTensor()), list(range(2, 18)))
    method = RandomPruning(0.5, stratified=True, seed=1)
    trainer = pl.Trainer(**trainer_kwargs(max_epochs=1, callbacks=[method]))
    trainer.fit(ImageModel(), datamodule=PruningDataModule(dataset, batch_size=4, seed=0))
    assert method.class_layout is not None and method.class_layout.counts.tolist() == [2, 6, 8]
    kept = torch.bincount(find_labels(dataset)[method.current_subset], minlength=3)  # type: ignore[index]
    assert kept.tolist() == [1, 3, 4]


# ---------------------------------------------------------------------------------------------------------
# Nesting, as a property: the labels found equal the labels of the samples, at any depth.
@settings(max_examples=30, deadline=None)
@given(st.data())
def test_nested_subset_and_concat_labels_match_the_samples(data: st.DataObject) -> None:
    def build(depth: int) -> Any:
        kind = data.draw(st.sampled_from(["leaf", "subset", "concat"] if depth < 3 else ["leaf"]))
        if kind == "leaf":
            size = data.draw(st.integers(1, 6))
            labels = torch.tensor(data.draw(st.lists(st.integers(0, 9), min_size=size, max_size=size)))
            return TensorDataset(torch.randn(size, 2), labels)
        if kind == "subset":
            inner = build(depth + 1)
            indices = data.draw(st.lists(st.integers(0, len(inner) - 1), min_size=1, max_size=8))
            return Subset(inner, indices)
        return ConcatDataset([build(depth + 1) for _ in range(data.draw(st.integers(1, 3)))])

    dataset = build(0)
    labels = find_labels(dataset)
    assert labels is not None
    assert labels.tolist() == [int(dataset[i][1]) for i in range(len(dataset))]


def test_tensor_dataset_with_float_targets_has_no_labels() -> None:
    regression = TensorDataset(torch.randn(5, 2), torch.randn(5))
    assert find_labels(regression) is None
    assert find_labels(TensorDataset(torch.randn(5, 2), torch.randint(0, 2, (5, 3)))) is None  # not one per sample
