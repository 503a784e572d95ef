"""Datasets by name, normalised at the model's input size, with fixed splits and fast loaders.

Every dataset yields `(x, y)`: `x` a float32 (C, H, W) image already resized to the requested
input size and normalised with the dataset's own statistics, `y` an int64 label. Channels adapt
to the model: gray images are repeated to 3 channels, and RGB images are converted to gray
(ITU-R 601 luma weights) for a 1-channel model; the mean and std used are in `DataSplits`.

The validation split is carved from the training set with the fixed seed 0, whatever the run
seed, so every search and backend scores candidates on the same images; the test split is the
dataset's own and is only read for final numbers. MNIST and Fashion-MNIST read their four IDX
files (autoprune.train.idx) from torchvision's layout under `--data-dir` or from `--data-dir`
itself, gzipped or not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import Dataset

from autoprune.errors import DataError, UsageError
from autoprune.registry import Registry
from autoprune.train.idx import download_idx, find_idx_files, read_split
from autoprune.train.image_tensors import (
    LUMA,
    ImageTensorDataset,
    InputSize,
    TensorLoader,
    make_loader,
)

__all__ = [
    "DATASETS",
    "DataSpec",
    "DataSplits",
    "ImageTensorDataset",
    "TensorLoader",
    "load_dataset",
    "make_loader",
]


@dataclass(frozen=True)
class DataSpec:
    """What a dataset is: its classes, its native channels and normalisation statistics."""

    name: str
    num_classes: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class DataSplits:
    """A dataset ready for one model: train / val / test at `input_size`, normalised by mean/std.

    `mean` and `std` have one entry per output channel (after repetition or gray conversion), so
    an exported model can take [0, 1] images and normalise them itself.
    """

    spec: DataSpec
    input_size: InputSize
    train: Dataset[Any]
    val: Dataset[Any]
    test: Dataset[Any]
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class _Request:
    input_size: InputSize
    data_dir: Path | None
    val_fraction: float
    download: bool
    limit: int | None


DATASETS: Registry[Callable[[_Request], DataSplits]] = Registry("dataset")


def _adapted_stats(spec: DataSpec, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if channels == spec.channels:
        return spec.mean, spec.std
    if spec.channels == 1:
        return spec.mean * channels, spec.std * channels
    if spec.channels == 3 and channels == 1:
        # The luma mean is exact; the std is an upper bound, which is all normalisation needs.
        luma = np.array(LUMA)
        return (float(luma @ spec.mean),), (float(luma @ spec.std),)
    raise DataError(
        f"dataset {spec.name!r} has {spec.channels} channels and the model wants {channels}; "
        "use a model input size with 1 or 3 channels"
    )


def _carve(labels: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, carved) of a stratified split with the fixed seed 0."""
    indices = np.arange(len(labels))
    if fraction == 0:
        return indices, indices[:0]
    try:
        kept, carved = train_test_split(
            indices, test_size=fraction, random_state=0, stratify=labels
        )
    except ValueError:  # too few images of some class to stratify (tiny or fake sets)
        kept, carved = train_test_split(indices, test_size=fraction, random_state=0)
    return kept, carved


def _cap(indices: np.ndarray, limit: int | None, *, shuffle: bool = False) -> np.ndarray:
    if limit is None or limit >= len(indices):
        return indices
    if shuffle:  # a seeded sample rather than the first images of a file sorted by anything
        indices = np.random.default_rng(0).permutation(indices)
    return indices[:limit]


def _in_memory(
    spec: DataSpec, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], req: _Request
) -> DataSplits:
    mean, std = _adapted_stats(spec, req.input_size[0])
    kept, carved = _carve(train[1].numpy(), req.val_fraction)
    test_idx = _cap(np.arange(len(test[1])), req.limit, shuffle=True)

    def subset(images: Tensor, labels: Tensor, idx: np.ndarray) -> ImageTensorDataset:
        index = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        return ImageTensorDataset(images[index], labels[index], req.input_size, mean, std)

    return DataSplits(
        spec=spec,
        input_size=req.input_size,
        train=subset(*train, _cap(kept, req.limit)),
        val=subset(*train, _cap(carved, req.limit)),
        test=subset(*test, test_idx),
        mean=mean,
        std=std,
    )


@DATASETS.register("digits")
def _digits(req: _Request) -> DataSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images / 16.0).float().unsqueeze(1)
    labels = torch.from_numpy(bunch.target).long()
    kept, held = _carve(bunch.target, 0.2)  # sklearn ships no test split: hold out 20%
    spec = DataSpec("digits", 10, 1, (0.3053,), (0.3760,))
    return _in_memory(spec, (images[kept], labels[kept]), (images[held], labels[held]), req)


@DATASETS.register("fake")
def _fake(req: _Request) -> DataSplits:
    channels = req.input_size[0]
    generator = torch.Generator().manual_seed(0)
    # A random template per class plus noise: meaningless images that are still learnable.
    templates = torch.randint(0, 256, (10, *req.input_size), generator=generator)
    labels = torch.randint(0, 10, (384,), generator=generator)
    noise = torch.randint(0, 256, (384, *req.input_size), generator=generator)
    images = (0.6 * templates[labels] + 0.4 * noise).to(torch.uint8)
    spec = DataSpec("fake", 10, channels, (0.5,) * channels, (0.21,) * channels)
    return _in_memory(spec, (images[:320], labels[:320]), (images[320:], labels[320:]), req)


