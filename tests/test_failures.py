"""Systematic failures: a broken model or install stops the run with one error, not one warning per record."""

from __future__ import annotations

import json

import pytest
from test_probe_helpers import make_images, pool_records, pool_texts, write_pool
from typer.testing import CliRunner

from mmsift.cli import app
from mmsift.failures import ERROR_LOG, FailureGuard, SystematicFailure, check_max_failure_rate

runner = CliRunner()


def _boom():
    try:
        raise TypeError("'NoneType' object is not subscriptable")
    except TypeError as e:
        return e


def test_guard_waits_for_early_records_then_stops_with_the_common_error(tmp_path):
    g = FailureGuard("probe", log_dir=tmp_path, early_records=10)
    for i in range(9):
        g.failed(f"r{i}", f"probe_error: shape {i} does not match", _boom())
        g.check()  # fewer than early_records tried: no verdict yet
    g.ok(0)
    g.failed("r9", "probe_error: shape 9 does not match")
    with pytest.raises(SystematicFailure) as info:
        g.check()
    msg = str(info.value)
    assert "10 of the 10 records" in msg and "10 of them with the same error" in msg and "r0" in msg
    assert "--max-failures" not in msg  # every record failed: accepting more would not help
    text = (tmp_path / ERROR_LOG).read_text()
    assert "Traceback" in text and "TypeError" in text and "versions: mmsift" in text


def test_guard_lets_a_minority_of_bad_records_through(tmp_path):
    g = FailureGuard("probe", log_dir=tmp_path, early_records=4)
    g.ok(6)
    for i in range(5):
        g.failed(f"r{i}", "image_error: cannot identify image file")
    g.check()
    g.check(final=True)  # 5 of 11 <= half
    assert not (tmp_path / ERROR_LOG).exists()


def test_max_failures_accepts_more_but_never_an_empty_run(tmp_path):
    strict = FailureGuard("judge", early_records=2)
    strict.ok(1)
    for i in range(3):
        strict.failed(i, "cap_x: answer did not parse")
    with pytest.raises(SystematicFailure, match=r"--max-failures 0\.8 accepts"):
        strict.check(final=True)  # 3 of 4 > half: the message says which rate would accept it
    lenient = FailureGuard("judge", max_failure_rate=0.8, early_records=2)
    lenient.ok(1)
    for i in range(3):
        lenient.failed(i, "cap_x: answer did not parse")
    lenient.check(final=True)  # 75% <= 80%
    everything = FailureGuard("judge", max_failure_rate=1.0)
    everything.failed(0, "no answer")
    with pytest.raises(SystematicFailure):
        everything.check(final=True)
    with pytest.raises(ValueError, match="max-failures"):
        check_max_failure_rate(1.5)


@pytest.fixture(scope="module")
def broken_model(tmp_path_factory):
    """A proxy whose config points the image token at an ordinary text token: every image record fails."""
    from mmsift.models.proxy import build_proxy

    root = tmp_path_factory.mktemp("broken")
    make_images(root / "images")
    records = pool_records(40)
    pool = write_pool(root / "pool.json", records)
    model = build_proxy(root / "model", texts=pool_texts(records), seed=0)
    cfg_path = model / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["image_token_index"] = cfg["image_token_id"] = 5  # an ordinary token of the trained tokenizer
    cfg_path.write_text(json.dumps(cfg))
    return pool, root / "images", model, root


def test_probe_with_a_broken_model_stops_early_with_one_error(broken_model):
    pool, images, model, root = broken_model
    out = root / "run"
    res = runner.invoke(app, ["probe", str(pool), "--images", str(images), "--model", str(model), "--out", str(out),
                              "--methods", "perplexity", "--batch-size", "4"])
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip() and "it/s" not in ln and "batch/s" not in ln]
    assert len(lines) <= 3, res.output
    assert "probe stopped" in res.output and "broken setup" in res.output
    assert "not probed" not in res.output  # no per-record warning flood
    log_text = (out / ERROR_LOG).read_text()
    assert "Traceback" in log_text
    assert not (out / "manifest.json").exists()
    # Selecting from the folder fails with one line too (no finished run there).
    res = runner.invoke(app, ["select", str(out), "-m", "random", "-b", "0.5", "-o", str(root / "s.json")])
    assert res.exit_code != 0 and "Traceback" not in res.output


def test_training_a_broken_model_stops_with_one_error(broken_model):
    from mmsift.data.validate import read_and_validate
    from mmsift.train.loop import TrainConfig, train_model

    pool, images, model, root = broken_model
    data, images_dir, report = read_and_validate(pool, images)
    with pytest.raises(SystematicFailure, match="warmup stopped") as info:
        train_model(model, report.good_records(data), images_dir, TrainConfig(steps=2), log_dir=root / "warm")
    assert info.value.log_path == root / "warm" / ERROR_LOG and "Traceback" in info.value.log_path.read_text()


def test_a_transformers_outside_the_window_is_named(monkeypatch, caplog):
    from mmsift import compat, failures

    spec = compat.declared_specifier("transformers")
    assert spec is not None and spec.contains(compat.installed_version("transformers"))
    assert compat.window_problem("transformers") is None
    monkeypatch.setattr(compat, "installed_version", lambda p: "5.99.0" if p == "transformers" else "1.0")
    problem = compat.window_problem("transformers")
    assert "transformers 5.99.0 is installed, outside the window" in problem and f"transformers{spec}" in problem
    assert failures.likely_cause() == problem
    compat.warn_outside_window.cache_clear()
    with caplog.at_level("WARNING", logger="mmsift.compat"):
        compat.warn_outside_window()
    assert "5.99.0" in caplog.text
    compat.warn_outside_window.cache_clear()


def test_select_refuses_a_run_without_rows(tmp_path):
    import numpy as np

    from mmsift.store import from_arrays

    pool = tmp_path / "pool.json"
    pool.write_text("[]")
    from_arrays(tmp_path / "run", ids=[], columns={"loss": np.zeros(0)}, meta={"pool": str(pool)})
    res = runner.invoke(app, ["select", str(tmp_path / "run"), "-m", "loss", "-b", "0.5", "-o",
                              str(tmp_path / "s.json")])
    assert res.exit_code == 2 and "holds no probed record" in res.output and "Traceback" not in res.output
    assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1


def test_a_forward_pass_that_breaks_on_images_stops_the_probe(monkeypatch, tmp_path):
    """What transformers 5.24 did to the old probe: every image record's forward raised inside the model."""
    from transformers.models.llava import modeling_llava

    from mmsift.models.proxy import build_proxy
    from mmsift.probe.config import ProbeConfig
    from mmsift.probe.runner import run_probe

    make_images(tmp_path / "images")
    records = [r for r in pool_records(48) if "image" in r]
    pool = write_pool(tmp_path / "pool.json", records)
    model = build_proxy(tmp_path / "model", texts=pool_texts(records), seed=0)

    def broken(self, *args, **kwargs):
        raise TypeError("'NoneType' object is not subscriptable")

    monkeypatch.setattr(modeling_llava.LlavaModel, "get_image_features", broken)
    with pytest.raises(SystematicFailure, match="probe_error: TypeError") as info:
        run_probe(pool, ProbeConfig(images=tmp_path / "images", model=model, out=tmp_path / "run",
                                    methods=["perplexity"], batch_size=4))
    assert "32 of the 32 records" in str(info.value)  # stopped at the first verdict, not after all 40
    assert "get_image_features" in (tmp_path / "run" / ERROR_LOG).read_text()
