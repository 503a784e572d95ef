"""The one exception hierarchy of autoprune: every user-facing failure is an AutoPruneError."""

from __future__ import annotations


class AutoPruneError(Exception):
    """Base class. The CLI prints the message on one line and exits with `exit_code`."""

    exit_code = 1


class UsageError(AutoPruneError):
    """The user asked for something that cannot be done as asked (exit code 2)."""

    exit_code = 2


class UnknownNameError(UsageError):
    """A name (model, dataset, method, backend, ...) is not in its registry."""


class BudgetError(UsageError):
    """A budget string cannot be parsed, or no allocation can meet it."""


class DataError(UsageError):
    """A dataset is missing, unreadable or does not fit the model."""


class AllocationError(UsageError):
    """An allocation file is malformed or belongs to another model."""


class CheckpointError(UsageError):
    """A checkpoint is missing, truncated or does not fit the model."""


class OutputError(AutoPruneError):
    """The run directory could not be written midway (disk full, quota, a read-only file system);
    nothing is left of it. An --out that cannot be written at all is a UsageError, found before
    any work."""


class BudgetBrokenError(AutoPruneError):
    """The exported model measures above a budget it was built for (nothing is written)."""
