"""Export: the final model as a self-normalising torch.export program, ONNX, and the artifact.

`export_program` writes model.pt2 (takes [0, 1] images, any batch size, runs with plain torch);
`model_metrics` measures what was exported; `quant` writes model.apq for runs with bits and
checks its budgets; `onnx` converts model.pt2 and checks it with onnxruntime; `compiled`
compiles it ahead of time with AOTInductor (model.aoti.pt2), checked and timed against it.
"""

from autoprune._lazy import lazy_exports

_WHERE = {
    "export_program": "autoprune.export.program",
    "load_program": "autoprune.export.program",
    "model_metrics": "autoprune.export.program",
    "compression": "autoprune.export.program",
    "export_onnx": "autoprune.export.onnx",
    "compile_program": "autoprune.export.compiled",
    "export_artifact": "autoprune.export.quant",
    "artifact_checks": "autoprune.export.quant",
}
__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
