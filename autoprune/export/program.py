"""Export: the final model as a self-normalising torch.export program, a checkpoint and metrics.

model.pt2 takes images scaled to [0, 1] (N, C, H, W) with a dynamic batch dimension and does its
own normalisation, so it runs with plain torch and no autoprune installed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.cost.measure import (
    count_macs,
    count_nonzero_params,
    count_params,
    count_weights,
    measure_latency,
)
from autoprune.train.loop import evaluate


class Normalized(nn.Module):
    """[0, 1] images in, logits out: (x - mean) / std, then the network."""

    mean: torch.Tensor  # buffers, (1, C, 1, 1)
    std: torch.Tensor

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def export_program(
    model: nn.Module,
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    path: Path,
) -> None:
    """Write `model` wrapped in Normalized as a torch.export program with a dynamic batch."""
    wrapped = Normalized(model, mean, std).eval()
    batch = torch.export.Dim("batch", min=1, max=65536)
    example = (torch.rand(2, *input_size),)
    with torch.no_grad():
        program = torch.export.export(wrapped, example, dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(path))


def load_program(path: str | Path) -> Any:
    """The exported program's callable module (plain torch, no autoprune needed)."""
    return torch.export.load(str(path)).module()


def model_metrics(
    model: nn.Module,
    input_size: Sequence[int],
    test_loader: Iterable[tuple[torch.Tensor, torch.Tensor]] | None,
    *,
    latency: bool = True,
) -> dict[str, float | int | None]:
    """Accuracy on the test split and the measured costs of a built model."""
    model.eval()
    acc = loss = None
    if test_loader is not None:
        result = evaluate(model, test_loader)
        acc, loss = result.accuracy, result.loss
    size = tuple(input_size)
    nonzero = count_nonzero_params(model)
    return {
        "accuracy": acc,
        "loss": loss,
        "macs": count_macs(model, size),
        "flops": 2 * count_macs(model, size),
        "params": count_params(model),
        "nonzero_params": nonzero,
        "weights": count_weights(model),
        "nonzero_weights": count_weights(model, nonzero=True),
        "size_bytes": 4 * nonzero,
        "latency_s": measure_latency(model, torch.rand(1, *size)) if latency else None,
    }


def compression(dense: dict[str, Any], final: dict[str, Any]) -> dict[str, float]:
    """Ratios under docs/conventions.md (weights of conv + linear, biases excluded)."""
    out = {
        "compression_ratio": dense["weights"] / max(final["nonzero_weights"], 1),
        "macs_ratio": dense["macs"] / max(final["macs"], 1),
        "params_ratio": dense["params"] / max(final["nonzero_params"], 1),
    }
    if dense.get("latency_s") and final.get("latency_s"):
        out["speedup"] = dense["latency_s"] / final["latency_s"]
    return out
