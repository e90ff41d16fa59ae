"""``mmsift warmup``: a thin typer-compatible wrapper around :func:`mmsift.train.warmup.warmup`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mmsift.cli.common import fail_systematic
from mmsift.failures import DEFAULT_MAX_FAILURE_RATE, SystematicFailure


def warmup_command(
    data: Annotated[Path, typer.Argument(help="The pool: LLaVA .json, .jsonl or .parquet.")],
    images: Annotated[Optional[Path], typer.Option(
        "--images", help="Folder the records' image paths are relative to (default: the data file's folder).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the trained proxy model to.")] = Path(
        "proxy"),
    n_samples: Annotated[Optional[int], typer.Option(
        "--n-samples", help="Random pool records to train on (default: the whole pool).")] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the training slice (at least --min-steps steps).")] = 3,
    min_steps: Annotated[int, typer.Option(
        "--min-steps", help="Fewest optimisation steps, however small the pool.")] = 300,
    lr: Annotated[Optional[float], typer.Option(
        "--lr", help="Peak AdamW learning rate (default 1e-3 from the base, 3e-3 with --base none).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples per step.")] = 16,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the slice, weights and batches.")] = 0,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, ...")] = "cpu",
    task_field: Annotated[Optional[str], typer.Option("--task-field", help="Record field naming its task.")] = None,
    base: Annotated[str, typer.Option(
        "--base", help="bundled: start from the pretrained base (built once, cached); none: random weights, a "
                       "perception stage on the pool's own images, then the pool (for images unlike easy-vqa).")
    ] = "bundled",
    max_failures: Annotated[float, typer.Option(
        "--max-failures", help="Share of records that may fail before the run is stopped as a systematic error "
                               "(broken install or model).")] = DEFAULT_MAX_FAILURE_RATE,
    token_masks: Annotated[Optional[Path], typer.Option(
        "--token-masks", help="Token cleaning sidecar (mmsift tokens): masked answer tokens leave the loss.")] = None,
) -> None:
    """Make the bundled small proxy for a pool: the pretrained base, instruction-tuned on the pool (vision frozen)."""
    from mmsift.train.warmup import WarmupConfig, read_warmup_log, shuffle_line, warmup

    config = WarmupConfig(out=str(out), images=None if images is None else str(images), n_samples=n_samples,
                          epochs=epochs, min_steps=min_steps, lr=lr, batch_size=batch_size, seed=seed, device=device,
                          task_field=task_field, base=base, max_failure_rate=max_failures,
                          token_masks=None if token_masks is None else str(token_masks))
    try:
        path = warmup(data, config)
    except SystematicFailure as e:
        fail_systematic(e)
    except (OSError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    info = read_warmup_log(path) or {}
    losses = info.get("epoch_losses") or []
    curve = " -> ".join(f"{x:.3f}" for x in losses)
    typer.echo(f"trained the proxy on {info.get('n_samples', '?')} samples for {info.get('steps', '?')} steps "
               f"in {info.get('seconds', 0):.1f}s; answer loss per epoch: {curve}")
    typer.echo(shuffle_line(info))
    typer.echo(f"model written to {path}")
