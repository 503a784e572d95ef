"""Units of a model and what is done to them: tracing, importance, masks, physical slimming.

`trace_units` finds the allocation units once (coupled channel groups, or one weight tensor per
layer), each channel unit verified or frozen with its reason; importance measures rank their
elements; masks apply an allocation through parametrizations and `slim` cuts the model to it.
"""

from autoprune._lazy import lazy_exports

_WHERE = {
    "trace_units": "autoprune.graph.units",
    "UnitGraph": "autoprune.graph.units",
    "Unit": "autoprune.graph.units",
    "FrozenUnit": "autoprune.graph.units",
    "prunable_share": "autoprune.graph.verify",
    "Layer": "autoprune.graph.units",
    "Granularity": "autoprune.graph.units",
    "GRANULARITIES": "autoprune.graph.units",
    "CONV_TYPES": "autoprune.graph.units",
    "LINEAR_TYPES": "autoprune.graph.units",
    "IMPORTANCE": "autoprune.graph.importance",
    "score_units": "autoprune.graph.importance",
    "kernel_importance": "autoprune.graph.importance",
    "top_k": "autoprune.graph.importance",
    "apply_masks": "autoprune.graph.masking",
    "remove_masks": "autoprune.graph.masking",
    "element_masks": "autoprune.graph.masking",
    "select_kept": "autoprune.graph.masking",
    "slim": "autoprune.graph.masking",
    "UnitMap": "autoprune.graph.masking",
}
__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
