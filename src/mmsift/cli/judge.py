"""``mmsift judge``: ask a judge model the questions of mmSSR / SCALE (and DS2, which corrects them) and write
the answers as signal columns of a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mmsift.cli.common import fail_systematic
from mmsift.failures import DEFAULT_MAX_FAILURE_RATE, SystematicFailure
from mmsift.judge.runner import run_judge


def judge_command(
    data: Annotated[Path, typer.Argument(
        help="The pool: .json, .jsonl or .parquet (LLaVA or ShareGPT layout), a folder or a glob of shards.")],
    images: Annotated[Optional[Path], typer.Option(
        "--images", help="Folder the records' image paths are relative to (default: the data file's folder).",
    )] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Run directory to write (judge columns only). Not needed with --into.",
    )] = None,
    into: Annotated[Optional[Path], typer.Option(
        "--into", help="Existing probe run to add the judge columns to (aligned by record id).",
    )] = None,
    backend: Annotated[str, typer.Option("--backend", help="hf (local model folder) or openai (HTTP endpoint).")
                       ] = "openai",
    model: Annotated[str, typer.Option(
        "--model", help="hf: local model folder; openai: the served model name.",
    )] = "",
    base_url: Annotated[str, typer.Option(
        "--base-url", help="OpenAI-compatible API root; requests go to {base-url}/chat/completions.",
    )] = "http://127.0.0.1:8000/v1",
    api_key_env: Annotated[str, typer.Option(
        "--api-key-env", help="Name of the environment variable holding the API key (never written to disk).",
    )] = "OPENAI_API_KEY",
    concurrency: Annotated[int, typer.Option("--concurrency", help="openai: requests in flight at once.")] = 8,
    timeout: Annotated[float, typer.Option("--timeout", help="openai: seconds per request before a retry.")] = 60.0,
    retries: Annotated[int, typer.Option("--retries", help="openai: retries on timeouts, 5xx and 429.")] = 3,
    methods: Annotated[str, typer.Option("--methods", help="Comma-separated: mmssr, scale, ds2.")] = "mmssr",
    capabilities: Annotated[Optional[str], typer.Option(
        "--capabilities", help="Comma-separated mmSSR capabilities to rate (default: all 14).",
    )] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="hf: requests per generate() call.")] = 8,
    device: Annotated[str, typer.Option("--device", help="hf: torch device (cpu, cuda, cuda:1...).")] = "cpu",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Longest answer generated.")] = 256,
    task_field: Annotated[Optional[str], typer.Option(
        "--task-field", help="Record field naming its task/source (default: the image path's top folder).",
    )] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Judge only the first N good records.")] = None,
    max_failures: Annotated[float, typer.Option(
        "--max-failures", help="Share of questions that may get no usable answer before the run is stopped as a "
                               "systematic error.")] = DEFAULT_MAX_FAILURE_RATE,
) -> None:
    """Rate pool samples with a judge VLM (cached: a rerun asks only what is not answered yet)."""
    if out is None and into is None:
        typer.echo("error: give --out RUN (a new run) or --into RUN (an existing probe run)", err=True)
        raise typer.Exit(2)
    if not model:
        typer.echo("error: --model is required (hf: a local model folder; openai: the served model name)", err=True)
        raise typer.Exit(2)
    if images is None:
        images = data.resolve().parent
    try:
        if backend == "hf":
            from mmsift.judge.hf_backend import HFBackend

            judge = HFBackend(model_dir=model, device=device, batch_size=batch_size, max_new_tokens=max_new_tokens)
        elif backend == "openai":
            from mmsift.judge.http_backend import OpenAIBackend

            judge = OpenAIBackend(base_url=base_url, model=model, api_key_env=api_key_env, concurrency=concurrency,
                                  timeout=timeout, retries=retries, max_tokens=max_new_tokens)
        else:
            typer.echo(f"error: --backend must be hf or openai, got {backend!r}", err=True)
            raise typer.Exit(2)
        result = run_judge(data, images=images, backend=judge, out=out, into=into, methods=methods,
                           capabilities=capabilities, task_field=task_field, limit=limit,
                           chunk_size=max(64, batch_size), max_failure_rate=max_failures)
    except SystematicFailure as e:
        fail_systematic(e)
    except (OSError, ValueError, KeyError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    for line in result.summary_lines():
        typer.echo(line)
    if result.n_asked and result.n_no_answer == result.n_asked:
        where = f"the server at {base_url}" if backend == "openai" else f"the model {model}"
        typer.echo(f"error: none of the {result.n_asked} questions asked got an answer from {where} "
                   "(see the warnings above); rerun once it answers", err=True)
        raise typer.Exit(1)