def _root(req: _Request, name: str, layout: str) -> Path:
    if req.data_dir is None and not req.download:
        raise DataError(
            f"dataset {name!r} reads its files from a data directory and none was given; pass "
            f"--data-dir pointing at a folder with {layout}"
        )
    root = Path(req.data_dir) if req.data_dir is not None else Path("data")
    if not req.download and not root.is_dir():
        raise DataError(
            f"data directory {root} does not exist; pass --data-dir pointing at a folder with "
            f"{layout}"
        )
    return root


def _torchvision_set(
    name: str, class_name: str, layout: str, mean: tuple[float, ...], std: tuple[float, ...]
) -> Callable[[_Request], DataSplits]:
    """A loader reading torchvision dataset `class_name` from `data_dir` into memory."""

    def load(req: _Request) -> DataSplits:
        import torchvision.datasets

        cls = getattr(torchvision.datasets, class_name)
        root = _root(req, name, layout)
        try:
            sets = [cls(root=str(root), train=t, download=req.download) for t in (True, False)]
        except (RuntimeError, OSError, ValueError, EOFError, AssertionError) as err:
            raise DataError(
                f"cannot read {name} under {root / layout} ({err}); pass --data-dir pointing at a "
                f"folder with {layout}"
            ) from None
        tensors = []
        for ds in sets:
            images = torch.as_tensor(ds.data)
            # MNIST-like sets are (N, H, W), CIFAR is (N, H, W, C): make both (N, C, H, W).
            images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
            tensors.append((images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64)))
        spec = DataSpec(name, 10, len(mean), mean, std)
        return _in_memory(spec, tensors[0], tensors[1], req)

    return load


def _idx_set(
    name: str, class_name: str, mean: tuple[float, ...], std: tuple[float, ...]
) -> Callable[[_Request], DataSplits]:
    """A loader of an MNIST-like set: four IDX files in `data_dir/class_name/raw` or `data_dir`.

    `download=True` (Python API only) fetches them into `data_dir/class_name/raw` first.
    """
    layout = f"{class_name}/raw or the four IDX files"

    def load(req: _Request) -> DataSplits:
        root = _root(req, name, layout)
        if req.download:
            download_idx(name, class_name, root)
        files = find_idx_files(root, f"{class_name}/raw")
        tensors = []
        for split in ("train", "test"):
            images, labels = read_split(*files[split], classes=10)
            tensors.append((torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels)))
        return _in_memory(DataSpec(name, 10, 1, mean, std), tensors[0], tensors[1], req)

    return load


_CIFAR_STATS = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
DATASETS.register("mnist")(_idx_set("mnist", "MNIST", (0.1307,), (0.3081,)))
DATASETS.register("fashion-mnist")(_idx_set("fashion-mnist", "FashionMNIST", (0.2860,), (0.3530,)))
DATASETS.register("cifar10")(
    _torchvision_set("cifar10", "CIFAR10", "cifar-10-batches-py", *_CIFAR_STATS)
)


@DATASETS.register("imagefolder")
def _imagefolder(req: _Request) -> DataSplits:
    from torchvision import datasets

    from autoprune.train.folder import FolderImages  # decoded per batch by DataLoader workers

    layout = "train/ and val/ (or test/) class subfolders"
    root = _root(req, "imagefolder", layout)
    held_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or held_dir is None:
        raise DataError(f"{root} lacks {layout}; point --data-dir at such a folder")
    spec = DataSpec("imagefolder", 0, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    mean, std = _adapted_stats(spec, req.input_size[0])
    train = datasets.ImageFolder(str(root / "train"))
    held = datasets.ImageFolder(str(held_dir))
    if held.classes != train.classes:
        raise DataError(f"{held_dir} and {root / 'train'} hold different class folders; align them")
    spec = DataSpec("imagefolder", len(train.classes), 3, spec.mean, spec.std)
    kept, carved = _carve(np.asarray(train.targets), req.val_fraction)
    test_idx = _cap(np.arange(len(held)), req.limit, shuffle=True)

    def images(folder: Any, idx: np.ndarray) -> FolderImages:
        return FolderImages([folder.samples[i] for i in idx], req.input_size, mean, std)

    return DataSplits(
        spec=spec,
        input_size=req.input_size,
        train=images(train, _cap(kept, req.limit)),
        val=images(train, _cap(carved, req.limit)),
        test=images(held, test_idx),
        mean=mean,
        std=std,
    )


def load_dataset(
    name: str,
    *,
    input_size: InputSize,
    data_dir: str | Path | None = None,
    val_fraction: float = 0.1,
    download: bool = False,
    limit: int | None = None,
) -> DataSplits:
    """Load dataset `name` for a model taking `input_size` (C, H, W) images.

    `limit` caps the size of each split (tests and demos); `download` lets torchvision fetch
    mnist / fashion-mnist / cifar10 into `data_dir` (default ./data).
    """
    loader = DATASETS.get(name)
    if not (
        isinstance(input_size, (tuple, list))
        and len(input_size) == 3
        and all(isinstance(v, int) and v > 0 for v in input_size)
    ):
        raise UsageError(f"input_size must be three positive ints (C, H, W), got {input_size!r}")
    if not 0 <= val_fraction < 1:
        raise UsageError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UsageError(f"limit must be a positive integer or None, got {limit!r}")
    path = Path(data_dir) if data_dir is not None else None
    size: InputSize = (int(input_size[0]), int(input_size[1]), int(input_size[2]))
    return loader(_Request(size, path, float(val_fraction), download, limit))
