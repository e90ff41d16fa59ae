"""``mmsift run`` (a whole recipe) and ``mmsift demo`` (the bundled pool end to end)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def run_command(
    recipe: Path = typer.Argument(..., help="Recipe YAML: pool, images, proxy, probe settings and stages."),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder (default: the recipe's 'out', else mmsift-run)."),
    check: bool = typer.Option(False, "--check", help="Only check the recipe (keys, methods, budgets, paths)."),
) -> None:
    """Run a whole recipe: warm-up or model -> probe -> clean/dedup/select stages -> subset, scores, report."""
    from mmsift.recipe import RecipeError, load_recipe, run_recipe
    from mmsift.store import StoreError

    try:
        loaded = load_recipe(recipe)
    except RecipeError as e:
        typer.echo(f"error: {recipe}: {e}", err=True)
        raise typer.Exit(2) from None
    if check:
        from mmsift.recipe import pool_hash

        pinned = (loaded.data.get("resolved") or {}).get("pool_sha256")
        if pinned and pool_hash(loaded) != pinned:
            typer.echo(f"error: {recipe}: pool {loaded.path('pool')} changed since this recipe was resolved (its "
                       f"SHA-256 no longer matches): running it would not give the same ids", err=True)
            raise typer.Exit(2)
        typer.echo(f"{recipe}: OK ({len(loaded.data['stages'])} stages, methods {', '.join(loaded.methods)}"
                   + (", pool unchanged since it was resolved" if pinned else "") + ")")
        return
    try:
        result = run_recipe(loaded, out=out)
    except (RecipeError, StoreError, ValueError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    for line in result.lines:
        typer.echo(line)


def demo_command(
    out: Path = typer.Option(Path("mmsift-demo"), "--out", "-o", help="Folder for the pool, model, run and subsets."),
    n_images: int = typer.Option(300, "--n-images", help="easy-vqa images to build the pool from."),
    budget: float = typer.Option(0.15, "--budget", help="Fraction of the pool to keep."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    warmup_samples: Optional[int] = typer.Option(None, "--warmup-samples",
                                                 help="Pool samples the proxy is warmed up on (default: all)."),
    warmup_epochs: int = typer.Option(2, "--warmup-epochs"),
) -> None:
    """End to end on the bundled easy-vqa pool: build, validate, warm up a proxy, probe, select, explain."""
    from mmsift.cli.common import fail_systematic
    from mmsift.demo import run_demo
    from mmsift.failures import SystematicFailure

    try:
        run_demo(out, n_images=n_images, budget=budget, seed=seed, device=device, warmup_samples=warmup_samples,
                 warmup_epochs=warmup_epochs, echo=typer.echo)
    except SystematicFailure as e:
        fail_systematic(e)
    except (OSError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
