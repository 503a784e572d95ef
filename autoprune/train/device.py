"""Where and how a run computes: the device (--device), mixed precision (--amp), loader workers.

A `Runtime` is process-wide: every loop, backend and evaluator of one command computes on the same
device, so the CLI activates it once (`use_runtime`) and library code asks `current()` instead of
threading a device through every config. Models stay on the CPU between stages (tracing, slimming,
export and cost counting are device-independent); the loops move them to the device while they
train or evaluate (`on_device`) and put them back, so checkpoints always load on a CPU machine.

Mixed precision: `bf16` autocasts matmuls and convolutions to bfloat16 on the CPU and on CUDA (no
loss scaling needed: bfloat16 has float32's exponent range). `fp16` is CUDA only, with a
`GradScaler`; on a CPU it is refused in one line (float16 CPU kernels are slow and without a scaler
small gradients vanish), pointing at bf16.
"""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from autoprune.errors import UsageError

DEVICES = "auto | cpu | cuda | cuda:N | mps"
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

__all__ = [
    "AMP_DTYPES",
    "DEVICES",
    "Active",
    "Runtime",
    "autocast",
    "current",
    "on_device",
    "resolve_device",
    "scaler_for",
    "unscale_outside",
    "use_runtime",
]


@dataclass(frozen=True)
class Runtime:
    """How to compute; what to compute lives in the run configs (TrainConfig, BackendConfig)."""

    device: str = "auto"  # auto: CUDA when available (cuda:LOCAL_RANK under torchrun), else cpu
    amp: str | None = None  # None: float32; "bf16" (CPU and CUDA) | "fp16" (CUDA, GradScaler)
    workers: int = 0  # DataLoader processes for folder datasets (0: decode in the main process)

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not _DEVICE.match(self.device):
            raise UsageError(f"--device {self.device!r} is not one of {DEVICES}")
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise UsageError(f"--amp {self.amp!r} is not one of {' | '.join(AMP_DTYPES)}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise UsageError(f"--workers must be an integer >= 0, got {self.workers!r}")


@dataclass(frozen=True)
class Active:
    """A Runtime resolved on this machine: the torch device and the autocast dtype."""

    runtime: Runtime
    device: torch.device
    amp_dtype: torch.dtype | None
    # optimiser -> its GradScaler (fp16 only), kept while the optimiser lives
    scalers: weakref.WeakKeyDictionary[Any, Any] = field(
        default_factory=weakref.WeakKeyDictionary, compare=False, repr=False
    )

    @property
    def pin_memory(self) -> bool:
        """Page-locked host batches: asynchronous copies to a CUDA device."""
        return self.device.type == "cuda"

    def describe(self) -> dict[str, Any]:
        """What metrics.json records about where the run computed."""
        from autoprune.train import distributed

        return {"device": str(self.device), "amp": self.runtime.amp,
                "workers": self.runtime.workers,
                "world_size": distributed.world_size()}  # fmt: skip


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(spec: str) -> torch.device:
    """The torch device `spec` names on this machine; a device it lacks is a one-line error."""
    Runtime(device=spec)  # the spelling check
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError("--device mps: this machine has no Apple GPU (MPS); use --device cpu")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise UsageError(
            f"--device {spec}: torch sees no CUDA device here (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda}); use --device cpu or auto"
        )
    count = torch.cuda.device_count()
    if spec == "cuda":
        index = _local_rank() if launched else torch.cuda.current_device()
    else:
        if launched:
            raise UsageError(
                f"--device {spec} would put every torchrun process on one GPU; pass --device "
                "cuda (each process takes cuda:LOCAL_RANK)"
            )
        index = int(spec.split(":")[1])
    if index >= count:
        raise UsageError(f"--device cuda:{index}: this machine has {count} CUDA device(s)")
    return torch.device("cuda", index)


def _activate(runtime: Runtime) -> Active:
    device = resolve_device(runtime.device)
    dtype = AMP_DTYPES[runtime.amp] if runtime.amp else None
    if runtime.amp == "fp16" and device.type != "cuda":
        raise UsageError(
            f"--amp fp16 needs a CUDA device (its GradScaler keeps small float16 gradients "
            f"alive), not {device}; use --amp bf16, which needs no scaler"
        )
    if runtime.amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError(f"--amp bf16: {torch.cuda.get_device_name(device)} lacks bfloat16; "
                         "use --amp fp16")  # fmt: skip
    return Active(runtime, device, dtype)


_ACTIVE: Active | None = None


def current() -> Active:
    """The runtime in force: the one `use_runtime` set, else the default (auto, float32)."""
    global _ACTIVE
    if _ACTIVE is None:
        _ACTIVE = _activate(Runtime())
    return _ACTIVE


@contextmanager
def use_runtime(runtime: Runtime) -> Iterator[Active]:
    """Compute on `runtime` inside the block (process-wide: optuna's worker threads see it too).

    Under torchrun (WORLD_SIZE > 1) it also joins the process group for the block.
    """
    global _ACTIVE
    from autoprune.train import distributed

    active = _activate(runtime)
    saved, _ACTIVE = _ACTIVE, active
    if active.device.type == "cuda":
        torch.cuda.set_device(active.device)
    joined = distributed.init_from_env(active.device)
    try:
        yield active
    finally:
        if joined:
            distributed.leave()
        _ACTIVE = saved


def autocast() -> AbstractContextManager[Any]:
    """torch.autocast at the runtime's --amp dtype (nothing without --amp)."""
    active = current()
    if active.amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=active.device.type, dtype=active.amp_dtype)


def scaler_for(optimizer: torch.optim.Optimizer) -> Any:
    """The GradScaler of `optimizer` under --amp fp16 (one per optimiser, kept across epochs),
    else None."""
    active = current()
    if active.runtime.amp != "fp16":
        return None
    if optimizer not in active.scalers:
        active.scalers[optimizer] = torch.amp.GradScaler("cuda")
    return active.scalers[optimizer]


def module_device(model: nn.Module) -> torch.device:
    """Where `model`'s parameters (or buffers) live; the CPU for a module without any."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


@contextmanager
def on_device(*models: nn.Module) -> Iterator[torch.device]:
    """Move `models` to the runtime's device for the block, and back to where each was after.

    Module.to moves parameters in place, so optimisers built inside the block keep working.
    """
    device = current().device
    away = [(m, home) for m in models if (home := module_device(m)) != device]
    for m, _ in away:  # a module already there is left alone (exported programs refuse .to)
        m.to(device)
    try:
        yield device
    finally:
        for m, home in away:
            m.to(home)


def unscale_outside(trainables: Sequence[Tensor], scaler: Any) -> None:
    """Unscale the gradients of tensors outside the optimiser (fp16); an overflowed step's are
    zeroed, so a hook steps them by nothing, as the scaler skips the optimiser's step."""
    grads = [t.grad for t in trainables if t.grad is not None]
    if not grads:
        return
    inv = 1.0 / scaler.get_scale()
    finite = all(bool(torch.isfinite(g).all()) for g in grads)
    for g in grads:
        if finite:
            g.mul_(inv)
        else:
            g.zero_()  # not a multiplication by 0: inf x 0 is nan
