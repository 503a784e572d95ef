"""Checkpoints: a state dict plus plain-typed metadata, written atomically, read safely; and
plain state dicts (a user's own .pth, torchvision's cached weights) loaded with a clear error.

The file is a `torch.save` of `{"format": FORMAT, "state_dict": ..., "meta": ...}`. The metadata
holds only str / int / float / bool / None / list / tuple / dict, so `torch.load(path,
weights_only=True)` reads it without running any pickled code.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from autoprune.errors import AutoPruneError, CheckpointError
from autoprune.rundir import torch_writes

FORMAT = "autoprune.checkpoint/v1"
_REQUIRED_META = ("model", "num_classes", "input_size")
_FIX = "retrain with `autoprune train` or point --checkpoint at a valid file"

__all__ = [
    "FORMAT",
    "build_from_checkpoint",
    "fit_state",
    "load_checkpoint",
    "read_weights",
    "save_checkpoint",
]


def _check_plain(value: Any, where: str) -> None:
    if value is None or isinstance(value, (str, int, float, bool)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"checkpoint meta{where} has a non-string key {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"checkpoint meta{where} is a {type(value).__name__}; store only str, int, float, bool, "
        "None, lists and dicts so that weights_only loading can read it"
    )


def save_checkpoint(
    path: str | Path, *, state_dict: Mapping[str, Tensor], meta: dict[str, Any]
) -> None:
    """Write `state_dict` and `meta` to `path`; a crash mid-write never leaves a partial file."""
    _check_plain(meta, "")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        # Detached CPU copies: the file must load on machines without the training device.
        "state_dict": {name: t.detach().cpu() for name, t in state_dict.items()},
        "meta": meta,
    }
    # Write next to the target (same file system) so os.replace is an atomic rename.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle, torch_writes(tmp):
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path) -> Any:
    """torch.load(weights_only=True) onto the CPU, every failure a one-line CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; {_FIX}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise CheckpointError(f"checkpoint {path} cannot be read ({err}); {_FIX}") from None
    except Exception as err:  # torch.load raises many types on damaged archives and pickles
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({reason}); {_FIX}"
        ) from None


def _unpack(payload: dict[str, Any], path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    state_dict, meta = payload.get("state_dict"), payload.get("meta")
    if not isinstance(state_dict, dict) or not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} lacks its state_dict or meta; {_FIX}")
    if not all(isinstance(t, Tensor) for t in state_dict.values()):
        raise CheckpointError(f"checkpoint {path} has a state_dict entry that is no tensor; {_FIX}")
    missing = [key for key in _REQUIRED_META if key not in meta]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} has no {', '.join(missing)} in its meta, so its model cannot be "
            f"rebuilt; {_FIX}"
        )
    size, classes = meta["input_size"], meta["num_classes"]
    if not (
        isinstance(meta["model"], str)
        and _positive(classes)
        and isinstance(size, (list, tuple))
        and len(size) == 3
        and all(map(_positive, size))
    ):
        raise CheckpointError(
            f"checkpoint {path} has a damaged meta (model {meta['model']!r}, num_classes "
            f"{classes!r}, input_size {size!r}); {_FIX}"
        )
    return state_dict, meta


def _positive(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def load_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint written by `save_checkpoint`: `(state_dict, meta)`, tensors on the CPU."""
    path = Path(path)
    payload = _read(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {path} is not an autoprune checkpoint (no format {FORMAT!r}); {_FIX}"
        )
    return _unpack(payload, path)


def _plain_state(payload: Any) -> dict[str, Tensor] | None:
    """The tensors of a plain state dict: the dict itself, or under a training script's usual
    "state_dict" / "model" key; DistributedDataParallel's "module." prefix removed."""
    for candidate in (payload, *(payload.get(k) for k in _NESTED if isinstance(payload, dict))):
        if (
            isinstance(candidate, dict)
            and candidate
            and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in candidate.items())
        ):
            if all(k.startswith("module.") for k in candidate):
                return {k.removeprefix("module."): v for k, v in candidate.items()}
            return dict(candidate)
    return None


_NESTED = ("state_dict", "model", "model_state_dict")


def read_weights(path: str | Path, model: str | None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """`(state_dict, meta)` of an autoprune checkpoint, or of a plain state dict (`.pth` / `.pt`:
    the user's own training, or a file of torchvision's hub cache) holding `model`.

    A plain file has no meta, so `model` must name its network; meta is then `{"model": model,
    "plain": True}` (input size and classes come from the run). Read with weights_only=True.
    """
    path = Path(path)
    payload = _read(path)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return _unpack(payload, path)
    state = _plain_state(payload)
    if state is None:
        raise CheckpointError(
            f"checkpoint {path} is neither an autoprune checkpoint nor a state dict of tensors; "
            f"{_FIX} (or a .pth holding model.state_dict())"
        )
    if model is None:
        raise CheckpointError(
            f"checkpoint {path} is a plain state dict ({len(state)} tensors) that does not say "
            "which network it holds; pass --model NAME with it"
        )
    return state, {"model": model, "plain": True}


def fit_state(
    model: nn.Module, state: Mapping[str, Tensor], *, source: str, head_classes: int | None = None
) -> list[str]:
    """Load `state` into `model` strictly; the first key that is missing, extra or of another
    shape is a one-line CheckpointError naming it.

    With `head_classes` (pretrained weights for that many classes on a model built for another
    number), keys whose first dim is `head_classes` in the file and differs in the model (the
    classifier) start fresh instead; their names are returned.
    """
    own = model.state_dict()
    fresh = []
    for key, t in own.items():  # the model's order: the first bad key is the earliest layer's
        if key not in state:
            if key.endswith("num_batches_tracked"):  # older BatchNorm files lack it; torch fills 0
                continue
            raise CheckpointError(f"{source} does not fit: it lacks {key!r} "
                                  f"(shape {_shape(t)} in the model)")  # fmt: skip
        found = state[key]
        if found.shape == t.shape:
            continue
        head = head_classes is not None and found.dim() == t.dim() > 0
        if head and found.shape[0] == head_classes and found.shape[1:] == t.shape[1:]:
            fresh.append(key)
            continue
        raise CheckpointError(f"{source} does not fit: {key!r} is {_shape(found)} there and "
                              f"{_shape(t)} in the model")  # fmt: skip
    extra = [k for k in state if k not in own]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise CheckpointError(f"{source} does not fit: {extra[0]!r}{more} is not in the model")
    model.load_state_dict({k: v for k, v in state.items() if k not in fresh}, strict=False)
    return fresh


def _shape(t: Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def build_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model named in the checkpoint's meta and load its weights (strictly)."""
    from autoprune.models import build_model

    state_dict, meta = load_checkpoint(path)  # meta checked: model, num_classes, input_size
    try:
        model = build_model(
            meta["model"], num_classes=meta["num_classes"], input_size=tuple(meta["input_size"])
        )
    except (AutoPruneError, TypeError) as err:
        raise CheckpointError(
            f"checkpoint {path} names model {meta['model']!r}, which cannot be built here ({err})"
        ) from None
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        # torch lists every mismatch on its own line; the first names the problem.
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:3])
        raise CheckpointError(
            f"checkpoint {path} does not fit model {meta['model']!r} ({detail}); {_FIX}"
        ) from None
    return model, meta


def state_hash(state: Mapping[str, Tensor]) -> str:
    """A short hash of a state dict's names, dtypes, shapes and values: the same weights, the same
    hash (what a resumed study or backend checks it started from)."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
