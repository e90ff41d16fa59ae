"""``mmsift bench``: does the selected subset train a better model? (wired into the CLI by ``cli.py``)."""

from __future__ import annotations

import logging
from typing import Optional

import typer

from mmsift.budget import parse_budget


def _budgets(text: str) -> tuple:
    try:
        values = tuple(parse_budget(b) for b in text.split(",") if b.strip())
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if not values:
        raise typer.BadParameter("give at least one budget, e.g. 0.05,0.15,0.3")
    return values


def bench_command(
    out: str = typer.Option("bench_out", "--out", help="folder for the pool, runs and results"),
    budgets: Optional[str] = typer.Option(None, "--budgets",
                                          help="comma-separated budgets (default 0.05,0.15,0.3; --quick: 0.3)"),
    methods: Optional[str] = typer.Option(None, "--methods",
                                          help="comma-separated methods (default: every method the probe can feed)"),
    quick: bool = typer.Option(False, "--quick", help="small pool, one budget, five methods (a few minutes)"),
    seed: int = typer.Option(0, "--seed", help="seed of the pool, the selection and the training"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    judge_run: Optional[str] = typer.Option(None, "--judge-run",
                                            help="signal store with judge columns, to include judge methods"),
    random_seeds: Optional[str] = typer.Option(None, "--random-seeds",
                                               help="extra seeds for random subsets, e.g. 1,2 (spread of random)"),
    threads: int = typer.Option(1, "--threads", help="CPU threads for training and evaluation"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log each stage"),
) -> None:
    """Build a pool with known defects, select with each method, train the small target on each subset and
    evaluate it on the easy-vqa test split; prints the results table and writes it as Markdown, CSV and JSON."""
    from mmsift.bench.runner import BenchConfig, run_bench

    if verbose:
        # The CLI callback has configured the root logger already (basicConfig would be a no-op here).
        logging.getLogger("mmsift").setLevel(logging.INFO)
    method_list = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    budget_values = _budgets(budgets) if budgets else None
    try:
        extra_seeds = tuple(int(x) for x in random_seeds.split(",") if x.strip()) if random_seeds else ()
    except ValueError:
        raise typer.BadParameter(f"--random-seeds {random_seeds!r}: give integers, e.g. 1,2") from None
    common = dict(methods=method_list, seed=seed, device=device, judge_run=judge_run, threads=threads,
                  random_seeds=extra_seeds)
    if quick:
        cfg = BenchConfig.quick_config(out, budgets=budget_values, **common)
    else:
        cfg = BenchConfig(out=out, **common, **({"budgets": budget_values} if budget_values else {}))
    try:
        result = run_bench(cfg)
    except (OSError, ValueError, KeyError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(result["markdown"])
    for kind, path in result["paths"].items():
        typer.echo(f"{kind}: {path}")
