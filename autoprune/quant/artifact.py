"""The compressed artifact model.apq: packed integer codes, per-kernel scales, sparse indices.

Format (version 1, little-endian; every size follows from the model and the per-kernel counts,
so `autoprune.quant.bits.artifact_bytes` predicts the file to the byte):

    header   magic b"APQ1" | version u8 | granularity u8 (0 channel, 1 weight)
             | name length u16 | model name (UTF-8) | num_classes u16 | C, H, W u16 x 3
             | signature 8 bytes (UnitGraph.signature, hex-decoded) | mean f32 x C | std f32 x C
    layers   one block per conv/linear layer in traced order, each of the dense shape
             (K kernels = output filters / rows of L = inputs per output x kernel elements):
               act bits u8 | act scale f32 (only when act bits < 32) | nonzeros n u32
               | bitstream, LSB first, zero-padded to a byte:
                   per kernel: its bits code (4 bits; 0 = float32)
                   the positions of the n nonzeros in the flattened layer [0, K x L), kernel-major:
                     Elias-Fano (n low parts of l = floor(log2(K L / n)) bits, then the high
                     parts as unary gaps in n + ((K L - 1) >> l) bits: a 1 at high_i + i) or,
                     when not longer, a K x L-bit map; none when n is 0 or K x L
                   per nonzero: its code in its kernel's b bits, u = k + 2^(b-1) for the level
                     (k + 1/2) s (float32 bit patterns in 32-bit kernels)
               | step size s f32 per quantised kernel that has a nonzero, in kernel order
    rest     every other floating tensor of the model's state dict (biases, norms, buffers),
             float32, in state-dict order; shapes come from the rebuilt model
    crc32    u32 of everything before it

The loader rebuilds the architecture by name (as `load_pruned` does), so the file carries data
only. Pruned channels are empty kernels of the dense shape; activation quantisation is restored
as forward pre-hooks with the stored scales.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.errors import CheckpointError
from autoprune.graph.units import GRANULARITIES, UnitGraph, trace_units
from autoprune.models import build_model
from autoprune.quant.bitpack import BitReader, BitWriter, ByteCursor
from autoprune.quant.bits import (
    BITS_FIELD,
    FLOAT_BITS,
    MAGIC,
    BitAllocation,
    ef_low_bits,
    index_bits,
)
from autoprune.quant.fake import add_act_quant, quantize

VERSION = 1
ARTIFACT = "model.apq"


@dataclass
class Encoded:
    """What writing an artifact measured: its bytes, the codes' bytes and per-kernel counts."""

    bytes: int
    code_bytes: float
    counts: dict[str, list[int]]


