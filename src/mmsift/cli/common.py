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
    # On/off flags take no value, so --help must not show one (typer prints "<bool>" by default). Arguments are
    # shown by name in capitals in the usage line (typer prints "{data}"), and a repeatable option by its item
    # type (typer prints "<list[str]>").
    for param in command.get_params(ctx):
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
        elif param.param_type_name == "argument" and param.metavar is None and param.name:
            param.metavar = param.name.upper()
        elif getattr(param, "multiple", False) and param.metavar is None:
            param.metavar = "<str>"


class Command(TyperCommand):
    """A command whose --help shows on/off flags without a value."""

    def format_help(self, ctx, formatter):
        _no_flag_values(self, ctx)
        return super().format_help(ctx, formatter)

    def collect_usage_pieces(self, ctx):
        # "mmsift select [OPTIONS] RUN", not typer's "{run}": a required argument in capitals, an optional one
        # in brackets, as click and most command lines write them.
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name != "argument":
                pieces.extend(param.get_usage_pieces(ctx))
                continue
            name = (param.name or "").upper() + ("..." if param.nargs != 1 else "")
            pieces.append(name if param.required else f"[{name}]")
        return pieces


class Group(TyperGroup):
    """The command group, with the same --help convention."""

    def format_help(self, ctx, formatter):
        _no_flag_values(self, ctx)
        return super().format_help(ctx, formatter)
