"""The signal store: round trips, memory-mapped vectors, shards with completion markers, clear errors."""

import json

import numpy as np
import pytest

from mmsift.store import ShardWriter, SignalStore, StoreError, from_arrays


def test_from_arrays_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    vec = rng.standard_normal((6, 4)).astype(np.float32)
    store = from_arrays(tmp_path, ids=list("abcdef"), tasks=["t1"] * 3 + ["t2"] * 3,
                        columns={"loss": np.arange(6.0), "last": vec, "fmt": np.array(["mc"] * 6, dtype=object)})
    sig = SignalStore(tmp_path).load()
    assert list(sig.ids) == list("abcdef") and list(sig.tasks) == ["t1"] * 3 + ["t2"] * 3
    assert sig["loss"].tolist() == list(range(6))
    assert sig["last"].dtype == np.float16 and isinstance(sig["last"], np.memmap)
    np.testing.assert_allclose(sig["last"], vec, atol=2e-3)
    assert list(sig["fmt"]) == ["mc"] * 6
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["count"] == 6 and m["signals"]["last"] == {"kind": "vector", "dim": 4, "dtype": "float16"}
    assert store.signal_names == ["fmt", "last", "loss"]
    sub = sig.take(np.array([4, 1]))
    assert list(sub.ids) == ["e", "b"] and sub["loss"].tolist() == [4.0, 1.0]


def test_store_errors(tmp_path):
    with pytest.raises(StoreError, match="ids must be unique"):
        from_arrays(tmp_path / "a", ids=["x", "x"], columns={"loss": np.zeros(2)})
    with pytest.raises(StoreError, match="has 3 rows, expected 2"):
        from_arrays(tmp_path / "b", ids=["x", "y"], columns={"loss": np.zeros(3)})
    with pytest.raises(StoreError, match="reserved"):
        from_arrays(tmp_path / "c", ids=["x"], columns={"task": np.zeros(1)})
    from_arrays(tmp_path / "d", ids=["x"], columns={"loss": np.zeros(1)})
    with pytest.raises(StoreError, match=r"signals \['last'\] were not computed"):
        SignalStore(tmp_path / "d").load(["last"])


def test_shards_merge_in_order_and_markers(tmp_path):
    w = ShardWriter(tmp_path)
    for shard, rows in ((1, [2, 3]), (0, [0, 1])):
        w.write(shard, ids=[f"r{i}" for i in rows], index=rows, tasks=["all"] * 2,
                columns={"loss": np.array(rows, float), "last": np.ones((2, 3)) * np.array(rows)[:, None]})
    assert w.done_shards() == [0, 1] and w.is_done(0) and not w.is_done(2)
    with pytest.raises(StoreError, match="no completion marker"):
        w.merge([0, 1, 2])
    store = w.merge([0, 1], meta={"model": "m"})
    sig = store.load()
    assert list(sig.ids) == ["r0", "r1", "r2", "r3"] and sig["last"][:, 0].tolist() == [0, 1, 2, 3]
    assert store.manifest["model"] == "m" and not (tmp_path / "shards").exists()


def test_unfinished_shard_is_not_done(tmp_path):
    w = ShardWriter(tmp_path)
    w.write(0, ids=["a"], index=[0], tasks=["all"], columns={"loss": np.zeros(1)})
    (tmp_path / "shards" / "shard-00000.done").unlink()  # as if killed before the marker
    assert w.done_shards() == [] and not w.is_done(0)
