"""CLI commands of this part (placeholder until implemented)."""

import typer


def register(app: typer.Typer) -> None:
    """Add this part's commands to the root `edgecnn` app."""
