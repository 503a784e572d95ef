"""torch-pruning's dependency graph with its channel maps made exact where it guesses.

torch-pruning 1.6.1 (pinned) traces the autograd graph of one forward pass and maps channel
indices through concatenations, splits and reshapes by *inferring* channel counts from the
layers around them. On torch 2 that inference goes wrong in ways that end in a traceback or in
silently wrong groups: split sizes it can no longer read, consumers of a split taken in the
order its backward walk met them, concat offsets left unset when its guess of a concat's width
disagrees, and a division by zero on a channel shuffle (view -> transpose -> reshape). `Graph`
records the real shape of every op's output during that same forward pass and uses it:

* channel counts of torch-pruning's pseudo-ops come from the recorded shapes and channel dims
  (`autoprune.graph.shapes`; `get_out_channels` / `get_in_channels` are the hooks its own
  inference calls first);
* a channel concat gets its offsets from its inputs' recorded widths, a split its sizes from
  its autograd node and its consumers in the order of the outputs they read;
* a reshape or slice that leaves channels whole (a window partition, a spatial slice) is the
  identity on channels (torch-pruning read some as flattens and multiplied index lists through
  them: Swin and MaxViT grew past 18 GB); a channel shuffle is mapped as the permutation it
  is; any other reshape becomes a barrier: a group that crosses it fails alone, with the op.

`ties` records where a slimmed model divides channels evenly again (a chunk, a shuffle), so the
same positions must go from every part (`autoprune.graph.ties`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import _helpers, ops
from torch_pruning.dependency import index_mapping, shape_infer

from autoprune.graph.shapes import ChannelDims, FunctionalCalls, RecordShapes, Shapes
from autoprune.graph.units import example_input


class _Shuffle:
    """Index mapping of a channel shuffle: C = groups x width channels, viewed (groups, width),
    transposed and flattened, so channel i = g * width + p goes to p * groups + g."""

    def __init__(self, groups: int, width: int, reverse: bool) -> None:
        self.groups, self.width, self.reverse = groups, width, reverse

    def __call__(self, idxs: list[Any]) -> list[Any]:
        g, w = self.groups, self.width
        if self.reverse:
            return [_helpers._HybridIndex((i.idx % g) * w + i.idx // g, i.root_idx) for i in idxs]
        return [_helpers._HybridIndex((i.idx % w) * g + i.idx // w, i.root_idx) for i in idxs]


class _Barrier:
    """Index mapping through an op no mapping is known for: building a group across it fails."""

    def __init__(self, reason: str, reverse: bool = False) -> None:
        self.reason = reason

    def __call__(self, idxs: list[Any]) -> list[Any]:
        raise RuntimeError(self.reason)


class Graph(tp.DependencyGraph):
    """torch-pruning's dependency graph, built as its own `build_dependency` does, with the
    channel maps corrected between its shape inference and its index mapping (module docs)."""

    ties: dict[nn.Module, int]
    shapes: Shapes
    dims: ChannelDims

    def build_dependency(self, model: nn.Module, example_inputs: Any, **_: Any) -> Graph:
        self.verbose = False
        self.model = model
        self._module2name = {m: n for n, m in model.named_modules()}
        self.ignored_params: list[nn.Parameter] = []
        self._param_to_name, self.unwrapped_parameters = self._detect_unwrapped_parameters(None)
        self.shapes, self.dims = {}, {}

        def forward(net: nn.Module, x: torch.Tensor) -> Any:
            with RecordShapes(self.shapes, self.dims), FunctionalCalls(net):
                return net(x)

        self.module2node = self._trace(model, example_inputs, forward, output_transform=None)
        self._build_dependency(self.module2node)
        shape_infer.init_shape_information(self)
        self.ties = {}
        nodes = list(self.module2node.values())
        for node in nodes:
            if node.type == ops.OPTYPE.SPLIT and (width := self._fix_split(node)):
                self.ties[node.module] = width
            elif node.type == ops.OPTYPE.CONCAT:
                self._map_concat(node)
        for node in nodes:  # every shuffle first: its closing reshape alone would not map
            if node.type == ops.OPTYPE.RESHAPE:
                self._map_shuffle(node)
        for node in nodes:
            if node.type == ops.OPTYPE.SLICE and self._along_channels(node) is False:
                node.type = ops.OPTYPE.ELEMENTWISE  # a slice of space or tokens keeps channels
            if node.type == ops.OPTYPE.RESHAPE:
                self._map_reshape(node)
        index_mapping.update_index_mapping(self)
        return self

    def _along_channels(self, node: Any) -> bool | None:
        """Whether a slice cuts the channel dim of its input (None: channels unknown there)."""
        fn = node.grad_fn
        source = self.dims.get(fn.next_functions[0]) if fn.next_functions else None
        shape = tuple(getattr(fn, "_saved_self_sym_sizes", ()))
        if source is None or not shape:
            return None
        return int(fn._saved_dim) % len(shape) in source

    def _map_reshape(self, node: Any) -> None:
        """A reshape that leaves the channel dim whole is the identity on channels (a window
        partition, tokens flattened); one that merges channels with the dims after them is a
        flatten (torch-pruning's mapping); anything else, or a mapping that fails, a barrier."""
        fn = node.grad_fn
        before = self.dims.get(fn.next_functions[0]) if fn.next_functions else None
        after = self.dims.get((fn, 0))
        old = tuple(getattr(fn, "_saved_self_sym_sizes", ()))
        new = self.shapes.get((fn, 0), ())
        whole = before and after and len(before) == len(after) == 1 and old and new
        if whole and old[before[0]] == new[after[0]]:  # type: ignore[index]
            node.type = ops.OPTYPE.ELEMENTWISE
            return
        if before is not None and (len(before) != 1 or after is not None):
            _set_mapping(node, _Barrier, f"a reshape from {list(old)} to {list(new)} that "
                         "splits or moves channels")  # fmt: skip
            return
        try:
            index_mapping.update_reshape_index_mapping(self, node)
        except Exception as err:  # torch-pruning cannot map it: fence it off
            _set_mapping(node, _Barrier, f"reshape {fn.name()} not mapped ({err})")

    # --- exact channel counts for torch-pruning's own inference -------------------------------
    def _recorded_channels(self, module_or_node: Any) -> int | None:
        node = module_or_node
        if not isinstance(node, tp.dependency.Node):
            node = self.module2node.get(module_or_node)
        if node is None or node.type in (ops.OPTYPE.SPLIT, ops.OPTYPE.UNBIND):
            return None  # several outputs: torch-pruning reads the split sizes instead
        shape, dims = self.shapes.get((node.grad_fn, 0)), self.dims.get((node.grad_fn, 0))
        return None if shape is None or dims is None or len(dims) != 1 else int(shape[dims[0]])

    def get_out_channels(self, module_or_node: Any) -> Any:
        found = super().get_out_channels(module_or_node)
        return found if found is not None else self._recorded_channels(module_or_node)

    def get_in_channels(self, module_or_node: Any) -> Any:
        found = super().get_in_channels(module_or_node)
        return found if found is not None else self._recorded_channels(module_or_node)

    def _input_shape(self, fn: Any, nr: int) -> tuple[int, ...] | None:
        if fn is None:
            return None
        if hasattr(fn, "variable"):  # a leaf: a parameter
            return tuple(fn.variable.shape)
        return self.shapes.get((fn, nr))

    # --- concat, split, shuffle ----------------------------------------------------------------
    def _map_concat(self, cat: Any) -> None:
        """Offsets of a channel concat from its inputs' recorded widths (a token concat, along
        another dim, joins its inputs' channels as an add does)."""
        shape, channels = self.shapes.get((cat.grad_fn, 0)), self.dims.get((cat.grad_fn, 0))
        if shape is None or channels is None:
            return  # channels lost in a reshape before: torch-pruning's own guess stands
        dim = int(getattr(cat.grad_fn, "_saved_dim", 1)) % len(shape)
        cat.type = ops.OPTYPE.ELEMENTWISE  # our mapping, not torch-pruning's, from now on
        if dim not in channels:
            return  # along tokens or space: every input shares the output's channels
        if len(channels) != 1:
            _set_mapping(cat, _Barrier, "a concat along part of a split channel dim")
            return
        widths: list[int | None] = []
        readers = []
        for fn, nr in cat.grad_fn.next_functions:
            arg = self._input_shape(fn, nr)
            widths.append(None if arg is None else int(arg[dim % len(arg)]))
            readers.append(next((n for n in cat.inputs if n.grad_fn is fn), None))
        if widths.count(None) > 1:  # one constant's width follows from the total; two do not
            _set_mapping(cat, _Barrier, "a concat of tensors of unknown width")
            return
        known = sum(w for w in widths if w is not None)
        widths = [int(shape[dim % len(shape)]) - known if w is None else w for w in widths]
        offsets = [sum(w for w in widths[:i] if w is not None) for i in range(len(widths) + 1)]
        used: set[int] = set()
        for i, node in enumerate(readers):
            if node is None:
                continue  # a constant: nothing to prune in it
            span = offsets[i : i + 2]
            into = next(d for d in node.dependencies if d.target is cat and id(d) not in used)
            back = next(d for d in cat.dependencies if d.target is node and id(d) not in used)
            used |= {id(into), id(back)}
            into.index_mapping[1] = index_mapping._ConcatIndexMapping(span, reverse=False)
            back.index_mapping[1] = index_mapping._ConcatIndexMapping(span, reverse=True)

    def _fix_split(self, split: Any) -> int | None:
        """Size a channel split from its autograd node and order its consumers by the output
        they read (`next_functions[k][1]`); returns the width of its parts when they are equal
        (a chunk). A split whose outputs are not each read once is fenced off."""
        fn = split.grad_fn
        shape = tuple(getattr(fn, "_saved_self_sym_sizes", ()))
        dim = int(getattr(fn, "_saved_dim", 1)) % max(len(shape), 1)
        channels = self.dims.get((fn, 0))
        if not shape or channels is None or dim not in channels:
            split.module.split_sizes = split.module.offsets = None  # not a channel split
            return None
        if len(channels) != 1:
            _set_mapping(split, _Barrier, "a split along part of a split channel dim")
            return None
        if hasattr(fn, "_saved_split_sizes"):
            sizes = [int(v) for v in fn._saved_split_sizes]
        else:
            step, total = int(fn._saved_split_size), int(shape[dim])
            sizes = [min(step, total - start) for start in range(0, total, step)]
        read: dict[int, Any] = {}
        for consumer in split.outputs:
            nrs = [nr for f, nr in getattr(consumer.grad_fn, "next_functions", ()) if f is fn]
            if len(nrs) != 1 or nrs[0] in read:
                _set_mapping(split, _Barrier, "a split whose outputs are read more than once")
                return None
            read[nrs[0]] = consumer
        if sorted(read) != list(range(len(sizes))):
            _set_mapping(split, _Barrier, "a split with an output nothing reads")
            return None
        split.outputs[:] = [read[k] for k in sorted(read)]
        split.module.split_sizes = sizes
        split.module.offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        return sizes[0] if len(set(sizes)) == 1 and len(sizes) > 1 else None

    def _map_shuffle(self, view: Any) -> bool:
        """view (N, C, ...) -> (N, G, C/G, ...), transpose(1, 2), reshape back: a permutation."""
        sizes = tuple(getattr(view.grad_fn, "_saved_self_sym_sizes", ()))
        if len(sizes) < 3 or len(view.outputs) != 1:
            return False
        swap = view.outputs[0]
        fn = swap.grad_fn
        dims = sorted(int(getattr(fn, f"_saved_dim{i}", -1)) for i in (0, 1))
        if dims != [1, 2] and tuple(getattr(fn, "_saved_dims", ()))[:3] != (0, 2, 1):
            return False
        back = swap
        while len(back.outputs) == 1 and back.outputs[0].grad_fn.name().startswith("Clone"):
            back = back.outputs[0]  # reshape (or .contiguous()) copies the transposed view
        back = back.outputs[0] if len(back.outputs) == 1 else back
        shuffled = tuple(getattr(back.grad_fn, "_saved_self_sym_sizes", ()))
        if back.type != ops.OPTYPE.RESHAPE or len(shuffled) != len(sizes) + 1:
            return False
        width, groups = int(shuffled[1]), int(shuffled[2])
        if width * groups != int(sizes[1]):
            return False
        for node in (view, back):
            node.type = ops.OPTYPE.ELEMENTWISE  # channels pass through; the swap permutes them
        _set_mapping(swap, _Shuffle, groups, width, only=view)
        self.ties[view.module] = width
        return True


def _set_mapping(node: Any, mapping: type, *args: Any, only: Any = None) -> None:
    """Put `mapping(*args, reverse)` on the edges between `node` and its neighbours (or `only`)."""
    node.type = ops.OPTYPE.ELEMENTWISE  # torch-pruning's own update must leave it alone now
    for dep in node.dependencies:
        if only is None or dep.target is only:
            dep.index_mapping[0] = mapping(*args, reverse=dep.target in node.inputs)
    for other in node.inputs + node.outputs:
        if only is not None and other is not only:
            continue
        for dep in other.dependencies:
            if dep.target is node:
                dep.index_mapping[0] = mapping(*args, reverse=other in node.outputs)


def build_dependency_graph(model: nn.Module, input_size: tuple[int, int, int]) -> Graph:
    """The corrected dependency graph of `model` (in eval mode) on the fixed example input.

    The forward pass records autograd nodes only for their structure: what each node would
    save for a backward pass (the activations) is dropped as it is saved, never unpacked
    (torch-pruning reads a node's saved sizes and dims, which are not tensors). vit_l_16 @224:
    the graph costs 68 MB of resident memory instead of 390 MB.
    """
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.enable_grad(), _nothing_saved():
            warnings.simplefilter("ignore")  # "unwrapped parameters detected" and the like
            return Graph().build_dependency(model, example_inputs=example_input(input_size))
    finally:
        model.train(was_training)


def _nothing_saved() -> torch.autograd.graph.saved_tensors_hooks:
    """Autograd saves nothing while this is active; a backward pass through it is an error."""

    def unpack(_: None) -> torch.Tensor:
        raise RuntimeError("the dependency graph's forward pass keeps no tensors for backward")

    return torch.autograd.graph.saved_tensors_hooks(lambda _: None, unpack)
