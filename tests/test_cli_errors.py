"""Bad input on the command line: a one-line `error: ...` naming the file or option, a non-zero exit, no traceback."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mmsift.cli import app
from mmsift.store import from_arrays

runner = CliRunner()


def _pool(tmp_path, n=4):
    records = [{"id": f"r{i}", "flag": "bad" if i == 0 else "none",
                "conversations": [{"from": "human", "value": f"question {i}"}, {"from": "gpt", "value": "answer"}]}
               for i in range(n)]
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def _run(tmp_path, pool_path, n=4):
    return from_arrays(tmp_path / "run", ids=[f"r{i}" for i in range(n)], index=list(range(n)),
                       columns={"n_tokens": np.arange(n, dtype=float)}, meta={"pool": str(pool_path)})


def _assert_clean_error(res, *needles):
    assert res.exit_code not in (0, None), res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output and "error:" in res.output, res.output
    for needle in needles:
        assert needle in res.output, res.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_device_cuda_without_gpu_is_a_clear_error(tmp_path):
    pool = _pool(tmp_path)
    res = runner.invoke(app, ["warmup", str(pool), "--out", str(tmp_path / "proxy"), "--device", "cuda"])
    _assert_clean_error(res, "CUDA is not available")
    res = runner.invoke(app, ["probe", str(pool), "--model", str(tmp_path), "--out", str(tmp_path / "r"),
                              "--methods", "length", "--device", "cuda"])
    _assert_clean_error(res, "CUDA is not available")


def test_bad_device_name_and_sizes(tmp_path):
    pool = _pool(tmp_path)
    res = runner.invoke(app, ["warmup", str(pool), "--out", str(tmp_path / "proxy"), "--device", "bogus"])
    _assert_clean_error(res, "'bogus' is not a torch device")
    res = runner.invoke(app, ["warmup", str(pool), "--out", str(tmp_path / "proxy"), "--n-samples", "0"])
    _assert_clean_error(res, "must be >= 1")
    res = runner.invoke(app, ["probe", str(pool), "--model", str(tmp_path), "--out", str(tmp_path / "r"),
                              "--methods", "length", "--batch-size", "0"])
    _assert_clean_error(res, "--batch-size and --shard-size must be >= 1")


def test_probe_os_errors_print_the_message_not_the_errno(tmp_path):
    pool = _pool(tmp_path)
    res = runner.invoke(app, ["probe", str(pool), "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "r"),
                              "--methods", "length"])
    _assert_clean_error(res, "No such file or directory", "nope")
    existing = tmp_path / "existing.json"
    existing.write_text("x")
    res = runner.invoke(app, ["probe", str(pool), "--model", str(tmp_path / "nope"), "--out", str(existing),
                              "--methods", "length"])
    _assert_clean_error(res, "existing.json")
    assert "error: 17" not in res.output and "error: 2\n" not in res.output


def test_select_out_is_a_folder_or_under_a_file(tmp_path):
    pool = _pool(tmp_path)
    _run(tmp_path, pool)
    res = runner.invoke(app, ["select", str(tmp_path / "run"), "-m", "length", "-b", "2", "-o", str(tmp_path)])
    _assert_clean_error(res, "is a folder")
    res = runner.invoke(app, ["select", str(tmp_path / "run"), "-m", "length", "-b", "2",
                              "-o", str(pool / "sub.json")])
    _assert_clean_error(res, "cannot write the subset")
    assert json.loads(pool.read_text())[0]["id"] == "r0"


def test_select_data_with_unknown_format(tmp_path):
    pool = _pool(tmp_path)
    _run(tmp_path, pool)
    txt = tmp_path / "pool.txt"
    txt.write_text(pool.read_text())
    res = runner.invoke(app, ["select", str(tmp_path / "run"), "-m", "length", "-b", "2", "-o",
                              str(tmp_path / "s.json"), "--data", str(txt)])
    _assert_clean_error(res, "pool.txt", "unknown pool format")


def test_select_truth_field_in_no_record(tmp_path):
    pool = _pool(tmp_path)
    _run(tmp_path, pool)
    out = tmp_path / "s.json"
    res = runner.invoke(app, ["select", str(tmp_path / "run"), "-m", "length", "-b", "2", "-o", str(out),
                              "--truth-field", "nope.defect"])
    _assert_clean_error(res, "'nope.defect'", "no scored record has this field")
    assert not out.exists()
    res = runner.invoke(app, ["select", str(tmp_path / "run"), "-m", "length", "-b", "2", "-o", str(out),
                              "--truth-field", "flag"])
    assert res.exit_code == 0 and "flagged 0 kept of 1 in pool" in res.output, res.output


def test_judge_unreachable_server_fails(tmp_path):
    pool = _pool(tmp_path, n=1)
    res = runner.invoke(app, ["judge", str(pool), "--backend", "openai", "--base-url", "http://127.0.0.1:9",
                              "--model", "m", "--out", str(tmp_path / "j"), "--retries", "0", "--timeout", "2",
                              "--capabilities", "humanities"])
    _assert_clean_error(res, "judge stopped", "no answer (backend error or time-out)",
                        "the server at http://127.0.0.1:9/chat/completions")


def test_probe_with_no_valid_record_fails(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    res = runner.invoke(app, ["probe", str(empty), "--model", str(tmp_path), "--out", str(tmp_path / "r"),
                              "--methods", "length"])
    _assert_clean_error(res, "empty.json: no valid record to probe", "empty_pool")
    assert not (tmp_path / "r" / "manifest.json").exists()
    pool = _pool(tmp_path)
    res = runner.invoke(app, ["probe", str(pool), "--model", str(tmp_path), "--out", str(tmp_path / "r"),
                              "--methods", "length", "--limit", "0"])
    _assert_clean_error(res, "--limit must be >= 1")


def test_judge_hf_with_a_folder_that_is_not_a_model(tmp_path):
    pool = _pool(tmp_path, n=1)
    (tmp_path / "notamodel").mkdir()
    res = runner.invoke(app, ["judge", str(pool), "--backend", "hf", "--model", str(tmp_path / "notamodel"),
                              "--out", str(tmp_path / "j")])
    _assert_clean_error(res, "notamodel is not a model directory (no config.json)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_judge_hf_device_cuda_without_gpu(tmp_path):
    pool = _pool(tmp_path, n=1)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    res = runner.invoke(app, ["judge", str(pool), "--backend", "hf", "--model", str(tmp_path / "m"),
                              "--out", str(tmp_path / "j"), "--device", "cuda"])
    _assert_clean_error(res, "CUDA is not available")


def test_images_that_is_not_a_folder(tmp_path):
    pool = _pool(tmp_path)
    res = runner.invoke(app, ["probe", str(pool), "--images", str(pool), "--model", str(tmp_path),
                              "--out", str(tmp_path / "r"), "--methods", "length"])
    _assert_clean_error(res, "is not a folder")
    res = runner.invoke(app, ["warmup", str(pool), "--images", str(tmp_path / "nowhere"),
                              "--out", str(tmp_path / "proxy")])
    _assert_clean_error(res, "nowhere is not a folder")


def test_demo_bad_arguments(tmp_path):
    existing = tmp_path / "existing.json"
    existing.write_text("x")
    res = runner.invoke(app, ["demo", "--out", str(existing), "--n-images", "5"])
    _assert_clean_error(res, "existing.json")
    res = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--n-images", "0"])
    _assert_clean_error(res, "n_images must be in 1..")


def test_probe_layer_out_of_range_and_bad_vector_dim(tmp_path):
    from mmsift.models.proxy import build_proxy

    pool = _pool(tmp_path)
    model = build_proxy(tmp_path / "model", texts=["question 0", "answer"], seed=0)
    res = runner.invoke(app, ["probe", str(pool), "--model", str(model), "--out", str(tmp_path / "r"),
                              "--methods", "datatailor", "--layer", "99"])
    _assert_clean_error(res, "layer 99 is out of range")
    assert not (tmp_path / "r" / "manifest.json").exists()
    res = runner.invoke(app, ["probe", str(pool), "--model", str(model), "--out", str(tmp_path / "r2"),
                              "--methods", "datatailor", "--vector-dim", "-3"])
    _assert_clean_error(res, "--vector-dim must be >= 1")


def test_select_with_a_pool_edited_since_the_probe(tmp_path):
    pool = _pool(tmp_path)
    from_arrays(tmp_path / "run", ids=[f"r{i}" for i in range(4)], index=list(range(4)),
                columns={"n_tokens": np.array([9.0, 1, 2, 3])}, meta={"pool": str(pool)})
    shifted = tmp_path / "shifted.json"
    shifted.write_text(json.dumps(json.loads(pool.read_text())[1:]))
    out = tmp_path / "s.json"
    # "length" keeps r0 (position 0); the shifted pool has r1 there: without the check r1 was written instead.
    res = runner.invoke(app, ["select", str(tmp_path / "run"), "-m", "length", "-b", "1", "-o", str(out),
                              "--data", str(shifted)])
    _assert_clean_error(res, "shifted.json is not the pool this run was probed on")
    assert not out.exists()


def test_bench_out_is_an_existing_file(tmp_path):
    existing = tmp_path / "existing.json"
    existing.write_text("x")
    res = runner.invoke(app, ["bench", "--quick", "--out", str(existing)])
    _assert_clean_error(res, "existing.json")


def test_a_folder_given_as_the_pool(tmp_path):
    folder = tmp_path / "pool.json"
    folder.mkdir()
    for command in (["validate"], ["warmup", "--out", str(tmp_path / "proxy")],
                    ["probe", "--methods", "length", "--out", str(tmp_path / "run")]):
        res = runner.invoke(app, [command[0], str(folder), *command[1:]])
        _assert_clean_error(res, "pool.json is a folder, not a pool file")


def test_judge_with_no_valid_record_fails(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    res = runner.invoke(app, ["judge", str(empty), "--model", "m", "--out", str(tmp_path / "j"),
                              "--base-url", "http://127.0.0.1:9", "--retries", "0"])
    _assert_clean_error(res, "empty.json: no valid record to judge", "empty_pool")
    res = runner.invoke(app, ["judge", str(_pool(tmp_path)), "--model", "m", "--out", str(tmp_path / "j"),
                              "--base-url", "http://127.0.0.1:9", "--retries", "0", "--limit", "0"])
    _assert_clean_error(res, "--limit must be >= 1")


def test_probe_over_a_run_with_other_settings_names_the_flag(tmp_path):
    pool = _pool(tmp_path)
    _run(tmp_path, pool)
    res = runner.invoke(app, ["probe", str(pool), "--model", str(tmp_path), "--out", str(tmp_path / "run"),
                              "--methods", "length"])
    _assert_clean_error(res, "holds a finished run with other settings; use another --out or --overwrite")
