"""run_probe end to end: skipped and failing records, shards and resume, manifest, batch-size independence."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from test_probe_helpers import make_images, pool_records, pool_texts, sharpen, write_pool

from mmsift.probe import runner
from mmsift.probe.config import ProbeConfig
from mmsift.probe.runner import run_probe
from mmsift.probe.signals import KNOWN
from mmsift.store import SignalStore, StoreError

ALL = sorted(KNOWN)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """18 good records plus 3 that validation rejects, a corrupt image that only decoding finds, the proxy."""
    from mmsift.models.proxy import build_proxy

    root = tmp_path_factory.mktemp("runner")
    make_images(root / "images")
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    good = pool_records(18)
    bad = [
        {"id": "missing", "image": "nope.png", "conversations": [{"from": "human", "value": "<image>\nx"},
                                                                  {"from": "gpt", "value": "y"}]},
        {"id": "mismatch", "image": "shapes/red.png", "conversations": [
            {"from": "human", "value": "<image>\n<image>\nx"}, {"from": "gpt", "value": "y"}]},
        "not a record",
    ]
    records = good[:5] + bad[:2] + good[5:11] + bad[2:] + good[11:]
    pool = write_pool(root / "pool.json", records)
    model = build_proxy(root / "model", texts=pool_texts(good), seed=0)
    sharpen(model)
    return pool, root / "images", model, [r["id"] for r in good], root


def load_all(store):
    s = store.load(mmap=False)
    return s, {k: np.asarray(v) for k, v in s.columns.items()}


def assert_same_store(a, b, *, exact=True):
    sa, ca = load_all(a)
    sb, cb = load_all(b)
    assert list(sa.ids) == list(sb.ids) and list(sa.tasks) == list(sb.tasks)
    assert sorted(ca) == sorted(cb)
    for k in ca:
        if ca[k].dtype.kind in "OU":
            assert list(ca[k]) == list(cb[k]), k
        elif exact:
            np.testing.assert_array_equal(ca[k], cb[k], err_msg=k)
        else:
            # Vectors are stored as float16: one rounding step apart at most.
            tol = 2e-3 if ca[k].dtype == np.float16 else 1e-5
            np.testing.assert_allclose(ca[k].astype(np.float64), cb[k].astype(np.float64), rtol=tol, atol=tol,
                                       equal_nan=True, err_msg=k)


@pytest.fixture(scope="module")
def full_run(setup):
    pool, images, model, _, root = setup
    return run_probe(pool, ProbeConfig(images=images, model=model, out=root / "full", signals=ALL, batch_size=3,
                                       shard_size=4))


def test_end_to_end_store(setup, full_run):
    _, _, model, good_ids, root = setup
    res = full_run
    s, c = load_all(res.store)
    assert list(s.ids) == good_ids  # pool order, bad records left out
    assert res.n_probed == 18 and res.n_records == 21  # 20 records + 1 entry that is not one
    assert res.n_skipped == 3
    assert sorted(k for _, k, _ in res.skipped) == ["image_placeholder_mismatch", "missing_image", "not_an_object"]
    man = res.store.manifest
    assert man["model_type"] == "llava" and man["layer"] == -2 and man["n_skipped"] == 3
    assert man["pool_format"] == "json" and man["n_shards"] == 5 and len(man["skipped"]) == 3
    assert not (root / "full" / "shards").exists()
    # the per-token signal is a table of its own (tokens.parquet), not a column
    assert set(res.store.signal_names) == set(ALL) - {"token_loss"} and res.store.has_tokens
    kinds = [int(i[1:]) % 6 for i in s.ids]
    is_mc = np.array([k == 1 for k in kinds])
    has_image = np.array([k != 3 for k in kinds])
    np.testing.assert_array_equal(c["is_mc"], is_mc.astype(int))
    assert np.isnan(c["loss_sym"][~is_mc]).all() and np.isfinite(c["loss_sym"][is_mc]).all()
    assert np.isnan(c["loss_perm"][~is_mc]).all() and np.isfinite(c["loss_perm"][is_mc]).all()
    assert np.isnan(c["loss_imgnoise"][~has_image]).all() and np.isfinite(c["loss_imgnoise"][has_image]).all()
    assert np.isfinite(c["loss_noq"]).all() and np.isfinite(c["loss"]).all()
    # The attacks change the input, so they change the loss.
    assert (np.abs(c["loss_sym"][is_mc] - c["loss_mc"][is_mc]) > 1e-4).all()
    # single-round multiple-choice records: the multiple-choice round is the whole conversation
    np.testing.assert_allclose(c["loss_mc"][is_mc], c["loss"][is_mc], rtol=1e-5)
    assert np.isnan(c["loss_mc"][~is_mc]).all()
    assert (np.abs(c["loss_imgnoise"][has_image] - c["loss"][has_image]) > 1e-6).all()
    # ARDS's first-turn rule: only the multiple-choice records carry one of its five instructions.
    assert list(c["fmt"]) == [{1: "mc", 3: "text_only"}.get(k, "other_image") for k in kinds]
    np.testing.assert_array_equal(c["n_images"], [0 if k == 3 else 2 if k == 4 else 1 for k in kinds])
    np.testing.assert_array_equal(c["n_rounds"], [3 if k == 2 else 1 for k in kinds])
    assert list(s.tasks) == ["all" if k == 3 else ("shapes" if (int(i[1:]) % 6) % 2 == 0 else "colors")
                             for i, k in zip(s.ids, kinds)]
    # the 4-layer proxy: hidden states 1, 2, 3 (COINCIDE's relative depths of 24 layers), 64 wide each
    assert c["last"].dtype == np.float16 and c["img_mean"].shape == (18, 64 * 3)
    assert c["attn_img"].shape == (18, 64 * 4) and c["last_final"].shape == (18, 64)  # decoder layers 0..3
    assert (c["img_mean"][~has_image] == 0).all()


def test_store_values_equal_direct_signals(setup, full_run):
    """A stored row equals the signals computed directly for that record alone."""
    from mmsift.data.io import read_pool
    from mmsift.probe.dataset import ProbeDataset
    from mmsift.models.loading import load_model
    from mmsift.probe.signals import SignalOptions, batch_signals

    pool, images, model, _, _ = setup
    lm = load_model(model)
    rec = next(r for r in read_pool(pool).records if r.id == "r08")
    enc = ProbeDataset([rec], lm.adapter, images)[0]["enc"]
    with torch.inference_mode():
        direct = batch_signals(lm.adapter, lm.model, lm.adapter.collate([enc]), ["loss", "last", "sv_entropy"],
                               SignalOptions())
    s, c = load_all(full_run.store)
    row = list(s.ids).index("r08")
    assert c["loss"][row] == pytest.approx(direct["loss"][0], rel=1e-5)
    assert c["sv_entropy"][row] == pytest.approx(direct["sv_entropy"][0], rel=1e-5)
    np.testing.assert_allclose(c["last"][row], direct["last"][0].astype(np.float16), rtol=2e-3, atol=2e-3)


def test_resume_after_crash_is_identical(setup, full_run, monkeypatch):
    pool, images, model, _, root = setup
    out = root / "crashed"
    real = runner.probe_shard
    calls = []

    def crash_at_2(spec):
        if spec.shard == 2:
            raise KeyboardInterrupt("simulated kill")
        calls.append(spec.shard)
        real(spec)

    monkeypatch.setattr(runner, "probe_shard", crash_at_2)
    with pytest.raises(KeyboardInterrupt):
        run_probe(pool, ProbeConfig(images=images, model=model, out=out, signals=ALL, batch_size=3, shard_size=4))
    assert calls == [0, 1]
    assert not (out / "manifest.json").exists()
    assert sorted(p.name for p in (out / "shards").glob("*.done")) == ["shard-00000.done", "shard-00001.done"]

    calls.clear()
    monkeypatch.setattr(runner, "probe_shard", lambda spec: (calls.append(spec.shard), real(spec)))
    res = run_probe(pool, ProbeConfig(images=images, model=model, out=out, signals=ALL, batch_size=3, shard_size=4))
    assert calls == [2, 3, 4] and res.resumed_shards == 2
    assert_same_store(res.store, full_run.store)

    # A finished run is returned as is; other settings are refused unless overwritten.
    calls.clear()
    again = run_probe(pool, ProbeConfig(images=images, model=model, out=out, signals=ALL, batch_size=3, shard_size=4))
    assert calls == [] and len(again.store) == 18 and again.n_skipped == 3
    with pytest.raises(StoreError, match="other settings"):
        run_probe(pool, ProbeConfig(images=images, model=model, out=out, signals=["loss"], shard_size=4))


def test_batch_size_does_not_change_signals(setup, full_run):
    pool, images, model, _, root = setup
    res = run_probe(pool, ProbeConfig(images=images, model=model, out=root / "b1", signals=ALL, batch_size=1,
                                      shard_size=100))
    assert_same_store(res.store, full_run.store, exact=False)


def test_runtime_failures_are_reported_not_fatal(setup):
    pool, images, model, _, root = setup
    recs = json.loads(pool.read_text())
    recs = [r for r in recs if isinstance(r, dict) and r["id"] not in ("missing", "mismatch")][:6]
    recs[1]["image"] = "broken.png"  # passes a no-image-check validation, fails to decode at run time
    recs[2]["conversations"][0]["value"] += " and more" * 40  # too long for max_length below
    p = write_pool(root / "runtime.json", recs)
    res = run_probe(p, ProbeConfig(images=images, model=model, out=root / "rt", signals=["loss", "last"], shard_size=4,
                                   check_images=False, max_length=120))
    kinds = {rid: kind for rid, kind, _ in res.skipped}
    assert kinds == {recs[1]["id"]: "image_error", recs[2]["id"]: "too_long"}
    assert res.n_skipped == 2 and len(res.store) == 4
    assert res.store.manifest["n_skipped"] == 2
    assert recs[1]["id"] not in list(res.store.load().ids)


def test_methods_select_signals_and_limit(setup):
    pool, images, model, _, root = setup
    res = run_probe(pool, ProbeConfig(images=images, model=model, out=root / "m", methods=["length"], limit=5))
    assert len(res.store) == 5
    assert set(res.store.signal_names) == {"loss", "n_tokens", "n_answer_tokens", "n_rounds", "n_images"}
    with pytest.raises(ValueError, match="cannot compute"):
        run_probe(pool, ProbeConfig(images=images, model=model, out=root / "m2", signals=["nonsense"]))
    shutil.rmtree(root / "m")


def test_dataloader_workers_give_the_same_store(setup, full_run):
    """Decoding/tokenising in a worker process (the adapter is pickled there) changes nothing."""
    pool, images, model, _, root = setup
    res = run_probe(pool, ProbeConfig(images=images, model=model, out=root / "workers", signals=ALL, batch_size=3,
                                      shard_size=4, num_workers=1))
    assert_same_store(res.store, full_run.store)


def test_probe_command_prints_summary(setup):
    import typer
    from typer.testing import CliRunner

    from mmsift.cli.probe import probe_command

    pool, images, model, _, root = setup
    app = typer.Typer()
    app.command()(probe_command)
    out = root / "cmd"
    result = CliRunner().invoke(app, [str(pool), "--images", str(images), "--model", str(model), "--out", str(out),
                                      "--methods", "length", "--signals", "last", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert "probed 18 of 21 records" in result.output
    assert "skipped 3 records" in result.output and "missing_image" in result.output
    assert set(SignalStore(out).signal_names) >= {"n_tokens", "last"}
    bad = CliRunner().invoke(app, [str(pool), "--model", str(model), "--out", str(root / "cmd2"),
                                   "--signals", "nonsense"])
    assert bad.exit_code == 1 and "cannot compute" in bad.output


def test_edited_pool_is_not_resumed_from_old_shards(setup, tmp_path):
    pool, images, model, _, root = setup
    recs = [r for r in json.loads(pool.read_text()) if isinstance(r, dict)][:4]
    p = write_pool(tmp_path / "p.json", recs)
    out = tmp_path / "run"
    run_probe(p, ProbeConfig(images=images, model=model, out=out, signals=["loss"], shard_size=2))
    recs[0]["conversations"][1]["value"] = "Something else entirely."
    write_pool(p, recs)
    with pytest.raises(StoreError, match="other settings"):
        run_probe(p, ProbeConfig(images=images, model=model, out=out, signals=["loss"], shard_size=2))
    res = run_probe(p, ProbeConfig(images=images, model=model, out=out, signals=["loss"], shard_size=2, overwrite=True))
    assert res.resumed_shards == 0 and len(res.store) == 4


def test_bf16_batched_signals_match_fp32_batch1(setup):
    """bf16 (the GPU default) on CPU: batched signals agree with the fp32 batch-1 reference within bf16 tolerance.

    Tolerances: bf16 keeps 8 mantissa bits (relative step 2^-8 = 0.4%), and errors compound over the layers, so
    losses must agree within 5% relative (plus 0.02 absolute) and pooled vectors within cosine > 0.99.
    """
    pool, images, model, _, root = setup
    names = ["loss", "el2n", "sv_entropy", "last", "mean", "attn_pool"]
    ref = run_probe(pool, ProbeConfig(images=images, model=model, out=root / "fp32_b1", signals=names, batch_size=1,
                                      dtype="float32", shard_size=100))
    bf = run_probe(pool, ProbeConfig(images=images, model=model, out=root / "bf16_b8", signals=names, batch_size=8,
                                     dtype="bfloat16", shard_size=100))
    assert bf.store.manifest["dtype"] == "bfloat16"
    _, a = load_all(ref.store)
    _, b = load_all(bf.store)
    for k in ("loss", "el2n", "sv_entropy"):
        np.testing.assert_allclose(b[k], a[k], rtol=0.05, atol=0.02, err_msg=k)
    assert not np.array_equal(a["loss"], b["loss"])  # it really ran in bf16
    for k in ("last", "mean", "attn_pool"):
        x, y = a[k].astype(np.float64), b[k].astype(np.float64)
        cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
        assert cos.min() > 0.99, (k, cos.min())


def test_a_model_retrained_in_place_is_never_reused(setup, tmp_path):
    """Same path, new weights: the finished run and any unfinished shards belong to the old model."""
    pool, images, model, _, _ = setup
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    out = tmp_path / "run"
    run_probe(pool, ProbeConfig(images=images, model=copy, out=out, signals=["loss"], shard_size=100))
    weights = next(copy.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # rewritten (as a retrain would): new modification time
    with pytest.raises(StoreError, match="other settings"):
        run_probe(pool, ProbeConfig(images=images, model=copy, out=out, signals=["loss"], shard_size=100))
    res = run_probe(pool, ProbeConfig(images=images, model=copy, out=out, signals=["loss"], shard_size=100,
                                      overwrite=True))
    assert res.resumed_shards == 0 and len(res.store) == 18
