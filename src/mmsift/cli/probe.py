"""``mmsift probe``: a thin typer-compatible wrapper around :func:`mmsift.probe.runner.run_probe`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mmsift.cli.common import csv_list, fail_systematic
from mmsift.failures import DEFAULT_MAX_FAILURE_RATE, SystematicFailure


def probe_command(
    data: Annotated[Path, typer.Argument(
        help="The pool: .json, .jsonl or .parquet (LLaVA or ShareGPT layout), a folder or a glob of shards.")],
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
    max_pixels: Annotated[Optional[int], typer.Option(
        "--max-pixels", help="Scale larger images down to this many pixels (aspect kept) before the "
                             "processor.")] = None,
    max_image_tokens: Annotated[Optional[int], typer.Option(
        "--max-image-tokens", help="Scale images down until the processor gives them at most this many "
                                   "tokens.")] = None,
    max_batch_tokens: Annotated[Optional[int], typer.Option(
        "--max-batch-tokens", help="Fill length-sorted batches up to this many padded tokens instead of "
                                   "--batch-size records (bounds memory with large images).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Probe only the first N valid records.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a run with other settings in --out.")] = False,
    max_failures: Annotated[float, typer.Option(
        "--max-failures", help="Share of records that may fail before the run is stopped as a systematic error "
                               "(broken install or model).")] = DEFAULT_MAX_FAILURE_RATE,
) -> None:
    """Run the proxy model once over the pool and write every signal the chosen methods need."""
    from mmsift.probe.config import ProbeConfig
    from mmsift.probe.runner import run_probe
    from mmsift.store import StoreError

    config = ProbeConfig(model=str(model), out=str(out), images=None if images is None else str(images),
                         methods=tuple(csv_list(methods)) or None, signals=tuple(csv_list(signals)) or None,
                         device=device, dtype=dtype, batch_size=batch_size, layer=layer, vector_dim=vector_dim,
                         num_workers=num_workers, max_pixels=max_pixels, max_image_tokens=max_image_tokens,
                         max_batch_tokens=max_batch_tokens, task_field=task_field, shard_size=shard_size, limit=limit,
                         overwrite=overwrite, executor=executor, ray_address=ray_address, ray_workers=ray_workers,
                         max_failure_rate=max_failures)
    try:
        result = run_probe(data, config)
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
    from mmsift.cli.select import proxy_warning_of

    warning = proxy_warning_of({"model": str(model)})
    if warning:
        typer.echo(f"warning: {warning}")
