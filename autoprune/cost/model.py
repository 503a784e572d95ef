"""Exact cost model: MACs, parameters, storage and BOPs of any allocation, without building it.

For channel units every layer's kept output and input widths are affine in the unit keeps
(O = A_out k + b_out, I = A_in k + b_in), so MACs and parameters are bilinear in k and the cost of
adding one channel to each unit has a closed form. The numbers equal what FlopCounterMode and a
parameter count report on the physically slimmed model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from autoprune.graph.units import UnitGraph
from autoprune.quant.bits import BitAllocation, estimated_costs

# Metrics every cost model answers; `register_metric` adds more (latency tables, quantised sizes).
BASE_METRICS = ("macs", "params", "weights", "size", "bops")
FP32 = 32


@dataclass(frozen=True)
class Costs:
    """The costs of one allocation (MACs of conv + linear layers; parameters incl. biases)."""

    macs: float
    params: float
    weights: float  # conv + linear weights (nonzero ones for weight granularity)
    size: float  # bytes of the stored model at the allocation's bitwidths
    bops: float  # bit operations: MACs x weight bits x activation bits

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


MetricFn = Callable[[np.ndarray], float]


@dataclass(frozen=True)
class ChannelTerms:
    """The coefficients behind a channel-granularity `CostModel`, for costs in another algebra.

    Per layer: kept outputs O = a_out k + b_out, inputs per output I = a_in k + b_in, and per norm
    module channels N = a_norm k + b_norm. Weights = O I kernel, MACs = weights x positions, and
    parameters add bias O + norm_per N + other_params (what `layer_costs` computes).
    """

    a_out: np.ndarray
    b_out: np.ndarray
    a_in: np.ndarray
    b_in: np.ndarray
    a_norm: np.ndarray
    b_norm: np.ndarray
    norm_per: np.ndarray
    kernel: np.ndarray
    positions: np.ndarray
    bias: np.ndarray
    other_params: float
    # attention matmuls: kept heads H = a_heads k + b_heads, MACs = H @ macs_per_head
    a_heads: np.ndarray
    b_heads: np.ndarray
    macs_per_head: np.ndarray
    unpriced_macs: float


class CostModel:
    """Costs of integer keep vectors over the units of one `UnitGraph`."""

    def __init__(self, graph: UnitGraph, *, weight_bits: int = FP32, act_bits: int = FP32) -> None:
        self.graph = graph
        self.weight_bits = weight_bits
        self.act_bits = act_bits
        self.sizes = np.array(graph.sizes, dtype=np.int64)
        self._extra: dict[str, MetricFn] = {}
        self.bits: BitAllocation | None = None
        nl, nu = len(graph.layers), len(graph.units)
        self._build_channel_terms(nl, nu) if graph.granularity == "channel" else None
        self._positions = np.array([lay.positions for lay in graph.layers], dtype=np.float64)
        self._kernel = np.array([lay.kernel for lay in graph.layers], dtype=np.float64)
        self._bias = np.array([lay.bias for lay in graph.layers], dtype=np.float64)
        self._dense_weights = np.array([lay.weights for lay in graph.layers], dtype=np.float64)

    # --- structure -------------------------------------------------------------------------
    def _build_channel_terms(self, nl: int, nu: int) -> None:
        g = self.graph
        index = {lay.name: i for i, lay in enumerate(g.layers)}
        norm_names = list(g.norms)
        norm_index = {n: i for i, n in enumerate(norm_names)}
        head_index = {n: i for i, n in enumerate(g.matmuls)}
        a_out, a_in = np.zeros((nl, nu)), np.zeros((nl, nu))
        a_norm = np.zeros((len(norm_names), nu))
        a_heads = np.zeros((len(head_index), nu))
        for u, unit in enumerate(g.units):
            for mem in unit.members:
                per_channel = len(mem.idxs) / unit.size
                if mem.module in index:
                    (a_out if mem.dim == "out" else a_in)[index[mem.module], u] += per_channel
                elif mem.module in norm_index and mem.dim == "out":
                    a_norm[norm_index[mem.module], u] += per_channel
                elif mem.module in head_index:
                    a_heads[head_index[mem.module], u] += per_channel
        out_dense = np.array([lay.out_channels for lay in g.layers], dtype=np.float64)
        in_dense = np.array([lay.in_channels for lay in g.layers], dtype=np.float64)
        sizes = self.sizes.astype(np.float64)
        groups = np.array([lay.groups for lay in g.layers], dtype=np.float64)
        depthwise = np.array([lay.depthwise for lay in g.layers])
        # A depthwise conv keeps in/groups == 1 input per output whatever is pruned; a grouped
        # conv keeps its group count, so each output sees I / groups inputs.
        a_in[depthwise] = 0.0
        self._a_out, self._b_out = a_out, out_dense - a_out @ sizes
        self._a_in = a_in / groups[:, None]
        self._b_in = np.where(depthwise, in_dense / groups, (in_dense - a_in @ sizes) / groups)
        norm_ch = np.array([g.norms[n][0] for n in norm_names], dtype=np.float64)
        self._norm_per = np.array([g.norms[n][1] for n in norm_names], dtype=np.float64)
        self._a_norm, self._b_norm = a_norm, norm_ch - a_norm @ sizes
        heads = np.array([h for h, _ in g.matmuls.values()], dtype=np.float64)
        self._a_heads, self._b_heads = a_heads, heads - a_heads @ sizes
        self._head_macs = np.array([m for _, m in g.matmuls.values()], dtype=np.float64)
        # Sanity: a width that would go negative means the trace double-counted a member.
        if (
            (self._b_out < -1e-6).any()
            or (self._b_in < -1e-6).any()
            or (self._b_norm < -1e-6).any()
            or (self._b_heads < -1e-6).any()
        ):
            raise RuntimeError("channel units overlap; the traced groups are inconsistent")

    def channel_terms(self) -> ChannelTerms:
        """The affine width maps and per-layer factors (channel granularity only)."""
        if self.graph.granularity != "channel":
            raise ValueError("channel_terms needs a channel-granularity cost model")
        return ChannelTerms(
            self._a_out, self._b_out, self._a_in, self._b_in, self._a_norm, self._b_norm,
            self._norm_per, self._kernel, self._positions, self._bias,
            float(self.graph.other_params), self._a_heads, self._b_heads, self._head_macs,
            float(self.graph.unpriced_macs),
        )  # fmt: skip

    # --- evaluation --------------------------------------------------------------------------
    @property
    def dense_keep(self) -> np.ndarray:
        return self.sizes.copy()

    def _widths(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        kf = k.astype(np.float64)
        return (
            self._a_out @ kf + self._b_out,
            self._a_in @ kf + self._b_in,
            self._a_norm @ kf + self._b_norm,
        )

    def layer_widths(self, keep: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Kept output and input channels of every conv/linear layer, as the slimmed layer has them.

        Both are affine in the keeps with non-negative coefficients, so they never shrink when a
        unit keeps more (what monotone metrics built on them, like measured latency, rely on).
        """
        dense_out = np.array([lay.out_channels for lay in self.graph.layers], dtype=np.float64)
        dense_in = np.array([lay.in_channels for lay in self.graph.layers], dtype=np.float64)
        if self.graph.granularity == "weight":
            return dense_out, dense_in
        out, inp, _ = self._widths(np.asarray(keep))
        groups = np.array([lay.groups for lay in self.graph.layers], dtype=np.float64)
        depthwise = np.array([lay.depthwise for lay in self.graph.layers])
        # _widths counts inputs per output (I / groups); a depthwise conv keeps its in/out ratio.
        return out, np.where(depthwise, out * dense_in / dense_out, inp * groups)

    def layer_costs(self, keep: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Per-layer MACs and weights, and the parameters outside conv/linear weights."""
        k = np.asarray(keep)
        if self.graph.granularity == "weight":
            weights = k.astype(np.float64)
            macs = weights * self._positions
            biases = float(
                (self._bias * np.array([lay.out_channels for lay in self.graph.layers])).sum()
            )
            norm = sum(c * p for c, p in self.graph.norms.values())
            return macs, weights, biases + norm + self.graph.other_params
        out, inp, norm_ch = self._widths(k)
        weights = out * inp * self._kernel
        macs = weights * self._positions
        rest = (
            float((self._bias * out).sum() + (self._norm_per * norm_ch).sum())
            + self.graph.other_params
        )
        return macs, weights, rest

    def with_bits(self, bits: BitAllocation) -> CostModel:
        """This cost model at kernel-wise bits: `size` is the bytes of the packed artifact
        (model.apq, by the search-time estimate of `autoprune.quant.bits.estimated_costs`) and
        `bops` sums MACs x weight bits x activation bits per kernel. Every other metric is
        unchanged."""
        other = copy.copy(self)
        other._extra = dict(self._extra)
        other.bits = bits
        return other

    def attention_macs(self, keep: Sequence[int] | np.ndarray) -> float:
        """MACs of the attention matmuls at the kept heads (`UnitGraph.matmuls`)."""
        if self.graph.granularity != "channel" or not self.graph.matmuls:
            return float(sum(h * m for h, m in self.graph.matmuls.values()))
        heads = self._a_heads @ np.asarray(keep, dtype=np.float64) + self._b_heads
        return float(heads @ self._head_macs)

    def costs(self, keep: Sequence[int] | np.ndarray) -> Costs:
        macs, weights, rest = self.layer_costs(keep)
        # + the attention matmuls, and what verification measured that nothing prices: a constant
        total_macs = float(macs.sum()) + self.attention_macs(keep) + self.graph.unpriced_macs
        total_w = float(weights.sum())
        if self.bits is not None:
            out, _ = self.layer_widths(keep)
            if self.graph.granularity == "channel":
                per_out = self._widths(np.asarray(keep))[1]
            else:
                per_out = np.array([lay.in_channels // lay.groups for lay in self.graph.layers])
            size, bops = estimated_costs(self.graph, self.bits, out, per_out, weights)
            return Costs(total_macs, total_w + rest, total_w, size, bops)
        return Costs(
            macs=total_macs,
            params=total_w + rest,
            weights=total_w,
            size=(total_w * self.weight_bits + rest * FP32) / 8,
            bops=total_macs * self.weight_bits * self.act_bits,
        )

    def metric(self, name: str, keep: Sequence[int] | np.ndarray) -> float:
        if name in self._extra:
            return self._extra[name](np.asarray(keep))
        if name not in BASE_METRICS:
            raise KeyError(f"no cost model for metric {name!r}")
        return float(getattr(self.costs(keep), name))

    def fits(self, keep: Sequence[int] | np.ndarray, limits: Mapping[str, float]) -> bool:
        """Whether `keep` meets every budget in `limits` (metric -> largest allowed value)."""
        return all(self.metric(m, keep) <= lim for m, lim in limits.items())

    def register_metric(self, name: str, fn: MetricFn) -> None:
        """Add a metric (e.g. a measured latency table); it must be monotone in every keep."""
        self._extra[name] = fn

    @property
    def metrics(self) -> tuple[str, ...]:
        return BASE_METRICS + tuple(self._extra)

    def increments(self, name: str, keep: Sequence[int] | np.ndarray) -> np.ndarray:
        """Exact increase of metric `name` when one unit at a time keeps one more element."""
        k = np.asarray(keep, dtype=np.int64)
        quantised = self.bits is not None and name in ("size", "bops")
        if not quantised and name in BASE_METRICS and self.graph.granularity == "channel":
            out, inp, _ = self._widths(k)
            coef = self._kernel * (self._positions if name in ("macs", "bops") else 1.0)
            # (O + a)(I + b) - O I = a I + b O + a b for each layer, summed over layers.
            d = (coef * inp) @ self._a_out + (coef * out) @ self._a_in
            d = d + (coef[:, None] * self._a_out * self._a_in).sum(axis=0)
            if name in ("macs", "bops"):
                d = d + self._head_macs @ self._a_heads
            if name in ("params", "size"):
                extra = self._bias @ self._a_out + self._norm_per @ self._a_norm
                if name == "size":
                    return (d * self.weight_bits + extra * FP32) / 8
                return d + extra
            if name == "bops":
                return d * self.weight_bits * self.act_bits
            return d
        if not quantised and name in BASE_METRICS and self.graph.granularity == "weight":
            per = {"macs": self._positions, "params": 1.0, "weights": 1.0}.get(name)
            if per is None:
                per = (
                    (self.weight_bits / 8)
                    if name == "size"
                    else self._positions * self.weight_bits * self.act_bits
                )
            return np.broadcast_to(np.asarray(per, dtype=np.float64), k.shape).copy()
        base = self.metric(name, k)
        out = np.empty(len(k))
        for u in range(len(k)):
            k[u] += 1
            out[u] = self.metric(name, k) - base
            k[u] -= 1
        return out

    # --- reporting ---------------------------------------------------------------------------
    def layer_table(
        self, keep: Sequence[int] | np.ndarray | None = None
    ) -> list[dict[str, object]]:
        """One row per conv/linear layer: widths, kernel, output positions, MACs, weights."""
        k = self.dense_keep if keep is None else np.asarray(keep)
        macs, weights, _ = self.layer_costs(k)
        out, inp = self.layer_widths(k)
        rows = []
        for i, lay in enumerate(self.graph.layers):
            rows.append(
                {
                    "layer": lay.name,
                    "type": lay.type,
                    "in": round(float(inp[i])),
                    "out": round(float(out[i])),
                    "kernel": lay.kernel,
                    "positions": lay.positions,
                    "macs": round(float(macs[i])),
                    "weights": round(float(weights[i])),
                }
            )
        return rows
