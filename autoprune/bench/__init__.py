"""Named benchmarks (`autoprune bench NAME`): each writes results/NAME/ and the commands behind
it."""

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
# What `autoprune bench --help` lists without importing the benchmarks (they import torch);
# a test checks it against the registry.
NAMES = (
    "lenet5-mnist",
    "lenet5-mnist-quant",
    "search-lenet5-mnist",
    "search-lenet5-mnist-landscape",
)


def load_benchmarks() -> Registry[Benchmark]:
    """The registry with every built-in benchmark registered."""
    from autoprune import (
        bench_landscape,  # noqa: F401  (registers search-lenet5-mnist-landscape)
        bench_search,  # noqa: F401  (registers search-lenet5-mnist)
    )
    from autoprune.bench import (
        lenet5_mnist,  # noqa: F401  (registers the built-in benchmarks)
        lenet5_mnist_quant,  # noqa: F401
    )

    return BENCHMARKS


def run_bench(name: str, cfg: BenchConfig) -> dict[str, Any]:
    """Run the registered benchmark `name`; returns its summary (also written to its folder)."""
    return load_benchmarks().get(name)(cfg)


__all__ = ["BENCHMARKS", "NAMES", "BenchConfig", "load_benchmarks", "run_bench"]
