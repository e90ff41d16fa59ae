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

from mmsift.bench.stats import cell_interval, paired_difference

REFERENCE = ("full", "full-clean")
SENSITIVITY_BUDGET = 0.15


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

    Cell rows and verdicts use the config's seed pairs; the sensitivity line also the extra ones
    (``sensitivity_seeds``, oracle and random only).
    """
    cols = tuple(cfg.score_columns)
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
        ref = ("post:random", budget) if label.startswith("post:") else ("random", budget)
        if label not in REFERENCE and label != ref[0] and ref in cells:
            d = paired_difference(correct[(label, budget)], correct[ref], cols, n_boot=cfg.n_boot, seed=cfg.seed)
            row.update(vs_random=d.mean, vs_random_low=d.low, vs_random_high=d.high, verdict=d.verdict())
        rows.append(row)
    _full_clean_shares(rows)
    meta["sensitivity"] = sensitivity(every, {k: [r.correct for r in v] for k, v in every.items()}, cols, cfg)
    meta["learnable"] = learnability(rows, meta.get("eval", {}).get("chance", {}))
    meta["score_columns"] = list(cols)
    return rows


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


def sensitivity(cells, correct, cols, cfg) -> dict:
    """oracle - random at the budget nearest 15%, paired; the bench can judge methods only if it excludes 0."""
    budgets = sorted({b for (label, b) in cells if label == "oracle" and (("random", b) in cells)},
                     key=lambda b: abs(b - SENSITIVITY_BUDGET))
    if not budgets:
        return {"text": "sensitivity: no oracle and random cells at a common budget; the bench cannot check itself"}
    b = budgets[0]
    if len(correct[("oracle", b)]) != len(correct[("random", b)]):
        return {"text": f"sensitivity: oracle and random at {b:g} have different seed pairs; cannot pair them"}
    d = paired_difference(correct[("oracle", b)], correct[("random", b)], cols, n_boot=cfg.n_boot, seed=cfg.seed)
    ok = d.low > 0
    text = (f"sensitivity: oracle - random at {b:g} = {d.text()} (95% interval, {len(correct[('oracle', b)])} seed "
            f"pairs x {sum(len(correct[('oracle', b)][0][c]) for c in cols)} test items); "
            + ("the bench can tell a clean subset from a random one at this budget" if ok else
               "the interval contains 0 or is below it: the bench cannot judge methods at this budget"))
    return {"budget": b, "mean": d.mean, "low": d.low, "high": d.high, "can_judge": ok, "text": text}


def learnability(rows: list[dict], chance: dict) -> dict:
    """Every evaluated column: full-clean's accuracy against type-aware chance."""
    clean = next((r for r in rows if r["method"] == "full-clean"), None)
    if clean is None:
        return {}
    return {k: {"full_clean": clean[k], "chance": chance[k]} for k in sorted(chance) if k in clean}


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


def _cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _display(r: dict) -> dict:
    d = dict(r)
    d["score_ci"] = f"[{r['score_low']:.3f}, {r['score_high']:.3f}]"
    if "vs_random" in r:
        d["vs_random_ci"] = f"{r['vs_random']:+.3f} [{r['vs_random_low']:+.3f}, {r['vs_random_high']:+.3f}]"
    return d


def markdown(rows: list[dict], meta: dict) -> str:
    shown = [_display(r) for r in rows]
    cols = [c for c in TABLE if any(c[0] in r for r in shown)]
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in shown:
        lines.append("| " + " | ".join(_cell(r.get(c), f) for c, _, f in cols) + " |")
    lines.append("")
    if meta.get("score_columns"):
        lines.append("score = mean accuracy over " + ", ".join(meta["score_columns"]))
    if meta.get("sensitivity"):
        lines.append(meta["sensitivity"]["text"])
    if meta.get("learnable"):
        lines.append("full-clean vs chance per column: " + ", ".join(
            f"{k} {v['full_clean']:.3f} ({v['chance']:.3f})" for k, v in meta["learnable"].items()))
    shuffle = (meta.get("warmup") or {}).get("image_shuffle") or {}
    if shuffle.get("n_records"):
        lines.append(f"probe proxy image-shuffle test: answer loss +{shuffle['increase']:.3f} when images are "
                     f"swapped between {shuffle['n_records']} records ({shuffle['loss_own']:.3f} -> "
                     f"{shuffle['loss_shuffled']:.3f})")
    if meta.get("stage_seconds"):
        lines.append("Stage wall times (s): " + ", ".join(f"{k} {v}" for k, v in meta["stage_seconds"].items()))
    if meta.get("pool"):
        lines.append(f"Pool: {meta['pool']['n_records']} records; injected: "
                     + ", ".join(f"{k} {v}" for k, v in meta["pool"]["defects"].items()))
    for m, why in sorted(meta.get("skipped", {}).items()):
        lines.append(f"Skipped {m}: {why}")
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def write_results(rows: list[dict], runs, meta: dict, out) -> dict:
    out = Path(out)
    md = markdown(rows, meta)
    (out / "results.md").write_text(md, encoding="utf-8")
    _write_csv(out / "results.csv", rows)
    run_rows = [r.row for r in runs]
    _write_csv(out / "runs.csv", run_rows)
    np.savez_compressed(out / "items.npz", **{f"{r.label}|{r.budget:g}|{r.seed}|{k}": v
                                              for r in runs for k, v in r.correct.items()})
    paths = {"markdown": str(out / "results.md"), "csv": str(out / "results.csv"), "runs": str(out / "runs.csv"),
             "json": str(out / "results.json"), "items": str(out / "items.npz")}
    result = {"rows": rows, "runs": run_rows, "meta": meta, "paths": paths}
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str, allow_nan=True) + "\n",
                                      encoding="utf-8")
    result["markdown"] = md
    return result
