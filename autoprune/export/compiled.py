"""AOTInductor package of a run's model.pt2: the same program compiled ahead of time for this CPU.

model.pt2 runs operator by operator through torch (one dispatch per convolution, activation and
add); AOTInductor compiles the exported program into one shared library that fuses the
elementwise work into the convolutions around it and calls them without Python. Measured on
mobilenet_v2 @224 (1 thread, batch 1, thread CPU time): dense 14.4 -> 11.7 ms, slimmed to 50%
MACs 10.2 -> 7.7 ms, so the slim model keeps more of the speed-up its MACs promise (0.71 -> 0.77).

The package keeps model.pt2's contract (images in [0, 1], any batch size, normalised inside) and
is checked against it before it is kept; it runs on machines like this one (same CPU family and
torch version), and needs a C++ compiler only to build, not to run:

    runner = torch._inductor.aoti_load_package("RUN/model.aoti.pt2")
    logits = runner(torch.rand(8, 1, 28, 28))
"""

from __future__ import annotations

import contextlib
import io
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from autoprune.cost.timing import no_grad_call, thread_seconds, torch_threads
from autoprune.errors import AutoPruneError, UsageError
from autoprune.export.program import quiet_loggers, run_program

AOTI_FILE = "model.aoti.pt2"
RTOL = 1e-4  # fused kernels reorder float sums; relative to the output scale, as the ONNX check
# what compiling logs: progress, C++ warnings, cpp_extension's note that there is no CUDA here
INDUCTOR_LOGGERS = ("torch._inductor", "torch.utils.cpp_extension")
TIMING_ROUNDS = 15  # interleaved calls of each form (odd: the median is one real call)


class CompiledMismatchError(AutoPruneError):
    """The compiled package computes something other than model.pt2."""


class CompileError(AutoPruneError):
    """AOTInductor could not compile the program (an operator it cannot lower, a failed build)."""


def require_compiler() -> str:
    """The C++ compiler AOTInductor will find, or a UsageError that says to install one."""
    for name in ("c++", "g++", "clang++"):
        if shutil.which(name):
            return name
    raise UsageError(
        "compiling model.pt2 with AOTInductor needs a C++ compiler: install one "
        "(Debian: apt-get install g++) and run this again"
    )


def compile_program(
    run: str | Path, out: str | Path | None = None, *, rtol: float = RTOL, seed: int = 0
) -> dict[str, Any]:
    """Write RUN/model.aoti.pt2 (or `out`) from RUN/model.pt2, checked and timed against it."""
    source, program, size = run_program(run)
    target = Path(out) if out is not None else Path(run) / AOTI_FILE
    if target.suffix != ".pt2":
        raise UsageError(f"an AOTInductor package is a .pt2 file; name it so, not {str(target)!r}")
    tmp = target.with_name(f".tmp-{target.name}")  # the packager wants the .pt2 ending too
    t0 = time.perf_counter()
    try:
        runner = aoti_package(program, tmp)
        compile_s = time.perf_counter() - t0
        module = program.module()
        errors = check_compiled(module, runner, size, seed=seed)
        worst = max(errors.values())
        if worst > rtol:
            raise CompiledMismatchError(
                f"the compiled model differs from model.pt2 by {worst:.3g} of the output scale "
                f"(more than {rtol:g}); keep using model.pt2"
            )
        timing = time_forms(module, runner, size)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "aoti": str(target),
        "source": str(source),
        "input_size": list(size),
        "max_rel_diff": errors,
        "rtol": rtol,
        "bytes": target.stat().st_size,
        "compile_s": compile_s,
        **timing,
    }


def aoti_package(program: torch.export.ExportedProgram, path: Path) -> Any:
    """Compile `program` into the AOTInductor package at `path` (a .pt2) and load it back.

    A program the compiler cannot handle is one line that says so, not the compiler's traceback.
    """
    require_compiler()
    try:
        # Inductor logs its progress and C++ warnings; the CLI's own output should stay clean.
        with contextlib.redirect_stdout(io.StringIO()), quiet_loggers(*INDUCTOR_LOGGERS):
            torch._inductor.aoti_compile_and_package(program, package_path=str(path))
        return torch._inductor.aoti_load_package(str(path))
    except Exception as e:  # inductor raises many kinds (lowering, C++ build, loading)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CompileError(
            f"AOTInductor could not compile the program ({type(e).__name__}: {first[:200]}); "
            "keep using model.pt2"
        ) from e


def check_compiled(
    module: Any, runner: Any, size: tuple[int, ...], *, seed: int = 0
) -> dict[str, float]:
    """Largest output difference, compiled against the program's module, relative to the output
    scale, per batch size (neither is the export's example batch of 2: the batch must stay
    dynamic)."""
    gen = torch.Generator().manual_seed(seed)
    errors = {}
    for batch in (1, 5):
        x = torch.rand(batch, *size, generator=gen)
        with torch.no_grad():
            ref, got = module(x), runner(x)
        if got.shape != ref.shape:
            raise CompiledMismatchError(
                f"the compiled model returns shape {tuple(got.shape)} for batch {batch}, "
                f"model.pt2 {tuple(ref.shape)}"
            )
        scale = float(ref.abs().max()) or 1.0
        errors[f"batch_{batch}"] = float((got - ref).abs().max()) / scale
    return errors


def time_forms(module: Any, runner: Any, size: tuple[int, ...]) -> dict[str, Any]:
    """Seconds per image of model.pt2 and the package, interleaved, one thread, batch 1 (the
    setting of latency tables and budgets: a call's thread CPU time is what it costs)."""
    x = torch.rand(1, *size, generator=torch.Generator().manual_seed(1))
    with torch_threads(1):
        fns = [no_grad_call(module, x), no_grad_call(runner, x)]
        program_s, compiled_s = thread_seconds(fns, TIMING_ROUNDS)
    return {
        "latency_s": {"model.pt2": program_s, "model.aoti.pt2": compiled_s},
        "speedup": program_s / compiled_s,
        "timed": "1 thread, batch 1, median thread CPU time of interleaved calls",
    }
