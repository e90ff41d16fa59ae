"""The bench on a user's pool: eval files, truth fields, targets, the referee lines and results.html."""

import json

import numpy as np
import pytest
from PIL import Image


def _write(path, records):
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def _rec(rid, image, *turns, **extra):
    conv = [{"from": "human" if k % 2 == 0 else "gpt", "value": t} for k, t in enumerate(turns)]
    if conv:
        conv[0]["value"] = "<image>\n" + conv[0]["value"]
    return {"id": rid, "image": image, "conversations": conv, **extra}


@pytest.fixture
def eval_dir(tmp_path):
    for folder, name in [("cats", "a.png"), ("cats", "b.png"), ("dogs", "c.png")]:
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.new("RGB", (8, 8), "red").save(tmp_path / folder / name)
    return tmp_path


def test_eval_file_rounds_candidates_letters_and_chance(eval_dir):
    from mmsift.bench.evalfile import load_eval_file
    from mmsift.bench.evaluate import chance_table

    path = _write(eval_dir / "eval.json", [
        _rec("r1", "cats/a.png", "Colour?", "red", "Shape?", "round"),
        _rec("r2", "cats/b.png", "Colour?", "blue"),
        _rec("r3", "dogs/c.png", "Colour?", "green", "Shape?", "round"),  # Shape? has one distinct answer
        _rec("r4", "dogs/c.png", "Which animal?", "a dog", options=["a cat", "a dog", "a cow"]),
        _rec("r5", "dogs/c.png", "Which one?", "B", options=["x", "y"]),
    ])
    ev = load_eval_file(path, eval_dir)
    by_q = {(x.question.split("\n")[0], x.answer): x for x in ev.items}
    assert by_q[("Colour?", "red")].options == ["blue", "green", "red"]  # distinct gold answers of that question
    assert by_q[("Colour?", "red")].kind == "cats" and by_q[("Colour?", "green")].kind == "dogs"
    mc = by_q[("Which animal?", "B")]  # scored by letter
    assert mc.options == ["A", "B", "C"] and "B. a dog" in mc.question and mc.chance == pytest.approx(1 / 3)
    assert by_q[("Which one?", "B")].options == ["A", "B"]
    assert ev.left_out["open items whose question has one distinct answer"] == 2
    assert len(ev.items) == 5 and ev.columns == ["cats", "dogs"]
    chance = chance_table(ev.items)
    assert chance["cats"] == pytest.approx(1 / 3) and chance["dogs"] == pytest.approx((1 / 3 + 1 / 3 + 1 / 2) / 3)
    by_question = load_eval_file(path, eval_dir, column_by="question")
    assert sorted(by_question.columns) == ["Colour?", "Which animal?", "Which one?"]


