"""Fashion-MNIST from local IDX files (Debian's ``dataset-fashion-mnist``), and its long-tailed variant."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_pruning.selection import make_generator

#: Where Debian's ``dataset-fashion-mnist`` package installs the files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
#: Environment variable naming another folder that holds the four IDX files.
FASHION_MNIST_ENV = "FASHION_MNIST_DIR"

CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Mean and standard deviation of the training pixels (scaled to [0, 1]).
_MEAN, _STD = 0.2860, 0.3530
_IDX_TYPES = {0x08: torch.uint8, 0x09: torch.int8, 0x0B: torch.int16, 0x0C: torch.int32, 0x0D: torch.float32}


def read_idx(path: Path) -> Tensor:
    """Reads one IDX file (optionally gzipped) into a tensor."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file.")
    dtype, ndim = _IDX_TYPES[data[2]], data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    values = torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=dtype)
    if dtype != torch.uint8:
        values = values.view(torch.uint8).reshape(-1, values.element_size()).flip(-1).reshape(-1).view(dtype)
    return values.reshape(shape).clone()


def _find_file(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        if (root / name).is_file():
            return root / name
    return None


def locate_fashion_mnist(root: str | Path | None = None) -> Path | None:
    """The first folder holding the four Fashion-MNIST IDX files.

    Looks at ``root``, then ``$FASHION_MNIST_DIR``, then Debian's install location (and a ``raw``
    subfolder of each, the torchvision layout).
    """
    candidates = [Path(root)] if root is not None else []
    if os.environ.get(FASHION_MNIST_ENV):
        candidates.append(Path(os.environ[FASHION_MNIST_ENV]))
    candidates.append(DEBIAN_FASHION_MNIST)
    for folder in candidates:
        for sub in (folder, folder / "raw", folder / "FashionMNIST" / "raw"):
            if all(_find_file(sub, stem) for stems in _FILES.values() for stem in stems):
                return sub
    return None


class TensorImageDataset(Dataset[tuple[Tensor, int]]):
    """Images held in memory as one normalised float tensor, with a torchvision-style ``targets``.

    Args:
        images: float tensor ``(N, 1, H, W)``.
        targets: int64 labels ``(N,)``.
        classes: class names.
    """

    def __init__(self, images: Tensor, targets: Tensor, classes: tuple[str, ...] = CLASSES) -> None:
        if images.shape[0] != targets.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {targets.shape[0]} targets.")
        self.images = images
        self.targets = targets
        self.classes = classes

    def __len__(self) -> int:
        return int(self.targets.numel())

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.targets[index])

    def subset(self, indices: Tensor) -> TensorImageDataset:
        """A new dataset holding only ``indices`` (copies, so the original can be freed)."""
        return TensorImageDataset(self.images[indices].clone(), self.targets[indices].clone(), self.classes)


def load_fashion_mnist(
    root: str | Path | None = None, *, train: bool = True, download: bool = True
) -> TensorImageDataset:
    """Fashion-MNIST as an in-memory dataset of normalised ``(1, 28, 28)`` float images.

    Reads the IDX files from ``root``, ``$FASHION_MNIST_DIR`` or Debian's ``dataset-fashion-mnist``
    (``apt-get install dataset-fashion-mnist``). If none is found and ``download`` is true, falls back to
    torchvision's downloader into ``root`` (needs a network).

    Raises:
        FileNotFoundError: if the files are nowhere and cannot be downloaded.
    """
    folder = locate_fashion_mnist(root)
    if folder is None:
        if not download:
            raise FileNotFoundError(_missing_message(root))
        folder = _download(root)
    image_stem, label_stem = _FILES[train]
    image_file, label_file = _find_file(folder, image_stem), _find_file(folder, label_stem)
    assert image_file is not None and label_file is not None
    pixels = read_idx(image_file)
    targets = read_idx(label_file).to(torch.int64)
    images = ((pixels.to(torch.float32) / 255.0 - _MEAN) / _STD).unsqueeze(1)
    return TensorImageDataset(images, targets)


def _missing_message(root: str | Path | None) -> str:
    return (
        f"Fashion-MNIST not found (looked in {root or '-'}, ${FASHION_MNIST_ENV}, {DEBIAN_FASHION_MNIST}). Install "
        "it offline with `apt-get install dataset-fashion-mnist`, or point `root` / $FASHION_MNIST_DIR at a folder "
        "holding the four IDX files."
    )


def _download(root: str | Path | None) -> Path:
    target = Path(root) if root is not None else Path.home() / ".cache" / "lightning_pruning"
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(target), train=True, download=True)
        FashionMNIST(str(target), train=False, download=True)
    except Exception as error:  # no torchvision, or no network
        raise FileNotFoundError(_missing_message(root) + f" Download failed: {error}") from error
    folder = locate_fashion_mnist(target)
    if folder is None:
        raise FileNotFoundError(_missing_message(root))
    return folder


def long_tailed_class_sizes(class_sizes: Tensor, imbalance: float) -> Tensor:
    """The exponential profile n_c = floor(n_max · (1/ρ)^(c/(C-1))) of CIFAR-10-LT (ρ = ``imbalance``)."""
    if imbalance < 1:
        raise ValueError(f"`imbalance` must be >= 1, got {imbalance}.")
    num_classes = class_sizes.numel()
    exponents = torch.arange(num_classes, dtype=torch.float64) / max(num_classes - 1, 1)
    wanted = torch.floor(float(class_sizes.max()) * (1.0 / imbalance) ** exponents).to(torch.int64)
    return torch.minimum(wanted, class_sizes)


def long_tailed_indices(targets: Tensor, imbalance: float = 100.0, seed: int = 0) -> Tensor:
    """Indices of a long-tailed subsample: the first n_c of a seeded shuffle of every class c (sorted)."""
    targets = targets.to(torch.int64)
    sizes = long_tailed_class_sizes(torch.bincount(targets), imbalance)
    generator = make_generator(seed, 0, stream=7)
    picks = []
    for class_id, keep in enumerate(sizes.tolist()):
        members = torch.nonzero(targets == class_id).flatten()
        picks.append(members[torch.randperm(members.numel(), generator=generator)[:keep]])
    return torch.cat(picks).sort().values


def load_fashion_mnist_lt(
    root: str | Path | None = None, *, imbalance: float = 100.0, seed: int = 0, download: bool = True
) -> TensorImageDataset:
    """Fashion-MNIST-LT: the training set subsampled to an exponential class profile (ρ = 100 keeps
    6000 images of class 0 down to 60 of class 9, about 15k in all). The test set stays balanced:
    use ``load_fashion_mnist(train=False)``."""
    full = load_fashion_mnist(root, train=True, download=download)
    return full.subset(long_tailed_indices(full.targets, imbalance, seed))
