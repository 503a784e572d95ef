"""The runs the CLI makes, as pipelines of named stages over dataclasses.

`run_train` (dense training), `run_search` (price -> dense -> search -> allocation -> train ->
export) and `run_prune` (replay an allocation with a backend) each write a staged run
directory: a failure leaves nothing half-written at `out`. `profile`, `evaluate_run`, the
search report and the dashboard are here too.
"""

from autoprune._lazy import lazy_exports

_WHERE = {
    "TrainRun": "autoprune.pipeline.train",
    "run_train": "autoprune.pipeline.train",
    "SearchRun": "autoprune.pipeline.search",
    "run_search": "autoprune.pipeline.search",
    "PruneRun": "autoprune.pipeline.prune",
    "run_prune": "autoprune.pipeline.prune",
    "Loaded": "autoprune.pipeline.load",
    "load_model_and_data": "autoprune.pipeline.load",
    "load_pruned": "autoprune.pipeline.finish",
    "profile": "autoprune.pipeline.profile",
    "evaluate_run": "autoprune.pipeline.evaluate_run",
}
__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
