"""Pooling bench runs over pool draws (mmsift.bench.draws, `mmsift bench-draws`): hand-computed means, the
two-level bootstrap, and clear errors."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner


def _run_dir(path, oracle_hits, random_hits, n=20):
    """A finished run: oracle and random at 0.15 on seeds 0 and 1, one column of n items."""
    path.mkdir(parents=True)
    arrays = {}
    for label, hits in (("oracle", oracle_hits), ("random", random_hits)):
        for seed, h in enumerate(hits):
            arrays[f"{label}|0.15|{seed}|shape"] = np.arange(n) < h
    arrays["full|1|0|shape"] = np.arange(n) < 10
    np.savez_compressed(path / "items.npz", **arrays)
    (path / "results.json").write_text(json.dumps({"meta": {"score_columns": ["shape"]}}))
    return path


def test_pooled_difference_is_the_mean_of_the_draws(tmp_path):
    from mmsift.bench.draws import across_draws, comparisons, load_run

    # Draw 1: oracle - random = (16-10 + 14-10)/2/20 = 0.25; draw 2: (12-11 + 13-12)/2/20 = 0.05.
    a = load_run(_run_dir(tmp_path / "a", (16, 14), (10, 10)))
    b = load_run(_run_dir(tmp_path / "b", (12, 13), (11, 12)))
    assert comparisons([a, b]) == [("oracle", 0.15, "random")]  # full has no reference; random is one
    iv, means = across_draws([a, b], "oracle", 0.15, "random", n_boot=500)
    assert means == pytest.approx([0.25, 0.05]) and iv.mean == pytest.approx(0.15)
    assert iv.low <= 0.15 <= iv.high
    # The draws disagree, so the pooled interval is wider than either draw's own.
    single, _ = across_draws([a, a], "oracle", 0.15, "random", n_boot=500)
    assert (iv.high - iv.low) > (single.high - single.low)


def test_cli_table_and_errors(tmp_path):
    from mmsift.cli import app

    a = _run_dir(tmp_path / "a", (16, 14), (10, 10))
    b = _run_dir(tmp_path / "b", (12, 13), (11, 12))
    res = CliRunner().invoke(app, ["bench-draws", str(a), str(b), "--out", str(tmp_path / "d.md")])
    assert res.exit_code == 0, res.output
    assert "| oracle | 0.15 | random | +0.250, +0.050 | +0.150 [" in res.output
    assert (tmp_path / "d.md").read_text().startswith("2 draws:")
    res = CliRunner().invoke(app, ["bench-draws", str(a), str(tmp_path / "missing")])
    assert res.exit_code == 1 and "no items.npz" in res.output
    res = CliRunner().invoke(app, ["bench-draws", str(a)])
    assert res.exit_code == 1 and "at least two" in res.output
