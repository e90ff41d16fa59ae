"""``mmsift tokens``: token cleaning of a pool or subset (a thin wrapper around :mod:`mmsift.token_cleaning`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mmsift.cli.common import fail_systematic
from mmsift.failures import SystematicFailure


def tokens_command(
    run: Annotated[Path, typer.Argument(help="Base run: `mmsift probe --signals token_loss` with the model BEFORE "
                                             "the updates (e.g. the base the proxy was warmed up from).")],
    reference_run: Annotated[Path, typer.Option(
        "--reference-run", help="Reference run of the same records with the model AFTER updates on good data "
                                "(e.g. the warmed-up proxy), also probed with --signals token_loss.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Records file to write (.json, .jsonl or .parquet); the "
                                                          "masks go beside it in <name>.tokens.jsonl.")],
    keep: Annotated[float, typer.Option("--keep", help="Share of all answer tokens, ranked together across the "
                                                       "records, that keep their labels.")] = 0.6,
    data: Annotated[Optional[Path], typer.Option(
        "--data", help="Records to clean: the base run's pool by default, or a subset of it (e.g. from `mmsift "
                       "select`); matched to the runs by id.")] = None,
    rounds: Annotated[int, typer.Option(
        "--rounds", help="1: fixed reference. K > 1: self-evolving: K parts, the reference trained on each part's "
                         "kept tokens before the next part is scored.")] = 1,
    inline: Annotated[bool, typer.Option(
        "--inline", help="Also write each record's mask into it (field token_mask; records then differ from the "
                         "input). The sidecar is written either way.")] = False,
    html: Annotated[Optional[Path], typer.Option(
        "--html", help="Write a self-contained HTML page with records and their masked tokens struck through.")
    ] = None,
    work: Annotated[Optional[Path], typer.Option(
        "--work", help="Folder for the self-evolving parts, probe runs and references (default: <out>.work).")
    ] = None,
    update_epochs: Annotated[int, typer.Option("--update-epochs", help="Self-evolving: passes per update.")] = 1,
    update_lr: Annotated[float, typer.Option("--update-lr", help="Self-evolving: learning rate of the updates.")
                         ] = 1e-3,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Self-evolving: batch size of updates and probes.")
                          ] = 16,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the self-evolving updates.")] = 0,
    device: Annotated[str, typer.Option("--device", help="Self-evolving: cpu, cuda, cuda:1, ...")] = "cpu",
) -> None:
    """Mask the answer tokens a reference model learned least from (Token Cleaning): the records are written
    unchanged, the masks as character spans per assistant turn in a sidecar keyed by record id."""
    from mmsift.data.io import FORMATS, pool_exists, read_pool
    from mmsift.store import SignalStore, StoreError
    from mmsift.token_cleaning import TokenCleanConfig, clean_tokens, write_token_outputs

    try:
        if out.suffix.lower() not in FORMATS:
            raise ValueError(f"--out {out}: write the records as .json, .jsonl or .parquet")
        base = SignalStore(run)
        data_path = data or base.manifest.get("pool")
        if not data_path or not pool_exists(Path(data_path)):
            raise ValueError(f"records {data_path} not found: pass --data FILE")
        config = TokenCleanConfig(keep=keep, rounds=rounds, update_epochs=update_epochs, update_lr=update_lr,
                                  batch_size=batch_size, seed=seed, device=device,
                                  work=str(work or out.with_name(out.name + ".work")))
        pool = read_pool(data_path, task_field=base.manifest.get("task_field"))
        result = clean_tokens(run, reference_run, pool.records, config, pool=pool)
        settings = {"run": str(run), "reference_run": str(reference_run), "data": str(data_path), "keep": keep,
                    "rounds": rounds, "inline": inline, "command": "mmsift tokens"}
        paths = write_token_outputs(pool, pool.records, result, out, inline=inline, settings=settings)
        if html is not None:
            from mmsift.html_report import write_token_report

            write_token_report(html, records=pool.records, result=result, images=base.manifest.get("images"))
    except SystematicFailure as e:
        fail_systematic(e)
    except (StoreError, ValueError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    for line in result.summary_lines():
        typer.echo(line)
    if pool.problems:
        typer.echo(f"note: {len(pool.problems)} entries of {data_path} are not records and are not written")
    typer.echo(f"kept {result.n_kept} of {result.n_ranked} answer tokens ({result.n_kept / max(1, result.n_ranked):.2%})"
               f"; wrote {len(pool.records)} records {'with inline masks' if inline else 'unchanged'} to {out}, "
               f"masks to {paths['sidecar']}, report to {paths['report']}")
    if html is not None:
        typer.echo(f"HTML report -> {html}")
