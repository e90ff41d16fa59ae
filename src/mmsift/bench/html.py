"""``results.html``: the bench's results as one offline page (no script, no external file).

Sections: the referee's lines; the score of every method per budget as a bar with its 95% interval drawn against
random's band at that budget (inline SVG); the verdict grid (method x budget); with ``--tokens``, the
token-cleaning twins against their untokened rows; the table (as results.md);
subset make-up (task shares, marked share). Every text that comes from data (method and recipe names, task and
column names, notes) goes through :func:`html.escape`.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

COLOURS = {"better": "#1a7f37", "worse": "#cf222e", "undecided": "#9a6700"}


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def format_cell(value, fmt: str) -> str:
    """``value`` formatted with ``fmt``; '–' for a missing value, the plain text when ``fmt`` does not apply."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _interval_chart(rows: list[dict], budget) -> str:
    """One SVG per budget: a line per method (score and 95% interval), random's interval as a shaded band."""
    here = [r for r in rows if r["budget"] == budget]
    if not here:
        return ""
    lo = min(r["score_low"] for r in here + [r for r in rows if r["method"] in ("full", "full-clean")])
    hi = max(r["score_high"] for r in here + [r for r in rows if r["method"] in ("full", "full-clean")])
    lo, hi = max(0.0, lo - 0.02), min(1.0, hi + 0.02)
    width, left, row_h = 640, 170, 22
    height = row_h * (len(here) + 1) + 20

    def x(v: float) -> float:
        return left + (width - left - 20) * (v - lo) / max(1e-9, hi - lo)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="scores at budget {_e(budget)}">']
    rnd = next((r for r in here if r["method"] == "random"), None)
    if rnd is not None:
        parts.append(f'<rect x="{x(rnd["score_low"]):.1f}" y="0" width="{x(rnd["score_high"]) - x(rnd["score_low"]):.1f}" '
                     f'height="{height - 20}" fill="#d0d7de" opacity="0.6"><title>random 95% interval</title></rect>')
    for k, r in enumerate(here):
        y = row_h * (k + 0.5) + 4
        colour = COLOURS.get(r.get("verdict"), "#57606a")
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="12">{_e(r["method"])}</text>')
        parts.append(f'<line x1="{x(r["score_low"]):.1f}" x2="{x(r["score_high"]):.1f}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="{colour}" stroke-width="3"/>')
        parts.append(f'<circle cx="{x(r["score"]):.1f}" cy="{y:.1f}" r="4" fill="{colour}"><title>'
                     f'{_e(r["method"])}: {r["score"]:.3f} [{r["score_low"]:.3f}, {r["score_high"]:.3f}]'
                     f'</title></circle>')
    axis_y = height - 14
    for t in range(5):
        v = lo + (hi - lo) * t / 4
        parts.append(f'<text x="{x(v):.1f}" y="{axis_y + 10}" text-anchor="middle" font-size="10">{v:.2f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _verdict_grid(rows: list[dict], budgets: list) -> str:
    methods = list(dict.fromkeys(r["method"] for r in rows if "verdict" in r and r["budget"] in budgets))
    if not methods:
        return "<p>No paired comparison with random in this run.</p>"
    cells = {(r["method"], r["budget"]): r for r in rows}
    out = ["<table class='grid'><tr><th>method</th>" + "".join(f"<th>{_e(f'{b:g}')}</th>" for b in budgets) + "</tr>"]
    for m in methods:
        tds = []
        for b in budgets:
            r = cells.get((m, b))
            if r is None or "verdict" not in r:
                tds.append("<td>–</td>")
                continue
            v = r["verdict"]
            tds.append(f"<td style='background:{COLOURS.get(v, '#fff')}22'><b style='color:{COLOURS.get(v, '#000')}'>"
                       f"{_e(v)}</b><br><small>{r['vs_random']:+.3f} [{r['vs_random_low']:+.3f}, "
                       f"{r['vs_random_high']:+.3f}]</small></td>")
        out.append(f"<tr><th>{_e(m)}</th>{''.join(tds)}</tr>")
    out.append("</table>")
    return "".join(out)


def _table(rows: list[dict], meta: dict, table_columns, display) -> str:
    shown = [display(r) for r in rows]
    cols = table_columns(shown, meta)
    head = "".join(f"<th>{_e(h)}</th>" for _, h, _ in cols)
    body = "".join("<tr>" + "".join(f"<td>{_e(format_cell(r.get(c), f))}</td>" for c, _, f in cols) + "</tr>"
                   for r in shown)
    return f"<table><tr>{head}</tr>{body}</table>"


def _makeup(subsets: dict) -> str:
    if not subsets:
        return "<p>No subset make-up recorded.</p>"
    tasks = sorted({t for s in subsets.values() for t in s["tasks"]})
    head = "".join(f"<th>{_e(t)}</th>" for t in tasks)
    body = []
    for key, s in subsets.items():
        cells = "".join(f"<td>{format_cell(s['tasks'].get(t, 0.0), '{:.0%}')}</td>" for t in tasks)
        body.append(f"<tr><th>{_e(key)}</th><td>{s['n']}</td>{cells}<td>{format_cell(s.get('marked'), '{:.0%}')}</td></tr>")
    return (f"<table><tr><th>cell (seed {subsets[next(iter(subsets))]['seed']})</th><th>n</th>{head}"
            f"<th>marked</th></tr>{''.join(body)}</table>")


def _token_section(tokens: dict) -> str:
    """Token-cleaning twins (``--tokens``): each against its untokened row, with what was masked."""
    if not tokens.get("lines"):
        return ""
    return (f"<h2>Token cleaning (keep {_e(tokens.get('keep'))})</h2><p>Each +tokens row trains on the same records "
            "with the same seed as its untokened row, the dropped answer tokens out of the loss; paired difference "
            "from that row and the masked share of its records' answer tokens.</p>"
            f"<div class='ref'>{_e(chr(10).join(tokens['lines']))}</div>")


STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#1f2328;max-width:1400px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}td,th{border:1px solid #d0d7de;padding:3px 6px;
text-align:right}th{background:#f6f8fa}table.grid td{text-align:center}.ref{font-family:monospace;
background:#f6f8fa;padding:8px;white-space:pre-wrap}h2{margin-top:28px}"""


def render_html(rows: list[dict], meta: dict, *, subsets: dict | None = None, table_columns=None,
                display=None) -> str:
    """The page; ``table_columns`` and ``display`` are the Markdown table's (``bench.report``), so both tables
    show the same columns."""
    budgets = sorted({r["budget"] for r in rows if r["method"] not in ("full", "full-clean")
                      and not str(r["method"]).startswith("post:")})
    pool = meta.get("pool") or {}
    lines = list(meta.get("referee") or [])
    sens = [x["text"] for x in meta.get("sensitivity") or []]
    if (meta.get("clean_gap") or {}).get("text"):
        sens.append(meta["clean_gap"]["text"])
    charts = "".join(f"<h3>budget {_e(f'{b:g}')}</h3>{_interval_chart(rows, b)}" for b in budgets)
    chance = (meta.get("eval") or {}).get("chance") or {}
    learn = meta.get("learnable") or {}
    chance_text = ", ".join(f"{k} {v:.3f}" + (f" (full-clean {learn[k]['full_clean']:.3f})" if k in learn else "")
                            for k, v in chance.items())
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>mmsift bench results</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>mmsift bench</h1>",
        f"<p>Pool {_e(pool.get('path', ''))}: {_e(pool.get('n_records', ''))} records; score = mean accuracy over "
        f"{_e(', '.join(meta.get('score_columns') or []))}. {_e((meta.get('eval') or {}).get('summary', ''))}</p>",
        "<h2>Referee</h2>",
        f"<div class='ref'>{_e(chr(10).join(lines)) or 'no budget judged'}</div>",
        "".join(f"<p>{_e(x)}</p>" for x in sens),
        f"<p>Chance per column: {_e(chance_text)}</p>" if chance_text else "",
        "<h2>Score per method and budget</h2><p>Dot: mean score over seed pairs; line: 95% interval (items and "
        "seed pairs resampled); grey band: random's 95% interval at that budget. Colour: verdict against random "
        "(paired): green better, red worse, amber undecided.</p>",
        charts,
        # Budget 1 holds only full's token-cleaning twin (paired with full, not random): no column for it here.
        "<h2>Verdicts</h2>", _verdict_grid(rows, [b for b in budgets if any(r["budget"] == b and "verdict" in r
                                                                               for r in rows)]),
        _token_section(meta.get("tokens") or {}),
        "<h2>Table</h2>", _table(rows, meta, table_columns, display) if table_columns else "",
        "<h2>Subset make-up</h2><p>Share of each task in the trained subset and share of records the truth field "
        "marks.</p>", _makeup(subsets or {}),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def write_html(rows: list[dict], meta: dict, path, *, subsets: dict | None = None, table_columns=None,
               display=None) -> Path:
    path = Path(path)
    path.write_text(render_html(rows, meta, subsets=subsets, table_columns=table_columns, display=display),
                    encoding="utf-8")
    return path
