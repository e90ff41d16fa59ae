"""The command line as a user runs it: select writes the subset exactly as read, ids, a report, truth AUROC."""

import json

import numpy as np
from typer.testing import CliRunner

from mmsift.cli import app
from mmsift.data.io import read_pool
from mmsift.store import from_arrays

runner = CliRunner()


def _run_for_pool(tmp_path, pool_path, n_tokens, skipped=()):
    pool = read_pool(pool_path)
    ids = [r.id for r in pool.records]
    return from_arrays(tmp_path / "run", ids=ids, index=[r.index for r in pool.records],
                       columns={"n_tokens": np.asarray(n_tokens[: len(ids)], float)},
                       meta={"pool": str(pool_path), "skipped": list(skipped)})


def test_select_full_budget_gives_back_identical_records(tmp_path):
    records = [
        {"id": "é1", "image": ["a.png", "b.png"], "extra": {"z": 1, "a": [1, 2]},
         "conversations": [{"from": "human", "value": "<image>\n<image>\n比较?"}, {"from": "gpt", "value": "同じ"}]},
        {"conversations": [{"from": "human", "value": "text only"}, {"from": "gpt", "value": "ok"}], "id": "t",
         "zzz": None},
    ]
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    _run_for_pool(tmp_path, pool, [3, 4])
    out = tmp_path / "sub" / "subset.json"
    res = runner.invoke(app, ["select", str(tmp_path / "run"), "--method", "length", "--budget", "1.0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text(encoding="utf-8"))
    assert got == records and [list(r) for r in got] == [list(r) for r in records]
    assert (tmp_path / "sub" / "subset.ids.txt").read_text(encoding="utf-8").split() == ["é1", "t"]
    report = json.loads((tmp_path / "sub" / "subset.report.json").read_text(encoding="utf-8"))
    assert report["n_kept"] == 2 and report["method"] == "length"


def test_select_reports_skipped_and_truth_auroc(tmp_path):
    records = [{"id": f"r{i}", "bench": {"defect": "wrong_answer" if i < 3 else "none"},
                "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": "a"}]}
               for i in range(10)]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    # Defective records are the shortest here, so "length" ranks them last: AUROC 1.
    _run_for_pool(tmp_path, pool, list(range(10)), skipped=[{"id": "x", "kind": "missing_image", "message": "m"}])
    out = tmp_path / "subset.jsonl"
    res = runner.invoke(app, ["select", str(tmp_path / "run"), "-m", "length", "-b", "5", "-o", str(out),
                              "--truth-field", "bench.defect"])
    assert res.exit_code == 0, res.output
    assert "AUROC 1.000" in res.output and "skipped records (not scored, not in the subset): 1" in res.output
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["r5", "r6", "r7", "r8", "r9"]
    truth = json.loads((tmp_path / "subset.report.json").read_text())["truth"]
    assert truth["flagged_in_pool"] == 3 and truth["flagged_kept"] == 0


def test_select_errors_are_clear(tmp_path):
    res = runner.invoke(app, ["select", str(tmp_path / "none"), "-m", "length", "-b", "0.5", "-o", str(tmp_path / "o.json")])
    assert res.exit_code != 0 and "not a finished mmsift run" in res.output
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps([{"id": "a", "conversations": [{"from": "human", "value": "q"},
                                                              {"from": "gpt", "value": "a"}]}]))
    _run_for_pool(tmp_path, pool, [1])
    res = runner.invoke(app, ["select", str(tmp_path / "run"), "-m", "nope", "-b", "0.5", "-o", str(tmp_path / "o.json")])
    assert res.exit_code == 2 and "unknown method 'nope'" in res.output
    res = runner.invoke(app, ["select", str(tmp_path / "run"), "-m", "length", "-b", "half", "-o", str(tmp_path / "o.json")])
    assert res.exit_code == 2 and "neither a fraction" in res.output


def test_methods_lists_every_registered_method():
    from mmsift.scorers import SCORERS

    res = runner.invoke(app, ["methods", "--json"])
    assert res.exit_code == 0
    assert [m["name"] for m in json.loads(res.output)] == list(SCORERS)


def _check_in_browser(page):
    """When a Chromium is installed: the page loads, and no script from the pool ran (the title is unchanged)."""
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert "<title>mmsift selection</title>" in dom and 'id="bottom"' in dom


