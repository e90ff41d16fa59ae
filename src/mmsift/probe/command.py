"""``mmsift warmup`` and ``mmsift probe``: thin typer-compatible wrappers around the library functions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mmsift.cli_common import fail_systematic
from mmsift.failures import DEFAULT_MAX_FAILURE_RATE, SystematicFailure


def _csv(value: Optional[str]) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


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
) -> None:
    """Make the bundled small proxy for a pool: the pretrained base, instruction-tuned on the pool (vision frozen)."""
    from mmsift.probe.warmup import read_warmup_log, shuffle_line, warmup

    try:
        path = warmup(data, images=images, out=out, n_samples=n_samples, epochs=epochs, seed=seed, device=device,
                      lr=lr, batch_size=batch_size, task_field=task_field, base=base, min_steps=min_steps,
                      max_failure_rate=max_failures)
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


def probe_command(
    data: Annotated[Path, typer.Argument(help="The pool: LLaVA .json, .jsonl or .parquet.")],
    images: Annotated[Optional[Path], typer.Option(
        "--images", help="Folder the records' image paths are relative to (default: the data file's folder).")] = None,
    model: Annotated[Path, typer.Option("--model", help="Local model directory (e.g. from `mmsift warmup`).")] = Path(
        "proxy"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory for the signal store.")] = Path("run"),
    methods: Annotated[Optional[str], typer.Option(
        "--methods", help="Comma-separated methods whose signals to compute (see `mmsift methods`).")] = None,
    signals: Annotated[Optional[str], typer.Option(
        "--signals", help="Comma-separated extra signal names to compute.")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, ...")] = "cpu",
    dtype: Annotated[Optional[str], typer.Option(
        "--dtype", help="float32, bfloat16 or float16 (default: bfloat16 on GPU, float32 on CPU).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples per forward pass.")] = 8,
    layer: Annotated[int, typer.Option("--layer", help="Hidden-state index for last/mean/spectrum (-2: "
                                                        "second-to-last decoder layer).")] = -2,
    task_field: Annotated[Optional[str], typer.Option("--task-field", help="Record field naming its task.")] = None,
    shard_size: Annotated[int, typer.Option("--shard-size", help="Records per resumable shard.")] = 256,
    executor: Annotated[str, typer.Option("--executor", help="local or ray.")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(
        "--ray-address", help="Ray cluster to join with --executor ray (default: RAY_ADDRESS, else a local Ray).")] = None,
    ray_workers: Annotated[Optional[int], typer.Option(
        "--ray-workers", help="Ray actors (default: as many as the cluster's resources allow).")] = None,
    vector_dim: Annotated[Optional[int], typer.Option(
        "--vector-dim", help="Reduce stored vectors to this many dims (seeded random projection).")] = None,
    num_workers: Annotated[Optional[int], typer.Option(
        "--num-workers", help="DataLoader worker processes for decoding/tokenising (default: 0 on CPU, "
                              "up to 8 on GPU).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Probe only the first N valid records.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a run with other settings in --out.")] = False,
    max_failures: Annotated[float, typer.Option(
        "--max-failures", help="Share of records that may fail before the run is stopped as a systematic error "
                               "(broken install or model).")] = DEFAULT_MAX_FAILURE_RATE,
) -> None:
    """Run the proxy model once over the pool and write every signal the chosen methods need."""
    from mmsift.probe.runner import run_probe
    from mmsift.store import StoreError

    try:
        result = run_probe(data, images=images, model=model, out=out, methods=_csv(methods) or None,
                           signals=_csv(signals) or None, device=device, batch_size=batch_size, layer=layer,
                           task_field=task_field, shard_size=shard_size, executor=executor, dtype=dtype,
                           limit=limit, vector_dim=vector_dim, num_workers=num_workers, overwrite=overwrite,
                           ray_address=ray_address, ray_workers=ray_workers, max_failure_rate=max_failures)
    except SystematicFailure as e:
        fail_systematic(e)
    except (OSError, ValueError, KeyError, StoreError) as e:
        # An OSError's args[0] is its errno: print the whole message, which names the file.
        typer.echo(f"error: {e if isinstance(e, OSError) or not e.args else e.args[0]}", err=True)
        raise typer.Exit(1) from None
    for line in result.summary_lines():
        typer.echo(line)
    for rid, kind, message in result.skipped[:20]:
        typer.echo(f"  skipped {rid}: {kind}: {message}")
    if len(result.skipped) > 20:
        typer.echo(f"  ... and {len(result.skipped) - 20} more (see {out}/manifest.json)")
