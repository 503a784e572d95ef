"""What every benchmark is: its config and the registry the built-in ones register in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autoprune.registry import Registry


@dataclass
class BenchConfig:
    """How to run a benchmark; runs already finished in `out` are reused unless `force`."""

    data_dir: str | None = None
    out: str | None = None  # default: results/NAME
    quick: bool = False  # the embedded digits set and an epoch or two: a smoke test of the pipeline
    only: list[str] | None = (
        None  # run just these named runs (the report still lists every finished one)
    )
    force: bool = False
    progress: bool = True


Benchmark = Callable[[BenchConfig], dict[str, Any]]
BENCHMARKS: Registry[Benchmark] = Registry("benchmark")
