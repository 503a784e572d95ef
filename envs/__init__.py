"""Gymnasium environments of autoprune (installed as autoprune.envs); importing registers them.

env = gymnasium.make(LAYER_BUDGET, cost_model=cm, limits={"macs": 1e6}, evaluate=fn)
env = gymnasium.make(KERNEL_BITS, cost_model=cm, limits={"size": 8e3}, evaluate=fn_with_bits)
"""

import gymnasium

from autoprune.envs.kernel_bits import KernelBitsEnv
from autoprune.envs.layer_budget import LayerBudgetEnv

LAYER_BUDGET = "autoprune/LayerBudget-v0"
KERNEL_BITS = "autoprune/KernelBits-v0"
ENV_IDS: tuple[str, ...] = (LAYER_BUDGET, KERNEL_BITS)
_ENTRY_POINTS = {
    LAYER_BUDGET: "autoprune.envs.layer_budget:LayerBudgetEnv",
    KERNEL_BITS: "autoprune.envs.kernel_bits:KernelBitsEnv",
}

for _id, _entry in _ENTRY_POINTS.items():
    if _id not in gymnasium.registry:  # re-imports (reloads, workers) must not register twice
        gymnasium.register(id=_id, entry_point=_entry)

__all__ = ["ENV_IDS", "KERNEL_BITS", "LAYER_BUDGET", "KernelBitsEnv", "LayerBudgetEnv"]