@pytest.mark.parametrize("record, message", [
    (_rec("bad1", "cats/a.png", "Pick", "dog", options=["cat", "cow"]), "record 'bad1': answer 'dog'"),
    (_rec("bad2", "cats/a.png", "Pick", "cat", options=["cat"]), "record 'bad2': 'options' must be a list"),
    (_rec("bad3", "cats/zzz.png", "Colour?", "red"), "record 'bad3': image 'cats/zzz.png' not found"),
    ({"id": "bad4", "image": ["cats/a.png", "cats/b.png"],
      "conversations": [{"from": "human", "value": "<image>\n<image>\nSame?"}, {"from": "gpt", "value": "no"}]},
     "record 'bad4': 2 images"),
    (_rec("bad5", "cats/a.png"), "record 'bad5': no user/assistant round"),
])
def test_bad_eval_files_name_the_record_and_the_problem(eval_dir, record, message):
    from mmsift.bench.evalfile import EvalFileError, load_eval_file

    path = _write(eval_dir / "eval.json", [_rec("ok", "cats/a.png", "Colour?", "red"),
                                           _rec("ok2", "cats/b.png", "Colour?", "blue"), record])
    with pytest.raises(EvalFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_eval_file(path, eval_dir)


def test_an_eval_file_with_nothing_to_score_is_refused(eval_dir):
    from mmsift.bench.evalfile import EvalFileError, load_eval_file

    path = _write(eval_dir / "eval.json", [_rec("a", "cats/a.png", "Colour?", "red")])
    with pytest.raises(EvalFileError, match="no scorable item"):
        load_eval_file(path, eval_dir)


def test_truth_field_labels(tmp_path):
    from mmsift.bench.inputs import read_truth
    from mmsift.data.io import read_pool

    path = _write(tmp_path / "pool.json", [
        _rec("a", "x.png", "q", "a", digits={"defect": "wrong_answer"}), _rec("b", "x.png", "q", "a", bad=True),
        _rec("c", "x.png", "q", "a", digits={"defect": "none"}), _rec("d", "x.png", "q", "a")])
    records = read_pool(path).records
    assert [t["defect"] for t in read_truth(records, "digits")] == ["wrong_answer", "none", "none", "none"]
    assert [t["defect"] for t in read_truth(records, "bad")] == ["none", "bad", "none", "none"]
    with pytest.raises(ValueError, match="no pool record has this field"):
        read_truth(records, "nothere")


def _row(method, budget, d=None, low=None, high=None):
    row = {"method": method, "budget": budget, "score": 0.5, "score_low": 0.4, "score_high": 0.6, "n_kept": 10,
           "runs": 3}
    if d is not None:
        verdict = "better" if low > 0 else "worse" if high < 0 else "undecided"
        row.update(vs_random=d, vs_random_low=low, vs_random_high=high, verdict=verdict)
    return row


def test_referee_lines():
    from mmsift.bench.report import referee

    rows = [_row("random", 0.15), _row("semdedup", 0.15, 0.031, 0.010, 0.052),
            _row("length", 0.15, 0.050, 0.001, 0.099), _row("oracle", 0.15, 0.2, 0.1, 0.3),
            _row("random", 0.3), _row("length", 0.3, -0.05, -0.08, -0.02), _row("ifd", 0.3, 0.01, -0.03, 0.05)]
    lines = referee(rows, [0.15, 0.3])
    assert lines[0] == "15%: best length +0.050 [+0.001, +0.099] vs random"  # oracle is not a method
    assert lines[1] == ("30%: no method beats random here (smallest detectable difference 0.035); "
                        "worse than random: length")


def test_results_html_escapes_dataset_text():
    from mmsift.bench.html import render_html
    from mmsift.bench.report import _display, table_columns

    evil = "<script>alert('x')</script>"
    rows = [_row("random", 0.15), _row(evil, 0.15, 0.01, -0.02, 0.04), _row("full", 1.0)]
    meta = {"referee": [f"15%: best {evil}"], "score_columns": [evil], "eval": {"chance": {evil: 0.5}},
            "pool": {"path": "<pool>", "n_records": 3}}
    rows[1][evil] = 0.5
    page = render_html(rows, meta, subsets={f"{evil} @ 0.15": {"seed": 0, "n": 3, "tasks": {evil: 1.0},
                                                                "marked": 0.0}},
                       table_columns=table_columns, display=_display)
    assert "<script" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "&lt;pool&gt;" in page and page.count("<svg") == 1 and "http" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")


def _small_digits(tmp_path, n_pool=60, n_eval=30):
    from mmsift.data.digits import build_digits_pool

    pool_path = build_digits_pool(tmp_path / "digits", n_eval=300, seed=0)
    pool = json.loads(pool_path.read_text())[:n_pool]
    evaluation = json.loads((tmp_path / "digits" / "eval.json").read_text())[:n_eval]
    _write(pool_path, pool)
    return pool_path, _write(tmp_path / "digits" / "eval.json", evaluation)


def _generic_cfg(tmp_path, pool, ev, target, **extra):
    from mmsift.bench.runner import BenchConfig
    from mmsift.train.target import TargetRecipe

    return BenchConfig(out=str(tmp_path / f"bench_{target if '/' not in target else 'model'}"), pool=str(pool),
                       eval=str(ev), images=str(pool.parent / "images"), eval_images=str(pool.parent / "images"),
                       target=target, budgets=(0.3,), seeds=(0, 1), sensitivity_seeds=(),
                       warmup_epochs=1, warmup_min_steps=2, post_fraction=0.0, n_boot=50, workers=1,
                       recipe=TargetRecipe(epochs=1, min_steps=2, max_steps=3, batch_size=8),
                       scratch_recipe=TargetRecipe(epochs=1, min_steps=2, max_steps=3, batch_size=8,
                                                   perception=True, perception_steps=3), **extra)


@pytest.mark.slow
def test_user_pool_with_truth_field_and_scratch_target(tmp_path):
    from mmsift.bench.runner import run_bench

    pool, ev = _small_digits(tmp_path)
    cfg = _generic_cfg(tmp_path, pool, ev, "scratch", truth_field="digits",
                       methods=["random", "length", "oracle", "anti-oracle"])
    result = run_bench(cfg)
    rows = {(r["method"], r["budget"]): r for r in result["rows"]}
    assert set(rows) == {("full", 1.0), ("full-clean", 1.0), ("oracle", 0.3), ("anti-oracle", 0.3),
                         ("random", 0.3), ("length", 0.3)}
    assert rows[("oracle", 0.3)]["corrupt_kept"] == 0.0 and rows[("full", 1.0)]["corrupt_kept"] == 1.0
    assert rows[("full", 1.0)]["n_kept"] == 60 and rows[("oracle", 0.3)]["n_kept"] == 18
    assert result["meta"]["score_columns"] == ["all"] and result["meta"]["eval"]["chance"]["all"] == pytest.approx(0.1)
    assert "sensitivity: oracle - random at 0.3" in result["markdown"]
    assert "30%:" in result["markdown"] and result["meta"]["target"]["kind"] == "scratch"
    assert result["meta"]["pool"]["defects"]["wrong_answer"] == sum(
        1 for r in json.loads(pool.read_text()) if r["digits"]["defect"] == "wrong_answer")
    html = (tmp_path / "bench_scratch" / "results.html").read_text()
    assert "Verdicts" in html and "<svg" in html


@pytest.mark.slow
def test_user_pool_without_truth_field(tmp_path):
    from mmsift.bench.runner import run_bench

    pool, ev = _small_digits(tmp_path)
    result = run_bench(_generic_cfg(tmp_path, pool, ev, "scratch", methods=["random", "length"]))
    methods = {r["method"] for r in result["rows"]}
    assert methods == {"full", "random", "length"}  # no oracle, anti-oracle or full-clean without truth
    assert "sensitivity" not in result["meta"] and result["meta"]["referee"][0].startswith("30%: ")
    assert "chance per column: all 0.100" in result["markdown"]


@pytest.mark.slow
def test_target_base_refused_when_it_does_not_read_the_pool(tmp_path):
    from mmsift.bench.runner import run_bench

    pool, ev = _small_digits(tmp_path)
    with pytest.raises(ValueError, match="--target base does not read this pool's images"):
        run_bench(_generic_cfg(tmp_path, pool, ev, "base", methods=["random"]))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_model_dir_target_of_two_families(tmp_path, family):
    from tiny_families import build_tiny

    from mmsift.bench.runner import run_bench

    model = build_tiny(family, tmp_path / family)
    pool, ev = _small_digits(tmp_path, n_pool=30, n_eval=12)
    result = run_bench(_generic_cfg(tmp_path, pool, ev, str(model), truth_field="digits",
                                    methods=["random", "oracle"]))
    assert result["meta"]["target"]["kind"] == "model"
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"full", "full-clean", "random", "oracle"}
    assert all(np.isfinite(r["score"]) and 0 <= r["score"] <= 1 for r in rows.values())


