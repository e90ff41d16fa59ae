"""The digits pool: real scans, a seeded share of wrong digits marked in the truth field, no shared scan."""

import json

import numpy as np
from PIL import Image

from mmsift.data.digits import TRUTH_FIELD, build_digits_pool


def test_digits_pool_flips_the_asked_share_and_marks_it(tmp_path):
    pool_path = build_digits_pool(tmp_path, n_eval=297, flip_share=0.2, seed=3)
    pool = json.loads(pool_path.read_text())
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert len(pool) == 1500 and len(evaluation) == 297
    assert not {r["image"] for r in pool} & {r["image"] for r in evaluation}
    wrong = [r for r in pool if r[TRUTH_FIELD]["defect"] == "wrong_answer"]
    assert len(wrong) == 300
    for r in pool:
        answer, true = int(r["conversations"][1]["value"]), r[TRUTH_FIELD]["true_label"]
        assert (answer != true) == (r in wrong)
    assert all(r["conversations"][1]["value"] == str(r[TRUTH_FIELD]["true_label"]) for r in evaluation)
    img = np.asarray(Image.open(tmp_path / "images" / pool[0]["image"]))
    assert img.shape == (64, 64, 3) and img.min() < 128 < img.max()  # ink on paper, not a blank


def test_digits_pool_is_seeded(tmp_path):
    a = build_digits_pool(tmp_path / "a", n_eval=100, seed=1).read_text()
    b = build_digits_pool(tmp_path / "b", n_eval=100, seed=1).read_text()
    c = build_digits_pool(tmp_path / "c", n_eval=100, seed=2).read_text()
    assert a == b and a != c
