"""``mmsift select`` and ``mmsift methods``."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def _parse_params(params: list[str]) -> dict:
    """``key=value`` pairs; values are read as JSON when they parse (numbers, true/false), else as strings."""
    out = {}
    for p in params:
        if "=" not in p:
            raise typer.BadParameter(f"--param {p!r} must look like key=value")
        key, value = p.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def select_command(
    run: Path = typer.Argument(..., help="Run directory written by `mmsift probe` (or built from your own arrays)."),
    method: str = typer.Option(..., "--method", "-m", help="Selection method (see `mmsift methods`)."),
    budget: str = typer.Option(..., "--budget", "-b", help="Fraction of the pool (0.15 or 15%) or a count (5000)."),
    out: Path = typer.Option(..., "--out", "-o", help="Subset file: .json, .jsonl or .parquet."),
    seed: int = typer.Option(0, "--seed", help="Seed for every random choice; same seed, same ids."),
    param: list[str] = typer.Option([], "--param", "-p", metavar="KEY=VALUE",
                                    help="Method parameter key=value (repeatable)."),
    dedup: str = typer.Option(None, "--dedup", help="Remove near-duplicates first with this method (e.g. semdedup)."),
    balance_tasks: bool = typer.Option(False, "--balance-tasks", help="Keep each task's share of the pool."),
    data: Path = typer.Option(None, "--data", help="The pool file, when it moved since the probe ran."),
    reference_run: Path = typer.Option(None, "--reference-run", help="Run of the same pool whose loss is read as loss_ref (selfcheck: the proxy before fine-tuning)."),
    truth_field: str = typer.Option(None, "--truth-field", help="Record field marking known-bad samples (a.b for nested): report AUROC."),
    scores: Path = typer.Option(None, "--scores", help="Write every record's score, components and kept/dropped (.csv, .parquet or .jsonl)."),
    html: Path = typer.Option(None, "--html", help="Write a self-contained HTML report of the selection (opens offline)."),
) -> None:
    """Score every sample of RUN with a method and write the kept records, exactly as read, to OUT."""
    from mmsift.budget import parse_budget
    from mmsift.data.io import FORMATS, check_subset_format, pool_exists, read_pool
    from mmsift.explain import describe_components, score_meaning
    from mmsift.report import selection_settings, truth_labels, truth_summary, write_scores, write_selection
    from mmsift.select import select_run
    from mmsift.store import SignalStore, StoreError

    try:
        if out.is_dir():
            raise ValueError(f"--out {out} is a folder; give the subset's file name (.json, .jsonl or .parquet)")
        if out.suffix.lower() not in FORMATS:
            raise ValueError(f"--out {out}: a subset is written as .json, .jsonl or .parquet (got "
                             f"{out.suffix or 'no suffix'!r}); the records' nested conversations do not fit CSV")
        if scores is not None and scores.suffix.lower() not in (".csv", ".parquet", ".pq", ".jsonl", ".ndjson"):
            raise ValueError(f"--scores {scores}: use .csv, .parquet or .jsonl")
        store = SignalStore(run)
        pool_path = data or store.manifest.get("pool")
        if not pool_path:
            raise typer.BadParameter("the run does not say which pool it came from: pass --data POOL")
        pool_path = Path(pool_path)
        if not pool_exists(pool_path):
            raise typer.BadParameter(f"pool {pool_path} not found: pass --data POOL")
        params = _parse_params(param)
        pool = read_pool(pool_path, task_field=store.manifest.get("task_field"))
        check_subset_format(pool, out)
        selection = select_run(str(run), method, parse_budget(budget), seed=seed, params=params,
                               dedup=dedup, balance_tasks=balance_tasks,
                               reference_run=str(reference_run) if reference_run else None)
        extra = {"seed": seed, "params": params, "budget": budget, "run": str(run)}
        warning = proxy_warning_of(store.manifest)
        if warning:
            extra["proxy_warning"] = warning
        settings = selection_settings(run=run, method=method, budget=budget, seed=seed, params=params, dedup=dedup,
                                      balance_tasks=balance_tasks, reference_run=reference_run, pool=pool_path,
                                      out=out)
        if truth_field:
            by_index = {r.index: r for r in pool.records}
            signals_index = store.load([]).index
            labels = truth_labels(by_index, signals_index, truth_field)
            extra["truth"] = truth_summary(selection, signals_index, labels)
    except (StoreError, KeyError, ValueError) as e:
        typer.echo(f"error: {e.args[0] if e.args else e}", err=True)
        raise typer.Exit(2) from None
    except OSError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    try:
        report = write_selection(selection, pool, out, skipped=store.manifest.get("skipped", []), extra=extra,
                                 settings=settings)
        meaning = score_meaning(method, params)
        if scores is not None or html is not None:
            keys = store.load([])
        if scores is not None:
            write_scores(selection, keys.ids, keys.index, keys.tasks, scores, meaning=meaning)
        if html is not None:
            from mmsift.html_report import write_html_report

            write_html_report(html, selection=selection, store=store, pool=pool, report=report, meaning=meaning,
                              images=store.manifest.get("images"))
    except OSError as e:
        typer.echo(f"error: cannot write the subset to {out}: {e}", err=True)
        raise typer.Exit(1) from None
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if extra.get("proxy_warning"):
        typer.echo(f"warning: {extra['proxy_warning']}")
    n_budget = parse_budget(budget)
    if isinstance(n_budget, int) and n_budget >= selection.n_total:
        typer.echo(f"note: the budget {n_budget} is not below the {selection.n_total} records scored: every "
                   f"scorable record is kept (nothing was selected)")
    for line in selection.summary_lines():
        if line.startswith("score range") and meaning.sign != 1.0:
            continue  # the ranked score is minus the quantity here; it is printed with its meaning below
        typer.echo(line)
    if len(selection.rows):
        shown = meaning.shown(selection.scores[selection.rows])
        typer.echo(f"scores: {meaning.sentence}; {meaning.label} of the kept records {shown.min():.4g}..{shown.max():.4g}")
    for line in describe_components(selection.details):
        typer.echo(f"  component {line}")
    from mmsift.explain import constant_notes
    from mmsift.html_report import tie_notes

    for note in list(report["task_notes"]) + tie_notes(selection.scores) + constant_notes(selection.details):
        typer.echo(f"note: {note}")
    if report["skipped_records"]:
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(report["skipped_by_kind"].items()))
        typer.echo(f"skipped records (not scored, not in the subset): {report['skipped_records']} ({kinds})")
    if truth_field:
        t = extra["truth"]
        typer.echo(f"truth field {truth_field!r}: flagged {t['flagged_kept']} kept of {t['flagged_in_pool']} in pool "
                   f"({t['flagged_share_kept']:.1%} of subset vs {t['flagged_share_pool']:.1%} of pool)"
                   + (f", AUROC {t['auroc_flagged_low_score']:.3f}" if "auroc_flagged_low_score" in t else ""))
    typer.echo(f"wrote {report['n_kept']} records to {out}, ids to {report['ids']}, report to {report['report']}")
    note = image_path_note(out, store.manifest.get("images"))
    if note:
        typer.echo(f"note: {note}")
    if scores is not None:
        typer.echo(f"scores of all {len(selection.scores)} records -> {scores}")
    if html is not None:
        typer.echo(f"HTML report -> {html}")


def image_path_note(out: Path, images) -> str | None:
    """Records are written exactly as read: their image paths stay relative to the pool's image folder. Say so
    when the subset lands in another folder."""
    if not images:
        return None
    try:
        same = Path(out).parent.resolve() == Path(images).resolve()
    except OSError:
        return None
    if same:
        return None
    return (f"image paths in {out} are relative to {images} (the pool's image folder), as in the pool: give your "
            f"trainer that folder, not {Path(out).parent}")


def proxy_warning_of(manifest: dict) -> str | None:
    """The warm-up's warning about the run's proxy model (it does not read the images), when it left one."""
    model = manifest.get("model")
    path = Path(model) / "warmup.json" if model else None  # mmsift.train.warmup.WARMUP_LOG (no torch import here)
    try:
        info = json.loads(path.read_text(encoding="utf-8")) if path is not None and path.is_file() else None
    except (OSError, ValueError):
        return None
    return info.get("warning") if isinstance(info, dict) else None


def methods_command(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Each selection method, the signals it needs and the paper it implements."""
    from mmsift.scorers import SCORERS
    from mmsift.signals import describe

    rows = [{"name": name, "summary": cls.summary, "requires": list(cls.requires), "optional": list(cls.optional),
             "paper": cls.paper} for name, cls in SCORERS.items()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        typer.echo(f"{row['name']}: {row['summary']}")
        typer.echo(f"    paper: {row['paper']}")
        typer.echo(f"    signals: {_compact_signals(row['requires']) or '(none)'}"
                   + (f" (optional: {', '.join(row['optional'])})" if row["optional"] else ""))
    used = sorted({s for r in rows for s in r["requires"] if not s.startswith(_JUDGE_PREFIXES)})
    typer.echo("\nsignals:")
    for s in used:
        typer.echo(f"  {s}: {describe(s)}")
    typer.echo("  cap_*: judge rating 0-5 per capability; style_*: judge label per interaction style (mmsift judge)")


_JUDGE_PREFIXES = ("cap_", "style_")


def _compact_signals(names: list[str]) -> str:
    """List signal names, folding the judge's many per-capability/per-style columns into ``cap_* (14)``."""
    plain = [n for n in names if not n.startswith(_JUDGE_PREFIXES)]
    folded = [f"{p}* ({sum(n.startswith(p) for n in names)})" for p in _JUDGE_PREFIXES
              if any(n.startswith(p) for n in names)]
    return ", ".join(plain + folded)
