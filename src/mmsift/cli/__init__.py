"""The `mmsift` command line. Each command is a thin wrapper: the work happens in the library."""

from __future__ import annotations

import logging

import typer

from mmsift.version import __version__
from mmsift.cli.common import Command, Group


app = typer.Typer(
    help="Select the training samples worth keeping from visual-instruction-tuning pools.",
    no_args_is_help=True,
    add_completion=False,
    cls=Group,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"mmsift {__version__}")
        raise typer.Exit(0)


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", callback=_print_version,
                                 is_eager=True),
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _wire_commands() -> None:
    """Every command, in the order of the flow (``mmsift --help`` lists them so); each lives beside its kind."""
    from mmsift.cli.bench import bench_command, bench_draws_command
    from mmsift.cli.data import validate_command
    from mmsift.cli.judge import judge_command
    from mmsift.cli.probe import probe_command
    from mmsift.cli.run import demo_command, run_command
    from mmsift.cli.select import methods_command, select_command
    from mmsift.cli.tokens import tokens_command
    from mmsift.cli.warmup import warmup_command

    for name, command in (("demo", demo_command), ("validate", validate_command), ("warmup", warmup_command),
                          ("probe", probe_command), ("judge", judge_command), ("select", select_command),
                          ("tokens", tokens_command),
                          ("run", run_command), ("methods", methods_command), ("bench", bench_command),
                          ("bench-draws", bench_draws_command)):
        app.command(name, cls=Command)(command)


_wire_commands()