def test_select_scores_file_html_and_settings(tmp_path):
    """--scores lists every record with score, components and kept; the report holds the full settings; two
    subsets in one folder get their own ids files; a .csv subset is refused; the HTML escapes record text."""
    import pyarrow.csv as pcsv

    records = [{"id": f"r{i}", "image": f"t{i % 2}/x.png",
                "conversations": [{"from": "human", "value": "<image>\nq" * (i + 1)},
                                  {"from": "gpt", "value": "<script>alert(1)</script>" if i == 9 else
                                  "<script>document.title='pwned'</script>" if i == 0 else "a"}]}
               for i in range(10)]
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps(records))
    rng = np.random.default_rng(0)
    from_arrays(tmp_path / "run", ids=[r["id"] for r in records], index=list(range(10)),
                tasks=[f"t{i % 2}" for i in range(10)],
                columns={"loss": np.linspace(0.5, 3.0, 10), "last": rng.normal(size=(10, 4)).astype(np.float32)},
                meta={"pool": str(pool), "images": str(tmp_path)})
    out = tmp_path / "sel" / "ppl.json"
    res = runner.invoke(app, ["select", str(tmp_path / "run"), "-m", "perplexity", "-b", "4", "-o", str(out),
                              "--seed", "3", "--balance-tasks", "--scores", str(tmp_path / "scores.csv"),
                              "--html", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    assert "lower perplexity kept" in res.output and "score range" not in res.output
    table = pcsv.read_csv(tmp_path / "scores.csv").to_pylist()
    assert [r["id"] for r in table] == [f"r{i}" for i in range(10)]
    assert sum(r["kept"] for r in table) == 4
    assert all(abs(r["perplexity"] - np.exp(l)) < 1e-6 * np.exp(l) for r, l in zip(table, np.linspace(0.5, 3.0, 10)))
    # balance-tasks: 2 per task, lowest perplexity first -> r0, r2 (t0) and r1, r3 (t1).
    assert [r["id"] for r in table if r["kept"]] == ["r0", "r1", "r2", "r3"]
    settings = json.loads((tmp_path / "sel" / "ppl.report.json").read_text())["settings"]
    assert settings["seed"] == 3 and settings["balance_tasks"] is True and settings["dedup"] is None
    assert settings["budget"] == "4" and settings["method"] == "perplexity" and "mmsift" in settings["versions"]
    assert "--balance-tasks" in settings["command"]
    page = (tmp_path / "r.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    for section in ('id="tasks"', 'id="scores"', 'id="map"', 'id="top"', 'id="bottom"'):
        assert section in page
    assert page.count("data:image/png;base64,") == 3  # task chart, score histogram, vector map
    _check_in_browser(tmp_path / "r.html")
    res = runner.invoke(app, ["select", str(tmp_path / "run"), "-m", "loss", "-b", "4", "-o",
                              str(tmp_path / "sel" / "loss.json")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "sel" / "ppl.ids.txt").read_text().split() == ["r0", "r1", "r2", "r3"]
    assert (tmp_path / "sel" / "loss.ids.txt").read_text().split() == ["r6", "r7", "r8", "r9"]
    res = runner.invoke(app, ["select", str(tmp_path / "run"), "-m", "loss", "-b", "4", "-o", str(tmp_path / "s.csv")])
    assert res.exit_code == 2 and ".json, .jsonl or .parquet" in res.output and not (tmp_path / "s.csv").exists()


def test_version_and_flags_without_values():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.startswith("mmsift ")
    res = runner.invoke(app, ["select", "--help"], env={"COLUMNS": "200"})
    assert "--balance-tasks" in res.output and "<bool>" not in res.output


def test_score_meaning_and_task_notes():
    from mmsift.explain import score_meaning, task_notes

    low = score_meaning("perplexity")
    assert low.sentence == "lower perplexity kept" and list(low.shown(np.array([-3.0]))) == [3.0]
    assert score_meaning("perplexity", {"mode": "high"}).sign == 1.0
    assert score_meaning("loss").sentence == "higher answer loss kept"  # loss defaults to mode=high
    assert score_meaning("datatailor").sign == 1.0
    # 100 kept of 400: color (100 in pool) expects 25 and gets 0; shape (100) expects 25, gets 5 (0.2x);
    # yesno (200) expects 50 and gets 95 (1.9x: within 4x, no note).
    notes = task_notes({"shape": 5, "yesno": 95}, {"color": 100, "shape": 100, "yesno": 200})
    assert len(notes) == 2 and notes[0].startswith("task 'color': 0 of 100 kept")
    assert "task 'shape': kept 5 of 100 (5%), 0.2x its pool share" in notes[1]


def test_select_subset_modes_budgets_and_notes(tmp_path):
    """Subsets are readable like their .ids.txt; 15% is a budget; a count above the pool says so; a subset
    written away from the images says where its image paths point; the proxy's warning is carried."""
    import os

    records = [{"id": f"r{i}", "image": f"{i}.png",
                "conversations": [{"from": "human", "value": f"<image>\nq{i}"}, {"from": "gpt", "value": "a"}]}
               for i in range(20)]
    (tmp_path / "pool").mkdir()
    pool = tmp_path / "pool" / "pool.json"
    pool.write_text(json.dumps(records), encoding="utf-8")
    model = tmp_path / "proxy"
    model.mkdir()
    (model / "warmup.json").write_text(json.dumps({"warning": "the proxy barely reads the images (test)"}))
    p = read_pool(pool)
    from_arrays(tmp_path / "run", ids=[r.id for r in p.records], index=[r.index for r in p.records],
                columns={"n_tokens": np.arange(20, dtype=float)},
                meta={"pool": str(pool), "images": str(tmp_path / "pool"), "model": str(model)})
    out = tmp_path / "sel" / "subset.json"
    res = runner.invoke(app, ["select", str(tmp_path / "run"), "-m", "length", "-b", "15%", "-o", str(out),
                              "--html", str(tmp_path / "sel" / "r.html")])
    assert res.exit_code == 0, res.output
    assert len(json.loads(out.read_text())) == 3  # 15% of 20
    ids = tmp_path / "sel" / "subset.ids.txt"
    assert oct(out.stat().st_mode & 0o777) == oct(ids.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert "warning: the proxy barely reads the images (test)" in res.output
    assert json.loads((tmp_path / "sel" / "subset.report.json").read_text())["proxy_warning"].startswith("the proxy")
    assert "the proxy barely reads the images (test)" in (tmp_path / "sel" / "r.html").read_text()
    assert f"image paths in {out} are relative to {tmp_path / 'pool'}" in res.output
    res = runner.invoke(app, ["select", str(tmp_path / "run"), "-m", "length", "-b", "5000", "-o",
                              str(tmp_path / "pool" / "all.json")])
    assert res.exit_code == 0 and "the budget 5000 is not below the 20 records scored" in res.output
    assert "image paths in" not in res.output  # written beside the images: nothing to say
    assert os.path.exists(tmp_path / "pool" / "all.json")
    res = runner.invoke(app, ["select", str(tmp_path / "run"), "-m", "random", "-b", "half", "-o", str(out)])
    assert res.exit_code == 2 and "15%" in res.output


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_select_refuses_json_for_embedded_images_before_selecting(tmp_path, monkeypatch):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    import mmsift.select as selmod

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
    rows = [{"id": f"p{k}", "messages": [{"role": "user", "content": "<image>Colour?"},
                                         {"role": "assistant", "content": "Red."}],
             "images": [{"bytes": buf.getvalue(), "path": f"{k}.png"}]} for k in range(4)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pool.parquet")
    p = read_pool(tmp_path / "pool.parquet")
    from_arrays(tmp_path / "run", ids=[r.id for r in p.records], index=[r.index for r in p.records],
                columns={"n_tokens": np.arange(4, dtype=float)}, meta={"pool": str(tmp_path / "pool.parquet")})

    def no_selecting(*a, **k):
        raise AssertionError("selected before checking the output format")
    monkeypatch.setattr(selmod, "select_run", no_selecting)
    res = runner.invoke(app, ["select", str(tmp_path / "run"), "-m", "length", "-b", "2", "-o",
                              str(tmp_path / "s.json")])
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:") and "write the subset as .parquet" in errors[0]


def test_degenerate_scores_are_explained_and_settings_read_as_words():
    from mmsift.explain import constant_notes
    from mmsift.html_report import setting_text, tie_notes

    assert tie_notes(np.full(6, 0.1667)) and "tie-break alone" in tie_notes(np.full(6, 0.1667))[0]
    assert tie_notes(np.array([0.1, 0.2, -np.inf])) == []
    notes = constant_notes({"U": np.zeros(5), "I": np.arange(5.0), "cluster": np.array(["a"] * 5)})
    assert len(notes) == 1 and notes[0].startswith("component U is 0 for every record")
    assert setting_text({"eps": 0.05, "keep": "far"}) == "eps=0.05, keep=far"
    stages = [{"clean": {"method": "selfcheck", "drop": 0.1}}, {"dedup": {"method": "semdedup", "params": {"eps": 1}}}]
    assert setting_text(stages) == "clean (method=selfcheck, drop=0.1); dedup (method=semdedup, params (eps=1))"
    assert setting_text(None) == "\u2013" and setting_text(["a", "b"]) == "a, b" and setting_text(True) == "yes"


def test_usage_lines_name_arguments_in_capitals():
    res = runner.invoke(app, ["select", "--help"])
    assert "select [OPTIONS] RUN" in res.output and "{run}" not in res.output
    assert "KEY=VALUE" in res.output and "list[str]" not in res.output


def test_validate_a_file_that_is_not_a_pool_and_a_damaged_png(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    res = runner.invoke(app, ["validate", str(bad)])
    assert res.exit_code == 1 and "could not be read as a pool" in res.output and "0 of 0" not in res.output
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # signature, no header
    (tmp_path / "img" / "b.png").write_bytes(b"hello, not a picture")
    conv = [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps([{"id": "a", "image": "a.png", "conversations": conv},
                                {"id": "b", "image": "b.png", "conversations": conv}]))
    res = runner.invoke(app, ["validate", str(pool), "--images", str(tmp_path / "img")])
    assert "a.png is damaged: it starts like a PNG file" in res.output
    assert "b.png is named as a PNG file, but PIL cannot read it" in res.output
