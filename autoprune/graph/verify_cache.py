"""The cache of unit verdicts: in memory per process, and on disk under the user's cache folder.

A verdict (the units that failed verification, with their reasons) depends on the architecture
only, so it is keyed by everything that shapes the check: the traced units and layers, the module
classes and their source, the input size, and the versions of torch, torch-pruning and the graph
code itself. Set AUTOPRUNE_CACHE_DIR to move the folder, or to an empty string for no disk cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

from autoprune.graph.units import UnitGraph


@dataclass(frozen=True)
class Verdict:
    """What verification found: (unit name, reason) of every failed unit, and the MACs no
    priced layer accounts for (`UnitGraph.unpriced_macs`)."""

    frozen: list[tuple[str, str]]
    unpriced_macs: float = 0.0


_MEMORY: dict[str, Verdict] = {}


def cache_dir() -> Path | None:
    """Where verdicts are kept on disk (None: memory only)."""
    env = os.environ.get("AUTOPRUNE_CACHE_DIR")
    if env is not None:
        return Path(env) / "verify" if env else None
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "autoprune" / "verify"


def _code_hash() -> str:
    """The graph package's own source: a changed check must not reuse an old verdict."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()


def verdict_key(model: nn.Module, graph: UnitGraph) -> str:
    h = hashlib.sha256()
    h.update(f"{torch.__version__}|{tp.__version__}|{_code_hash()}|{graph.input_size}".encode())
    for cls in sorted({type(m) for m in model.modules()}, key=lambda c: c.__qualname__):
        h.update(f"|{cls.__module__}.{cls.__qualname__}".encode())
        # a class built in or defined interactively has no source: its name must do
        with contextlib.suppress(OSError, TypeError):
            h.update(inspect.getsource(cls).encode())
    for name, p in model.named_parameters():
        h.update(f"|p:{name}:{tuple(p.shape)}".encode())
    for u in graph.units:
        h.update(f"|u:{u.name}:{u.size}".encode())
        for m in u.members:
            h.update(f"|{m.module}:{m.dim}:{m.idxs}:{m.root_idxs}".encode())
    for lay in graph.layers:
        h.update(f"|l:{lay}".encode())
    h.update(f"|n:{sorted(graph.norms.items())}|f:{sorted(graph.free_params.items())}".encode())
    h.update(f"|m:{sorted(graph.matmuls.items())}".encode())
    return h.hexdigest()[:32]


def load_verdict(key: str) -> Verdict | None:
    if key in _MEMORY:
        return _MEMORY[key]
    folder = cache_dir()
    path = folder / f"{key}.json" if folder is not None else None
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        frozen = [(str(name), str(reason)) for name, reason in data["frozen"]]
        verdict = Verdict(frozen, float(data["unpriced_macs"]))
    except (OSError, ValueError, TypeError, KeyError):  # a torn or foreign file: verify again
        return None
    _MEMORY[key] = verdict
    return verdict


def store_verdict(key: str, verdict: Verdict) -> None:
    _MEMORY[key] = verdict
    folder = cache_dir()
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as f:
            json.dump({"frozen": verdict.frozen, "unpriced_macs": verdict.unpriced_macs}, f)
        Path(f.name).replace(folder / f"{key}.json")
    except OSError:  # a read-only home: the memory cache still holds it
        pass


def clear_memory() -> None:
    """Forget the verdicts held in memory (tests; the disk cache is left alone)."""
    _MEMORY.clear()
