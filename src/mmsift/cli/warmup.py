"""``mmsift warmup``: a thin typer-compatible wrapper around :func:`mmsift.train.warmup.warmup`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mmsift.cli.common import fail_systematic
from mmsift.failures import DEFAULT_MAX_FAILURE_RATE, SystematicFailure


def warmup_command(
    data: Annotated[Path, typer.Argument(help="The pool: .json, .jsonl or .parquet (LLaVA or ShareGPT layout), "
                                              "a folder or a glob of shards.")],
    images: Annotated[Optional[Path], typer.Option(
        "--images", help="Folder the records' image paths are relative to (default: the data file's folder).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the trained proxy model to.")] = Path(
        "proxy"),
    n_samples: Annotated[Optional[int], typer.Option(
        "--n-samples", help="Random pool records to train on (default: the whole pool).")] = None,
    epochs: Annotated[int, typer.Option(
        "--epochs", help="Passes over the training records; when that is fewer than --min-steps steps, training "
                         "runs --min-steps steps instead (more passes).")] = 3,
    min_steps: Annotated[int, typer.Option(
        "--min-steps", help="Fewest optimisation steps, however small the pool (a floor on --epochs).")] = 300,
    lr: Annotated[Optional[float], typer.Option(
        "--lr", help="Peak AdamW learning rate (default 1e-3 from the base, 3e-3 with --base none).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples per step.")] = 16,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the slice, weights and batches.")] = 0,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, ...")] = "cpu",
    task_field: Annotated[Optional[str], typer.Option("--task-field", help="Record field naming its task.")] = None,
    base: Annotated[str, typer.Option(
        "--base", help="auto: the pretrained base, or, when the image-shuffle test says it does not read the "
                       "pool's images, none; bundled: the pretrained base (built once, cached); none: random "
                       "weights, a perception stage on the pool's own images, then the pool.")
    ] = "auto",
    holdout: Annotated[float, typer.Option(
        "--holdout", help="Share of the records held out (not trained on) to choose the step kept: the one with "
                          "their lowest answer loss, before the proxy learns wrong answers by heart (0: last step).")
    ] = 0.1,
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
                          task_field=task_field, base=base, holdout=holdout, max_failure_rate=max_failures,
                          token_masks=None if token_masks is None else str(token_masks))
    what = {"auto": "from the pretrained base, or from the pool's own images if the base does not read them",
            "bundled": "from the pretrained base", "none": "from random weights and the pool's own images"}
    typer.echo(f"warm-up: training the proxy on {data} {what.get(base, '')} (docs/warmup.md) ...")
    try:
        path = warmup(data, config)
    except SystematicFailure as e:
        fail_systematic(e)
    except (OSError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    info = read_warmup_log(path) or {}
    for line in warmup_lines(info):
        typer.echo(line)
    typer.echo(f"model written to {path}")


def warmup_lines(info: dict) -> list[str]:
    """What ``mmsift warmup`` prints about a finished warm-up (its ``warmup.json``)."""
    from mmsift.train.warmup import shuffle_line

    lines = []
    switched = info.get("switched_from")
    if switched:
        test = switched.get("image_shuffle") or {}
        lines.append(f"the pretrained base did not read this pool's images (image-shuffle "
                     f"{test.get('increase', float('nan')):+.3f}, {switched.get('seconds', 0):.0f}s): the proxy was "
                     f"made again with --base none (random weights, perception stage on the pool's own images)")
    steps, n = info.get("steps", 0), info.get("n_samples", 0)
    batch = info.get("batch_size", 16)
    passes = steps * batch / max(1, n)
    planned = info.get("steps_planned", steps)
    epochs = info.get("epochs")
    floor = (f"; --min-steps {info.get('min_steps')} raised it from --epochs {epochs}"
             if epochs is not None and planned > epochs * -(-n // batch) else "")
    lines.append(f"trained the proxy on {n} records for {steps} steps of {batch} ({passes:.1f} passes{floor}) "
                 f"in {info.get('seconds', 0):.1f}s")
    losses = info.get("epoch_losses") or []
    shown = [f"{k + 1}: {x:.3f}" for k, x in enumerate(losses)]
    if len(shown) > 8:
        shown = shown[:3] + [f"... ({len(shown) - 6} more)"] + shown[-3:]
    if shown:
        lines.append("mean answer loss per pass: " + ", ".join(shown))
    held = info.get("heldout")
    if held:
        lines.append(f"kept the weights of step {info.get('step_kept')} of {steps}: lowest answer loss on "
                     f"{info.get('n_heldout')} held-out records ({held['best_heldout_loss']:.3f})")
    lines.append(shuffle_line(info))
    if info.get("warning"):
        lines.append(f"warning: {info['warning']}")
    if info.get("n_pool_records", 100) < 100:
        lines.append(f"warning: only {info.get('n_pool_records')} valid records: a proxy trained on so few learns "
                     f"little, and its losses and image-shuffle figure mean little")
    return lines