"""In-memory images normalised for one model, and the loaders that batch them by slicing.

`ImageTensorDataset` converts a dataset's images (uint8 or [0, 1] floats at their native size) to
the model's channels and input size once, normalised; `make_loader` batches it, or any
`TensorDataset`, without per-item collation (a torch DataLoader for anything else).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from autoprune.errors import UsageError

InputSize = tuple[int, int, int]
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, the weights PIL and torchvision use for gray
_CACHE_BYTES = 1 << 30  # above this, images are resized per batch instead of all at once
_CHUNK = 4096  # images converted at a time, to bound the peak memory of the conversion


class ImageTensorDataset(Dataset[tuple[Tensor, Tensor]]):
    """Images held in memory, normalised at `input_size` once (or per batch when too large).

    `images` is (N, C, H, W), uint8 in 0..255 or float in [0, 1], at the dataset's native size.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        input_size: InputSize,
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> None:
        self.labels = labels.to(torch.int64)
        self.input_size = input_size
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self._source: Tensor | None = images
        self._images: Tensor | None = None
        if len(images) * int(np.prod(input_size)) * 4 <= _CACHE_BYTES:
            chunks = [self._convert(images[i : i + _CHUNK]) for i in range(0, len(images), _CHUNK)]
            self._images = torch.cat(chunks) if chunks else torch.empty(0, *input_size)
            self._source = None

    def _convert(self, chunk: Tensor) -> Tensor:
        x = chunk.float().div_(255.0) if chunk.dtype == torch.uint8 else chunk.float()
        channels = self.input_size[0]
        if x.shape[1] == 1 and channels != 1:
            x = x.expand(-1, channels, -1, -1)
        elif x.shape[1] == 3 and channels == 1:
            x = (x * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
        if tuple(x.shape[2:]) != self.input_size[1:]:
            x = F.interpolate(
                x, size=self.input_size[1:], mode="bilinear", align_corners=False, antialias=True
            )
        return ((x - self._mean) / self._std).contiguous()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.batch(torch.tensor([index]))
        return x[0], y[0]

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """The normalised images and labels at `indices`, as two stacked tensors."""
        if self._images is not None:
            return self._images[indices], self.labels[indices]
        assert self._source is not None  # one of the two is always set by __init__
        return self._convert(self._source[indices]), self.labels[indices]


class TensorLoader:
    """Batches of an in-memory dataset by slicing a permuted index (no per-item collation).

    The generator is seeded once, so each pass over the data draws a new order, and the
    sequence of orders is the same for the same seed.
    """

    def __init__(
        self, dataset: Dataset[Any], *, batch_size: int, shuffle: bool, seed: int, drop_last: bool
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self._generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.dataset)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _take(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        if isinstance(self.dataset, ImageTensorDataset):
            return self.dataset.batch(indices)
        x, y = (t[indices] for t in self.dataset.tensors)  # type: ignore[attr-defined]
        return x, y

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.dataset)  # type: ignore[arg-type]
        order = torch.randperm(n, generator=self._generator) if self.shuffle else torch.arange(n)
        for batch in range(len(self)):
            yield self._take(order[batch * self.batch_size : (batch + 1) * self.batch_size])


def make_loader(
    dataset: Dataset[Any], *, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False
) -> Iterable[tuple[Tensor, Tensor]]:
    """Batches of `dataset`: fast slicing for in-memory tensors, a torch DataLoader otherwise."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch size must be a positive integer, got {batch_size!r}")
    if isinstance(dataset, (ImageTensorDataset, TensorDataset)):
        return TensorLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
    from autoprune.train.folder import FolderImages, FolderLoader  # --workers, pinned memory

    if isinstance(dataset, FolderImages):
        return FolderLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
    # num_workers=0: the machines this runs on share a few cores between several jobs.
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, generator=generator
    )


__all__ = ["LUMA", "ImageTensorDataset", "InputSize", "TensorLoader", "make_loader"]
