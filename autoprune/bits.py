"""Kernel-wise bitwidths (BitAllocation) and the exact storage formula of the packed artifact.

A kernel is one output filter of a conv or one output row of a linear layer; each gets its own
weight bits, each conv/linear layer its input-activation bits (32: not quantised, kept as float).

The byte counts here are the layout of `autoprune.artifact` (model.apq), written once and used
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
from autoprune.units import Layer, UnitGraph

BIT_CHOICES: tuple[int, ...] = (2, 3, 4, 5, 6, 8)  # weight/activation bits a search may choose
FLOAT_BITS = 32  # "not quantised": stored as float32
# What the artifact can store: 2..16-bit integer codes (a 4-bit field per kernel) or float32.
STORABLE_BITS: tuple[int, ...] = (*range(2, 17), FLOAT_BITS)

# --- layout constants of model.apq (see autoprune.artifact for the full format) ---------------
MAGIC = b"APQ1"
# magic, version, granularity, name length, classes, C/H/W, signature
FIXED_HEADER = 4 + 1 + 1 + 2 + 2 + 3 * 2 + 8
BITS_FIELD = 4  # per-kernel bits code
SCALE_BYTES = 4  # float32 scale per quantised kernel
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
    """Bits of one kernel's sparse indices: none when empty or dense, else Elias-Fano or a bitmap.

    Elias-Fano stores each position's low bits verbatim and the gaps between high parts in unary
    (n + ((length-1) >> low) bits); a bitmap (length bits) wins for nearly dense kernels. Both
    depend only on n and length, so the decoder knows which was used without a flag.
    """
    if n == 0 or n == length:
        return 0
    low = ef_low_bits(n, length)
    ef = n * low + n + ((length - 1) >> low)
    return min(ef, length)


def count_bits(length: int) -> int:
    """Width of a kernel's nonzero count (0..length)."""
    return int(length).bit_length()


def layer_bytes(counts: Sequence[int], length: int, bits: Sequence[int]) -> int:
    """Bytes of one layer's block: act-bits byte, scales, then a byte-padded bitstream.

    The bitstream holds per kernel: its bits code (4), its nonzero count, its indices and its
    codes (n x bits; float kernels store float32 values).
    """
    scales = sum(SCALE_BYTES for b in bits if b != FLOAT_BITS)
    stream = len(bits) * (BITS_FIELD + count_bits(length))
    stream += sum(
        index_bits(int(n), length) + int(n) * b for n, b in zip(counts, bits, strict=True)
    )
    return 1 + scales + (stream + 7) // 8


def header_bytes(graph: UnitGraph) -> int:
    """Bytes before the first layer block: fixed fields, model name, mean/std, unit keeps."""
    return (
        FIXED_HEADER
        + len(graph.model_name.encode())
        + 2 * 4 * graph.input_size[0]
        + 4 * len(graph.units)
    )


def artifact_bytes(
    graph: UnitGraph,
    bits: BitAllocation,
    counts: Mapping[str, Sequence[int]],
    lengths: Mapping[str, int],
    kernels: Mapping[str, Sequence[int]],
    rest_params: float,
) -> int:
    """Exact size of model.apq: `counts[layer]` nonzeros of each stored kernel, `lengths[layer]`
    elements per kernel, `kernels[layer]` the dense kernel index of each stored kernel (all of
    them at weight granularity, the kept outputs after slimming) and `rest_params` floats stored
    beside the layers (biases, norm and other parameters)."""
    total = header_bytes(graph) + 4 * int(rest_params) + CRC_BYTES
    for lay in graph.layers:
        kb = [bits.weight[lay.name][k] for k in kernels[lay.name]]
        total += layer_bytes(counts[lay.name], lengths[lay.name], kb)
    return total


def weight_code_bytes(bits: BitAllocation, counts: Mapping[str, Sequence[int]],
                      kernels: Mapping[str, Sequence[int]]) -> float:  # fmt: skip
    """Bytes of the weight codes alone (n x bits per kernel): the ADMM-NN weight-data convention."""
    total = 0
    for name, cs in counts.items():
        total += sum(int(n) * bits.weight[name][k] for n, k in zip(cs, kernels[name], strict=True))
    return total / 8


def estimate_counts(nonzeros: int, kernels: int) -> list[int]:
    """Search-time estimate: a layer's nonzeros spread evenly over its kernels (first ones get
    the remainder). Exact for dense or channel-pruned kernels; for unstructured masks the real
    spread follows importance, so the artifact can differ (by the bits of the kernels the
    nonzeros move between, and slightly in index bits): `artifact_bytes` with the real counts is
    exact, and export records both."""
    q, r = divmod(int(nonzeros), int(kernels))
    return [q + 1] * r + [q] * (kernels - r)


def layer_kernel_length(lay: Layer, in_kept: float | None = None) -> int:
    """Elements per kernel: inputs per output x kernel elements (inputs after slimming if given)."""
    inputs = lay.in_channels // lay.groups if in_kept is None else round(in_kept)
    return inputs * lay.kernel


def estimated_costs(
    graph: UnitGraph,
    bits: BitAllocation,
    out: np.ndarray,
    inputs: np.ndarray,
    nonzeros: np.ndarray,
    rest_params: float,
) -> tuple[float, float]:
    """Search-time (bytes of model.apq, BOPs) from per-layer widths and nonzero weights.

    Weight granularity: every dense kernel is stored, its nonzeros spread by `estimate_counts`.
    Channel granularity: kernels are dense after slimming; which kernels survive is not known yet,
    so each kept kernel costs the layer's mean bits (and its share of scales).
    """
    size = float(header_bytes(graph) + 4 * round(rest_params) + CRC_BYTES)
    bops = 0.0
    for i, lay in enumerate(graph.layers):
        wb, ab = bits.weight[lay.name], bits.act[lay.name]
        length = round(inputs[i]) * lay.kernel
        if graph.granularity == "weight":
            counts = estimate_counts(int(nonzeros[i]), lay.out_channels)
            size += layer_bytes(counts, length, wb)
            bops += float(np.dot(counts, wb)) * lay.positions * ab
            continue
        o = float(out[i])
        quantised = sum(b != FLOAT_BITS for b in wb) / len(wb)
        stream = o * (BITS_FIELD + count_bits(length)) + o * length * float(np.mean(wb))
        size += 1 + SCALE_BYTES * o * quantised + np.ceil(stream / 8)
        bops += float(nonzeros[i]) * lay.positions * float(np.mean(wb)) * ab
    return size, bops
