"""Bring-your-own-features: a store built from a Parquet table and .npy files feeds any scorer."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmsift.byof import from_files
from mmsift.scorers import make_scorer
from mmsift.select import select_rows
from mmsift.store import StoreError


def _write(tmp_path, ids=("a", "b", "c", "d")):
    n = len(ids)
    pq.write_table(pa.table({"id": list(ids), "source": ["x", "x", "y", "y"][:n],
                             "loss": [1.0, 0.2, 3.0, None][:n], "fmt": ["mc", "short", "caption", "mc"][:n]}),
                   tmp_path / "t.parquet")
    np.save(tmp_path / "last.npy", np.arange(n * 3, dtype=np.float32).reshape(n, 3))
    return tmp_path / "t.parquet", tmp_path / "last.npy"


def test_from_files_round_trip(tmp_path):
    table, last = _write(tmp_path)
    store = from_files(tmp_path / "run", table=table, vectors={"last": last}, task_column="source")
    sig = store.load()
    assert sig.ids.tolist() == ["a", "b", "c", "d"] and sig.tasks.tolist() == ["x", "x", "y", "y"]
    assert np.isnan(sig["loss"][3]) and sig["fmt"].tolist() == ["mc", "short", "caption", "mc"]
    assert sig["last"].dtype == np.float16 and sig["last"].shape == (4, 3)
    scorer = make_scorer("loss", {"mode": "low"})
    sel = select_rows(store.load(["loss"]), scorer, 2)
    assert sel.ids == ["a", "b"] and "d" in scorer.notes_[0]


def test_from_files_errors_name_the_problem(tmp_path):
    table, last = _write(tmp_path, ids=("a", "b", "a", "d"))
    with pytest.raises(StoreError, match="'a' appears twice"):
        from_files(tmp_path / "run", table=table)
    table, _ = _write(tmp_path)
    np.save(tmp_path / "bad.npy", np.zeros((3, 2)))
    with pytest.raises(StoreError, match="bad.npy"):
        from_files(tmp_path / "run", table=table, vectors={"last": tmp_path / "bad.npy"})
    with pytest.raises(StoreError, match="'task'"):
        from_files(tmp_path / "run", table=table, task_column="task")


def test_from_files_with_pool_feeds_the_select_command(tmp_path):
    import json

    from typer.testing import CliRunner

    from mmsift.cli import app

    records = [{"id": rid, "image": f"img/{rid}.png",
                "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "x"}]}
               for rid in ("d", "c", "b", "a")]  # pool order differs from the table's order
    (tmp_path / "pool.json").write_text(json.dumps(records))
    table, last = _write(tmp_path)  # ids a, b, c, d with loss 1.0, 0.2, 3.0, NaN
    store = from_files(tmp_path / "run", table=table, vectors={"last": last}, pool=tmp_path / "pool.json")
    assert store.load([]).index.tolist() == [3, 2, 1, 0]
    res = CliRunner().invoke(app, ["select", str(tmp_path / "run"), "--method", "loss", "--param", "mode=low",
                                   "--budget", "2", "--out", str(tmp_path / "subset.json")])
    assert res.exit_code == 0, res.output
    kept = json.loads((tmp_path / "subset.json").read_text())
    assert sorted(r["id"] for r in kept) == ["a", "b"]  # lowest losses, written from the right records


def test_from_files_pool_mismatch_is_an_error(tmp_path):
    import json

    (tmp_path / "pool.json").write_text(json.dumps([{"id": "a", "conversations": []}]))
    table, _ = _write(tmp_path)
    with pytest.raises(StoreError, match="not in the pool"):
        from_files(tmp_path / "run", table=table, pool=tmp_path / "pool.json")
