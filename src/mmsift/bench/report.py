"""The bench's results: one row per cell (method or reference, budget) over its seed pairs, as Markdown, CSV, JSON.

``score`` of a run is the mean accuracy over the config's score columns; a cell shows the mean over its runs with
a 95% bootstrap interval, each score column's mean, and, for every selection, the paired difference from
``random`` at the same budget with its interval and verdict (:mod:`mmsift.bench.stats`). Post-training rows
show how much of ``full-clean``'s score they recover. The per-run rows go to ``runs.csv`` and ``results.json``;
the per-item correctness of every run to ``items.npz`` (for any other statistic).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from mmsift.bench.calibration import CALIBRATION
from mmsift.bench.html import format_cell, write_html
from mmsift.bench.stats import cell_interval, paired_difference

REFERENCE = ("full", "full-clean")
ITEMS_KEY = "{}|{:g}|{}|{}"  # items.npz: label|budget|seed|column -> per-item correctness of that run


def reference_of(label: str) -> str:
    """The row a row is paired against: full-clean against full, post-training against post:random, the rest
    against random."""
    if label == "full-clean":
        return "full"
    return "post:random" if label.startswith("post:") else "random"


def read_items(path) -> dict:
    """``items.npz`` as written by :func:`write_results`: ``{(label, budget): {seed: {column: bool array}}}``."""
    cells: dict = {}
    with np.load(path) as data:
        for key in data.files:
            label, budget, seed, column = key.rsplit("|", 3)
            cells.setdefault((label, float(budget)), {}).setdefault(int(seed), {})[column] = data[key]
    return cells


def _cells(runs) -> dict[tuple, list]:
    cells: dict[tuple, list] = {}
    for r in runs:
        cells.setdefault((r.label, r.budget), []).append(r)
    for v in cells.values():
        v.sort(key=lambda r: r.seed)
    return cells


def _mean(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and not math.isnan(r[key])]
    return float(np.mean(vals)) if vals else float("nan")


def summarise(runs, cfg, meta: dict) -> list[dict]:
    """Cell rows; also adds the sensitivity line, the column learnability and post-training shares to ``meta``.

    Cell rows and verdicts use the config's seed pairs; the sensitivity lines (one per budget) also the extra
    ones (``sensitivity_seeds``, oracle and random only).
    """
    cols = tuple(meta.get("score_columns") or cfg.preset.score_columns)
    every = _cells(runs)
    main = set(cfg.seeds)
    cells = {k: [r for r in v if r.seed in main or k[0].startswith("post:")] for k, v in every.items()}
    correct = {k: [r.correct for r in v] for k, v in cells.items()}
    rows = []
    for (label, budget), members in cells.items():
        iv = cell_interval(correct[(label, budget)], cols, n_boot=cfg.n_boot, seed=cfg.seed)
        rr = [m.row for m in members]
        row = {"method": label, "budget": budget, "n_kept": round(_mean(rr, "n_kept")), "runs": len(members),
               "score": iv.mean, "score_low": iv.low, "score_high": iv.high}
        for k in sorted({k for m in members for k in m.correct}):
            row[k] = _mean(rr, k)
        for k in ("corrupt_kept", "auroc", "dup_pairs_kept", "steps", "train_s", "eval_s"):
            row[k] = _mean(rr, k)
        for k in dict.fromkeys(k for r in rr for k in r if k.startswith(("masked", "fully_masked"))):
            row[k] = _mean(rr, k)  # token-cleaning twins: what the masks took (bench.tokens.masked_metrics)
        ref = (reference_of(label), budget)
        if label not in REFERENCE and label != ref[0] and ref in cells:
            d = paired_difference(correct[(label, budget)], correct[ref], cols, n_boot=cfg.n_boot, seed=cfg.seed)
            row.update(vs_random=d.mean, vs_random_low=d.low, vs_random_high=d.high, verdict=d.verdict())
        rows.append(row)
    _full_clean_shares(rows)
    if any(label == "oracle" for label, _ in every):
        meta["sensitivity"] = sensitivity(every, {k: [r.correct for r in v] for k, v in every.items()}, cols, cfg)
    meta["learnable"] = learnability(rows, meta.get("eval", {}).get("chance", {}))
    meta["score_columns"] = list(cols)
    if ("full-clean", 1.0) in cells and ("full", 1.0) in cells:
        d = paired_difference(correct[("full-clean", 1.0)], correct[("full", 1.0)], cols, n_boot=cfg.n_boot,
                              seed=cfg.seed)
        meta["clean_gap"] = {"mean": d.mean, "low": d.low, "high": d.high,
                             "text": f"full-clean - full = {d.text()} (paired, 95%): "
                                     + ("the marked records cost score" if d.low > 0 else
                                        "no measurable cost of the marked records" if d.high >= 0 else
                                        "the marked records *help* the score")}
    meta["referee"] = referee(rows, sorted({r["budget"] for r in rows if "vs_random" in r
                                            and not r["method"].startswith("post:")}),
                              blind=[x["budget"] for x in meta.get("sensitivity") or [] if x.get("can_judge") is False])
    if getattr(cfg, "tokens", None) is not None:
        _token_rows(rows, correct, cols, cfg, meta)
    return rows


def _token_rows(rows: list[dict], correct: dict, cols, cfg, meta: dict) -> None:
    """Token-cleaning twins: paired against their untokened rows, explained, and one referee line."""
    from mmsift.bench.tokens import explain_lines, paired_rows, referee_line

    paired_rows(rows, correct, cols, n_boot=cfg.n_boot, seed=cfg.seed)
    meta.setdefault("tokens", {}).update(keep=cfg.tokens, lines=explain_lines(rows))
    line = referee_line(rows, cfg.tokens)
    if line:
        meta["referee"].append(line)


def smallest_detectable(rows: list[dict], budget) -> float | None:
    """The smallest difference from random this run could call at ``budget``: the median half-width of the
    paired intervals against random there (a method must differ by more than about this to get a verdict)."""
    widths = [(r["vs_random_high"] - r["vs_random_low"]) / 2 for r in rows
              if r["budget"] == budget and "vs_random" in r and not r["method"].startswith("post:")]
    return float(np.median(widths)) if widths else None


def referee(rows: list[dict], budgets, *, blind=()) -> list[str]:
    """One line per budget: the best method better than random there, or why none is named. ``blind``: budgets
    where the sensitivity line could not tell oracle from random; their lines say so."""
    lines = []
    for b in budgets:
        here = [r for r in rows if r["budget"] == b and "vs_random" in r and r["method"] not in CALIBRATION
                and not r["method"].startswith("post:")]
        sdd = smallest_detectable(rows, b)
        sdd_text = f"smallest detectable difference {sdd:.3f}" if sdd is not None else "no paired cells"
        better = [r for r in here if r.get("verdict") == "better"]
        pct = f"{100 * b:g}%" if b <= 1 else f"{b:g} records"
        if better:
            best = max(better, key=lambda r: r["vs_random"])
            lines.append(f"{pct}: best {best['method']} {best['vs_random']:+.3f} [{best['vs_random_low']:+.3f}, "
                         f"{best['vs_random_high']:+.3f}] vs random")
        elif here:
            worse = sorted(r["method"] for r in here if r.get("verdict") == "worse")
            lines.append(f"{pct}: no method beats random here ({sdd_text})"
                         + (f"; worse than random: {', '.join(worse)}" if worse else ""))
        else:
            lines.append(f"{pct}: no method to judge ({sdd_text})")
        if b in blind:
            lines[-1] += "; the bench could not tell oracle from random at this budget, so read this line as weak"
    return lines


def _full_clean_shares(rows: list[dict]) -> None:
    """``pct_full_clean`` = score / full-clean's; for post-training rows also ``gap_closed`` =
    (post - full) / (full-clean - full), the share of what corruption cost that post-training won back."""
    by = {r["method"]: r["score"] for r in rows if r["method"] in REFERENCE}
    clean, full = by.get("full-clean"), by.get("full")
    for r in rows:
        if clean:
            r["pct_full_clean"] = 100.0 * r["score"] / clean
        if r["method"].startswith("post:") and clean is not None and full is not None and clean != full:
            r["gap_closed"] = (r["score"] - full) / (clean - full)


def sensitivity(cells, correct, cols, cfg) -> list[dict]:
    """oracle - random, paired, at every budget that has both: the bench can judge methods at a budget only if
    that line excludes 0 (there a clean subset of the pool's task mix trains a measurably better model)."""
    budgets = sorted(b for (label, b) in cells if label == "oracle" and ("random", b) in cells)
    if not budgets:
        return [{"text": "sensitivity: no oracle and random cells at a common budget; the bench cannot check "
                         "itself"}]
    return [_sensitivity_at(b, correct, cols, cfg) for b in budgets]


def _sensitivity_at(b, correct, cols, cfg) -> dict:
    oracle, random = correct[("oracle", b)], correct[("random", b)]
    if len(oracle) != len(random):
        return {"budget": b, "can_judge": False,
                "text": f"sensitivity: oracle and random at {b:g} have different seed pairs; cannot pair them"}
    d = paired_difference(oracle, random, cols, n_boot=cfg.n_boot, seed=cfg.seed)
    ok = d.low > 0
    text = (f"sensitivity: oracle - random at {b:g} = {d.text()} (95% interval, {len(oracle)} seed "
            f"pairs x {sum(len(oracle[0][c]) for c in cols)} test items); "
            + ("the bench can tell a clean subset from a random one at this budget" if ok else
               "the interval contains 0 or is below it: the bench cannot judge methods at this budget"))
    return {"budget": b, "mean": d.mean, "low": d.low, "high": d.high, "can_judge": ok, "text": text}


def learnability(rows: list[dict], chance: dict) -> dict:
    """Every evaluated column: full-clean's accuracy against type-aware chance."""
    clean = next((r for r in rows if r["method"] == "full-clean"), None)
    if clean is None:
        return {}
    return {k: {"full_clean": clean[k], "chance": chance[k]} for k in sorted(chance) if k in clean}


HEAD = (("method", "method", "{}"), ("budget", "budget", "{:g}"), ("n_kept", "n", "{}"), ("runs", "runs", "{}"),
        ("score", "score", "{:.3f}"), ("score_ci", "95% interval", "{}"))
TAIL = (("vs_random_ci", "vs random (paired, 95%)", "{}"), ("verdict", "verdict", "{}"),
        ("vs_plain_ci", "vs untokened (paired, 95%)", "{}"), ("plain_verdict", "tokens verdict", "{}"),
        ("masked", "masked", "{:.1%}"), ("masked_bad", "masked (marked)", "{:.1%}"),
        ("masked_clean", "masked (clean)", "{:.1%}"),
        ("pct_full_clean", "% of full-clean", "{:.1f}"), ("gap_closed", "gap closed", "{:.2f}"),
        ("corrupt_kept", "corrupt kept", "{:.2f}"), ("auroc", "AUROC", "{:.3f}"),
        ("dup_pairs_kept", "dup pairs", "{:.0f}"), ("steps", "steps", "{:.0f}"), ("train_s", "train s", "{:.1f}"))
PRESET_HEADERS = {"color": "color", "yesno": "yes/no", "mc_clean": "MC clean", "mc_perm": "MC perm",
                  "mc_sym": "MC sym", "mc_both": "MC both"}


def table_columns(rows: list[dict], meta: dict) -> list[tuple]:
    """(key, header, format) of the table: the head, the score columns, the other evaluated columns, the tail."""
    score_cols = list(meta.get("score_columns") or [])
    evaluated = list((meta.get("eval") or {}).get("chance") or {})
    extra = [c for c in evaluated if c not in score_cols and c not in ("vqa", "all_open")]
    mid = [(c, PRESET_HEADERS.get(c, c), "{:.3f}") for c in score_cols + extra]
    return [c for c in list(HEAD) + mid + list(TAIL) if any(c[0] in r for r in rows)]


TABLE = (  # (column, header, format)
    ("method", "method", "{}"), ("budget", "budget", "{:g}"), ("n_kept", "n", "{}"), ("runs", "runs", "{}"),
    ("score", "score", "{:.3f}"), ("score_ci", "95% interval", "{}"), ("shape", "shape", "{:.3f}"),
    ("color", "color", "{:.3f}"), ("ocr", "ocr", "{:.3f}"), ("yesno", "yes/no", "{:.3f}"),
    ("mc_clean", "MC clean", "{:.3f}"), ("mc_perm", "MC perm", "{:.3f}"), ("mc_sym", "MC sym", "{:.3f}"),
    ("mc_both", "MC both", "{:.3f}"), ("vs_random_ci", "vs random (paired, 95%)", "{}"),
    ("verdict", "verdict", "{}"), ("pct_full_clean", "% of full-clean", "{:.1f}"),
    ("gap_closed", "gap closed", "{:.2f}"), ("corrupt_kept", "corrupt kept", "{:.2f}"), ("auroc", "AUROC", "{:.3f}"),
    ("dup_pairs_kept", "dup pairs", "{:.0f}"), ("steps", "steps", "{:.0f}"), ("train_s", "train s", "{:.1f}"),
)


def _display(r: dict) -> dict:
    d = dict(r)
    d["score_ci"] = f"[{r['score_low']:.3f}, {r['score_high']:.3f}]"
    if "vs_random" in r:
        d["vs_random_ci"] = f"{r['vs_random']:+.3f} [{r['vs_random_low']:+.3f}, {r['vs_random_high']:+.3f}]"
    if "vs_plain" in r:
        d["vs_plain_ci"] = f"{r['vs_plain']:+.3f} [{r['vs_plain_low']:+.3f}, {r['vs_plain_high']:+.3f}]"
    return d


def markdown(rows: list[dict], meta: dict) -> str:
    shown = [_display(r) for r in rows]
    cols = table_columns(shown, meta)
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in shown:
        lines.append("| " + " | ".join(format_cell(r.get(c), f) for c, _, f in cols) + " |")
    lines.append("")
    if meta.get("score_columns"):
        lines.append("score = mean accuracy over " + ", ".join(meta["score_columns"]))
    lines.extend(line["text"] for line in meta.get("sensitivity") or [])
    if meta.get("clean_gap"):
        lines.append(meta["clean_gap"]["text"])
    if meta.get("learnable"):
        lines.append("full-clean vs chance per column: " + ", ".join(
            f"{k} {v['full_clean']:.3f} ({v['chance']:.3f})" for k, v in meta["learnable"].items()))
    elif (meta.get("eval") or {}).get("chance"):
        lines.append("chance per column: " + ", ".join(f"{k} {v:.3f}" for k, v in meta["eval"]["chance"].items()))
    shuffle = (meta.get("warmup") or {}).get("image_shuffle") or {}
    if shuffle.get("n_records"):
        lines.append(f"probe proxy image-shuffle test: answer loss +{shuffle['increase']:.3f} when images are "
                     f"swapped between {shuffle['n_records']} records ({shuffle['loss_own']:.3f} -> "
                     f"{shuffle['loss_shuffled']:.3f})")
    if meta.get("stage_seconds"):
        lines.append("Stage wall times (s): " + ", ".join(f"{k} {v}" for k, v in meta["stage_seconds"].items()))
    if meta.get("pool"):
        defects = meta["pool"].get("defects") or {}
        field = meta["pool"].get("truth_field")
        lines.append(f"Pool: {meta['pool']['n_records']} records"
                     + (("; injected: " if field == "bench" else f"; truth field {field!r}: ")
                        + ", ".join(f"{k} {v}" for k, v in defects.items()) if defects else
                        "; no truth field (no oracle rows)"))
    if (meta.get("eval") or {}).get("summary"):
        lines.append(meta["eval"]["summary"])
    for m, why in sorted(meta.get("skipped", {}).items()):
        lines.append(f"Skipped {m}: {why}")
    if (meta.get("tokens") or {}).get("lines"):
        lines.append("")
        lines.append(f"Token cleaning (keep {meta['tokens']['keep']:g}; each +tokens row trains on its untokened "
                     "row's records and seeds; masked shares of their answer tokens):")
        lines.extend(meta["tokens"]["lines"])
        lines.extend(f"warning: {w}" for w in meta["tokens"].get("warnings") or [])
    if meta.get("referee"):
        lines.append("")
        lines.append("Referee (each budget: the best method better than random, paired 95% interval):")
        lines.extend(meta["referee"])
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def write_results(rows: list[dict], runs, meta: dict, out) -> dict:
    out = Path(out)
    tasks, marked = meta.pop("_tasks", None), meta.pop("_marked", None)
    makeup = subset_makeup(runs, tasks, marked)
    md = markdown(rows, meta)
    (out / "results.md").write_text(md, encoding="utf-8")
    _write_csv(out / "results.csv", rows)
    run_rows = [r.row for r in runs]
    _write_csv(out / "runs.csv", run_rows)
    np.savez_compressed(out / "items.npz", **{ITEMS_KEY.format(r.label, r.budget, r.seed, k): v
                                              for r in runs for k, v in r.correct.items()})
    paths = {"markdown": str(out / "results.md"), "csv": str(out / "results.csv"), "runs": str(out / "runs.csv"),
             "json": str(out / "results.json"), "items": str(out / "items.npz")}
    result = {"rows": rows, "runs": run_rows, "meta": meta, "paths": paths}
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str, allow_nan=True) + "\n",
                                      encoding="utf-8")

    paths["html"] = str(write_html(rows, meta, out / "results.html", subsets=makeup,
                                    table_columns=table_columns, display=_display))
    result["markdown"] = md
    return result


def subset_makeup(runs, tasks, marked) -> dict:
    """Per cell, its first seed pair: share of each task and of marked records (truth field) in the subset."""
    out: dict = {}
    for r in sorted(runs, key=lambda r: r.seed):
        key = f"{r.label} @ {r.budget:g}"
        if key in out or tasks is None:
            continue
        kept = np.asarray(r.kept, dtype=np.int64)
        names, counts = np.unique(np.asarray(tasks, dtype=object)[kept], return_counts=True) if len(kept) else ([], [])
        out[key] = {"seed": r.seed, "n": int(len(kept)),
                    "tasks": {str(n): round(float(c) / max(1, len(kept)), 3) for n, c in zip(names, counts)},
                    "marked": (round(float(np.asarray(marked)[kept].mean()), 3)
                               if marked is not None and len(kept) else None)}
    return out