def test_cli_refuses_pool_options_without_pool_and_pool_without_eval(tmp_path):
    from typer.testing import CliRunner

    from mmsift.cli import app

    def said(r):
        return " ".join(r.output.replace("│", " ").split())

    r = CliRunner().invoke(app, ["bench", "--eval", "x.json", "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "go with --pool" in said(r)
    r = CliRunner().invoke(app, ["bench", "--pool", "x.json", "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "--pool needs --eval" in said(r)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_lora_target_trains_only_lora_and_projector(tmp_path, family):
    """With peft installed, --target MODEL_DIR trains LoRA layers (and the projector); base weights stay put."""
    pytest.importorskip("peft")
    import torch
    from tiny_families import build_tiny

    from mmsift.data.io import read_pool
    from mmsift.models.loading import load_model
    from mmsift.train.target import PROJECTOR_NAMES, TargetRecipe, train_target

    model = build_tiny(family, tmp_path / family)
    pool, _ = _small_digits(tmp_path, n_pool=16, n_eval=4)
    records = read_pool(pool).records
    init = load_model(model, dtype="float32")
    before = {n: p.detach().clone() for n, p in init.model.named_parameters()}
    result = train_target(init, records, pool.parent / "images", seed=0,
                          recipe=TargetRecipe(lora_rank=4, min_steps=3, max_steps=3, batch_size=4, lr=1e-2))
    after = dict(result.model.model.named_parameters())
    lora = [n for n in after if "lora_" in n]
    assert lora and all(np.isfinite(result.losses))
    assert any(not torch.equal(after[n], torch.zeros_like(after[n])) for n in lora if "lora_B" in n)
    for n, p in before.items():  # every original weight outside the projector is unchanged
        if not any(k in n for k in PROJECTOR_NAMES):
            key = n if n in after else n.rsplit(".", 1)[0] + ".base_layer." + n.rsplit(".", 1)[1]
            assert torch.equal(p, after[key].detach()), n
    assert all(torch.equal(p, init.model.state_dict()[n]) for n, p in before.items())  # init untouched


@pytest.mark.slow
def test_recipe_rows(tmp_path):
    """--methods random,recipe:chain.yaml: the chain runs on the bench's probe run, at the budget's share of the pool."""
    from mmsift.bench.runner import run_bench

    pool, ev = _small_digits(tmp_path)
    chain = tmp_path / "chain.yaml"
    chain.write_text("pool: ignored.json\nstages:\n  - clean: {method: selfcheck, drop: 0.2}\n"
                     "  - select: {method: length, budget: 0.5}\n", encoding="utf-8")
    result = run_bench(_generic_cfg(tmp_path, pool, ev, "scratch", truth_field="digits",
                                    methods=["random", f"recipe:{chain}"]))
    rows = {r["method"]: r for r in result["rows"]}
    assert "recipe:chain" in rows and rows["recipe:chain"]["n_kept"] == rows["random"]["n_kept"] == 18
    assert rows["recipe:chain"]["verdict"] in ("better", "worse", "undecided")
    run = next(r for r in result["runs"] if r["method"] == "recipe:chain")
    assert "clean selfcheck: 60 -> 48" in run["notes"]
    assert (tmp_path / "bench_scratch" / "subsets" / "recipe_chain_0.3_seed0.json").is_file()


def test_unknown_recipe_file_fails_before_any_work(tmp_path):
    from mmsift.bench.runner import BenchConfig, run_bench

    with pytest.raises(ValueError, match="no recipe file"):
        run_bench(BenchConfig(out=str(tmp_path / "o"), methods=["random", "recipe:nope.yaml"]))


def test_cli_builds_the_quick_preset_config(tmp_path, monkeypatch):
    """--quick takes the quick grid and the quick preset sizes; --mc-attacks and --budgets reach the config."""
    from typer.testing import CliRunner

    import mmsift.bench.runner as runner
    from mmsift.bench.preset import QUICK_PRESET
    from mmsift.cli import app

    seen = {}

    def fake_run_bench(cfg):
        seen["cfg"] = cfg
        raise ValueError("stopped after the config")

    monkeypatch.setattr(runner, "run_bench", fake_run_bench)
    done = CliRunner().invoke(app, ["bench", "--quick", "--mc-attacks", "--budgets", "0.1,0.2", "--out",
                                    str(tmp_path / "q")])
    assert "stopped after the config" in done.output
    cfg = seen["cfg"]
    assert cfg.quick and cfg.seeds == (0, 1) and cfg.budgets == (0.1, 0.2) and cfg.tokens is None
    assert cfg.preset.n_images == QUICK_PRESET.n_images == 200 and cfg.preset.eval_mc == 0
    assert cfg.preset.mc_attacks and not QUICK_PRESET.mc_attacks
    done = CliRunner().invoke(app, ["bench", "--out", str(tmp_path / "d")])
    assert not seen["cfg"].quick and seen["cfg"].preset.n_images == 400 and seen["cfg"].budgets == (0.05, 0.15, 0.3)
