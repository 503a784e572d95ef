"""Folder datasets (imagefolder): decoded by DataLoader workers, normalised per batch on the device.

Each image is decoded and resized to the input size as uint8 in a worker (`--workers N`), the
batch travels to the device as uint8 from pinned memory (a quarter of float32's bytes), and the
conversion to float and the normalisation happen there, per batch. Evaluation (and training
without --augment) resizes the shorter side to input / 0.875 and takes the centre crop, the
ImageNet convention pretrained torchvision weights are measured with; `--augment` trains on
random-resized crops instead (autoprune.train.augment). Item access (`ds[i]`) still gives the
normalised float image every dataset gives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from autoprune.train import distributed
from autoprune.train.device import current

CROP_FRACTION = 0.875  # centre crop of the resized image: 224 of 256, torchvision's eval recipe

__all__ = ["CROP_FRACTION", "FolderImages", "FolderLoader"]


@dataclasses.dataclass(frozen=True)
class _Decode:
    """Path -> uint8 (C, H, W) at the input size (a picklable callable for worker processes)."""

    input_size: tuple[int, int, int]
    random_crop: bool

    def __call__(self, path: str) -> Tensor:
        from PIL import Image
        from torchvision.transforms import v2

        channels, h, w = self.input_size
        with Image.open(path) as file:
            img = file.convert("L" if channels == 1 else "RGB")
        if self.random_crop:
            img = v2.RandomResizedCrop((h, w), antialias=True)(img)
        else:
            img = v2.Resize(round(min(h, w) / CROP_FRACTION), antialias=True)(img)
            img = v2.CenterCrop((h, w))(img)
        return v2.functional.pil_to_tensor(img)


class _Raw(Dataset[tuple[Tensor, int]]):
    def __init__(self, samples: Sequence[tuple[str, int]], decode: _Decode) -> None:
        self.samples, self.decode = samples, decode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path, label = self.samples[i]
        return self.decode(path), label


class FolderImages(Dataset[tuple[Tensor, Tensor]]):
    """Images on disk (path, label) at `input_size`, normalised with `mean` / `std`."""

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        input_size: tuple[int, int, int],
        mean: Sequence[float],
        std: Sequence[float],
        *,
        random_crop: bool = False,
    ) -> None:
        self.samples = list(samples)
        self.input_size = input_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.random_crop = random_crop
        self.raw = _Raw(self.samples, _Decode(input_size, random_crop))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x, y = self.raw[i]
        return self.normalise(x[None])[0], torch.tensor(y, dtype=torch.int64)

    def normalise(self, x: Tensor) -> Tensor:
        """uint8 (N, C, H, W) -> normalised float32, on x's device."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        return (x.float().div_(255.0) - mean) / std

    def augmented(self) -> FolderImages:
        """The same images as random-resized crops (training with --augment)."""
        return FolderImages(self.samples, self.input_size, self.mean, self.std, random_crop=True)


class FolderLoader:
    """Seeded batches of a FolderImages, decoded by `--workers` processes, on the runtime device.

    Like TensorLoader, one generator draws a new order per pass, the same sequence for the same
    seed. With `shard` (training under torchrun) each rank decodes only its strided share of
    every global batch; train_epoch then does not shard again (`sharded`).
    """

    def __init__(
        self,
        dataset: FolderImages,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int,
        drop_last: bool = False,
        shard: bool = False,
    ) -> None:
        self.dataset, self.batch_size = dataset, batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.sharded = shard and distributed.active()
        self._generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _batches(self) -> list[list[int]]:
        n = len(self.dataset)
        order = torch.randperm(n, generator=self._generator) if self.shuffle else torch.arange(n)
        batches = [order[b * self.batch_size : (b + 1) * self.batch_size].tolist()
                   for b in range(len(self))]  # fmt: skip
        if self.sharded:
            r, k = distributed.rank(), distributed.world_size()
            batches = [b[r::k] for b in batches]
        return batches

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        active = current()
        workers = active.runtime.workers
        kwargs: dict[str, Any] = {}
        if workers:  # workers draw their random crops from seeds this generator hands them
            seed = int(torch.randint(0, 2**62, (1,), generator=self._generator))
            kwargs["generator"] = torch.Generator().manual_seed(seed)
        batches = self._batches()
        # A rank's share of a last batch smaller than the world is empty: it still takes the step
        # (an empty batch), so every rank joins every gradient all-reduce.
        loader = DataLoader(self.dataset.raw, batch_sampler=[b for b in batches if b],
                            num_workers=workers, pin_memory=active.pin_memory,
                            **kwargs)  # fmt: skip
        decoded = iter(loader)
        for indices in batches:
            if not indices:
                empty = torch.empty(0, *self.dataset.input_size, device=active.device)
                yield empty, torch.empty(0, dtype=torch.int64, device=active.device)
                continue
            x, y = next(decoded)
            x = x.to(active.device, non_blocking=True)
            yield self.dataset.normalise(x), y.to(active.device, non_blocking=True)
