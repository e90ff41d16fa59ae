"""Pieces shared by the command modules (typer wrappers)."""

from __future__ import annotations

import typer
from typer.core import TyperCommand, TyperGroup

from mmsift.failures import SystematicFailure


def fail_systematic(error: SystematicFailure) -> None:
    """Print a systematic failure as one error (its traceback is in the run's log file) and exit 1."""
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(1)


def csv_list(value: str | None) -> list[str]:
    """A comma-separated option as a list of its non-empty, stripped items."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _no_flag_values(command, ctx):
    # On/off flags take no value, so --help must not show one (typer prints "<bool>" by default).
    for param in command.get_params(ctx):
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


class Command(TyperCommand):
    """A command whose --help shows on/off flags without a value."""

    def format_help(self, ctx, formatter):
        _no_flag_values(self, ctx)
        return super().format_help(ctx, formatter)


class Group(TyperGroup):
    """The command group, with the same --help convention."""

    def format_help(self, ctx, formatter):
        _no_flag_values(self, ctx)
        return super().format_help(ctx, formatter)
