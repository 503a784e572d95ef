"""`python -m autoprune` is the `autoprune` command."""

from autoprune.cli.main import run_cli

run_cli()
