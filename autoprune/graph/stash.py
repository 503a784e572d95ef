"""Tensors parked in a temporary file while verification works on the model itself, so a model
whose weights take gigabytes never sits in memory twice (vit_h_14: 2.5 GB of weights).

`write_tensor` / `read_tensor` move one tensor's bytes out and back; `Restoring` undoes a
slimming of a graph's units, the uncut tensors of each cut module parked on disk until the
restore; `trim_heap` hands freed memory back to the system. The file lives where `tempfile` puts
it (TMPDIR): on a memory-backed /tmp (tmpfs) the parked bytes still take memory, though the
process's resident size no longer shows them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import io
import tempfile
from types import TracebackType
from typing import IO, cast

import torch
from torch import nn

from autoprune.graph.attention import width_holders
from autoprune.graph.units import UnitGraph


def write_tensor(stash: IO[bytes], t: torch.Tensor) -> None:
    """Append `t`'s bytes to `stash` (a CPU view where it can be one, else a contiguous copy)."""
    host = t.cpu().contiguous() if t.device.type != "cpu" or not t.is_contiguous() else t
    stash.write(host.detach().reshape(-1).view(torch.uint8).numpy().data)


def read_tensor(stash: IO[bytes], t: torch.Tensor) -> None:
    """Read `t`'s bytes back from `stash` into `t` (through a CPU buffer where `t` is no
    contiguous CPU tensor). A short read raises: later tensors would get the wrong bytes."""
    direct = t.device.type == "cpu" and t.is_contiguous()
    host = t.detach() if direct else torch.empty(t.shape, dtype=t.dtype)
    buf = host.reshape(-1).view(torch.uint8).numpy().data
    got = cast(io.BufferedIOBase, stash).readinto(buf)
    if got != buf.nbytes:
        raise OSError(f"a temporary file gave back {got} of {buf.nbytes} bytes of a tensor")
    if not direct:
        t.copy_(host)


class Restoring:
    """Undo a slimming of `graph`'s units on exit: every module it may touch gets back its
    attributes, parameters and buffers (slimming replaces them; it never writes into them).

    `release(path)` (slimming calls it once a module has had its last cut) moves that module's
    uncut tensors to a temporary file until the restore: the slimmed model then never sits in
    memory beside the whole uncut one (vit_h_14: 0.6 GB of cut copies on 2.5 GB of weights).
    A tensor that another parameter or buffer slot of the model also holds, or that the module
    still uses, stays where it is. Only registered slots are counted: a module that keeps a
    parameter in a plain attribute as well sees it emptied while the slimmed model runs.
    """

    def __init__(self, model: nn.Module, graph: UnitGraph) -> None:
        self.model, self.free_params = model, graph.free_params
        paths = {m.module for u in graph.units for m in u.members} | set(graph.matmuls)
        paths |= set(width_holders(model))  # a width attribute slimming sets
        owners = {p.rpartition(".")[0] if p in graph.free_params else p for p in paths}
        self.saved: dict[str, tuple[type, dict[str, object]]] = {}
        for path in owners:
            module = model.get_submodule(path)
            state = {k: dict(v) if k in ("_parameters", "_buffers") else v
                     for k, v in vars(module).items()}  # fmt: skip
            self.saved[path] = (type(module), state)  # attention gets another class when slimmed
        self.holders: dict[int, int] = {}  # how many module slots hold each tensor
        for _, t in [*model.named_parameters(remove_duplicate=False),
                     *model.named_buffers(remove_duplicate=False)]:  # fmt: skip
            self.holders[id(t)] = self.holders.get(id(t), 0) + 1
        self.stash: IO[bytes] | None = None
        self.moved: list[tuple[torch.Tensor, torch.Size, tuple[int, ...]]] = []

    def __enter__(self) -> Restoring:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.restore()

    def release(self, path: str) -> None:
        """Move the uncut tensors of the module at `path` (cut for the last time) to disk."""
        owner = path.rpartition(".")[0] if path in self.free_params else path
        if owner not in self.saved:
            return
        _, state = self.saved[owner]
        module = self.model.get_submodule(owner)
        in_use = {id(t) for t in (*module._parameters.values(), *module._buffers.values())}
        for key in ("_parameters", "_buffers"):
            for t in cast(dict, state[key]).values():
                if (not isinstance(t, torch.Tensor) or self.holders.get(id(t)) != 1
                        or id(t) in in_use):  # fmt: skip
                    continue  # held elsewhere too, or not cut (a bias when inputs are)
                if self.stash is None:
                    self.stash = tempfile.TemporaryFile()  # noqa: SIM115 (restore closes it)
                write_tensor(self.stash, t)
                self.moved.append((t, t.shape, t.stride()))
                t.data = torch.empty(0, dtype=t.dtype, device=t.device)
                self.holders[id(t)] = 0  # moved once

    def restore(self) -> None:
        """Every saved module as it was (the cut tensors go first), then the moved tensors read
        back into the same objects, with their shapes and strides; the file is closed either
        way."""
        try:
            for path, (cls, state) in self.saved.items():
                module = self.model.get_submodule(path)
                module.__class__ = cls
                attrs = vars(module)
                attrs.clear()
                attrs.update(state)
        finally:
            stash, self.stash = self.stash, None
            if stash is not None:
                with stash, torch.no_grad():
                    trim_heap()
                    stash.seek(0)
                    for t, shape, stride in self.moved:
                        t.data = torch.empty_strided(shape, stride, dtype=t.dtype, device=t.device)
                        read_tensor(stash, t)


def trim_heap() -> None:
    """Give the memory of freed tensors back to the system now (glibc's malloc_trim; nothing
    elsewhere). Tensors of a few MB come from the heap once glibc has raised its mmap threshold,
    and freeing them does not lower the resident size: without this, moving a model's uncut
    tensors out and back again left vit_h_14's process 0.5 GB larger each time."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    for name in ("libc.so.6", ctypes.util.find_library("c")):
        try:
            libc = ctypes.CDLL(name)
        except OSError:
            continue
        return libc if hasattr(libc, "malloc_trim") else None
    return None
