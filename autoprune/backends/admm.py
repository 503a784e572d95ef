"""ADMM pruning (Zhang et al. 2018): train W near a copy Z projected onto the allocation.

The loss gains rho/2 ||W - Z + U||^2; every few hundred steps Z = proj(W + U) and U += W - Z,
and rho grows each epoch so W is drawn ever closer to the constraint set. Then W is hard-pruned
to proj's support and the loop retrains with that mask fixed. With bits in the config, Z is
also snapped onto each kernel's quantisation levels (`LevelProjection` chained after
`KeepProjection`, as ADMM-NN does) and the fixed-mask phase trains quantisation-aware.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from autoprune.backends.base import BACKENDS, BackendConfig
from autoprune.backends.common import top_keep
from autoprune.backends.loop import MaskTrainer
from autoprune.graph.masking import ParamKey, UnitMap, keep_vectors
from autoprune.quant.bits import BitAllocation
from autoprune.quant.fake import dequantize, quantize

Values = dict[ParamKey, Tensor]


class Projection(ABC):
    """A Euclidean projection of parameter values onto a constraint set (ADMM's Z step)."""

    @abstractmethod
    def __call__(self, values: Values) -> Values: ...


class KeepProjection(Projection):
    """Onto `keep[u]` nonzero elements per unit: the elements of largest L2 norm survive."""

    def __init__(self, umap: UnitMap, keep: Sequence[int]) -> None:
        self.umap, self.keep = umap, list(keep)

    def kept(self, values: Values) -> list[Tensor]:
        scores = self.umap.reduce({k: v.square() for k, v in values.items()})
        return [top_keep(s, k) for s, k in zip(scores, self.keep, strict=True)]

    def __call__(self, values: Values) -> Values:
        dtype = next(iter(values.values())).dtype
        masks = self.umap.masks(keep_vectors(self.umap.sizes, self.kept(values), dtype))
        return {k: v * masks[k] for k, v in values.items()}


class Chain(Projection):
    """Projections applied in turn (e.g. prune, then snap the survivors to quantisation levels)."""

    def __init__(self, *steps: Projection) -> None:
        self.steps = steps

    def __call__(self, values: Values) -> Values:
        for step in self.steps:
            values = step(values)
        return values


class LevelProjection(Projection):
    """Onto each kernel's quantisation levels (scale max|w| / qmax), as in ADMM-NN."""

    def __init__(self, bits: BitAllocation) -> None:
        self.bits = {k: torch.tensor(v) for k, v in bits.weight.items()}

    def __call__(self, values: Values) -> Values:
        out = dict(values)
        for (module, pname), v in values.items():
            b = self.bits.get(module)
            if pname == "weight" and b is not None:
                codes, s = quantize(v, b)
                out[(module, pname)] = dequantize(codes, s, b, v)
        return out


@dataclass
class AdmmOptions:
    rho: float = 1e-3  # initial penalty: small enough not to disturb the dense optimum
    rho_growth: float = 1.6  # rho is multiplied by this every epoch (the rho schedule)
    rho_max: float = 1.0  # at this strength W sits on the constraint set in practice
    update_every: int = 0  # steps between Z and U updates; 0: once per epoch


@BACKENDS.register("admm")
class Admm(MaskTrainer):
    Options = AdmmOptions

    def setup(
        self, model: nn.Module, umap: UnitMap, keep: list[int], cfg: BackendConfig, opts: Any
    ) -> None:
        self.opts: AdmmOptions = opts
        self.params = umap.parameters(model)
        self.projection = KeepProjection(umap, keep)
        # With bits Z also sits on the quantisation levels (prune, then snap the survivors).
        self.z_projection: Projection = self.projection
        if cfg.bits is not None:
            self.z_projection = Chain(self.projection, LevelProjection(cfg.bits))
        self.every = opts.update_every or self.steps_per_epoch
        self.rho = opts.rho
        w = self._weights()
        self.z = self.z_projection(w)
        self.u = {k: torch.zeros_like(v) for k, v in w.items()}

    def _weights(self) -> Values:
        return {k: p.detach().clone() for k, p in self.params.items()}

    def penalty(self) -> Tensor:
        total = sum((p - self.z[k] + self.u[k]).square().sum() for k, p in self.params.items())
        return 0.5 * self.rho * total

    def after_step(self, step: int) -> None:
        if (step + 1) % self.every == 0:
            w = self._weights()
            self.z = self.z_projection({k: w[k] + self.u[k] for k in w})
            self.u = {k: self.u[k] + w[k] - self.z[k] for k in w}
        epoch = (step + 1) // self.steps_per_epoch
        self.rho = min(self.opts.rho_max, self.opts.rho * self.opts.rho_growth**epoch)

    def final_kept(self, model: nn.Module) -> list[Tensor]:
        return self.projection.kept(self._weights())

    def epoch_metrics(self, model: nn.Module) -> dict[str, Any]:
        w = self._weights()
        gap = sum(float((w[k] - self.z[k]).square().sum()) for k in w)
        norm = sum(float(v.square().sum()) for v in w.values())
        return {"rho": self.rho, "relative_gap": (gap / max(norm, 1e-12)) ** 0.5}

    def state(self) -> dict[str, Any]:
        keys = list(self.params)
        return {"z": [self.z[k] for k in keys], "u": [self.u[k] for k in keys], "rho": self.rho}

    def load_state(self, state: dict[str, Any]) -> None:
        keys = list(self.params)
        self.z = dict(zip(keys, state["z"], strict=True))
        self.u = dict(zip(keys, state["u"], strict=True))
        self.rho = float(state["rho"])
