"""ONNX export of a run directory's model.pt2, checked against it with onnxruntime before kept.

The ONNX graph is translated from the exported program itself (not re-traced from Python), so it
takes the same input: images scaled to [0, 1], (N, C, H, W), any batch size, normalised inside.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoprune.errors import AutoPruneError
from autoprune.export.program import run_program

ONNX_FILE = "model.onnx"
ATOL = (
    1e-4  # float32 kernels of two runtimes differ by ~1e-6 relative; a real mismatch is far larger
)


class OnnxMismatchError(AutoPruneError):
    """The ONNX model computes something other than model.pt2."""


def export_onnx(
    run: str | Path, out: str | Path | None = None, *, atol: float = ATOL, seed: int = 0
) -> dict[str, Any]:
    """Write RUN/model.onnx (or `out`) from RUN/model.pt2; refuse outputs off by over `atol`."""
    source, program, size = run_program(run)
    target = Path(out) if out is not None else Path(run) / ONNX_FILE
    tmp = target.with_name(f".{target.name}.tmp")
    # The exporter reports its progress on stdout; the CLI's own output should stay parseable.
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(
            program, (torch.rand(2, *size),), str(tmp), dynamo=True, external_data=False
        )
    try:
        errors = check_onnx(program, tmp, size, seed=seed)
        worst = max(errors.values())
        if worst > atol:
            raise OnnxMismatchError(
                f"the ONNX model differs from model.pt2 by {worst:.3g} (more than {atol:g}); "
                "the model uses an operator the ONNX exporter translates differently"
            )
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "onnx": str(target),
        "source": str(source),
        "input_size": list(size),
        "max_abs_diff": errors,
        "atol": atol,
        "bytes": target.stat().st_size,
    }


def check_onnx(
    program: torch.export.ExportedProgram,
    onnx_path: str | Path,
    size: tuple[int, ...],
    *,
    seed: int = 0,
) -> dict[str, float]:
    """Largest absolute output difference, ONNX Runtime against the program, per batch size."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    module = program.module()
    gen = torch.Generator().manual_seed(seed)
    errors = {}
    for batch in (1, 5):  # neither is the export's example batch of 2: the batch must be dynamic
        x = torch.rand(batch, *size, generator=gen)
        with torch.no_grad():
            ref = module(x).numpy()
        got = session.run(None, {name: x.numpy()})[0]
        if got.shape != ref.shape:
            raise OnnxMismatchError(
                f"the ONNX model returns shape {got.shape} for batch {batch}, model.pt2 {ref.shape}"
            )
        errors[f"batch_{batch}"] = float(np.abs(got - ref).max())
    return errors