# --- writing ------------------------------------------------------------------------------------
def _write_layer(
    w: torch.Tensor, bits: tuple[int, ...], act_bits: int, act_scale: float | None
) -> tuple[bytes, list[int], float]:
    b = torch.tensor(bits, dtype=torch.int64)
    codes, scales = quantize(w, b)
    kernels, length = w.shape[0], w[0].numel()
    flat_w = w.detach().reshape(kernels, length).to(torch.float32).numpy()
    positions = np.flatnonzero(flat_w)  # kernel-major: kernel = p // length
    n = len(positions)
    counts = np.bincount(positions // length, minlength=kernels).tolist()
    head = struct.pack("<B", act_bits)
    if act_bits != FLOAT_BITS:
        head += struct.pack("<f", float(act_scale if act_scale is not None else 1.0))
    head += struct.pack("<I", n)
    out = BitWriter()
    out.add([kb if kb != FLOAT_BITS else 0 for kb in bits], BITS_FIELD)
    size = kernels * length
    if 0 < n < size and index_bits(n, size) == size:  # a bitmap is no longer than Elias-Fano
        mask = np.zeros(size, dtype=np.uint64)
        mask[positions] = 1
        out.add(mask, 1)
    elif 0 < n < size:
        low = ef_low_bits(n, size)
        out.add(positions & ((1 << low) - 1), low)
        upper = np.zeros(n + ((size - 1) >> low), dtype=np.uint64)
        upper[(positions >> low) + np.arange(n)] = 1
        out.add(upper, 1)
    kb = np.asarray(bits, dtype=np.int64)[positions // length]
    flat_codes = codes.reshape(-1).numpy()[positions]
    is_float = kb == FLOAT_BITS
    values = np.where(is_float, flat_w.reshape(-1)[positions].astype("<f4").view(np.uint32),
                      flat_codes + (np.int64(1) << np.maximum(kb - 1, 0)))  # fmt: skip
    out.add(values, kb)
    quantised = [k for k in range(kernels) if counts[k] and bits[k] != FLOAT_BITS]
    tail = scales[quantised].to(torch.float32).numpy().astype("<f4").tobytes()
    return head + out.tobytes() + tail, counts, float(kb.sum()) / 8


def _header(graph: UnitGraph, num_classes: int, mean: list[float], std: list[float]) -> bytes:
    name = graph.model_name.encode()
    c, h, w = graph.input_size
    return (
        MAGIC
        + struct.pack("<BBH", VERSION, GRANULARITIES.index(graph.granularity), len(name))
        + name
        + struct.pack("<HHHH", num_classes, c, h, w)
        + bytes.fromhex(graph.signature)
        + np.asarray(list(mean) + list(std), dtype="<f4").tobytes()
    )


def _weight(model: nn.Module, name: str) -> torch.Tensor:
    w = model.get_submodule(name).weight
    assert isinstance(w, torch.Tensor)
    return w


def _rest_names(model: nn.Module, graph: UnitGraph) -> list[str]:
    weights = {f"{lay.name}.weight" for lay in graph.layers}
    return [k for k, v in model.state_dict().items() if k not in weights and v.is_floating_point()]


def write_artifact(
    path: str | Path,
    model: nn.Module,
    graph: UnitGraph,
    bits: BitAllocation,
    *,
    num_classes: int,
    mean: list[float],
    std: list[float],
    act_scales: dict[str, float] | None = None,
) -> Encoded:
    """Encode `model` (dense shapes, pruned weights zero) at `bits` into `path`."""
    blob = bytearray(_header(graph, num_classes, mean, std))
    counts: dict[str, list[int]] = {}
    code_bytes = 0.0
    for lay in graph.layers:
        w = _weight(model, lay.name).detach().cpu().float()
        act = bits.act[lay.name]
        scale = None if act_scales is None else act_scales.get(lay.name)
        data, counts[lay.name], cb = _write_layer(w, bits.weight[lay.name], act, scale)
        blob += data
        code_bytes += cb
    state = model.state_dict()
    for name in _rest_names(model, graph):
        blob += state[name].detach().cpu().to(torch.float32).numpy().astype("<f4").tobytes()
    blob += struct.pack("<I", zlib.crc32(blob))
    Path(path).write_bytes(bytes(blob))
    return Encoded(len(blob), code_bytes, counts)


# --- reading ------------------------------------------------------------------------------------
def _read_layer(
    buf: ByteCursor, shape: torch.Size
) -> tuple[torch.Tensor, tuple[int, ...], int, float | None]:
    kernels, length = shape[0], int(np.prod(shape[1:]))
    size = kernels * length
    (act,) = buf.unpack("<B")
    act_scale = float(buf.floats(1)[0]) if act != FLOAT_BITS else None
    (n,) = buf.unpack("<I")
    if n > size or act not in (*range(1, 16), FLOAT_BITS):
        raise CheckpointError(
            f"{buf.source} is corrupt (a layer block does not decode); export the run again"
        )
    # Bits fields and indices come first: they fix every code's width, hence the stream's length.
    head = BITS_FIELD * kernels + index_bits(n, size)
    peek = BitReader(buf.data[buf.pos : buf.pos + (head + 7) // 8], buf.source)
    bits_codes = peek.read(kernels, BITS_FIELD).astype(np.int64)
    bits = tuple(int(b) if b else FLOAT_BITS for b in bits_codes)
    if n == 0 or n == size:
        positions = np.arange(n, dtype=np.int64)
    elif index_bits(n, size) == size:
        positions = np.flatnonzero(peek.read(size, 1))
    else:
        low = ef_low_bits(n, size)
        lows = peek.read(n, low).astype(np.int64) if low else np.zeros(n, dtype=np.int64)
        ones = np.flatnonzero(peek.read(n + ((size - 1) >> low), 1))
        positions = ((ones - np.arange(len(ones))) << low) | lows if len(ones) == n else ones
    if len(positions) != n or (n and (positions[-1] >= size or (np.diff(positions) <= 0).any())):
        raise CheckpointError(f"{buf.source} is corrupt (bad sparse index); export the run again")
    kb = np.asarray(bits, dtype=np.int64)[positions // length]
    reader = BitReader(buf.take((head + int(kb.sum()) + 7) // 8), buf.source)
    reader.pos = head
    values = reader.read_widths(kb)
    counts = np.bincount(positions // length, minlength=kernels)
    quantised = [k for k in range(kernels) if counts[k] and bits[k] != FLOAT_BITS]
    scales = np.zeros(kernels, dtype=np.float32)
    scales[quantised] = buf.floats(len(quantised))
    is_float = kb == FLOAT_BITS
    half = np.int64(1) << np.maximum(kb - 1, 0)
    levels = ((values.astype(np.int64) - half).astype(np.float32) + np.float32(0.5)) * scales[
        positions // length
    ]
    w = np.zeros(size, dtype=np.float32)
    w[positions] = np.where(is_float, values.astype(np.uint32).view("<f4"), levels)
    return torch.from_numpy(w).reshape(shape), bits, act, act_scale


def load_artifact(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored in a model.apq file; meta has name, classes, mean/std and bits."""
    p = Path(path)
    source = f"artifact {str(p)!r}"
    if not p.is_file():
        raise CheckpointError(f"{source} does not exist; export a run with bits first")
    data = p.read_bytes()
    if len(data) < 8 or data[:4] != MAGIC:
        raise CheckpointError(
            f"{source} is not a model.apq file (bad magic); point at RUN/{ARTIFACT}"
        )
    (crc,) = struct.unpack("<I", data[-4:])
    if zlib.crc32(data[:-4]) != crc:
        raise CheckpointError(
            f"{source} is truncated or corrupt (checksum mismatch); export the run again"
        )
    buf = ByteCursor(data[:-4], source)
    buf.take(4)
    version, gran, name_len = buf.unpack("<BBH")
    if version != VERSION or gran >= len(GRANULARITIES):
        raise CheckpointError(
            f"{source} has format version {version}; this autoprune reads {VERSION}"
        )
    try:
        name = buf.take(name_len).decode()
    except UnicodeDecodeError:
        raise CheckpointError(f"{source} is corrupt (model name); export the run again") from None
    num_classes, c, h, wd = buf.unpack("<HHHH")
    signature = buf.take(8).hex()
    stats = buf.floats(2 * c)
    try:
        model = build_model(name, num_classes=num_classes, input_size=(c, h, wd))
    except Exception as e:  # an unknown or unbuildable name is a bad file here, not bad usage
        raise CheckpointError(f"{source} names a model autoprune cannot build ({e})") from None
    graph = trace_units(model, (c, h, wd), GRANULARITIES[gran], name)
    if graph.signature != signature:
        raise CheckpointError(
            f"{source} does not fit model {name!r} (signature differs); export it again"
        )
    weight_bits: dict[str, tuple[int, ...]] = {}
    act_bits: dict[str, int] = {}
    act_scales: dict[str, float] = {}
    counts: dict[str, list[int]] = {}
    with torch.no_grad():
        for lay in graph.layers:
            param = _weight(model, lay.name)
            w, weight_bits[lay.name], act_bits[lay.name], scale = _read_layer(buf, param.shape)
            param.copy_(w)
            counts[lay.name] = [int(n) for n in (w.reshape(w.shape[0], -1) != 0).sum(dim=1)]
            if scale is not None:
                act_scales[lay.name] = scale
        state = model.state_dict()
        for key in _rest_names(model, graph):
            t = state[key]
            t.copy_(torch.from_numpy(buf.floats(t.numel()).copy()).reshape(t.shape))
    if buf.pos != len(buf.data):
        raise CheckpointError(
            f"{source} has {len(buf.data) - buf.pos} bytes too many; export the run again"
        )
    bits = BitAllocation(weight_bits, act_bits)
    add_act_quant(model, graph, bits, act_scales)
    meta = {"model": name, "num_classes": num_classes, "input_size": [c, h, wd],
            "granularity": graph.granularity, "mean": stats[:c].tolist(),
            "std": stats[c:].tolist(), "bits": bits, "act_scales": act_scales, "counts": counts,
            "bytes": len(data), "graph": graph}  # fmt: skip
    return model.eval(), meta
