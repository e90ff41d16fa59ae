"""Recipes: checked up front, run end to end, rerun to the same ids, and their resolved copy reruns too."""

from __future__ import annotations

import json

import pytest
import yaml
from test_probe_helpers import make_images, pool_records, write_pool
from typer.testing import CliRunner

from mmsift.cli import app
from mmsift.recipe import RecipeError, check_stages, load_recipe, run_chain, run_recipe

runner = CliRunner()
STAGES = [{"clean": {"method": "selfcheck", "drop": 0.1}},
          {"dedup": {"method": "semdedup", "params": {"eps": 0.05}}},
          {"select": {"method": "datatailor", "budget": 0.5}}]


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    make_images(root / "images")
    write_pool(root / "pool.json", pool_records(24))
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "pool": "pool.json", "images": "images", "seed": 3,
        "proxy": {"warmup": {"n_samples": 16, "epochs": 1, "batch_size": 8}},
        "probe": {"batch_size": 4}, "stages": STAGES}))
    return path


@pytest.mark.parametrize("change, message", [
    ({"colour": 1}, "unknown key(s) ['colour']"),
    ({"stages": [{"select": {"method": "nope", "budget": 0.1}}]}, "unknown method 'nope'"),
    ({"stages": [{"select": {"method": "random", "budget": 1.5}}]}, "fractional budget must be in (0, 1]"),
    ({"stages": [{"select": {"method": "random", "budget": "half"}}]}, "neither a fraction"),
    ({"stages": [{"dedup": {"method": "random"}}, {"select": {"method": "random", "budget": 2}}]},
     "cannot be used as a dedup step"),
    ({"stages": [{"clean": {"method": "loss", "drop": 1.0}}, {"select": {"method": "random", "budget": 2}}]},
     "drop must be a fraction in [0, 1)"),
    ({"stages": [{"select": {"method": "perplexity", "budget": 2, "params": {"mood": "low"}}}]}, "bad parameters"),
    ({"stages": [{"select": {"method": "random", "budget": 2}}, {"clean": {"method": "loss", "drop": 0.1}}]},
     "last stage must be a select stage"),
    ({"probe": {"batchsize": 4}}, "probe: unknown key(s) ['batchsize']"),
    ({"pool": "missing.json"}, "not found"),
])
def test_recipe_errors_before_any_work(recipe_file, tmp_path, change, message):
    data = {**yaml.safe_load(recipe_file.read_text()), **change}
    data["pool"] = str(recipe_file.parent / data["pool"])
    data["images"] = str(recipe_file.parent / "images")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError) as e:
        load_recipe(bad)
    assert message in str(e.value)
    res = runner.invoke(app, ["run", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and message in res.output and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_recipe_reruns_to_the_same_ids(recipe_file, tmp_path):
    res = runner.invoke(app, ["run", str(recipe_file), "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert "clean (selfcheck): 24 ->" in res.output and "resolved recipe" in res.output
    first = (tmp_path / "a" / "subset.ids.txt").read_text().split()
    assert first and len(first) < 24
    again = run_recipe(load_recipe(recipe_file), out=tmp_path / "b")
    assert again.ids == first
    resolved = yaml.safe_load((tmp_path / "a" / "recipe.resolved.yaml").read_text())
    # the resolved recipe lists the warm-up's defaults, the same as `mmsift warmup`'s, and what it used
    warm = resolved["proxy"]["warmup"]
    assert resolved["probe"]["shard_size"] == 256 and warm["lr"] is None and warm["min_steps"] == 300
    assert warm["base"] == "auto" and resolved["resolved"]["warmup"]["lr"] in (1e-3, 3e-3)
    # every pool record is in the scores file, with the stage that dropped it
    import csv

    with open(tmp_path / "a" / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24 and {r["id"] for r in rows if r["kept"] == "true"} == set(first)
    assert {r["dropped_by"] for r in rows if r["kept"] != "true"} <= {"clean (selfcheck)", "dedup (semdedup)",
                                                                       "select (datatailor)"}
    assert sum(r["dropped_by"] == "clean (selfcheck)" for r in rows) == 24 - resolved["resolved"]["stages"][0]["out"]
    assert 'id="stages"' in (tmp_path / "a" / "report.html").read_text()
    assert resolved["seed"] == 3 and len(resolved["resolved"]["pool_sha256"]) == 64
    assert "mmsift" in resolved["resolved"]["versions"]
    res = runner.invoke(app, ["run", str(tmp_path / "a" / "recipe.resolved.yaml"), "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c" / "subset.ids.txt").read_text().split() == first
    report = json.loads((tmp_path / "c" / "subset.report.json").read_text())
    assert report["settings"]["stages"][2]["select"]["budget"] == 0.5 and report["settings"]["seed"] == 3
    assert (tmp_path / "c" / "report.html").is_file() and (tmp_path / "c" / "scores.csv").is_file()
    # The same chain from Python, on the probe run the recipe wrote.
    chain = run_chain(tmp_path / "a" / "run", STAGES, seed=3)
    assert list(chain.selection.ids) == first
    # A pool edited since the recipe was resolved is refused.
    pool = recipe_file.parent / "pool.json"
    text = pool.read_text()
    try:
        pool.write_text(text + " ")
        res = runner.invoke(app, ["run", str(tmp_path / "a" / "recipe.resolved.yaml"), "--out", str(tmp_path / "d")])
        assert res.exit_code == 1 and "changed since this recipe was resolved" in res.output
        res = runner.invoke(app, ["run", str(tmp_path / "a" / "recipe.resolved.yaml"), "--check"])
        assert res.exit_code == 2 and "changed since this recipe was resolved" in res.output
    finally:
        pool.write_text(text)


def test_check_stages_fills_defaults():
    stages = check_stages([{"select": {"method": "random", "budget": "15%"}}])
    assert stages == [{"select": {"method": "random", "budget": 0.15, "params": {}, "balance_tasks": False}}]


def test_a_stage_that_removes_nearly_everything_stops_the_chain(tmp_path):
    import numpy as np

    from mmsift.store import from_arrays

    n = 40
    run = tmp_path / "run"
    from_arrays(run, ids=[f"r{i}" for i in range(n)], columns={"loss": np.arange(n, dtype=float)})
    with pytest.raises(RecipeError, match=r"stages\[0\].clean \(loss\) removed 37 of 40 records"):
        run_chain(run, [{"clean": {"method": "loss", "drop": 0.92}}, {"select": {"method": "random", "budget": 2}}])
    chain = run_chain(run, [{"clean": {"method": "loss", "drop": 0.6}}, {"select": {"method": "random", "budget": 2}}])
    assert "more than half" in chain.stages[0]["warning"] and len(chain.dropped) == 24


def test_the_documented_recipe_is_a_valid_recipe(tmp_path):
    """docs/recipes.md's example: every key it shows is one the checker accepts (paths made to exist)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "recipes.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    data = yaml.safe_load(block)
    make_images(tmp_path / "img")
    write_pool(tmp_path / "pool.json", pool_records(4))
    data.update(pool=str(tmp_path / "pool.json"), images=str(tmp_path / "img"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(data))
    loaded = load_recipe(recipe)
    assert [next(iter(s)) for s in loaded.data["stages"]][:3] == ["clean", "dedup", "select"]
