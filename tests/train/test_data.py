"""Datasets: fixed disjoint splits, normalisation, channel and size adaptation, loaders, errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import Dataset, TensorDataset

from autoprune.errors import DataError, UnknownNameError, UsageError
from autoprune.train import data, image_tensors
from autoprune.train.data import ImageTensorDataset, load_dataset, make_loader
from autoprune.train.idx import write_idx

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def _all(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))), strict=True)  # type: ignore[arg-type]
    return torch.stack(xs), torch.stack(ys)


def test_digits_splits_partition_the_dataset() -> None:
    splits = load_dataset("digits", input_size=(1, 8, 8))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1293, 144, 360)
    assert splits.spec.num_classes == 10
    # Undo the normalisation to recover the raw 0..16 pixels, and compare multisets of images.
    seen: Counter[bytes] = Counter()
    for part in (splits.train, splits.val, splits.test):
        x, y = _all(part)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        raw = torch.round((x * splits.std[0] + splits.mean[0]) * 16).to(torch.uint8)
        seen.update(row.numpy().tobytes() for row in raw.flatten(1))
    original = load_digits().data.astype(np.uint8)
    assert seen == Counter(row.tobytes() for row in original)


def test_digits_are_normalised_and_deterministic() -> None:
    torch.manual_seed(1)
    first = load_dataset("digits", input_size=(1, 8, 8))
    torch.manual_seed(2)  # the split must not depend on the run's seed
    second = load_dataset("digits", input_size=(1, 8, 8))
    x, _ = _all(first.train)
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05
    for a, b in ((first.train, second.train), (first.val, second.val)):
        assert all(torch.equal(t, u) for t, u in zip(_all(a), _all(b), strict=True))


def test_resize_and_channel_repeat() -> None:
    splits = load_dataset("digits", input_size=(3, 16, 20), limit=10)
    x, _ = splits.train[0]
    assert x.shape == (3, 16, 20)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert splits.mean == (0.3053,) * 3 and splits.std == (0.3760,) * 3
    assert (len(splits.train), len(splits.val), len(splits.test)) == (10, 10, 10)


def test_rgb_images_become_gray_for_a_one_channel_model() -> None:
    images = torch.randint(0, 256, (4, 3, 6, 6), dtype=torch.uint8)
    dataset = ImageTensorDataset(images, torch.zeros(4), (1, 6, 6), (0.0,), (1.0,))
    gray = (images.float() / 255 * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)
    assert torch.allclose(dataset.batch(torch.arange(4))[0][:, 0], gray, atol=1e-6)


def test_large_datasets_convert_per_batch_identically(monkeypatch: pytest.MonkeyPatch) -> None:
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    args = (images, torch.arange(5), (3, 12, 12), (0.5,) * 3, (0.2,) * 3)
    cached = ImageTensorDataset(*args)
    monkeypatch.setattr(image_tensors, "_CACHE_BYTES", 0)
    lazy = ImageTensorDataset(*args)
    index = torch.tensor([4, 0, 2])
    assert all(
        torch.equal(a, b) for a, b in zip(cached.batch(index), lazy.batch(index), strict=True)
    )


def test_fake_data_is_small_and_fixed() -> None:
    first = load_dataset("fake", input_size=(2, 10, 12))
    second = load_dataset("fake", input_size=(2, 10, 12))
    assert first.spec.channels == 2 and first.spec.num_classes == 10
    assert (len(first.train), len(first.val), len(first.test)) == (288, 32, 64)
    x, y = _all(first.test)
    assert x.shape == (64, 2, 10, 12) and int(y.min()) >= 0 and int(y.max()) < 10
    assert torch.equal(x, _all(second.test)[0])


def test_loader_shuffles_per_epoch_reproducibly() -> None:
    dataset = TensorDataset(torch.arange(10).float().view(10, 1), torch.arange(10))
    loader = make_loader(dataset, batch_size=4, shuffle=True, seed=3)
    epochs = [torch.cat([y for _, y in loader]) for _ in range(2)]
    assert len(loader) == 3  # type: ignore[arg-type]
    assert sorted(epochs[0].tolist()) == list(range(10))
    assert not torch.equal(epochs[0], epochs[1])
    again = make_loader(dataset, batch_size=4, shuffle=True, seed=3)
    assert all(torch.equal(torch.cat([y for _, y in again]), e) for e in epochs)
    plain = make_loader(dataset, batch_size=4, shuffle=False, drop_last=True)
    assert [y.tolist() for _, y in plain] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_loader_falls_back_to_dataloader() -> None:
    class Squares(Dataset[tuple[torch.Tensor, int]]):
        def __len__(self) -> int:
            return 5

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return torch.tensor([float(i * i)]), i

    batches = list(make_loader(Squares(), batch_size=2, shuffle=False))
    assert [y.tolist() for _, y in batches] == [[0, 1], [2, 3], [4]]
    with pytest.raises(UsageError, match="batch size"):
        make_loader(Squares(), batch_size=0, shuffle=False)


def test_imagefolder_reads_class_folders(tmp_path: Path) -> None:
    from PIL import Image

    for split in ("train", "val"):
        for label, colour in (("cat", (200, 10, 10)), ("dog", (10, 10, 200))):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(5):
                Image.new("RGB", (12, 10), colour).save(tmp_path / split / label / f"{i}.png")
    splits = load_dataset("imagefolder", input_size=(1, 8, 8), data_dir=tmp_path, val_fraction=0.2)
    assert splits.spec.num_classes == 2 and len(splits.mean) == 1
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 2, 10)
    x, y = next(iter(make_loader(splits.test, batch_size=10, shuffle=False)))
    assert x.shape == (10, 1, 8, 8) and sorted(y.tolist()) == [0] * 5 + [1] * 5
    with pytest.raises(DataError, match="train/ and val/"):
        load_dataset("imagefolder", input_size=(3, 8, 8), data_dir=tmp_path / "train")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_missing_data_is_a_data_error(name: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset(name, input_size=(1, 28, 28))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(name, input_size=(1, 28, 28), data_dir=tmp_path / "absent")
    with pytest.raises(DataError, match=str(tmp_path)):
        load_dataset(name, input_size=(1, 28, 28), data_dir=tmp_path)


def test_bad_arguments_are_usage_errors() -> None:
    with pytest.raises(UnknownNameError, match="mnist"):
        load_dataset("mnits", input_size=(1, 28, 28))
    with pytest.raises(UsageError, match="val_fraction"):
        load_dataset("digits", input_size=(1, 8, 8), val_fraction=1.0)
    with pytest.raises(UsageError, match="limit"):
        load_dataset("digits", input_size=(1, 8, 8), limit=0)
    with pytest.raises(UsageError, match="input_size"):
        load_dataset("digits", input_size=(8, 8))  # type: ignore[arg-type]
    two_channel = data.DataSpec("stereo", 2, 2, (0.5, 0.5), (0.2, 0.2))
    with pytest.raises(DataError, match="2 channels and the model wants 3"):
        data._adapted_stats(two_channel, 3)


@pytest.mark.data
@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="needs ../shared/data")
def test_mnist_matches_the_published_label_counts() -> None:
    splits = load_dataset("mnist", input_size=(1, 28, 28), data_dir=SHARED_DATA)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (54_000, 6_000, 10_000)
    _, test_labels = next(iter(make_loader(splits.test, batch_size=10_000, shuffle=False)))
    counts = torch.bincount(test_labels, minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    x, _ = next(iter(make_loader(splits.train, batch_size=4096, shuffle=True)))
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05


def _idx_folder(folder: Path, *, gz: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", 40), ("t10k", 12)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz=gz)
        arrays[prefix] = images
    return arrays


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("gz", [False, True])
def test_a_folder_of_idx_files_is_read(name: str, gz: bool, tmp_path: Path) -> None:
    arrays = _idx_folder(tmp_path, gz=gz)
    splits = load_dataset(name, input_size=(1, 28, 28), data_dir=tmp_path, val_fraction=0.25)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 12)
    x, y = _all(splits.test)
    pixels = torch.round((x[:, 0] * splits.std[0] + splits.mean[0]) * 255).to(torch.uint8)
    assert torch.equal(pixels, torch.from_numpy(arrays["t10k"]))
    assert y.tolist() == [i % 10 for i in range(12)]


def test_torchvision_layout_wins_over_loose_files(tmp_path: Path) -> None:
    nested = _idx_folder(tmp_path / "FashionMNIST" / "raw", gz=False, seed=1)
    _idx_folder(tmp_path, gz=True, seed=2)  # another set beside it: the layout is read first
    splits = load_dataset("fashion-mnist", input_size=(1, 28, 28), data_dir=tmp_path)
    x, _ = _all(splits.test)
    pixels = torch.round((x[:, 0] * splits.std[0] + splits.mean[0]) * 255).to(torch.uint8)
    assert torch.equal(pixels, torch.from_numpy(nested["t10k"]))


def test_a_folder_missing_idx_files_names_them(tmp_path: Path) -> None:
    _idx_folder(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"lacks t10k-labels-idx1-ubyte\[\.gz\];") as err:
        load_dataset("mnist", input_size=(1, 28, 28), data_dir=tmp_path)
    assert "\n" not in str(err.value) and "train-images" not in str(err.value)


def test_broken_idx_files_are_data_errors(tmp_path: Path) -> None:
    _idx_folder(tmp_path, gz=False)
    images = tmp_path / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated"):
        load_dataset("mnist", input_size=(1, 28, 28), data_dir=tmp_path)
    images.write_bytes(b"not an idx file at all")
    with pytest.raises(DataError, match="not an IDX file"):
        load_dataset("mnist", input_size=(1, 28, 28), data_dir=tmp_path)
    _idx_folder(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(5, dtype=np.uint8), gz=False)
    with pytest.raises(DataError, match=r"\(5,\) labels for the 12 images"):
        load_dataset("mnist", input_size=(1, 28, 28), data_dir=tmp_path)


@pytest.mark.data
@pytest.mark.skipif(
    not (SHARED_DATA / "FashionMNIST" / "raw").is_dir(), reason="needs ../shared/data"
)
def test_fashion_mnist_has_a_thousand_test_images_per_class() -> None:
    splits = load_dataset("fashion-mnist", input_size=(1, 28, 28), data_dir=SHARED_DATA)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (54_000, 6_000, 10_000)
    _, test_labels = next(iter(make_loader(splits.test, batch_size=10_000, shuffle=False)))
    assert torch.bincount(test_labels, minlength=10).tolist() == [1000] * 10
