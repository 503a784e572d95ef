"""Gymnasium environments of autoprune (installed as autoprune.envs); importing registers them.

env = gymnasium.make(LAYER_BUDGET, cost_model=cm, limits={"macs": 1e6}, evaluate=fn)
"""

import gymnasium
from autoprune.envs.layer_budget import LayerBudgetEnv

LAYER_BUDGET = "autoprune/LayerBudget-v0"
ENV_IDS: tuple[str, ...] = (LAYER_BUDGET,)

if LAYER_BUDGET not in gymnasium.registry:  # re-imports (reloads, workers) must not register twice
    gymnasium.register(id=LAYER_BUDGET, entry_point="autoprune.envs.layer_budget:LayerBudgetEnv")

__all__ = ["ENV_IDS", "LAYER_BUDGET", "LayerBudgetEnv"]
