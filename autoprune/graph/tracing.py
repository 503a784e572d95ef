"""Channel groups from torch-pruning's dependency graph, one root at a time, failures kept apart.

torch-pruning traces the autograd graph of one forward pass and, from each conv / linear layer,
collects every slice of every module that must shrink with that layer's outputs
(`autoprune.graph.tp_graph` builds that graph with its channel maps corrected). Its own
`get_all_groups` is a generator that dies on the first group it cannot build; here each root is
tried alone, so one bad root becomes one frozen unit with its reason.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch_pruning as tp
from torch import nn

from autoprune.graph.tp_graph import Graph, build_dependency_graph
from autoprune.graph.units import CONV_TYPES, LINEAR_TYPES, Member

__all__ = ["Graph", "RootGroup", "build_dependency_graph", "members", "one_line", "root_groups"]


def one_line(err: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


@dataclass(frozen=True)
class RootGroup:
    """The channel group rooted at one layer's outputs, or why torch-pruning could not build it."""

    root: str
    size: int
    group: tp.dependency.Group | None = None
    error: str | None = None


def root_groups(model: nn.Module, dg: Graph, classifier: str) -> Iterator[RootGroup]:
    """Every prunable channel group of `model`, named by its root layer, in graph order.

    Mirrors torch-pruning's `get_all_groups` (a layer already pruned as a member of an earlier
    group roots no group of its own; the classifier's outputs are never pruned), except that a
    root whose group cannot be built is yielded with its error instead of raising.
    """
    names = {m: n for n, m in model.named_modules()}
    classifier_module = model.get_submodule(classifier)
    visited: set[int] = set()
    for module in list(dg.module2node):
        if not isinstance(module, CONV_TYPES + LINEAR_TYPES) or id(module) in visited:
            continue
        if module is classifier_module or module not in names:
            continue
        pruner = dg.get_pruner_of_module(module)
        size = pruner.get_out_channels(module) if pruner is not None else None
        if not size:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                group = dg.get_pruning_group(module, pruner.prune_out_channels, list(range(size)))
        except Exception as err:  # torch-pruning's index mappings fail in many ways
            visited.add(id(module))
            yield RootGroup(names[module], size, error=f"tracing fails: {one_line(err)}")
            continue
        touches_classifier = False
        for item in group:
            if dg.is_out_channel_pruning_fn(item.dep.handler):
                visited.add(id(item.dep.target.module))
                touches_classifier |= item.dep.target.module is classifier_module
        if not touches_classifier:  # the classifier's outputs are the class scores
            yield RootGroup(names[module], size, group)


def item_dim(dg: Graph, item: Any) -> Literal["out", "in"]:
    return "out" if dg.is_out_channel_pruning_fn(item.dep.handler) else "in"


def members(group: tp.dependency.Group, dg: Graph, names: dict) -> list[Member]:
    """The module slices of one group (torch-pruning's pseudo-modules for adds and cats skipped)."""
    seen: dict[tuple[str, str], Member] = {}
    for item in group:
        mod = item.dep.target.module
        if mod not in names:  # torch-pruning's pseudo-modules for adds, concats, flattens
            continue
        key = (names[mod], item_dim(dg, item))
        if key not in seen:
            seen[key] = Member(key[0], key[1], tuple(item.idxs), tuple(item.root_idxs))
    return list(seen.values())
