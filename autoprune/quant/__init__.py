"""Bits: kernel-wise bit allocations, fake quantisation, and the packed model.apq artifact.

`BitAllocation` holds weight bits per kernel and activation bits per layer and the exact byte
count of the artifact; `fake` quantises during training; `artifact` writes and reads model.apq
(autoprune.cost.kernel_counts and cost.bit_match price kernels and make a backend's kept
kernels cost what the search priced).
"""

from autoprune._lazy import lazy_exports

_WHERE = {
    "BitAllocation": "autoprune.quant.bits",
    "FLOAT_BITS": "autoprune.quant.bits",
    "BIT_CHOICES": "autoprune.quant.bits",
    "artifact_bytes": "autoprune.quant.bits",
    "add_weight_quant": "autoprune.quant.fake",
    "add_act_quant": "autoprune.quant.fake",
    "quantize": "autoprune.quant.fake",
    "dequantize": "autoprune.quant.fake",
    "quantised_inputs": "autoprune.quant.fake",
    "write_artifact": "autoprune.quant.artifact",
    "load_artifact": "autoprune.quant.artifact",
    "ARTIFACT": "autoprune.quant.artifact",
}
__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
