"""What an allocation costs: the exact cost model, budgets, the one projection, latency tables.

`CostModel` prices MACs, parameters, storage and BOPs of any allocation without building it;
`parse_budget` reads `300M` / `50%` / `2MB` / `5ms`; `project` turns proposed keep ratios into
integer keeps that meet every budget at once; latency tables add a measured `latency` metric.
`measure` holds the independent counters (FlopCounterMode, parameter counts, timings) that
check the exported model.
"""

from autoprune._lazy import lazy_exports

_WHERE = {
    "CostModel": "autoprune.cost.model",
    "Costs": "autoprune.cost.model",
    "BASE_METRICS": "autoprune.cost.model",
    "TorchCostModel": "autoprune.cost.torch_model",
    "Budget": "autoprune.cost.budgets",
    "parse_budget": "autoprune.cost.budgets",
    "format_value": "autoprune.cost.budgets",
    "check_budgets": "autoprune.cost.budgets",
    "FLAG_METRIC": "autoprune.cost.budgets",
    "ProjectionConfig": "autoprune.cost.projection",
    "project": "autoprune.cost.projection",
    "min_keeps": "autoprune.cost.projection",
    "LatencyConfig": "autoprune.cost.latency",
    "LatencyTable": "autoprune.cost.latency_table",
    "table_for": "autoprune.cost.latency",
    "KernelCounts": "autoprune.cost.kernel_counts",
    "PricedKernels": "autoprune.cost.bit_match",
    "count_macs": "autoprune.cost.measure",
    "count_params": "autoprune.cost.measure",
    "count_nonzero_params": "autoprune.cost.measure",
    "measure_latency": "autoprune.cost.measure",
}
__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
