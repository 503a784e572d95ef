"""Training backends; importing this package registers every built-in one in BACKENDS."""

from autoprune.backends import admm, magnitude, reweighted
from autoprune.backends.base import BACKENDS, Backend, BackendConfig, BackendResult

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendConfig",
    "BackendResult",
    "admm",
    "magnitude",
    "reweighted",
]
