"""Token cleaning end to end on a toy pool: the per-token store, `mmsift tokens`, the self-evolving variant, and
training with the masks."""

from __future__ import annotations

import json
import re
import math
import shutil

import numpy as np
import pytest
from test_probe_helpers import make_images, pool_records, pool_texts
from typer.testing import CliRunner

from mmsift.charspans import covered
from mmsift.cli import app
from mmsift.data.io import read_pool
from mmsift.probe.config import ProbeConfig
from mmsift.probe.runner import run_probe
from mmsift.store import SignalStore
from mmsift.token_select import check_masks, read_sidecar

runner = CliRunner()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A JSONL pool of 24 records (one-word to three-turn answers), a base proxy, a reference trained from it on
    the pool, and both probe runs with per-token losses (several shards)."""
    from mmsift.models.proxy import build_proxy
    from mmsift.train.loop import TrainConfig, train_model

    root = tmp_path_factory.mktemp("tokens")
    make_images(root / "images")
    records = pool_records(24)
    pool = root / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    base = build_proxy(root / "base", texts=pool_texts(records), seed=0)
    shutil.copytree(base, root / "ref")
    trained = train_model(str(root / "ref"), read_pool(pool).records, root / "images",
                          TrainConfig(epochs=4, batch_size=8, lr=3e-3))
    trained.model.model.save_pretrained(root / "ref")
    for name in ("base", "ref"):
        run_probe(pool, ProbeConfig(model=str(root / name), out=str(root / f"run-{name}"), images=str(root / "images"),
                                    signals=("token_loss",), batch_size=4, shard_size=7))
    return root


def test_token_store_matches_the_record_losses(toy):
    store = SignalStore(toy / "run-base")
    tokens, s = store.load_tokens(), store.load(["loss", "n_answer_tokens"])
    off = tokens.offsets(len(store))
    assert np.diff(off).tolist() == s["n_answer_tokens"].tolist()
    means = np.array([tokens.loss[off[r]:off[r + 1]].mean() for r in range(len(store))])
    np.testing.assert_allclose(means, s["loss"], rtol=1e-5, atol=1e-6)
    assert store.manifest["tokens"]["n_tokens"] == len(tokens) and "token_loss" not in store.signal_names
    # one sample per batch gives the same token losses (padding and batching do not leak)
    single = run_probe(toy / "pool.jsonl", ProbeConfig(model=str(toy / "base"), out=str(toy / "run-single"),
                                                       images=str(toy / "images"), signals=("token_loss",),
                                                       batch_size=1)).store.load_tokens()
    np.testing.assert_allclose(single.loss, tokens.loss, rtol=1e-4, atol=1e-5)
    assert np.array_equal(single.start, tokens.start) and np.array_equal(single.turn, tokens.turn)


def _expected_kept(toy, keep):
    """The keep mask recomputed from the two stores by hand: scores, then the floor(keep * M) best content tokens."""
    b, r = SignalStore(toy / "run-base").load_tokens(), SignalStore(toy / "run-ref").load_tokens()
    content = b.turn >= 0
    score = b.loss.astype(np.float64) - r.loss.astype(np.float64)
    k = math.floor(keep * content.sum())
    order = sorted(np.flatnonzero(content), key=lambda t: (-score[t], t))
    kept = np.zeros(len(b), bool)
    kept[order[:k]] = True
    return b, kept | ~content, k


def test_tokens_command_writes_records_unchanged_and_a_valid_sidecar(toy):
    out = toy / "out" / "subset.jsonl"
    res = runner.invoke(app, ["tokens", str(toy / "run-base"), "--reference-run", str(toy / "run-ref"),
                              "--keep", "0.6", "--out", str(out), "--html", str(toy / "out" / "t.html")])
    assert res.exit_code == 0, res.output
    assert out.read_bytes() == (toy / "pool.jsonl").read_bytes()  # records byte-identical
    pool = read_pool(out)
    masks = read_sidecar(toy / "out" / "subset.tokens.jsonl")
    check_masks(masks, pool.records)
    assert set(masks) == {r.id for r in pool.records}
    report = json.loads((toy / "out" / "subset.tokens.report.json").read_text())
    assert report["n_kept"] == math.floor(0.6 * report["n_ranked"])  # within one token of the share asked
    assert 0.6 - 1 / report["n_ranked"] < report["kept_share"] <= 0.6
    # the masked characters are exactly the tokens a hand-made ranking drops
    tokens, kept, k = _expected_kept(toy, 0.6)
    assert k == report["n_kept"]
    ids = list(SignalStore(toy / "run-base").load([]).ids)
    off = tokens.offsets(len(ids))
    for row, rid in enumerate(ids):
        sl = slice(off[row], off[row + 1])
        dropped = covered(tokens.start[sl], tokens.end[sl], tokens.turn[sl], masks[rid])
        assert dropped.tolist() == (~kept[sl]).tolist(), rid
    page = (toy / "out" / "t.html").read_text()
    assert '<s class="masked">' in page and "Token cleaning" in page
    # inline on request: the same masks inside the records
    res = runner.invoke(app, ["tokens", str(toy / "run-base"), "--reference-run", str(toy / "run-ref"),
                              "--out", str(toy / "inline" / "s.jsonl"), "--inline"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (toy / "inline" / "s.jsonl").read_text().splitlines()]
    side = [json.loads(line) for line in (toy / "inline" / "s.tokens.jsonl").read_text().splitlines()]
    assert [r["token_mask"] for r in rows] == [e["turns"] for e in side]


def test_tokens_command_errors(toy, tmp_path):
    res = runner.invoke(app, ["tokens", str(toy / "run-base"), "--reference-run", str(toy / "run-single-missing"),
                              "--out", str(tmp_path / "s.jsonl")])
    assert res.exit_code == 2 and "not a finished mmsift run" in res.output
    plain = run_probe(toy / "pool.jsonl", ProbeConfig(model=str(toy / "ref"), out=str(tmp_path / "plain"),
                                                      images=str(toy / "images")))
    res = runner.invoke(app, ["tokens", str(toy / "run-base"), "--reference-run", str(plain.store.root),
                              "--out", str(tmp_path / "s.jsonl")])
    assert res.exit_code == 2 and "--signals token_loss" in res.output
    # records whose text is not the text probed under their id are refused, by name
    rows = [json.loads(line) for line in (toy / "pool.jsonl").read_text().splitlines()]
    rows[2]["conversations"][1]["value"] = "Yes, there is a circle near the middle."
    (tmp_path / "edited.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = runner.invoke(app, ["tokens", str(toy / "run-base"), "--reference-run", str(toy / "run-ref"),
                              "--data", str(tmp_path / "edited.jsonl"), "--out", str(tmp_path / "s.jsonl")])
    assert res.exit_code == 2 and "record 'r02': its answer text differs" in res.output
    for r in rows:
        del r["id"]
    (tmp_path / "no-ids.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = runner.invoke(app, ["tokens", str(toy / "run-base"), "--reference-run", str(toy / "run-ref"), "--rounds",
                              "2", "--data", str(tmp_path / "no-ids.jsonl"), "--out", str(tmp_path / "s.jsonl")])
    assert res.exit_code == 2 and "needs records with ids" in res.output
    # a reference whose tokenizer differs cannot be paired token by token
    from mmsift.models.proxy import ProxySize, build_proxy

    other = build_proxy(tmp_path / "other", texts=pool_texts(pool_records(24)), size=ProxySize(vocab_size=400))
    run_probe(toy / "pool.jsonl", ProbeConfig(model=str(other), out=str(tmp_path / "other-run"),
                                              images=str(toy / "images"), signals=("token_loss",)))
    res = runner.invoke(app, ["tokens", str(toy / "run-base"), "--reference-run", str(tmp_path / "other-run"),
                              "--out", str(tmp_path / "s.jsonl")])
    assert res.exit_code == 2 and "tokenized differently" in res.output


def test_self_evolving_updates_the_reference_on_the_kept_tokens(toy, monkeypatch):
    from mmsift.token_cleaning import TokenCleanConfig, clean_tokens
    from mmsift.train import loop

    seen = []
    real = loop.train_model

    def spy(model, records, images_dir, config, **options):
        seen.append(([r.id for r in records], options["token_masks"]))
        return real(model, records, images_dir, config, **options)

    monkeypatch.setattr(loop, "train_model", spy)
    pool = read_pool(toy / "pool.jsonl")
    config = TokenCleanConfig(keep=0.5, rounds=2, work=str(toy / "evolve"), batch_size=8, update_epochs=2, seed=4)
    result = clean_tokens(toy / "run-base", toy / "run-ref", pool.records, config, pool=pool)
    # the parts: a deal of the 24 records by a permutation seeded with the config's seed, each part in data order
    deal = [sorted(p) for p in np.array_split(np.random.default_rng(4).permutation(24), 2)]
    first, second = [[pool.records[i] for i in p] for p in deal]
    assert deal[0] != list(range(12))
    # one update, after part 1, on part 1's records with part 1's masks (the kept tokens only)
    assert len(seen) == 1 and seen[0][0] == [r.id for r in first]
    entries = {e["id"]: e for e in result.entries}
    part1 = {r.id: {t["turn"]: [tuple(s) for s in t["masked"]] for t in entries[r.id]["turns"]} for r in first}
    assert seen[0][1] == part1 and any(part1.values())
    # part 2 is scored with the updated reference: its own probe run, other losses than the fixed reference's
    assert [p["n_records"] for p in result.parts] == [12, 12]
    assert result.parts[1]["reference"].endswith("reference-1")
    # the parts together keep floor(keep * M), each its largest-remainder share
    assert result.n_kept == math.floor(0.5 * result.n_ranked)
    assert all(abs(p["n_kept"] - 0.5 * p["n_ranked"]) < 1 for p in result.parts)
    updated = SignalStore(toy / "evolve" / "part-2" / "run")
    assert list(updated.load([]).ids) == [r.id for r in second]
    fixed = SignalStore(toy / "run-ref")
    tokens, rows = fixed.load_tokens(), {i: r for r, i in enumerate(fixed.load([]).ids)}
    off = tokens.offsets(len(fixed))
    fixed_part2 = np.concatenate([tokens.loss[off[rows[r.id]]:off[rows[r.id] + 1]] for r in second])
    assert not np.allclose(updated.load_tokens().loss, fixed_part2, atol=1e-3)
    # the fixed-model ranking of part 2 alone would differ from what the updated reference kept
    fixed_only = clean_tokens(toy / "run-base", toy / "run-ref", second, TokenCleanConfig(keep=0.5))
    assert fixed_only.entries != [entries[r.id] for r in second]


def test_training_with_masks_counts_only_the_kept_tokens(toy):
    from mmsift.train.loop import TrainConfig, train_model

    pool = read_pool(toy / "pool.jsonl")
    masks = read_sidecar(toy / "out" / "subset.tokens.jsonl")  # written by the command test above
    one_step = TrainConfig(steps=1, batch_size=len(pool.records), lr=1e-9)
    first = train_model(str(toy / "base"), pool.records, toy / "images", one_step, token_masks=masks)
    # the first step's loss (before any update) is the mean base loss over the kept tokens, from the store
    store = SignalStore(toy / "run-base")
    tokens, ids = store.load_tokens(), list(store.load([]).ids)
    off = tokens.offsets(len(ids))
    kept = []
    for row, rid in enumerate(ids):
        sl = slice(off[row], off[row + 1])
        drop = covered(tokens.start[sl], tokens.end[sl], tokens.turn[sl], masks[rid])
        kept.append(tokens.loss[sl][~drop])
    assert first.losses[0] == pytest.approx(float(np.concatenate(kept).mean()), rel=1e-4)
    assert first.token_masks["tokens_masked"] == len(tokens) - sum(len(k) for k in kept)
    # records without masks train as before: no masks and an empty mask table give the same run
    three = TrainConfig(steps=3, batch_size=8)
    plain = train_model(str(toy / "base"), pool.records, toy / "images", three)
    empty = train_model(str(toy / "base"), pool.records, toy / "images", three, token_masks={})
    assert plain.losses == empty.losses and plain.token_masks == {}


@pytest.mark.slow
def test_recipe_tokens_stage(tmp_path):
    import yaml

    from mmsift.recipe import RecipeError, load_recipe

    make_images(tmp_path / "images")
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool_records(24)), encoding="utf-8")
    recipe = {"pool": "pool.jsonl", "images": "images", "seed": 1,
              "proxy": {"warmup": {"n_samples": 16, "epochs": 1, "batch_size": 8}}, "probe": {"batch_size": 4},
              "stages": [{"select": {"method": "loss", "budget": 0.5}}, {"tokens": {"keep": 0.5}}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    res = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "tokens: part 1: ranked" in res.output
    subset = read_pool(tmp_path / "o" / "subset.json")
    masks = read_sidecar(tmp_path / "o" / "subset.tokens.jsonl")
    assert set(masks) == {r.id for r in subset.records} and len(subset.records) == 12
    check_masks(masks, subset.records)
    assert '<s class="masked">' in (tmp_path / "o" / "report.html").read_text()
    resolved = yaml.safe_load((tmp_path / "o" / "recipe.resolved.yaml").read_text())
    assert resolved["stages"][-1]["tokens"]["rounds"] == 1 and resolved["resolved"]["tokens"]["n_kept"] > 0
    for stages, message in [([{"tokens": {}}, {"select": {"method": "loss", "budget": 0.5}}], "comes once, last"),
                            ([{"select": {"method": "loss", "budget": 0.5}}, {"tokens": {"keep": 2}}], "keep must be"),
                            ([{"select": {"method": "loss", "budget": 0.5}}, {"tokens": {"kept": 0.5}}],
                             "unknown key(s) ['kept']")]:
        path.write_text(yaml.safe_dump({**recipe, "stages": stages}))
        with pytest.raises(RecipeError, match=re.escape(message)):
            load_recipe(path)


def _answer_records(answers):
    from mmsift.data.records import Record, Turn

    return [Record(id=f"r{k}", index=k, images=[], turns=[Turn("user", "Which digit?"), Turn("assistant", a)],
                   raw={}) for k, a in enumerate(answers)]


def test_whole_record_warnings_name_short_answers_and_a_masked_answer_class():
    from mmsift.token_cleaning import whole_record_warnings

    # 25 records answering "8", all masked; 75 answering other digits, 5 of them masked: pool share 30%.
    answers = ["8"] * 25 + [str(k % 7) for k in range(75)]
    masked = [1] * 25 + [1] * 5 + [0] * 70
    entries = [{"id": f"r{k}", "n_tokens": 1, "n_masked": m} for k, m in enumerate(masked)]
    warnings = whole_record_warnings(entries, _answer_records(answers))
    assert len(warnings) == 2
    assert warnings[0].startswith("100 of 100 records have answers of at most 2 tokens")
    assert warnings[1].startswith("answer '8': 25 of 25 records fully masked (pool: 30%)")


def test_whole_record_warnings_stay_quiet_on_long_partly_masked_answers():
    from mmsift.token_cleaning import whole_record_warnings

    answers = ["a long answer"] * 40 + ["another long answer"] * 40
    entries = [{"id": f"r{k}", "n_tokens": 20, "n_masked": 8} for k in range(80)]
    assert whole_record_warnings(entries, _answer_records(answers)) == []
    # A small class fully masked (below 20 records) is not named; unscored records are left out.
    entries = [{"id": f"r{k}", "n_tokens": 20, "n_masked": 20 if k < 10 else 8} for k in range(80)]
    entries[50]["unscored"] = "no per-token losses"
    assert whole_record_warnings(entries, _answer_records(["x"] * 10 + ["y"] * 70)) == []
