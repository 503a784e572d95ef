"""The cost model in autograd: MACs, parameters, size and BOPs of real-valued keeps, differentiable.

Channel costs are bilinear in the keeps through the affine width maps of `CostModel`, weight
costs are linear; both are rebuilt here with torch tensors so a search can follow their
gradients. At integer keeps every value equals `CostModel.costs`. Metrics outside the base set
(a measured latency table) have no closed form and are linearised around an anchor allocation
with the cost model's exact increments.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from autoprune.cost.model import BASE_METRICS, FP32, CostModel


class TorchCostModel:
    """Differentiable costs of continuous keeps (`ratios * sizes`) over one `CostModel`'s units."""

    def __init__(self, cost_model: CostModel, dtype: torch.dtype = torch.float64) -> None:
        self.cost_model = cost_model
        self.dtype = dtype
        self.weight_bits = cost_model.weight_bits
        self.act_bits = cost_model.act_bits
        self.channel = cost_model.graph.granularity == "channel"
        t = self._tensor
        if self.channel:
            terms = cost_model.channel_terms()
            self.a_out, self.b_out = t(terms.a_out), t(terms.b_out)
            self.a_in, self.b_in = t(terms.a_in), t(terms.b_in)
            self.a_norm, self.b_norm, self.norm_per = (
                t(terms.a_norm),
                t(terms.b_norm),
                t(terms.norm_per),
            )
            self.kernel, self.positions, self.bias = (
                t(terms.kernel),
                t(terms.positions),
                t(terms.bias),
            )
            self.other = terms.other_params
            self.a_heads, self.b_heads = t(terms.a_heads), t(terms.b_heads)
            self.head_macs, self.unpriced = t(terms.macs_per_head), terms.unpriced_macs
        else:
            # Weight units: every base metric is affine in the keeps, so its value at zero plus
            # its (constant) increments is the whole function.
            zero = np.zeros(len(cost_model.sizes), dtype=np.int64)
            self.offset = {m: cost_model.metric(m, zero) for m in BASE_METRICS}
            self.slope = {m: t(cost_model.increments(m, zero)) for m in BASE_METRICS}

    def _tensor(self, a: np.ndarray) -> Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=self.dtype)

    def costs(self, keep: Tensor) -> dict[str, Tensor]:
        """macs, params, weights, size (bytes), bops of `keep` (one real value per unit)."""
        keep = keep.to(self.dtype)
        if not self.channel:
            return {m: self.offset[m] + self.slope[m] @ keep for m in BASE_METRICS}
        out = self.a_out @ keep + self.b_out
        inp = self.a_in @ keep + self.b_in
        norm = self.a_norm @ keep + self.b_norm
        layer_weights = out * inp * self.kernel
        weights = layer_weights.sum()
        heads = self.a_heads @ keep + self.b_heads
        macs = (layer_weights * self.positions).sum() + heads @ self.head_macs + self.unpriced
        rest = (self.bias * out).sum() + (self.norm_per * norm).sum() + self.other
        return {
            "macs": macs,
            "params": weights + rest,
            "weights": weights,
            "size": (weights * self.weight_bits + rest * FP32) / 8,
            "bops": macs * self.weight_bits * self.act_bits,
        }

    def metric(self, name: str, keep: Tensor, anchor: np.ndarray | None = None) -> Tensor:
        """One metric; a metric without a closed form is linearised around the integer `anchor`.

        Size and BOPs of a cost model with kernel-wise bits (`CostModel.with_bits`) count the
        packed artifact's bytes, which have no closed form here: they are linearised too.
        """
        quantised = getattr(self.cost_model, "bits", None) is not None and name in ("size", "bops")
        if name in BASE_METRICS and not quantised:
            return self.costs(keep)[name]
        if anchor is None:
            raise KeyError(f"metric {name!r} has no differentiable form; pass an anchor allocation")
        base = self.cost_model.metric(name, anchor)
        slope = self._tensor(self.cost_model.increments(name, anchor))
        return base + slope @ (keep.to(self.dtype) - self._tensor(anchor))
