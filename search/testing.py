"""Cheap stand-ins for the expensive evaluator, for tests and demos of the search machinery."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from autoprune.quant.bits import BitAllocation


class SyntheticEvaluator:
    """A smooth, deterministic score of an allocation: sum of w_u * log(keep_u / size_u).

    Higher keeps always score higher, and the weights make some units matter more than others,
    so a search has a real optimum under a budget; with `bits`, fewer bits score lower. Picklable,
    so worker processes can use it; `delay_s` makes each call slow enough to interrupt a search
    in the middle.
    """

    def __init__(self, sizes: Sequence[int], *, seed: int = 0, delay_s: float = 0.0) -> None:
        self.sizes = np.asarray(sizes, dtype=np.float64)
        self.weights = np.random.default_rng(seed).uniform(0.2, 1.0, len(self.sizes))
        self.delay_s = delay_s
        self.calls = 0

    def __call__(
        self, keep: Sequence[int] | np.ndarray, bits: BitAllocation | None = None
    ) -> float:
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        ratio = np.asarray(keep, dtype=np.float64) / self.sizes
        logit = (self.weights @ np.log(ratio)) / len(ratio) + 2.0
        # Rounding noise halves with every extra bit: 2-bit layers hurt, 8-bit ones barely.
        if bits is not None:
            widths = [
                np.asarray(b, dtype=np.float64)
                for b in (*bits.weight.values(), list(bits.act.values()))
            ]
            logit -= 4.0 * float(np.mean([np.mean(2.0 ** (1.0 - w)) for w in widths]))
        # squashed into (0, 1) so it reads like an accuracy
        return float(1.0 / (1.0 + np.exp(-logit)))
