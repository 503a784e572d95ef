"""The `autoprune` command line: one small class per subcommand over the Python API."""

from autoprune._lazy import lazy_exports

_WHERE = {
    "build_parser": "autoprune.cli.main",
    "COMMANDS": "autoprune.cli.main",
}
__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
