"""The staircase of time against width: a few layers of resnet18 and mobilenet_v2, every width.

Each layer is timed alone (a fresh layer of its kind on an input of the shape it sees in the
model, one thread, batch 1) at every output width from half its dense width to all of it, input
width at its dense value (depthwise: input follows output), all widths interleaved, thread CPU
time (so other jobs on a shared machine do not count). What it answers is whether rounding keeps
to a grid of 8 channels (`--round-to 8`) buys speed: for every width off the grid, is the next
multiple of 8 above it faster? Written to results/speed/staircase.json and staircase.md.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

from autoprune.cost.timing import (
    no_grad_call,
    probe_layer,
    record_layer_inputs,
    thread_seconds,
    torch_threads,
)
from autoprune.graph.units import trace_units
from autoprune.models import build_model
from autoprune.rundir import write_json_atomic

GRID = 8
LAYERS = (
    ("resnet18", "layer1.0.conv1"),  # 3x3, 64 channels at 56x56
    ("resnet18", "layer3.0.conv2"),  # 3x3, 256 channels at 14x14
    ("mobilenet_v2", "features.3.conv.0.0"),  # 1x1 expansion 24 -> 144 at 56x56
    ("mobilenet_v2", "features.3.conv.1.0"),  # depthwise 3x3, 144 channels at 56x56
    ("mobilenet_v2", "features.14.conv.0.0"),  # 1x1 expansion 96 -> 576 at 14x14
)


def layer_staircase(model: str, layer: str, rounds: int, width_step: int = 1) -> dict[str, Any]:
    """Seconds of `layer` of `model` @224 at each output width from half to all of it."""
    size = (3, 224, 224)
    net = build_model(model, input_size=size).eval()
    graph = trace_units(copy.deepcopy(net), size, "channel", model, verify=False)
    lay = next(x for x in graph.layers if x.name == layer)
    mod, shape = record_layer_inputs(net, graph)[layer]
    widths = list(range(lay.out_channels // 2, lay.out_channels + 1, width_step))
    fns = []
    for w in widths:
        probe = probe_layer(mod, w, w if lay.depthwise else lay.in_channels, lay.depthwise)
        x = torch.randn(1, w if lay.depthwise else lay.in_channels, *shape[1:])
        fns.append(no_grad_call(probe, x))
    seconds = thread_seconds(fns, rounds)
    t = dict(zip(widths, seconds, strict=True))
    off = [w for w in widths if w % GRID and (w // GRID + 1) * GRID in t]
    faster_up = [w for w in off if t[(w // GRID + 1) * GRID] < t[w]]
    kind = f"depthwise {lay.type}" if lay.depthwise else lay.type
    return {
        "model": model, "layer": layer, "kind": kind, "input": list(shape),
        "widths": widths, "seconds": seconds, "off_grid": len(off),
        "next_multiple_faster": len(faster_up),
    }  # fmt: skip


def measure(rounds: int = 9) -> dict[str, Any]:
    with torch_threads(1):
        load = os.getloadavg()[0]
        layers = [layer_staircase(m, lay, rounds) for m, lay in LAYERS]
    off = sum(r["off_grid"] for r in layers)
    up = sum(r["next_multiple_faster"] for r in layers)
    return {"layers": layers, "rounds": rounds, "loadavg": load, "off_grid": off,
            "next_multiple_faster": up, "share_faster": up / max(off, 1)}  # fmt: skip


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Time against width, one layer at a time (1 thread, batch 1, thread CPU time)",
        "",
        f"Load average when measured: {result['loadavg']:.1f}; medians of {result['rounds']} "
        "interleaved rounds. *Next multiple of 8 faster*: of the widths off the grid of 8, "
        "how many run slower than the multiple of 8 just above them (a staircase that "
        "`--round-to 8` could use).",
        "",
        "| model | layer | input | widths | off the grid | next multiple of 8 faster |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["layers"]:
        lines.append(
            f"| {r['model']} | {r['layer']} ({r['kind']}) | {'x'.join(map(str, r['input']))} | "
            f"{r['widths'][0]}-{r['widths'][-1]} | {r['off_grid']} | "
            f"{r['next_multiple_faster']} |"
        )
    lines += ["", f"All layers: {result['next_multiple_faster']} of {result['off_grid']} "
              f"({100 * result['share_faster']:.0f}%)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def write(out: Path, rounds: int = 9) -> dict[str, Any]:
    result = measure(rounds)
    write_json_atomic(out / "staircase.json", result)
    (out / "staircase.md").write_text(render(result))
    return result
