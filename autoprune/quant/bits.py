"""Kernel-wise bitwidths (BitAllocation) and the exact storage formula of the packed artifact.

A kernel is one output filter of a conv or one output row of a linear layer; each gets its own
weight bits, each conv/linear layer its input-activation bits (32: not quantised, kept as float).

The byte counts here are the layout of `autoprune.quant.artifact` (model.apq), written once and used
twice: by the writer's self-check and by `CostModel.with_bits`, so predicted storage equals the
file size exactly whenever the per-kernel nonzero counts are known (`artifact_bytes`). During a
search only per-layer keeps exist; `estimate_counts` then spreads a layer's nonzeros evenly over
its kernels (the documented search-time estimate; see `estimate_counts`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoprune.errors import AllocationError
from autoprune.graph.units import Layer, UnitGraph

BIT_CHOICES: tuple[int, ...] = (2, 3, 4, 5, 6, 8)  # weight/activation bits a search may choose
FLOAT_BITS = 32  # "not quantised": stored as float32
# What the artifact can store: 1..15-bit codes (a 4-bit field per kernel, 0 = float32) or float32.
STORABLE_BITS: tuple[int, ...] = (*range(1, 16), FLOAT_BITS)

# --- layout constants of model.apq (see autoprune.quant.artifact for the full format) -----------
MAGIC = b"APQ1"
# magic, version, granularity, name length, classes, C/H/W, signature
FIXED_HEADER = 4 + 1 + 1 + 2 + 2 + 3 * 2 + 8
BITS_FIELD = 4  # per-kernel bits code
SCALE_BYTES = 4  # float32 scale per quantised kernel
COUNT_BYTES = 4  # u32 nonzero count per layer
CRC_BYTES = 4


def _check_bits(value: Any, what: str, choices: Sequence[int] = STORABLE_BITS) -> int:
    if (
        not isinstance(value, (int, np.integer))
        or isinstance(value, bool)
        or int(value) not in choices
    ):
        raise AllocationError(f"{what} is {value!r}; bits must be one of {list(choices)}")
    return int(value)


@dataclass(frozen=True)
class BitAllocation:
    """Weight bits per kernel and input-activation bits per conv/linear layer."""

    weight: dict[str, tuple[int, ...]]  # layer name -> bits per kernel (len == dense out_channels)
    act: dict[str, int]  # layer name -> bits of that layer's input activations (32: float)

    @classmethod
    def uniform(
        cls, graph: UnitGraph, weight_bits: int, act_bits: int = FLOAT_BITS
    ) -> BitAllocation:
        wb = _check_bits(weight_bits, "weight bits")
        ab = _check_bits(act_bits, "activation bits")
        return cls({lay.name: (wb,) * lay.out_channels for lay in graph.layers},
                   {lay.name: ab for lay in graph.layers})  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {"weight": {k: list(v) for k, v in self.weight.items()}, "act": dict(self.act)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], graph: UnitGraph) -> BitAllocation:
        """Validate `d` against `graph`'s layers (names, kernel counts, bit values)."""
        if (
            not isinstance(d, Mapping)
            or not isinstance(d.get("weight"), Mapping)
            or not isinstance(d.get("act"), Mapping)
        ):
            raise AllocationError(
                "bits section must be {'weight': {layer: [bits...]}, 'act': {layer: bits}}"
            )
        layers = {lay.name: lay for lay in graph.layers}
        for part in ("weight", "act"):
            names = set(d[part])
            if names != set(layers):
                missing, extra = sorted(set(layers) - names), sorted(names - set(layers))
                raise AllocationError(
                    f"{part} bits name layers {extra} that the model lacks and miss {missing}; "
                    f"give one entry per conv/linear layer of {graph.model_name!r}"
                )
        weight: dict[str, tuple[int, ...]] = {}
        for name, lay in layers.items():
            vals = d["weight"][name]
            if not isinstance(vals, Sequence) or len(vals) != lay.out_channels:
                n = len(vals) if isinstance(vals, Sequence) else vals
                raise AllocationError(
                    f"weight bits of layer {name!r} have {n!r} entries; "
                    f"give one per kernel ({lay.out_channels})"
                )
            weight[name] = tuple(_check_bits(v, f"weight bits of {name!r}") for v in vals)
        act = {name: _check_bits(d["act"][name], f"activation bits of {name!r}") for name in layers}
        return cls(weight, act)

    def mean_weight_bits(self, layer: str) -> float:
        return float(np.mean(self.weight[layer]))


