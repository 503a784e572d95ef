"""Named benchmarks (`autoprune bench NAME`): each writes results/NAME/ and the commands behind
it."""

from __future__ import annotations

from typing import Any

from autoprune.bench.base import BENCHMARKS, BenchConfig, Benchmark
from autoprune.registry import Registry

# What `autoprune bench --help` lists without importing the benchmarks (they import torch);
# a test checks it against the registry.
NAMES = (
    "alloc-lenet5-weight",
    "alloc-resnet20-fmnist",
    "lenet5-mnist",
    "lenet5-mnist-quant",
    "search-lenet5-mnist",
    "search-lenet5-mnist-landscape",
    "speed",
    "torchvision-coverage",
)


def load_benchmarks() -> Registry[Benchmark]:
    """The registry with every built-in benchmark registered."""
    from autoprune.bench import (  # noqa: F401  (each registers its benchmark)
        alloc_lenet5,
        alloc_resnet20,
        coverage,
        landscape,
        lenet5_mnist,
        lenet5_mnist_quant,
        search,
        speed,
    )

    return BENCHMARKS


def run_bench(name: str, cfg: BenchConfig) -> dict[str, Any]:
    """Run the registered benchmark `name`; returns its summary (also written to its folder)."""
    return load_benchmarks().get(name)(cfg)


__all__ = ["BENCHMARKS", "NAMES", "BenchConfig", "load_benchmarks", "run_bench"]
