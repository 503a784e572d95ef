"""How much of mobilenet_v2's 0.85 is the allocation: a hand-made shape against autoprune's.

Run from the repository root after `make .venv/.installed` (one thread, ~5 minutes here):

    .venv/bin/python results/speed/allocation_probe.py > results/speed/allocation_probe.json

At 50% of the MACs, one thread, batch 1, each model exported as a run exports it (model.pt2) and
compiled by AOTInductor (model.aoti.pt2), timed interleaved (median thread CPU time of 31 calls,
three repeats): `--round-to 8` (uniform on the grid), `--latency-aware --round-to 8` (the
latency table's trades) and "depthwise units": every unit whose channels run through a depthwise
convolution (mobilenet_v2's expanded hidden channels) cut by one common ratio on the 8-grid, all
other units (the block outputs shared through residual adds, the stem, the last 1x1 conv) kept
whole. The last is not a product feature, only a probe of what a better allocation buys here.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from autoprune.bench import speed as S
from autoprune.cost.measure import count_macs
from autoprune.cost.model import CostModel
from autoprune.cost.timing import machine_info, no_grad_call, thread_seconds
from autoprune.export.compiled import aoti_package
from autoprune.graph.units import trace_units
from autoprune.models import build_model

NAME, SIZE, FRACTION, GRID = "mobilenet_v2", (3, 224, 224), 0.5, 8


def depthwise_keep(cm: CostModel, limit: float) -> np.ndarray:
    """Units through a depthwise conv cut by a common ratio (bisected onto `limit`), rest whole."""
    sizes = np.asarray(cm.sizes)
    depthwise = {lay.name for lay in cm.graph.layers if lay.depthwise}
    single = np.array([any(m.module in depthwise for m in u.members) for u in cm.graph.units])

    def keep(r: float) -> np.ndarray:
        cut = np.maximum(GRID, np.floor(sizes * r / GRID) * GRID)
        return np.where(single, cut, sizes).astype(np.int64)

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cm.metric("macs", keep(mid)) <= limit else (lo, mid)
    return keep(lo)


def main() -> None:
    torch.manual_seed(0)
    dense = build_model(NAME, input_size=SIZE).eval()
    cm = CostModel(trace_units(copy.deepcopy(dense), SIZE, "channel", NAME, verify=False))
    S.latency_model(dense, cm, NAME)
    dense_macs = count_macs(dense, SIZE)
    limit = FRACTION * dense_macs
    keeps = {
        "dense": np.asarray(cm.sizes),
        "autoprune --round-to 8": S.uniform_keep(cm, limit, GRID),
        S.AWARE: S.aware_keep(cm, limit),
        "depthwise units cut, the rest whole": depthwise_keep(cm, limit),
    }
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp())
    fns, macs, names = [], {}, []
    for i, (k, keep) in enumerate(keeps.items()):
        path = folder / f"m{i}.pt2"
        program, _ = S._program(S.autoprune_model(dense, SIZE, keep), SIZE, path)
        macs[k] = count_macs(program, SIZE)
        runner = aoti_package(torch.export.load(str(path)), folder / f"m{i}.aoti.pt2")
        x = torch.rand(1, *SIZE)
        fns += [no_grad_call(program, x), no_grad_call(runner, x)]
        names += [(k, "model.pt2"), (k, "model.aoti.pt2")]
    repeats = []
    for _ in range(3):
        med = dict(zip(names, thread_seconds(fns, 31), strict=True))
        repeats.append({
            form: {k: {"ms": 1e3 * med[(k, form)],
                       "per_mac_reduction": med[("dense", form)] / med[(k, form)]
                       * macs[k] / dense_macs}
                   for k in keeps}
            for form in ("model.pt2", "model.aoti.pt2")
        })  # fmt: skip
    json.dump({
        "model": NAME, "input": list(SIZE), "target": FRACTION, "machine": machine_info(1),
        "keeps": {k: [int(v) for v in keep] for k, keep in keeps.items()},
        "macs_fraction": {k: m / dense_macs for k, m in macs.items()}, "repeats": repeats,
    }, sys.stdout, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
