"""Pieces shared by the command modules (typer wrappers)."""

from __future__ import annotations

import typer

from mmsift.failures import SystematicFailure


def fail_systematic(error: SystematicFailure) -> None:
    """Print a systematic failure as one error (its traceback is in the run's log file) and exit 1."""
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(1)
