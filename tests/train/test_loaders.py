"""Training batches: folder datasets through DataLoader workers (normalised per batch), in-memory
sets augmented per batch; both seeded, both the same length as the plain loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autoprune.train.augment import Augmented, training_batches
from autoprune.train.data import load_dataset, make_loader
from autoprune.train.device import Runtime, use_runtime
from autoprune.train.folder import FolderImages, FolderLoader


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of 12x10 images with a gradient, so crops and flips change pixels."""
    from PIL import Image

    root = tmp_path_factory.mktemp("imagefolder")
    gen = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            (root / split / label).mkdir(parents=True)
            for i in range(6):
                pixels = torch.randint(0, 256, (10, 12, 3), generator=gen, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(root / split / label / f"{i}.png")
    return root


def test_folder_batches_equal_items_with_or_without_workers(folder: Path) -> None:
    data = load_dataset("imagefolder", input_size=(3, 8, 8), data_dir=folder, val_fraction=0.2)
    assert isinstance(data.test, FolderImages) and len(data.test) == 12
    items = torch.stack([data.test[i][0] for i in range(len(data.test))])
    for workers in (0, 2):
        with use_runtime(Runtime(device="cpu", workers=workers)):
            loader = make_loader(data.test, batch_size=5, shuffle=False)
            assert isinstance(loader, FolderLoader) and len(loader) == 3
            batches = list(loader)
        x = torch.cat([b[0] for b in batches])
        assert x.dtype is torch.float32 and x.shape == (12, 3, 8, 8)
        torch.testing.assert_close(x, items)  # normalised per batch == per item
        assert torch.cat([b[1] for b in batches]).tolist() == [0] * 6 + [1] * 6
    # normalised with ImageNet's statistics: roughly zero-mean, unit-scale values
    assert -3 < float(items.mean()) < 3 and float(items.std()) > 0.3


def test_folder_augmentation_crops_at_random_and_repeats_per_seed(folder: Path) -> None:
    data = load_dataset("imagefolder", input_size=(3, 8, 8), data_dir=folder, val_fraction=0.2)
    with use_runtime(Runtime(device="cpu", workers=2)):
        plain = [x for x, _ in training_batches(data, batch_size=4, seed=1)]
        runs = [[x for x, _ in training_batches(data, batch_size=4, seed=1, augment=True)]
                for _ in range(2)]  # fmt: skip
    n = len(data.train)
    sizes = [min(4, n - i) for i in range(0, n, 4)]
    assert [x.shape for x in plain] == [x.shape for x in runs[0]] == [(k, 3, 8, 8) for k in sizes]
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))  # same seed, same crops
    assert not all(torch.equal(a, b) for a, b in zip(plain, runs[0], strict=True))


def test_in_memory_batches_are_augmented_per_batch_with_the_loader_length() -> None:
    data = load_dataset("digits", input_size=(1, 16, 16), limit=96)
    loader = training_batches(data, batch_size=32, seed=0, augment=True)
    assert isinstance(loader, Augmented) and len(loader) == 3
    plain = list(training_batches(data, batch_size=32, seed=0))
    shifted = list(loader)
    for (xa, ya), (xb, yb) in zip(plain, shifted, strict=True):
        assert torch.equal(ya, yb) and xa.shape == xb.shape  # same images, same order
        assert not torch.equal(xa, xb)
    again = list(training_batches(data, batch_size=32, seed=0, augment=True))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(shifted, again, strict=True))
