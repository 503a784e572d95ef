"""Training recipes' data augmentation (standard defaults per dataset) and a run's training batches.

`--augment` gives each dataset the augmentation its published baselines train with:

- cifar10: random crop with 4-pixel zero padding (of 32) + horizontal flip;
- mnist, fashion-mnist, digits: random shifts of up to 2 pixels (of 28: a crop after padding);
- imagefolder: random-resized crop (scale 0.08-1, torchvision's) + horizontal flip; evaluation
  always resizes and takes the centre crop (autoprune.train.folder);
- fake: horizontal flip.

Shifts and crops scale with the input size (4/32 and 2/28 of the side). In-memory batches are
augmented on the device they train on, by index arithmetic (no per-image Python); a folder
dataset's random-resized crop happens per image where it is decoded (autoprune.train.folder).
Every draw comes from a generator seeded by the run's seed: same seed, same batches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sized
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from autoprune.errors import UsageError
from autoprune.train.device import current
from autoprune.train.folder import FolderImages, FolderLoader
from autoprune.train.image_tensors import make_loader

if TYPE_CHECKING:
    from autoprune.train.data import DataSplits

__all__ = ["RECIPES", "Recipe", "augment_batch", "recipe_for", "recipe_record", "training_batches"]


@dataclass(frozen=True)
class Recipe:
    """Augmentation of one dataset's training batches."""

    pad: float = 0.0  # random crop after zero padding of this fraction of the side (a shift)
    flip: bool = False  # horizontal flip with probability 1/2
    resized_crop: bool = False  # random-resized crop per image (folder datasets), scale 0.08-1

    def describe(self, input_size: tuple[int, int, int]) -> dict[str, Any]:
        """The recipe as metrics.json records it (the padding in pixels at this input size)."""
        out: dict[str, Any] = asdict(self)
        out["pad_pixels"] = pad_pixels(self, input_size)
        return out


RECIPES: dict[str, Recipe] = {
    "cifar10": Recipe(pad=4 / 32, flip=True),
    "mnist": Recipe(pad=2 / 28),
    "fashion-mnist": Recipe(pad=2 / 28),
    "digits": Recipe(pad=2 / 28),
    "imagefolder": Recipe(flip=True, resized_crop=True),
    "fake": Recipe(flip=True),
}


def recipe_for(dataset: str) -> Recipe:
    """The default augmentation of `dataset` (a dataset without one is an error, not a guess)."""
    if dataset not in RECIPES:
        raise UsageError(
            f"--augment has no recipe for dataset {dataset!r}; recipes exist for "
            f"{', '.join(sorted(RECIPES))} (add one to autoprune.train.augment.RECIPES)"
        )
    return RECIPES[dataset]


def pad_pixels(recipe: Recipe, input_size: tuple[int, int, int]) -> int:
    return round(recipe.pad * min(input_size[1:]))


def augment_batch(x: Tensor, recipe: Recipe, pad: int, generator: torch.Generator) -> Tensor:
    """`x` (N, C, H, W) shifted by up to `pad` pixels (zero fill) and flipped per the recipe.

    The draws are made on the CPU from `generator` and moved to x's device, so a batch is
    augmented the same way on every device.
    """
    n, _, h, w = x.shape
    if pad > 0:
        di, dj = (torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
                  for _ in range(2))  # fmt: skip
        padded = F.pad(x, (pad, pad, pad, pad))
        rows = (di[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dj[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, channel, rows, cols]
    if recipe.flip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)[:, None, None, None]
        x = torch.where(flip, x.flip(3), x)
    return x


class Augmented:
    """Batches of `loader` moved to the runtime's device and augmented there (same length)."""

    def __init__(
        self,
        loader: Iterable[tuple[Tensor, Tensor]],
        recipe: Recipe,
        input_size: tuple[int, int, int],
        seed: int,
        device: torch.device,
    ) -> None:
        self.loader, self.recipe, self.device = loader, recipe, device
        self.sharded = getattr(loader, "sharded", False)  # train_epoch must not shard again
        self.pad = pad_pixels(recipe, input_size)
        self._generator = torch.Generator().manual_seed(seed * 7919 + 17)

    def __len__(self) -> int:
        if not isinstance(self.loader, Sized):
            raise TypeError("the wrapped loader has no length")
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            yield augment_batch(x, self.recipe, self.pad, self._generator), y


def training_batches(
    data: DataSplits, *, batch_size: int, seed: int, augment: bool = False
) -> Iterable[tuple[Tensor, Tensor]]:
    """Shuffled training batches of `data` (a new seeded order per pass), with the dataset's
    recipe under `augment`. A folder dataset decodes in --workers processes and, under
    torchrun, only this rank's share of each batch."""
    recipe = recipe_for(data.spec.name) if augment else None
    train = data.train
    loader: Iterable[tuple[Tensor, Tensor]]
    if isinstance(train, FolderImages):
        if recipe is not None and recipe.resized_crop:
            train = train.augmented()
        loader = FolderLoader(train, batch_size=batch_size, shuffle=True, seed=seed, shard=True)
    else:
        loader = make_loader(train, batch_size=batch_size, shuffle=True, seed=seed)
    if recipe is None or not (recipe.pad or recipe.flip):
        return loader
    per_batch = dataclasses.replace(recipe, resized_crop=False)
    return Augmented(loader, per_batch, data.input_size, seed, current().device)


def recipe_record(augment: bool, dataset: str, input_size: tuple[int, int, int]) -> dict[str, Any]:
    """How a run trained, for metrics.json: the augmentation applied and the runtime."""
    recipe = recipe_for(dataset).describe(input_size) if augment else None
    return {"augment": recipe, "runtime": current().describe()}
