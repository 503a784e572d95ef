"""torchvision's pretrained weights (`--weights NAME`), read from the local torch hub cache only.

torchvision names each model's weights in an enum (`ResNet18_Weights.IMAGENET1K_V1`, with
`DEFAULT` the best); the file is the basename of the weights' URL under
`$TORCH_HOME/hub/checkpoints` (torch.hub.get_dir()), where torchvision's own downloads land.
autoprune never downloads: a missing file is a one-line error naming it, its URL and the folder.

A dataset with as many classes as the weights gets the whole network; on another class count
the classifier (the keys whose first dimension is the weights' class count) starts fresh and
is returned, so the caller trains it before anything is ranked on it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from autoprune.errors import CheckpointError, UnknownNameError, UsageError
from autoprune.train.checkpoint import fit_state

__all__ = ["cached_file", "load_pretrained", "weights_entry"]

# Heads torchvision builds for training and autoprune builds without (forward returns one
# tensor); their pretrained keys are dropped, as torchvision's builders do.
_AUX_HEADS = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}
# Weights trained on inputs in [-1, 1]: the model converts ImageNet-normalised input itself.
_TRANSFORM_INPUT = ("googlenet", "inception_v3")
# DenseNet files from before torchvision 0.3 name `norm.1` what the model calls `norm1`.
_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def weights_entry(model: str, weights: str) -> Any:
    """torchvision's weights enum member `weights` (e.g. DEFAULT, IMAGENET1K_V1) of `model`."""
    import torchvision.models

    from autoprune.models import MODELS, list_models

    tv_names = set(list_models()) - set(MODELS.names())
    if model not in tv_names:
        raise UsageError(
            f"--weights picks torchvision's pretrained weights and {model!r} is not a torchvision "
            "model (zoo names shadow torchvision's: use torchvision.models:NAME); for weights of "
            "your own pass --checkpoint FILE.pth"
        )
    enum = torchvision.models.get_model_weights(model)
    names = list(enum.__members__)
    if weights not in names:
        raise UnknownNameError(f"{model} has no weights {weights!r}; it has {', '.join(names)}")
    return enum[weights]


def cached_file(entry: Any) -> Path:
    """Where the hub cache keeps `entry`'s file (it need not exist)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(entry.url).path).name


def _state(model: str, weights: str) -> tuple[dict[str, Tensor], int, Path]:
    entry = weights_entry(model, weights)
    path = cached_file(entry)
    if not path.is_file():
        raise CheckpointError(
            f"no cached file for {model} weights {weights} ({entry}): put {path.name} from "
            f"{entry.url} into {path.parent} (set TORCH_HOME to use another cache; autoprune "
            "never downloads)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated download, or not a state dict
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path} cannot be read ({reason}); download it again") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict")
    drop = _AUX_HEADS.get(model, ())
    state = {_DENSENET_KEY.sub(r"\1\2", k): v for k, v in state.items() if not k.startswith(drop)}
    return state, len(entry.meta["categories"]), path


def load_pretrained(net: nn.Module, model: str, weights: str) -> list[str]:
    """Load `weights` of torchvision model `model` into `net` (built by build_model); returns
    the keys that start fresh (the classifier, when `net` has another number of classes)."""
    state, classes, path = _state(model, weights)
    fresh = fit_state(net, state, source=f"weights {weights} of {model} ({path})",
                      head_classes=classes)  # fmt: skip
    if model in _TRANSFORM_INPUT:
        net.transform_input = True  # type: ignore[assignment]
    return fresh