# --- the storage formula ----------------------------------------------------------------------
def ef_low_bits(n: int, length: int) -> int:
    """Low-bit width of the Elias-Fano code of n sorted positions in [0, length)."""
    return max(0, (length // n).bit_length() - 1)


def index_bits(n: int, length: int) -> int:
    """Bits of n sorted positions in [0, length): none when empty or full, else Elias-Fano or a
    bitmap, whichever is shorter.

    Elias-Fano stores each position's low bits verbatim and the gaps between high parts in unary
    (n + ((length-1) >> low) bits); a bitmap (length bits) wins when nearly full. Both depend
    only on n and length, so the decoder knows which was used without a flag.
    """
    if n == 0 or n == length:
        return 0
    low = ef_low_bits(n, length)
    ef = n * low + n + ((length - 1) >> low)
    return min(ef, length)


def layer_bytes(counts: Sequence[int], length: int, bits: Sequence[int], act_bits: int) -> int:
    """Bytes of one layer's block (one entry of `counts`/`bits` per dense kernel of `length`).

    Act-bits byte (+ float32 activation scale when quantised), the layer's nonzero count (u32),
    a byte-padded bitstream (per kernel its bits code; the positions of the layer's nonzeros in
    the flattened layer, Elias-Fano or a bitmap; each nonzero's code, n x its kernel's bits),
    then a float32 step size per quantised non-empty kernel. Index bits depend only on the
    layer's total, so they are exact from a keep vector; codes depend on the spread only where
    a layer's kernels have different bits.
    """
    total = int(sum(counts))
    stream = BITS_FIELD * len(bits) + index_bits(total, length * len(bits))
    stream += sum(int(n) * b for n, b in zip(counts, bits, strict=True))
    scales = sum(SCALE_BYTES for n, b in zip(counts, bits, strict=True) if n and b != FLOAT_BITS)
    act = 1 + (SCALE_BYTES if act_bits != FLOAT_BITS else 0)
    return act + COUNT_BYTES + (stream + 7) // 8 + scales


def header_bytes(graph: UnitGraph) -> int:
    """Bytes before the first layer block: fixed fields, model name, normalisation mean/std."""
    return FIXED_HEADER + len(graph.model_name.encode()) + 2 * 4 * graph.input_size[0]


def kernel_length(lay: Layer) -> int:
    """Elements of one dense kernel: inputs per output x kernel elements."""
    return lay.in_channels // lay.groups * lay.kernel


def dense_rest_params(graph: UnitGraph) -> int:
    """Parameters besides conv/linear weights (biases, norms, others), stored as float32."""
    biases = sum(lay.out_channels for lay in graph.layers if lay.bias)
    return biases + sum(c * p for c, p in graph.norms.values()) + graph.other_params


def artifact_bytes(
    graph: UnitGraph, bits: BitAllocation, counts: Mapping[str, Sequence[int]]
) -> int:
    """Exact size of model.apq given the nonzero count of every dense kernel of every layer.

    Not counted (so a model that has them gets a slightly larger file): float buffers that are
    not parameters, such as batch-norm running statistics.
    """
    total = header_bytes(graph) + 4 * dense_rest_params(graph) + CRC_BYTES
    for lay in graph.layers:
        total += layer_bytes(
            counts[lay.name], kernel_length(lay), bits.weight[lay.name], bits.act[lay.name]
        )
    return total


def weight_code_bytes(bits: BitAllocation, counts: Mapping[str, Sequence[int]]) -> float:
    """Bytes of the weight codes alone (n x bits per kernel): ADMM-NN's weight-data convention."""
    return sum(int(np.dot(counts[name], bits.weight[name])) for name in counts) / 8


def estimate_counts(nonzeros: int, kernels: int) -> list[int]:
    """Search-time estimate: a layer's nonzeros spread evenly over its kernels (the first ones
    get the remainder). For unstructured masks the real spread follows importance, so the file
    can differ by the bits of the kernels the nonzeros move between (and a little in index
    bits); `artifact_bytes` with the real counts is exact, and export records both."""
    q, r = divmod(int(nonzeros), int(kernels))
    return [q + 1] * r + [q] * (kernels - r)


def estimated_costs(
    graph: UnitGraph, bits: BitAllocation, out: np.ndarray, inputs: np.ndarray, nonzeros: np.ndarray
) -> tuple[float, float]:
    """Search-time (bytes of model.apq, BOPs) from per-layer widths and nonzero weights.

    The artifact stores dense-shaped layers. Weight granularity: a layer's nonzeros are spread
    by `estimate_counts` (exact when a layer's kernels share their bits and none is empty).
    Channel granularity: `out` kernels keep `inputs` x kernel elements each and the others are
    empty; which kernels survive is not known yet, so each kept one costs the layer's mean bits
    (and a scale in the proportion of quantised kernels).
    """
    size = float(header_bytes(graph) + 4 * dense_rest_params(graph) + CRC_BYTES)
    bops = 0.0
    for i, lay in enumerate(graph.layers):
        wb, ab = bits.weight[lay.name], bits.act[lay.name]
        length = kernel_length(lay)
        if graph.granularity == "weight":
            counts = estimate_counts(int(nonzeros[i]), lay.out_channels)
            size += layer_bytes(counts, length, wb, ab)
            bops += float(np.dot(counts, wb)) * lay.positions * ab
            continue
        o, n, mean = float(out[i]), round(inputs[i]) * lay.kernel, float(np.mean(wb))
        quantised = float(np.mean([b != FLOAT_BITS for b in wb]))
        total = round(o) * n
        stream = BITS_FIELD * len(wb) + index_bits(total, length * len(wb)) + total * mean
        act = 1 + (SCALE_BYTES if ab != FLOAT_BITS else 0)
        size += act + COUNT_BYTES + np.ceil(stream / 8) + SCALE_BYTES * o * quantised
        bops += float(nonzeros[i]) * lay.positions * mean * ab
    return size, bops
