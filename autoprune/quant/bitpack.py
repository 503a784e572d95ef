"""Bit packing for model.apq: LSB-first fields of any width, and a bounds-checked byte cursor.

Every short read raises a one-line CheckpointError naming the file, so a truncated artifact is
reported as such wherever it ends.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from autoprune.errors import CheckpointError


class BitWriter:
    """Fields appended as (values, width) and packed LSB first into bytes, zero-padded."""

    def __init__(self) -> None:
        self.values: list[np.ndarray] = []
        self.widths: list[np.ndarray] = []

    def add(self, values: Any, width: Any) -> None:
        v = np.asarray(values, dtype=np.uint64).ravel()
        self.values.append(v)
        self.widths.append(np.broadcast_to(np.asarray(width, dtype=np.int64), v.shape))

    def tobytes(self) -> bytes:
        if not self.values:
            return b""
        v, w = np.concatenate(self.values), np.concatenate(self.widths)
        starts = np.cumsum(w) - w
        field = np.repeat(np.arange(len(v)), w)
        offset = (np.arange(int(w.sum())) - np.repeat(starts, w)).astype(np.uint64)
        bits = ((v[field] >> offset) & np.uint64(1)).astype(np.uint8)
        return np.packbits(bits, bitorder="little").tobytes()


class BitReader:
    """Fields read back LSB first from the bits of `data`, starting at `pos`."""

    def __init__(self, data: bytes, source: str) -> None:
        self.bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
        self.pos, self.source = 0, source

    def read(self, count: int, width: int) -> np.ndarray:
        n = count * width
        if self.pos + n > len(self.bits):
            raise CheckpointError(f"{self.source} is truncated; export the run again")
        chunk = self.bits[self.pos : self.pos + n].reshape(count, width).astype(np.uint64)
        self.pos += n
        return (chunk << np.arange(width, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)

    def read_widths(self, widths: np.ndarray) -> np.ndarray:
        """Consecutive fields of the given widths (at most 64 each)."""
        total = int(widths.sum())
        if self.pos + total > len(self.bits):
            raise CheckpointError(f"{self.source} is truncated; export the run again")
        starts = self.pos + np.cumsum(widths) - widths
        offset = np.arange(total) - np.repeat(starts - self.pos, widths)
        bits = self.bits[self.pos : self.pos + total].astype(np.uint64) << offset.astype(np.uint64)
        self.pos += total
        if not len(widths):
            return np.zeros(0, dtype=np.uint64)
        return np.add.reduceat(bits, starts - starts[0])  # fields are contiguous, widths >= 1


class ByteCursor:
    """A cursor over the file that turns every short read into a one-line CheckpointError."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data, self.pos, self.source = data, 0, source

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise CheckpointError(f"{self.source} is truncated; export the run again")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def floats(self, n: int) -> np.ndarray:
        return np.frombuffer(self.take(4 * n), dtype="<f4").astype(np.float32)
