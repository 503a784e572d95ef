"""autoprune: compress neural networks under hard budgets (MACs, params, size, latency)."""

from __future__ import annotations

__version__ = "0.1.0"

from autoprune.errors import AutoPruneError

__all__ = ["AutoPruneError", "__version__"]
