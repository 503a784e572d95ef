"""autoprune: compress neural networks under hard budgets (MACs, params, size, BOPs, latency).

The Python API, each stage a plain function over dataclasses (imported on first use, so
`import autoprune` stays fast):

    from autoprune import build_model, trace_units, CostModel, parse_budget, project
    net = build_model("resnet18")
    graph = trace_units(net, (3, 224, 224), "channel", "resnet18")
    cost = CostModel(graph)
    limit = parse_budget("macs", "50%").limit(cost.metric("macs", cost.dense_keep))
    keep = project([0.5] * len(graph.units), cost, {"macs": limit})

`run_train`, `run_search` and `run_prune` are what the CLI runs (`TrainRun`, `SearchRun`,
`PruneRun` configure them); the registries list what can be picked by name.
"""

from __future__ import annotations

from autoprune._lazy import lazy_exports
from autoprune.errors import AutoPruneError

__version__ = "0.1.0"

_WHERE = {
    "build_model": "autoprune.models",
    "MODELS": "autoprune.models",
    "DATASETS": "autoprune.train.data",
    "trace_units": "autoprune.graph.units",
    "UnitGraph": "autoprune.graph.units",
    "IMPORTANCE": "autoprune.graph.importance",
    "CostModel": "autoprune.cost.model",
    "Budget": "autoprune.cost.budgets",
    "parse_budget": "autoprune.cost.budgets",
    "ProjectionConfig": "autoprune.cost.projection",
    "project": "autoprune.cost.projection",
    "Allocation": "autoprune.allocation",
    "SEARCH_METHODS": "autoprune.search",
    "BACKENDS": "autoprune.backends",
    "TrainRun": "autoprune.pipeline.train",
    "run_train": "autoprune.pipeline.train",
    "SearchRun": "autoprune.pipeline.search",
    "run_search": "autoprune.pipeline.search",
    "PruneRun": "autoprune.pipeline.prune",
    "run_prune": "autoprune.pipeline.prune",
}
__all__ = ["AutoPruneError", "__version__", *sorted(_WHERE)]
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
