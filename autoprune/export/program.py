"""Export: the final model as a self-normalising torch.export program, a checkpoint and metrics.

model.pt2 takes images scaled to [0, 1] (N, C, H, W) with a dynamic batch dimension and does its
own normalisation, so it runs with plain torch and no autoprune installed.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterable, Iterator, Sequence
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
from autoprune.errors import UsageError
from autoprune.export.fast import FastExportConfig, fastest_form
from autoprune.rundir import torch_writes
from autoprune.train.loop import evaluate


class Normalized(nn.Module):
    """[0, 1] images in, logits out: (x - mean) / std, then the network."""

    mean: torch.Tensor  # buffers, (1, C, 1, 1)
    std: torch.Tensor

    def __init__(
        self,
        net: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.net = net
        # a net whose weights are channels-last gets its input in that layout too (one copy)
        self.channels_last = channels_last
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)


def deployed(
    model: nn.Module, input_size: Sequence[int], channels_last: bool | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of `model` in the form a run's model.pt2 runs it, taking the same input.

    BatchNorm folded, the `channels_last` layout (None: whichever `fastest_form` times faster
    here) and, for images, the input normalisation in front (identity statistics: the same ops
    as the program's, which is what a timing needs). Returns it beside fastest_form's info.
    """
    form, info = fastest_form(
        copy.deepcopy(model), input_size, FastExportConfig(channels_last=channels_last)
    )
    if len(input_size) == 3:
        channels = int(input_size[0])
        form = Normalized(
            form, [0.0] * channels, [1.0] * channels, channels_last=info["channels_last"]
        )
    return form.eval(), info


FOLD_TOLERANCE = 1e-5  # folded outputs must equal the model's within this, relative to their scale


def fold_batchnorm(model: nn.Module, input_size: Sequence[int]) -> tuple[nn.Module, int]:
    """`model` (eval) with every BatchNorm that follows a conv folded into the conv's weights.

    A folded pair is one convolution instead of a convolution and a per-channel affine pass, so
    the exported program does less work for the same outputs. Models that torch.fx cannot trace,
    or whose folded outputs differ by more than FOLD_TOLERANCE, are exported as they are.
    Returns the model to export and the number of BatchNorms folded.
    """
    from torch.fx.experimental.optimization import fuse

    model = model.eval()
    before = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if before == 0:
        return model, 0
    try:
        folded = fuse(model, inplace=False)
    except Exception:  # not symbolically traceable (data-dependent control flow, ...): keep it
        return model, 0
    x = torch.rand(2, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = model(x), folded(x)
    if not isinstance(want, torch.Tensor) or not isinstance(got, torch.Tensor):
        return model, 0
    scale = float(want.abs().max()) or 1.0
    if float((want - got).abs().max()) > FOLD_TOLERANCE * scale:
        return model, 0
    after = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    return folded, before - after


def export_program(
    model: nn.Module,
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    path: Path,
    *,
    fast: FastExportConfig | None = None,
) -> dict[str, Any]:
    """Write `model` wrapped in Normalized as a torch.export program with a dynamic batch.

    With `fast` the program runs the fastest equivalent form (`autoprune.export.fast`):
    BatchNorm folded into the convolutions before it, channels-last where that is faster here;
    outputs agree within FOLD_TOLERANCE. Folding removes the BatchNorm parameters, so what the
    program holds is returned beside what was done: {"bn_folded", "channels_last",
    "program_params"}.
    `model` itself is left as it is (a run's metrics count its parameters, as the allocation
    predicts them).
    """
    info: dict[str, Any] = {"bn_folded": 0, "channels_last": False}
    if fast is not None:
        model, info = fastest_form(model, input_size, fast)
    info["program_params"] = count_params(model)
    wrapped = Normalized(model, mean, std, channels_last=info["channels_last"]).eval()
    batch = torch.export.Dim("batch", min=1, max=65536)
    example = (torch.rand(2, *input_size),)
    with torch.no_grad():
        program = torch.export.export(wrapped, example, dynamic_shapes={"x": {0: batch}})
    with warnings.catch_warnings(), open(path, "wb") as handle, torch_writes(path):
        # torch.export's writer calls channels-last weights incomplete views; they load right
        warnings.filterwarnings("ignore", message="No complete tensor found")
        torch.export.save(program, handle)
    return info


def run_program(run: str | Path) -> tuple[Path, torch.export.ExportedProgram, tuple[int, ...]]:
    """A run directory's model.pt2: its path, the program and its per-sample input shape."""
    source = Path(run) / "model.pt2"
    if not source.is_file():
        raise UsageError(
            f"{str(run)!r} holds no model.pt2; pass a run directory written by `autoprune train`, "
            "`search` or `prune`"
        )
    try:
        # the loader logs a traceback of its first attempt before trying the legacy format
        with quiet_loggers("torch.export"):
            program = torch.export.load(str(source))
    except Exception as e:  # a truncated or foreign file fails in the zip reader or the decoder
        raise UsageError(
            f"{str(source)!r} cannot be read as a torch.export program ({type(e).__name__}); "
            "re-run the command that wrote it"
        ) from e
    return source, program, program_input_size(program)


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Only errors from the named loggers while the block runs."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def program_input_size(program: torch.export.ExportedProgram) -> tuple[int, ...]:
    """The per-sample input shape (C, H, W) of a program whose first input has a dynamic batch."""
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            return tuple(int(d) for d in node.meta["val"].shape[1:])
    raise UsageError("the exported program takes no input; re-export the run")


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
