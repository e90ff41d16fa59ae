"""``mmsift bench``: does the selected subset train a better model? (wired into the CLI by ``cli.py``)."""

from __future__ import annotations

import logging
from dataclasses import replace
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
    pool: Optional[str] = typer.Option(None, "--pool", help="your pool (any format mmsift reads); default: the "
                                                            "bundled easy-vqa preset"),
    images: Optional[str] = typer.Option(None, "--images", help="the pool's image folder (default: its folder)"),
    eval_file: Optional[str] = typer.Option(None, "--eval", help="evaluation file (any pool format): every "
                                                                 "user/assistant round is an item"),
    eval_images: Optional[str] = typer.Option(None, "--eval-images",
                                              help="the evaluation file's image folder (default: its folder)"),
    truth_field: Optional[str] = typer.Option(None, "--truth-field",
                                              help="record field marking bad records (a.b for nested): adds oracle, "
                                                   "anti-oracle, full-clean and the sensitivity lines"),
    target: str = typer.Option("base", "--target", help="base (the bundled pretrained base), scratch (a fresh "
                                                        "model that learns the images from each subset) or "
                                                        "MODEL_DIR (a local checkpoint)"),
    column_by: str = typer.Option("task", "--column-by", help="evaluation columns: task or question"),
    task_field: Optional[str] = typer.Option(None, "--task-field", help="record field naming the task"),
    budgets: Optional[str] = typer.Option(None, "--budgets",
                                          help="comma-separated budgets (default 0.05,0.15,0.3; --quick: 0.15)"),
    methods: Optional[str] = typer.Option(None, "--methods",
                                          help="comma-separated methods, oracle/anti-oracle and recipe:FILE.yaml rows (a clean -> dedup -> "
                                              "select chain); default: every method the probe can feed"),
    quick: bool = typer.Option(False, "--quick",
                               help="smaller pool, budget 0.15, two seed pairs, random/oracle/datatailor/ards/"
                                    "selfcheck/coincide (a few minutes)"),
    seed: int = typer.Option(0, "--seed", help="seed of the pool, the evaluation items and the probe"),
    seeds: Optional[str] = typer.Option(None, "--seeds",
                                        help="seed pairs (selection = training seed), e.g. 0,1,2 (default; --quick 0,1)"),
    mc_attacks: bool = typer.Option(False, "--mc-attacks", help="also evaluate ARDS's attacked MC versions"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    judge_run: Optional[str] = typer.Option(None, "--judge-run",
                                            help="signal store with judge columns, to include judge methods"),
    threads: int = typer.Option(1, "--threads", help="torch threads per training job"),
    workers: int = typer.Option(0, "--workers", min=0,
                                help="training jobs run at once, each in its own process (0: one per --threads "
                                     "CPU cores; 1 on cuda). Results do not depend on it"),
    tokens: Optional[float] = typer.Option(
        None, "--tokens", help="token cleaning rows: for full and each method row, a twin '+tokensKEEP' trained on "
                               "the same records and seeds with only the top KEEP share of the pool's answer tokens "
                               "(ranked by loss before - after the probe's warm-up) in the loss, e.g. 0.6"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log each stage"),
) -> None:
    """Does a selected subset train a better model than a random one? Selects with each method at each budget,
    trains the target on each subset for several seed pairs and scores it on the evaluation items; prints the
    table with 95% intervals, paired verdicts against random and one referee line per budget
    (results.md/.csv/.json/.html). Without --pool: the bundled easy-vqa preset (a pool with injected defects)."""
    from mmsift.bench.runner import BenchConfig, run_bench

    if verbose:
        # The CLI callback has configured the root logger already (basicConfig would be a no-op here).
        logging.getLogger("mmsift").setLevel(logging.INFO)
    method_list = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    budget_values = _budgets(budgets) if budgets else None
    try:
        seed_pairs = tuple(int(x) for x in seeds.split(",") if x.strip()) if seeds else None
    except ValueError:
        raise typer.BadParameter(f"--seeds {seeds!r}: give integers, e.g. 0,1,2") from None
    if seed_pairs is not None and (not seed_pairs or len(set(seed_pairs)) != len(seed_pairs)):
        raise typer.BadParameter(f"--seeds {seeds!r}: give distinct integers, e.g. 0,1,2")
    if tokens is not None:
        from mmsift.bench.tokens import check_keep

        try:
            check_keep(tokens)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
    common = dict(tokens=tokens, methods=method_list, seed=seed, device=device, judge_run=judge_run, threads=threads,
                  workers=workers, target=target, column_by=column_by, task_field=task_field)
    if pool is None and (eval_file or images or eval_images or truth_field):
        raise typer.BadParameter("--eval, --images, --eval-images and --truth-field go with --pool (without "
                                 "--pool the bundled easy-vqa preset runs)")
    if pool is not None:
        if quick:
            raise typer.BadParameter("--quick is the preset's small grid; with --pool give --budgets/--seeds")
        if eval_file is None:
            raise typer.BadParameter("--pool needs --eval: the file the trained models are scored on")
        common.update(pool=pool, images=images, eval=eval_file, eval_images=eval_images, truth_field=truth_field,
                      post_fraction=0.0)
    if seed_pairs is not None:
        common["seeds"] = seed_pairs
    if budget_values:
        common["budgets"] = budget_values
    cfg = replace(BenchConfig.quick_config(out) if quick else BenchConfig(out=out), **common)
    if mc_attacks:
        cfg = replace(cfg, preset=replace(cfg.preset, mc_attacks=True))
    try:
        result = run_bench(cfg)
    except (OSError, ValueError, KeyError) as e:  # EvalFileError and RecipeError are ValueErrors
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(result["markdown"])
    for kind, path in result["paths"].items():
        typer.echo(f"{kind}: {path}")


def bench_draws_command(
    runs: list[str] = typer.Argument(..., help="folders of finished `mmsift bench` runs of one grid on different "
                                               "pool draws (e.g. --seed 0, 1, 2)"),
    out: Optional[str] = typer.Option(None, "--out", help="also write the table to this Markdown file"),
) -> None:
    """Pool several bench runs (draws of the pool): each comparison with random (and oracle, full-clean) as the
    mean over draws with an interval that resamples the draws too."""
    from pathlib import Path

    from mmsift.bench.draws import draws_report

    try:
        text = draws_report(runs)
    except (OSError, ValueError, KeyError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(text)
    if out:
        Path(out).write_text(text + "\n", encoding="utf-8")
