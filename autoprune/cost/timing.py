"""Medians of interleaved runs (torch.utils.benchmark): whole models, single layers.

Timing several callables round-robin, rather than one after the other, spreads the load that other
processes put on a shared machine evenly over all of them, so ratios between them stay honest even
when absolute times drift.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.benchmark import Timer
from torch.utils.benchmark.utils.timer import timer as synchronising_timer  # Timer's default

from autoprune.graph.units import CONV_TYPES, UnitGraph, example_input


@dataclass(frozen=True)
class TimingConfig:
    """How each callable is timed: blocks of calls, medians over interleaved rounds."""

    rounds: int = 9  # interleaved blocks per callable; odd, so the median is one real block
    warmup: int = 3  # calls before the first block (allocator, oneDNN primitive caches)
    min_block_s: float = 1e-3  # a block repeats a fast call until it lasts this long (timer noise)
    threads: int | None = None  # None: torch's current setting
    # After this long, stop at the end of a round (three rounds at least): a heavily loaded
    # machine should make a run slower to report, not minutes longer.
    max_seconds: float = 30.0


def interleaved_medians(
    fns: Sequence[Callable[[], object]],
    cfg: TimingConfig | None = None,
    device: torch.device | None = None,
) -> list[float]:
    """Median seconds per call of each of `fns`, timed in interleaved rounds (one thread: CPU
    seconds of this thread, else wall seconds).

    Each round times one block of every callable, alternating direction between rounds so that
    neither end of the list is favoured. Timer.timeit warms each block up with a couple of calls,
    so switching between callables does not charge cold caches to the next one.
    """
    cfg = cfg or TimingConfig()
    threads = cfg.threads or torch.get_num_threads()
    # One thread on the CPU: the calls run on this thread, so its CPU time is what they cost,
    # whatever other jobs take from the machine meanwhile (wall time counts their turns on this
    # core too). Elsewhere Timer's own clock, which waits for the accelerator's queued work.
    on_cpu = device is None or torch.device(device).type == "cpu"
    clock = time.thread_time if threads == 1 and on_cpu else synchronising_timer
    timers = [Timer("fn()", globals={"fn": fn}, num_threads=threads, timer=clock) for fn in fns]
    numbers = []
    for t in timers:
        t.timeit(cfg.warmup)
        one = t.timeit(1).median
        numbers.append(max(1, math.ceil(cfg.min_block_s / max(one, 1e-7))))
    samples: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    start = time.perf_counter()
    for r in range(cfg.rounds):
        if r >= 3 and time.perf_counter() - start > cfg.max_seconds:
            break
        for i in order if r % 2 == 0 else reversed(order):
            samples[i].append(timers[i].timeit(numbers[i]).median)
    return [statistics.median(s) for s in samples]


def thread_seconds(fns: Sequence[Callable[[], object]], rounds: int) -> list[float]:
    """Median seconds per call of each of `fns`, in interleaved rounds.

    With one torch thread the work runs on this thread, so its CPU time (time.thread_time) is
    what the call costs, whatever other jobs take from the machine meanwhile; with more threads
    only wall time sees the helpers' work.
    """
    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    for fn in fns:  # warm up: allocator, oneDNN primitive caches
        fn(), fn()
    samples: list[list[float]] = [[] for _ in fns]
    for r in range(rounds):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            t = clock()
            fns[i]()
            samples[i].append(clock() - t)
    return [statistics.median(s) for s in samples]


def no_grad_call(fn: Callable[[torch.Tensor], object], x: torch.Tensor) -> Callable[[], object]:
    """fn(x) without autograd, as a callable to time (fn: a module in the mode it is in, an
    exported program's module, which refuses .eval(), or a compiled package's runner)."""

    def run() -> object:
        with torch.no_grad():
            return fn(x)

    return run


def forward_fn(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """model(x) in eval mode without autograd: what one inference costs."""
    model.eval()
    return no_grad_call(model, x)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch computes on `n` threads inside the block, on as many as before after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def compare_latency(
    models: dict[str, nn.Module],
    input_size: Sequence[int],
    *,
    batch: int = 1,
    cfg: TimingConfig | None = None,
) -> dict[str, float]:
    """Median seconds of each named model on one (batch, *input_size) input, interleaved, on
    the runtime's --device (the models go there for the timing and come back)."""
    from autoprune.train.device import on_device

    names = list(models)
    modes = {n: m.training for n, m in models.items()}
    try:
        with on_device(*models.values()) as device:
            x = torch.rand(batch, *input_size, device=device)
            medians = interleaved_medians([forward_fn(models[n], x) for n in names], cfg, device)
    finally:
        for n, m in models.items():
            m.train(modes[n])
    return dict(zip(names, medians, strict=True))


