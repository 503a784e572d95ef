"""Synthetic latency tables for the cost tests: per layer a grid of widths, times from MACs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from autoprune.cost.latency_table import LatencyTable, LayerTiming
from autoprune.cost.model import CostModel


def mac_table(cm: CostModel, points: tuple[int, int], seconds: Callable[[Any, np.ndarray], Any],
              rest: float, scale: float) -> LatencyTable:  # fmt: skip
    """A table over `points` (out, in) widths per layer from the smallest to the dense one, each
    layer's times `seconds(layer, macs)` of its MACs at those widths."""
    lo_out, lo_in = cm.layer_widths(np.ones(len(cm.sizes), dtype=np.int64))
    hi_out, hi_in = cm.layer_widths(cm.dense_keep)
    layers = []
    for i, lay in enumerate(cm.graph.layers):
        outs = sorted({int(v) for v in np.linspace(lo_out[i], hi_out[i], points[0]).round()})
        ins = outs if lay.depthwise else sorted(
            {int(v) for v in np.linspace(lo_in[i], hi_in[i], points[1]).round()}
        )  # fmt: skip
        per_in = 1.0 if lay.depthwise else np.array(ins, dtype=float)[None, :] / lay.groups
        macs = np.array(outs, dtype=float)[:, None] * lay.kernel * lay.positions * per_in
        layers.append(LayerTiming(lay.name, outs, ins, seconds(lay, macs).tolist(), lay.depthwise))
    g = cm.graph
    # labelled as timed in the form runs measure (a plain table is registered with a warning)
    return LatencyTable(g.model_name, g.input_size, g.signature, 1, torch.get_num_threads(),
                        layers, rest, scale, form="deployed")  # fmt: skip
