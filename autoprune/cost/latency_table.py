"""The latency lookup table (schema autoprune.latency/v1) and the monotone predictor read from it.

A table holds, for every conv/linear layer of one model, the median time of that layer alone over a
grid of kept (output, input) widths, plus a term for everything else (norms, activations, pooling,
adds) measured on the dense and the smallest model. The predictor sums bilinear interpolations.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import nnls
from sklearn.isotonic import isotonic_regression

from autoprune.cost.model import CostModel
from autoprune.errors import UsageError
from autoprune.rundir import write_json_atomic

SCHEMA = "autoprune.latency/v1"
FORMS = ("plain", "deployed", "deployed-channels-last")  # what a table timed (LatencyTable.form)


@dataclass
class LayerTiming:
    """Median seconds of one layer alone: seconds[i][j] at out_widths[i] and in_widths[j].

    A depthwise conv has one input per output channel, so its grid is one-dimensional:
    in_widths[i] is then the input width that goes with out_widths[i] and seconds[i] has one entry.
    """

    name: str
    out_widths: list[int]
    in_widths: list[int]
    seconds: list[list[float]]
    depthwise: bool = False
    shape: str = ""  # what was timed, for readers of the file


@dataclass
class LatencyTable:
    """Per-layer timings of one model on one machine; `rest_*` model everything between layers.

    rest(k) = rest_const + rest_per_activation * (conv/linear output elements at keep k), and the
    layers' sum is scaled by `layer_scale`: the three are fitted to whole models measured when
    the table was built (the dense, the smallest and a few random allocations, `fit_calibrated`),
    so layers timed alone and layers inside the model (caches, per-call overhead) agree.
    """

    model: str
    input_size: tuple[int, int, int]
    signature: str
    batch: int
    threads: int
    layers: list[LayerTiming]
    rest_const: float
    rest_per_activation: float
    info: dict[str, Any] = field(default_factory=dict)
    layer_scale: float = 1.0
    device: str = "cpu"  # where it was timed (--device); tables from before this field: the CPU
    # Channels per kernel block (LatencyConfig.block): a width between timed ones is priced as
    # the first width of its block; 1 (tables from before this field): plain interpolation.
    block: int = 1
    # What was timed: "plain" (the modules as built, default layout; tables from before this
    # field), "deployed" or "deployed-channels-last" (as model.pt2 runs them: BatchNorm folded,
    # that layout, the input normalisation in front)
    form: str = "plain"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return {"schema": SCHEMA, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "latency table") -> LatencyTable:
        if d.get("schema") != SCHEMA:
            raise UsageError(
                f"{source} has schema {d.get('schema')!r}, not {SCHEMA!r}; rebuild it with "
                "`autoprune latency-table`"
            )
        if d.get("form", "plain") not in FORMS:
            raise UsageError(
                f"{source} has form {d.get('form')!r}, not one of {', '.join(FORMS)}; rebuild "
                "it with `autoprune latency-table`"
            )
        try:
            layers = [LayerTiming(**lay) for lay in d["layers"]]
            return cls(
                str(d["model"]),
                tuple(d["input_size"]),
                str(d["signature"]),
                int(d["batch"]),
                int(d["threads"]),
                layers,
                float(d["rest_const"]),
                float(d["rest_per_activation"]),
                dict(d.get("info", {})),
                float(d.get("layer_scale", 1.0)),
                str(d.get("device", "cpu")),
                int(d.get("block", 1)),
                str(d.get("form", "plain")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(
                f"{source} is malformed ({e!r}); rebuild it with `autoprune latency-table`"
            ) from None

    def save(self, path: str | Path) -> None:
        write_json_atomic(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        p = Path(path)
        if not p.is_file():
            raise UsageError(
                f"latency table {str(p)!r} not found; make one with "
                "`autoprune latency-table --model M --input-size CxHxW --out FILE`"
            )
        try:
            d = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UsageError(
                f"latency table {str(p)!r} is not readable JSON ({e}); rebuild it"
            ) from None
        return cls.from_dict(d, source=f"latency table {str(p)!r}")


def monotone(seconds: Sequence[Sequence[float]], sweeps: int = 4) -> np.ndarray:
    """A grid close to the measured one that never decreases along either axis.

    Isotonic regression along outputs and inputs in turn pools a noisy point with its neighbours
    (a running maximum would carry one slow outlier to every wider point); a final running maximum
    along each axis makes the result exactly monotone (the second keeps the first's property).
    Bilinear interpolation of such a grid is monotone in each coordinate.
    """
    t = np.asarray(seconds, dtype=np.float64).copy()
    for _ in range(sweeps):
        for axis in (0, 1):
            t = np.apply_along_axis(isotonic_regression, axis, t)
    return np.maximum.accumulate(np.maximum.accumulate(t, axis=0), axis=1)


def block_start(width: int, block: int) -> int:
    """The narrowest width with as many `block`-channel blocks as `width` (1 for width <= 1)."""
    return max(1, (int(width) - 1) // block * block + 1)


def _on_blocks(grid: list[float], width: float, block: int) -> float:
    """Where to read `width` on a grid timed at block starts: as the start of its block (it
    runs as fast as that, not on a straight line to the next timed width), or as the widest
    timed width below it if that is wider (a timed width reads as itself). Non-decreasing in
    `width` (both terms are), so the predictor stays monotone on any grid."""
    if block <= 1:
        return width
    below = bisect_right(grid, width) - 1
    start = float(block_start(int(width), block))
    return max(start, grid[below]) if below >= 0 else start


def _bracket(grid: list[float], v: float) -> tuple[int, float]:
    """Cell index and weight of v on a sorted grid, clamped to its ends."""
    if len(grid) == 1 or v <= grid[0]:
        return 0, 0.0
    if v >= grid[-1]:
        return len(grid) - 2, 1.0
    i = bisect_right(grid, v) - 1
    return i, (v - grid[i]) / (grid[i + 1] - grid[i])


def _interp(xs: list[float], ys: list[float], t: np.ndarray, x: float, y: float) -> float:
    """Bilinear interpolation of t (len(xs) x len(ys)) at (x, y); a one-point axis is constant."""
    i, a = _bracket(xs, x)
    j, b = _bracket(ys, y)
    i1, j1 = min(i + 1, len(xs) - 1), min(j + 1, len(ys) - 1)
    return float(
        (1 - a) * ((1 - b) * t[i, j] + b * t[i, j1]) + a * ((1 - b) * t[i1, j] + b * t[i1, j1])
    )


class LatencyPredictor:
    """keep -> predicted seconds for one batch; monotone non-decreasing in every unit's keep."""

    def __init__(self, table: LatencyTable, cost_model: CostModel) -> None:
        names = [lay.name for lay in cost_model.graph.layers]
        if [lay.name for lay in table.layers] != names:
            raise UsageError(
                f"latency table for {table.model!r} does not list this model's layers; "
                "rebuild it for this model with `autoprune latency-table`"
            )
        self.cost_model = cost_model
        self.table = table
        self._grids = [
            (
                [float(w) for w in lay.out_widths],
                [0.0] if lay.depthwise else [float(w) for w in lay.in_widths],
                monotone(lay.seconds),
            )
            for lay in table.layers
        ]
        self._positions = np.array(
            [lay.positions for lay in cost_model.graph.layers], dtype=np.float64
        )

    def layer_seconds(self, keep: Sequence[int] | np.ndarray) -> np.ndarray:
        out, inp = self.cost_model.layer_widths(np.asarray(keep))
        b = self.table.block
        return self.table.layer_scale * np.array(
            [
                _interp(xs, ys, t, _on_blocks(xs, float(o), b), _on_blocks(ys, float(i), b))
                for (xs, ys, t), o, i in zip(self._grids, out, inp, strict=True)
            ]
        )

    def rest_seconds(self, keep: Sequence[int] | np.ndarray) -> float:
        out, _ = self.cost_model.layer_widths(np.asarray(keep))
        return self.table.rest_const + self.table.rest_per_activation * float(out @ self._positions)

    def __call__(self, keep: np.ndarray) -> float:
        return float(self.layer_seconds(keep).sum()) + self.rest_seconds(keep)


def fit_rest(
    measured: tuple[float, float], layers: tuple[float, float], activations: tuple[float, float]
) -> tuple[float, float, float]:
    """(layer_scale, rest_const, rest_per_activation) from the dense and the smallest model.

    Each pair is (dense, smallest): the measured seconds of the whole model, the sum of its
    layers' table times, and its conv/linear output elements. The prediction
    layer_scale * layers + rest_const + rest_per_activation * activations reproduces both
    measurements where it can, and stays positive and monotone in every keep.
    """
    (dense, small), (l_dense, l_small), (a_dense, a_small) = measured, layers, activations
    r_dense, r_small = dense - l_dense, small - l_small
    # A negative slope is timing noise; zero keeps the prediction monotone in every keep.
    slope = max(0.0, (r_dense - r_small) / (a_dense - a_small)) if a_dense > a_small else 0.0
    const = r_dense - slope * a_dense
    if const >= 0.0:
        return 1.0, float(const), float(slope)
    # The layers alone add up to more than the whole model (per-call overhead, or other jobs
    # while they were timed): a negative rest would price small models at nothing or less, so
    # scale the layers to the two measurements instead.
    scale = (dense - small) / (l_dense - l_small) if l_dense > l_small and dense > small else 0.0
    const = dense - scale * l_dense
    if scale <= 0.0 or const < 0.0:
        scale, const = dense / l_dense, 0.0
    return float(scale), float(const), 0.0


def fit_calibrated(
    measured: Sequence[float], layers: Sequence[float], activations: Sequence[float]
) -> tuple[float, float, float] | None:
    """(layer_scale, rest_const, rest_per_activation), none negative, minimising the squared
    relative error of layer_scale * layers + rest_const + rest_per_activation * activations
    against whole models' measured seconds (one entry per model, three or more); None where the
    fit is degenerate (no weight on the layers), for `fit_rest` to take over.

    Timed alone, a layer misses what it costs inside the model (the caches its neighbours
    leave, per-call overhead): on resnet18 @224 the layers' sum fell 10% short of whole models
    on a quiet machine and on mobilenet_v2 it overshot by 28%. A common scale fitted to whole
    models absorbs that; none negative keeps the prediction positive and monotone in every keep.
    """
    m = np.asarray(measured, dtype=np.float64)
    if len(m) < 3 or not np.all(m > 0):
        return None
    design = np.column_stack([layers, np.ones_like(m), activations]).astype(np.float64)
    # columns of comparable size for the solver; relative error: each row divided by its time
    norm = np.abs(design).max(axis=0)
    norm[norm == 0] = 1.0
    coef, _ = nnls(design / norm / m[:, None], np.ones_like(m))
    scale, const, slope = coef / norm
    if scale <= 0.0:
        return None
    return float(scale), float(const), float(slope)
