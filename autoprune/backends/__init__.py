"""Training backends; importing this package registers every built-in one in BACKENDS."""

from autoprune.backends import admm, greg, hspg, magnitude, reweighted
from autoprune.backends.base import BACKENDS, Backend, BackendConfig, BackendResult

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendConfig",
    "BackendResult",
    "admm",
    "greg",
    "hspg",
    "magnitude",
    "reweighted",
]
