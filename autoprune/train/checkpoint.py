"""Checkpoints: a state dict plus plain-typed metadata, written atomically, read safely.

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

FORMAT = "autoprune.checkpoint/v1"
_REQUIRED_META = ("model", "num_classes", "input_size")
_FIX = "retrain with `autoprune train` or point --checkpoint at a valid file"

__all__ = ["FORMAT", "build_from_checkpoint", "load_checkpoint", "save_checkpoint"]


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
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint written by `save_checkpoint`: `(state_dict, meta)`, tensors on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; {_FIX}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise CheckpointError(f"checkpoint {path} cannot be read ({err}); {_FIX}") from None
    except Exception as err:  # torch.load raises many types on damaged archives and pickles
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({reason}); {_FIX}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {path} is not an autoprune checkpoint (no format {FORMAT!r}); {_FIX}"
        )
    state_dict, meta = payload.get("state_dict"), payload.get("meta")
    if not isinstance(state_dict, dict) or not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} lacks its state_dict or meta; {_FIX}")
    if not all(isinstance(t, Tensor) for t in state_dict.values()):
        raise CheckpointError(f"checkpoint {path} has a state_dict entry that is no tensor; {_FIX}")
    return state_dict, meta


def build_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model named in the checkpoint's meta and load its weights (strictly)."""
    from autoprune.models import build_model

    state_dict, meta = load_checkpoint(path)
    missing = [key for key in _REQUIRED_META if key not in meta]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} has no {', '.join(missing)} in its meta, so its model cannot be "
            f"rebuilt; {_FIX}"
        )
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
