"""Token-cleaning rows of the bench (``--tokens KEEP``): twins of full and the method rows, trained on the same
records and seeds with masks, paired against their untokened rows and explained from what was masked."""

import json

import numpy as np
import pytest

from test_bench_generic import _generic_cfg, _small_digits


def test_masked_metrics_by_hand():
    from mmsift.bench.tokens import masked_metrics

    n_tokens = np.array([4, 1, 10, 2, 0, 3])
    n_masked = np.array([1, 1, 5, 2, 0, 0])
    labels = ["none", "wrong_answer", "none", "duplicate", "none", "wrong_answer"]
    m = masked_metrics([0, 1, 2, 3, 4], n_tokens, n_masked, labels)
    # 9 of 17 tokens; clean records 0, 2, 4: 6 of 14; marked 1, 3: 3 of 3
    assert m["masked"] == pytest.approx(9 / 17)
    assert m["masked_clean"] == pytest.approx(6 / 14) and m["masked_bad"] == pytest.approx(1.0)
    assert m["masked_wrong_answer"] == pytest.approx(1.0) and m["masked_duplicate"] == pytest.approx(1.0)
    assert m["fully_masked"] == pytest.approx(2 / 4)  # records 1 and 3 of the 4 with ranked tokens
    m = masked_metrics([1, 5], n_tokens, n_masked, labels)  # wrong_answer: 1 of 4 tokens; no clean record
    assert m["masked_wrong_answer"] == pytest.approx(0.25) and np.isnan(m["masked_clean"])
    assert set(masked_metrics([0, 2], n_tokens, n_masked)) == {"masked", "fully_masked"}  # no truth: no kinds


@pytest.mark.parametrize("bad", [0, 0.0, -0.2, 1.5, float("nan"), True, "0.6"])
def test_bad_keep_values_are_refused(bad):
    from mmsift.bench.tokens import check_keep

    with pytest.raises(ValueError, match=r"--tokens .*in \(0, 1\]"):
        check_keep(bad)
    assert check_keep(None) is None and check_keep(1) == 1.0 and check_keep(0.6) == 0.6


def test_bad_keep_fails_before_any_work_and_in_the_cli(tmp_path):
    from typer.testing import CliRunner

    from mmsift.bench.runner import BenchConfig, run_bench
    from mmsift.cli import app

    with pytest.raises(ValueError, match=r"--tokens 1.5"):
        run_bench(BenchConfig(out=str(tmp_path / "o"), methods=["random"], tokens=1.5))
    assert not (tmp_path / "o" / "pool").exists()
    r = CliRunner().invoke(app, ["bench", "--tokens", "0", "--out", str(tmp_path / "o2")])
    assert r.exit_code != 0 and "in (0, 1]" in " ".join(r.output.replace("│", " ").split())


def test_twin_labels_and_pairing():
    from mmsift.bench.tokens import plain_label, referee_line, twin_label

    assert twin_label("full", 0.6) == "full+tokens0.6" and plain_label("full+tokens0.6") == "full"
    assert twin_label("recipe:a+b", 1.0) == "recipe:a+b+tokens1" and plain_label("recipe:a+b+tokens1") == "recipe:a+b"
    assert plain_label("selfcheck") is None and plain_label("recipe:x+tokens") is None
    rows = [{"method": "full+tokens0.6", "budget": 1.0, "vs_plain": -0.02, "plain_verdict": "worse"},
            {"method": "el2n+tokens0.6", "budget": 0.15, "vs_plain": 0.01, "plain_verdict": "undecided"}]
    assert referee_line(rows, 0.6) == ("tokens 0.6 (same records, masked loss) vs untokened: better none; worse "
                                       "full+tokens0.6@1 -0.020; undecided el2n+tokens0.6@0.15 +0.010")


def _job_context(tmp_path, keep):
    """A tiny digits pool, the target's init, its encoded pool and token masks from made-up token losses."""
    from mmsift.bench.jobs import JobContext
    from mmsift.bench.tokens import masks_from_entries
    from mmsift.data.io import read_pool
    from mmsift.models.encode import encode_records
    from mmsift.models.loading import load_model
    from mmsift.train.target import build_scratch_init

    pool_path, _ = _small_digits(tmp_path, n_pool=24, n_eval=10)
    records = read_pool(pool_path).records
    images = pool_path.parent / "images"
    init = build_scratch_init(tmp_path / "init", texts=[t.text for r in records for t in r.turns], seed=0)
    lm = load_model(init, dtype="float32")
    encs, failed = encode_records(lm.adapter, records, images)
    assert not failed
    # Every answer is one digit: mask the first ~(1 - keep) share of records' answers whole.
    n_masked = int(round((1 - keep) * len(records)))
    entries = [{"id": r.id, "turns": [{"turn": 1, "masked": [[0, len(r.turns[1].text)]] if k < n_masked else []}]}
               for k, r in enumerate(records)]
    from mmsift.bench.evalfile import load_eval_file

    ev = load_eval_file(pool_path.parent / "eval.json", images)
    from mmsift.bench.evaluate import encode_items

    return JobContext(base_dir=str(init), device="cpu", threads=1, encoded_pool=encs, items=ev.items,
                      encoded_items=encode_items(lm, ev.items, images), score_columns=tuple(ev.columns),
                      records=list(records), images_dir=str(images),
                      token_masks=masks_from_entries(entries)), n_masked


