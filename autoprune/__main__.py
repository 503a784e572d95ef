"""`python -m autoprune` is the `autoprune` command."""

from autoprune.cli import run_cli

run_cli()
