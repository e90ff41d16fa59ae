"""`mmsift demo` as a user runs it, at a small size: every stage runs and the subsets are real pool records."""

import json

import pytest
from typer.testing import CliRunner

from mmsift.cli import app


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--n-images", "24", "--warmup-samples", "32",
                                   "--warmup-epochs", "1", "--budget", "0.25"])
    assert res.exit_code == 0, res.output
    pool = json.loads((out / "pool" / "easyvqa_train.json").read_text())
    by_id = {r["id"]: r for r in pool}
    for method in ("datatailor", "perplexity", "random"):
        subset = json.loads((out / "subsets" / method / "subset.json").read_text())
        assert len(subset) == round(0.25 * len(pool))
        assert all(by_id[r["id"]] == r for r in subset)
        line = next(ln for ln in res.output.splitlines() if ln.strip().startswith(f"{method} ("))
        assert f"kept {len(subset)} of {len(pool)}" in line
    assert "why (datatailor)" in res.output and "0 skipped" in res.output
    assert "image-shuffle test on" in res.output  # the user sees whether the proxy reads the images
    assert (out / "proxy" / "config.json").is_file() and (out / "run" / "manifest.json").is_file()
    # the rerun commands redo every step, the warm-up included, with the settings the demo used
    rerun = [ln.strip() for ln in res.output.splitlines() if ln.strip().startswith("mmsift ")]
    assert [ln.split()[1] for ln in rerun[:3]] == ["validate", "warmup", "probe"]
    assert "--epochs 1 --seed 0 --n-samples 32" in rerun[1] and f"--out {out / 'proxy'}" in rerun[1]
    # ... and each of them runs as printed (the probe line once had a --seed the probe has no option for)
    import shlex

    for line in rerun:
        args = shlex.split(line)
        assert args[0] == "mmsift"
        done = CliRunner().invoke(app, args[1:])
        assert done.exit_code == 0, f"{line}\n{done.output}"
    # the user learns what the project's bench says about the methods shown
    assert "what the project's bench says" in res.output and "datatailor: better than random at 15% (+0.072)" in res.output