def measure_run_latency(
    dense: nn.Module,
    final: nn.Module,
    input_size: Sequence[int],
    *,
    batch: int = 1,
    cfg: TimingConfig | None = None,
) -> dict[str, Any]:
    """Dense and final model timed in the same process, interleaved; medians, ratio, conditions."""
    t = compare_latency({"dense": dense, "final": final}, input_size, batch=batch, cfg=cfg)
    return {
        "dense_s": t["dense"],
        "final_s": t["final"],
        "speedup": t["dense"] / t["final"],
        "batch": batch,
        "machine": machine_info(cfg.threads if cfg else None),
    }


def record_layer_inputs(
    model: nn.Module, graph: UnitGraph
) -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """Each layer's module and the per-sample shape of its first input, from one forward pass."""
    found: dict[str, tuple[nn.Module, tuple[int, ...]]] = {}
    wanted = {lay.name for lay in graph.layers}
    hooks = []
    for name, mod in model.named_modules():
        if name in wanted:

            def hook(
                m: nn.Module, args: tuple[torch.Tensor, ...], _out: Any, name: str = name
            ) -> None:
                found.setdefault(name, (m, tuple(args[0].shape[1:])))

            hooks.append(mod.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input(graph.input_size))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return found


def probe_layer(
    mod: nn.Module, out_w: int, in_w: int, depthwise: bool, bias: bool | None = None
) -> nn.Module:
    """A fresh layer like `mod` with `out_w` outputs and `in_w` inputs, without autograd
    (`bias`: whether it has one; None: as `mod`)."""
    bias = mod.bias is not None if bias is None else bias
    if isinstance(mod, CONV_TYPES):
        conv: Any = type(mod)  # Conv1d/2d/3d take the same arguments
        layer: nn.Module = conv(
            in_w,
            out_w,
            mod.kernel_size,
            stride=mod.stride,
            padding=mod.padding,
            dilation=mod.dilation,
            groups=in_w if depthwise else mod.groups,
            bias=bias,
            padding_mode=mod.padding_mode,
        )
    else:
        layer = nn.Linear(in_w, out_w, bias=bias)
    return layer.eval().requires_grad_(False)


def time_layer(
    mod: nn.Module,
    shape: tuple[int, ...],
    out_widths: list[int],
    in_widths: list[int],
    depthwise: bool,
    batch: int,
    timing: TimingConfig,
    device: torch.device | None = None,
    *,
    bias: bool | None = None,
    channels_last: bool = False,
) -> list[list[float]]:
    """Median seconds at each grid point of a layer like `mod` (depthwise: in follows out), on
    `device` (default the CPU); `bias` as probe_layer's, `channels_last`: a 2-d conv's weights
    and input in that layout (as an exported channels-last program runs it)."""
    points = (
        list(zip(out_widths, in_widths, strict=True))
        if depthwise
        else [(o, i) for o in out_widths for i in in_widths]
    )
    fns = []
    for o, i in points:
        layer = probe_layer(mod, o, i, depthwise, bias).to(device)
        # A conv's input is (N, C, *spatial); a linear's is (N, *leading, features).
        x = (
            torch.randn(batch, i, *shape[1:], device=device)
            if isinstance(mod, CONV_TYPES)
            else torch.randn(batch, *shape[:-1], i, device=device)
        )
        if channels_last and isinstance(mod, nn.Conv2d):
            layer = layer.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        fns.append(lambda layer=layer, x=x: layer(x))
    medians = interleaved_medians(fns, timing, device)
    if depthwise:
        return [[m] for m in medians]
    n = len(in_widths)
    return [medians[r * n : (r + 1) * n] for r in range(len(out_widths))]


def system_busy_s() -> float | None:
    """CPU seconds all processes spent busy since boot (not idle or iowait); None off Linux."""
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class OtherJobs:
    """How many CPU cores other processes kept busy while the `with` block ran.

    The machine's busy time minus this process's own CPU time, so the timed code's threads do not
    count (the load average counts them, and lags by a minute). `cores` is None off Linux.
    """

    cores: float | None = None

    def __enter__(self) -> OtherJobs:
        self._start = (time.monotonic(), system_busy_s(), time.process_time())
        return self

    def __exit__(self, *exc: object) -> None:
        t0, busy0, own0 = self._start
        busy = system_busy_s()
        if busy is not None and busy0 is not None:
            own, wall = time.process_time() - own0, time.monotonic() - t0
            self.cores = round(max(0.0, (busy - busy0 - own) / max(wall, 1e-9)), 2)


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """What a timing depends on: CPU, thread count, torch build and the load when it was taken."""
    return {
        "cpu": _cpu_model(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg": [round(v, 2) for v in os.getloadavg()],
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