@pytest.mark.slow
def test_masks_reach_the_training(tmp_path):
    """A twin job with nothing masked trains the same model as its plain job; with masks it trains on fewer
    tokens (the loop counts exactly the masked answers) and ends elsewhere."""
    from mmsift.bench.jobs import TrainJob, init_worker, run_job
    from mmsift.train.target import TargetRecipe

    recipe = TargetRecipe(epochs=1, min_steps=6, max_steps=6, batch_size=8, lr=1e-2)
    kept = np.arange(24)
    results = {}
    for keep in (1.0, 0.5):
        ctx, n_masked = _job_context(tmp_path / str(keep), keep)
        init_worker(ctx)
        plain, twin = run_job(TrainJob(kept, 0, recipe)), run_job(TrainJob(kept, 0, recipe, masked=True))
        results[keep] = (plain, twin, n_masked)
    plain, twin, n_masked = results[1.0]
    assert n_masked == 0 and twin.token_masks["tokens_masked"] == 0 and plain.token_masks == {}
    assert all(np.array_equal(plain.correct[k], twin.correct[k]) for k in plain.correct)
    assert twin.train_loss == plain.train_loss
    plain, twin, n_masked = results[0.5]
    assert n_masked == 12 and twin.token_masks["records_masked"] == 12
    assert twin.token_masks["tokens_masked"] >= 12  # each masked answer: its digit's token(s)
    assert twin.train_loss != plain.train_loss


@pytest.mark.slow
def test_bench_twin_rows(tmp_path):
    from mmsift.bench.runner import run_bench

    pool, ev = _small_digits(tmp_path)
    cfg = _generic_cfg(tmp_path, pool, ev, "scratch", truth_field="digits", methods=["random", "length", "oracle"],
                       tokens=0.6)
    result = run_bench(cfg)
    rows = {(r["method"], r["budget"]): r for r in result["rows"]}
    assert {("full+tokens0.6", 1.0), ("random+tokens0.6", 0.3), ("length+tokens0.6", 0.3)} <= set(rows)
    assert not any(m.startswith(("oracle+", "full-clean+")) for m, _ in rows)  # no twins of the calibration rows
    for label, budget in [("full", 1.0), ("random", 0.3), ("length", 0.3)]:
        twin, plain = rows[(f"{label}+tokens0.6", budget)], rows[(label, budget)]
        assert twin["n_kept"] == plain["n_kept"] and twin["runs"] == plain["runs"] == 2
        assert twin["plain_verdict"] in ("better", "worse", "undecided") and "vs_plain" not in plain
        assert 0 < twin["masked"] < 1
    runs = {(r["method"], r["budget"], r["seed"]): r for r in result["runs"]}
    for s in (0, 1):  # same records, same steps; only the twin's loss had tokens masked
        assert runs[("length+tokens0.6", 0.3, s)]["steps"] == runs[("length", 0.3, s)]["steps"]
        assert runs[("full+tokens0.6", 1.0, s)]["train_tokens_masked"] > 0 and "train_tokens_masked" not in \
            runs[("full", 1.0, s)]
    # the explanation: masked share of the pool's answer tokens on marked vs clean records, from the sidecar
    side = [json.loads(x) for x in (tmp_path / "bench_scratch" / "tokens.jsonl").read_text().splitlines()]
    truth = {r["id"]: r["digits"]["defect"] for r in json.loads(pool.read_text())}
    bad = [e for e in side if truth[e["id"]] != "none"]
    assert rows[("full+tokens0.6", 1.0)]["masked_wrong_answer"] == pytest.approx(
        sum(e["n_masked"] for e in bad) / sum(e["n_tokens"] for e in bad))
    report = json.loads((tmp_path / "bench_scratch" / "tokens.report.json").read_text())
    assert report["n_kept"] == int(0.6 * report["n_ranked"])
    md = result["markdown"]
    assert "Token cleaning (keep 0.6" in md and "full+tokens0.6 @ 1: " in md and "wrong_answer" in md
    assert any(line.startswith("tokens 0.6 (same records, masked loss) vs untokened") for line in
               result["meta"]["referee"])
    html = (tmp_path / "bench_scratch" / "results.html").read_text()
    assert "Token cleaning (keep 0.6)" in html and "full+tokens0.6" in html


@pytest.mark.slow
def test_preset_twin_rows(tmp_path):
    """The preset (bundled base as the model before, post-training rows on full) honours --tokens too."""
    from mmsift.bench.preset import PresetConfig
    from mmsift.bench.runner import BenchConfig, run_bench
    from mmsift.train.target import TargetRecipe

    cfg = BenchConfig(out=str(tmp_path / "bench"), budgets=(0.3,), methods=["random", "length"], seeds=(0, 1),
                      sensitivity_seeds=(), calibration=(), preset=PresetConfig(n_images=24, n_ocr=8, eval_per_type=6, eval_mc=6, eval_ocr=6), warmup_epochs=1, warmup_min_steps=2, post_fraction=0.05, n_boot=50, workers=1,
                      recipe=TargetRecipe(epochs=1, min_steps=2, max_steps=3, batch_size=8), tokens=0.5)
    result = run_bench(cfg)
    rows = {(r["method"], r["budget"]): r for r in result["rows"]}
    assert {("full+tokens0.5", 1.0), ("random+tokens0.5", 0.3), ("length+tokens0.5", 0.3)} <= set(rows)
    assert not any("+tokens" in m for m, b in rows if m.startswith(("post:", "full-clean")))
    assert result["meta"]["tokens"]["base_run"].endswith("token_base_run")
    kinds = [k for k in rows[("full+tokens0.5", 1.0)] if k.startswith("masked_") and k not in ("masked_clean",
                                                                                              "masked_bad")]
    assert len(kinds) >= 2  # the preset's truth carries several defect kinds
    n_ranked, n_kept = result["meta"]["tokens"]["n_ranked"], result["meta"]["tokens"]["n_kept"]
    assert n_kept == int(0.5 * n_ranked)  # full's twin holds every record: the pool's masked share
    assert rows[("full+tokens0.5", 1.0)]["masked"] == pytest.approx(1 - n_kept / n_ranked)
