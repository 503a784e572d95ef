"""Shapes and channel dims of every tensor one forward pass makes, recorded as it runs.

torch-pruning maps channel indices through the autograd graph but never sees a tensor's shape,
so it guesses channel counts (and, for a (N, H, W, C) tensor after a permute, which dim holds the
channels). A TorchFunctionMode sees every op with its real inputs and outputs; `RecordShapes`
keys what it sees by the output's autograd node, which is what torch-pruning's graph nodes hold.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

Shapes = dict[tuple[Any, int], tuple[int, ...]]  # (autograd node, output number) -> shape
# ... -> the dims a tensor's channels span: one dim, several while a view splits them (a
# shuffle's (groups, width)), or None where a reshape mixed them with other dims (a flatten)
ChannelDims = dict[tuple[Any, int], tuple[int, ...] | None]

_MAKES_CHANNELS_AT_1 = ("conv", "batch_norm", "group_norm", "instance_norm")


class RecordShapes(TorchFunctionMode):
    """Records, for every tensor an op returns, its shape and the dims its channels span.

    Channels start at dim 1 of the input, are made at dim 1 by convolutions and norms and at the
    last dim by linear layers, move with permute / transpose, and follow a reshape through the
    dims it merges or splits (`_reshaped`).
    """

    def __init__(self, shapes: Shapes, dims: ChannelDims) -> None:
        super().__init__()
        self.shapes, self.dims = shapes, dims

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if not tensors and args and isinstance(args[0], (list, tuple)):  # cat, stack
            tensors = [a for a in args[0] if isinstance(a, torch.Tensor)]
        source = next((t for t in tensors if (t.grad_fn, t.output_nr) in self.dims), None)
        if source is not None:
            before = self.dims[(source.grad_fn, source.output_nr)]
        elif tensors and not isinstance(tensors[0], nn.Parameter) and tensors[0].dim() > 1:
            source, before = tensors[0], (1,)  # the model's input
        else:
            before = None
        name = getattr(func, "__name__", "")
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                self.shapes[(t.grad_fn, t.output_nr)] = tuple(t.shape)
                self.dims[(t.grad_fn, t.output_nr)] = _moved(name, args, source, before, t)
        return out


def _moved(
    name: str, args: Any, source: Any, before: tuple[int, ...] | None, out: torch.Tensor
) -> tuple[int, ...] | None:
    """The channel dims of `out`, made by op `name` from a tensor with channels at `before`."""
    if name.startswith(_MAKES_CHANNELS_AT_1):
        return (1,)
    if name == "linear":
        return (out.dim() - 1,)
    if before is None or source is None:
        return None
    n = out.dim()
    if name == "permute":
        perm = list(args[1] if isinstance(args[1], (list, tuple)) else args[1:])
        return tuple(sorted([int(p) % n for p in perm].index(d) for d in before))
    if name in ("transpose", "swapaxes", "swapdims"):
        a, b = (int(d) % n for d in args[1:3])
        return tuple(sorted(b if d == a else a if d == b else d for d in before))
    old, new = tuple(source.shape), tuple(out.shape)
    if len(old) == len(new):
        return before  # elementwise, cat, split, pooling: channels stay where they are
    return _reshaped(old, new, before)


def _reshaped(
    old: tuple[int, ...], new: tuple[int, ...], before: tuple[int, ...]
) -> tuple[int, ...] | None:
    """Channel dims after a reshape, from the runs of dims whose sizes multiply alike.

    A run of old dims that holds channels must hold nothing else (a flatten of C x H x W mixes
    them: None); a reduction over dims falls back to keeping the dims before the channels.
    """
    runs, i, j = [], 0, 0
    while i < len(old) or j < len(new):
        ro, rn, po, pn = [], [], 1, 1
        if i < len(old):
            ro, po, i = [i], old[i], i + 1
        if j < len(new):
            rn, pn, j = [j], new[j], j + 1
        while po != pn:
            if po < pn and i < len(old):
                ro, po, i = [*ro, i], po * old[i], i + 1
            elif pn < po and j < len(new):
                rn, pn, j = [*rn, j], pn * new[j], j + 1
            else:  # not a reshape (a reduction): the dims up to the channels must survive
                last = max(before)
                return before if old[: last + 1] == new[: last + 1] else None
        runs.append((ro, rn))
    dims: list[int] = []
    for ro, rn in runs:
        if any(d in before for d in ro):
            if not all(d in before or old[d] == 1 for d in ro) or not rn:
                return None
            dims += [d for d in rn if new[d] != 1 or len(rn) == 1]
    return tuple(dims) or None


class FunctionalCalls(TorchFunctionMode):
    """A layer's weight used by a functional call outside that layer's own forward (Swin's
    attention runs `F.linear(x, self.qkv.weight, ...)`) counts as a call of the layer: its
    forward hooks run, so the cost model and torch-pruning see the layer like any other."""

    _FUNCTIONS = ("linear", "conv1d", "conv2d", "conv3d")

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.owner = {id(m.weight): m for m in model.modules()
                      if isinstance(getattr(m, "weight", None), nn.Parameter)}  # fmt: skip
        self.running: set[int] = set()
        self.handles: list[Any] = []
        for m in set(self.owner.values()):
            self.handles.append(m.register_forward_pre_hook(lambda m, _: self.running.add(id(m))))
            self.handles.append(
                m.register_forward_hook(lambda m, _i, _o: self.running.discard(id(m)))
            )

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        super().__exit__(*exc)

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if getattr(func, "__name__", "") in self._FUNCTIONS and isinstance(out, torch.Tensor):
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            module = self.owner.get(id(weight))
            if module is not None and id(module) not in self.running:
                for hook in list(module._forward_hooks.values()):
                    hook(module, (args[0],), out)
        return out
