"""Warm-up training of the bundled proxy: answer loss goes down, the model reloads, the loop is reusable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_probe_helpers import make_images, pool_records, pool_texts, write_pool


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm")
    make_images(root / "images")
    records = pool_records(30)
    return write_pool(root / "pool.json", records), root / "images", records, root


def mean_answer_loss(lm, records, images):
    from mmsift.models.encode import encode_records
    from mmsift.models.losses import batch_answer_loss

    encs, failed = encode_records(lm.adapter, records, images)
    assert not failed
    with torch.no_grad():
        return float(batch_answer_loss(lm.adapter, lm.model, lm.adapter.collate(encs)))


def test_train_proxy_lowers_answer_loss(pool):
    from mmsift.data.io import read_pool
    from mmsift.models.loading import load_model
    from mmsift.models.proxy import build_proxy
    from mmsift.train.loop import TrainConfig, train_model

    path, images, raw, root = pool
    records = read_pool(path).records
    model_dir = build_proxy(root / "scratch", texts=pool_texts(raw), seed=1)
    before = mean_answer_loss(load_model(model_dir), records, images)
    result = train_model(model_dir, records, images, TrainConfig(steps=20, lr=5e-3, batch_size=10, seed=0))
    assert len(result.losses) == 20 and result.n_samples == 30
    after = mean_answer_loss(result.model, records, images)
    assert after < 0.7 * before, (before, after)
    # Same seed, same curve (the benchmark relies on this to compare subsets fairly).
    a = train_model(model_dir, records[:12], images, TrainConfig(steps=3, lr=5e-3, batch_size=6, seed=3))
    b = train_model(model_dir, records[:12], images, TrainConfig(steps=3, lr=5e-3, batch_size=6, seed=3))
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-6)
    assert a.losses[0] != pytest.approx(result.losses[0])  # another seed draws another first batch


def test_warmup_writes_reloadable_model_with_loss_curve(pool):
    from mmsift.models.loading import load_model
    from mmsift.train.pretrain import ensure_base
    from mmsift.train.warmup import WarmupConfig, warmup

    path, images, raw, root = pool
    out = warmup(path, WarmupConfig(images=images, out=root / "proxy", n_samples=24, epochs=4, seed=0, lr=5e-3,
                                    batch_size=8, min_steps=1, base="bundled"))
    info = json.loads((out / "warmup.json").read_text())
    assert info["n_samples"] == 24 and len(info["epoch_losses"]) == 4
    assert info["vision_frozen"] and info["base"]["key"] == ensure_base().name
    assert info["image_shuffle"]["n_records"] > 0 and "increase" in info["image_shuffle"]
    assert info["epoch_losses"][-1] < info["epoch_losses"][0]
    lm = load_model(out)
    assert lm.model_type == "llava"
    # The saved weights are the trained ones: their loss on the training pool is below the first epoch's.
    from mmsift.data.io import read_pool

    assert mean_answer_loss(lm, read_pool(path).records, images) < info["epoch_losses"][0]
    # Started from the base with the tower frozen: the tower's weights are the base's, the rest moved.
    base = load_model(ensure_base())
    for (name, a), b in zip(lm.model.named_parameters(), base.model.parameters()):
        if "vision_tower" in name:
            torch.testing.assert_close(a, b)
    assert not torch.equal(lm.model.lm_head.weight, base.model.lm_head.weight)


def test_warmup_whole_pool_by_default_and_base_none(pool):
    from mmsift.train.warmup import WarmupConfig, warmup

    path, images, raw, root = pool
    good = [r for r in raw if r.get("conversations")]
    out = warmup(path, WarmupConfig(images=images, out=root / "scratch_proxy", epochs=1, batch_size=8, base="none",
                                    min_steps=1, progress=False))
    info = json.loads((out / "warmup.json").read_text())
    assert info["n_samples"] + info["n_failed"] == len(good) and info["base"] == "none"
    assert info["lr"] == 3e-3
    # The perception stage ran on the pool's own images, then the tower was frozen.
    perception = info["pool_perception"]
    assert not perception["skipped"] and perception["vocabulary"] > 0 and info["vision_frozen"]
    assert perception["steps"] == 100 and perception["heldout_loss"] >= 0 and perception["base_rate_loss"] >= 0
    with pytest.raises(ValueError, match="--base"):
        warmup(path, WarmupConfig(images=images, out=root / "x", base="mine"))


def test_image_shuffle_test_by_hand(pool):
    """loss_own / loss_shuffled equal the answer loss with own images and with images moved one place along."""
    from mmsift.data.io import read_pool
    from mmsift.models.base import Encoded
    from mmsift.models.loading import load_model
    from mmsift.train.pretrain import ensure_base
    from mmsift.models.encode import encode_records
    from mmsift.models.losses import batch_answer_loss
    from mmsift.train.warmup import image_shuffle_test

    path, images, _, _ = pool
    lm = load_model(ensure_base())
    records = read_pool(path).records
    test = image_shuffle_test(lm, records, images, n=8, seed=0, batch_size=64)
    order = np.random.default_rng(0).permutation(len(records))[:16]
    encs, _ = encode_records(lm.adapter, [records[i] for i in order], images)
    encs = [e for e in encs if e.n_images == 1 and e.extra][:8]  # all proxy images share one shape here
    rolled = [Encoded(e.input_ids, e.answer_mask, e.image_mask, encs[(k + 1) % len(encs)].extra, 1)
              for k, e in enumerate(encs)]
    with torch.no_grad():
        own = float(batch_answer_loss(lm.adapter, lm.model, lm.adapter.collate(encs)))
        shuffled = float(batch_answer_loss(lm.adapter, lm.model, lm.adapter.collate(rolled)))
    assert test["n_records"] == 8
    assert test["loss_own"] == pytest.approx(own, abs=1e-3)
    assert test["loss_shuffled"] == pytest.approx(shuffled, abs=1e-3)
    assert test["increase"] == pytest.approx(shuffled - own, abs=2e-3)


def test_warmup_command_prints_curve(pool):
    import typer
    from typer.testing import CliRunner

    from mmsift.cli.warmup import warmup_command

    path, images, _, root = pool
    app = typer.Typer()
    app.command()(warmup_command)
    out = root / "cmd_proxy"
    result = CliRunner().invoke(app, [str(path), "--images", str(images), "--out", str(out), "--n-samples", "8",
                                      "--epochs", "1", "--batch-size", "4", "--min-steps", "5"])
    assert result.exit_code == 0, result.output
    # 1 epoch = 2 steps, raised to 5, and said so
    assert "trained the proxy on 8 records for 5 steps of 4 (2.5 passes; --min-steps 5 raised it from --epochs 1)" \
        in result.output
    assert "image-shuffle test on" in result.output
    assert (out / "config.json").is_file() and (out / "warmup.json").is_file()


def test_small_models_use_one_cpu_thread_and_restore_it(pool):
    from mmsift.models.loading import cpu_threads_for

    model = torch.nn.Linear(4, 4)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with cpu_threads_for(model, "cpu"):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with cpu_threads_for(model, "cuda"):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_answer_words_and_vocabulary_by_hand():
    from mmsift.data.records import Record, Turn
    from mmsift.train.perception import answer_vocabulary, answer_words

    def rec(*answers):
        turns = [t for a in answers for t in (Turn("user", "q?"), Turn("assistant", a))]
        return Record(id="x", index=0, images=["a.png"], turns=turns, raw={})

    r = rec("Red.", "A big blue circle", "It is a very long answer here")
    assert answer_words(r) == {"red"}  # 4+ word answers are not labels
    assert answer_words(rec("Blue circle")) == {"blue", "circle"}
    pool = [rec("red")] * 6 + [rec("blue")] * 5 + [rec("teal")] * 4
    assert answer_vocabulary(pool, min_count=5) == ["red", "blue"]
    assert answer_vocabulary(pool, top_k=1, min_count=1) == ["red"]


def test_best_checkpoint_keeps_the_lowest_heldout_point_and_stops_on_patience():
    from mmsift.train.loop import BestCheckpoint

    layer = torch.nn.Linear(2, 1)
    heldout = iter([3.0, 1.0, 2.0, 2.5, 2.7])
    watch = BestCheckpoint(every=2, patience=3)
    watch.track([layer], lambda: next(heldout))
    stops, kept = [], None
    for step in range(1, 11):
        with torch.no_grad():
            layer.weight.fill_(float(step))
        stops.append(watch.after_step(step))
        if step == 4:
            kept = layer.weight.detach().clone()  # the weights when the held-out loss was lowest (1.0)
        if stops[-1]:
            break
    assert stops == [False] * 9 + [True] and step == 10  # 3 measurements (steps 6, 8, 10) without improvement
    watch.restore()
    torch.testing.assert_close(layer.weight, kept)
    assert watch.summary()["best_step"] == 4 and watch.summary()["heldout_losses"][0] == (2, 3.0)


def test_warmup_holds_out_records_and_keeps_the_best_step(pool):
    from mmsift.train.warmup import WarmupConfig, warmup

    path, images, raw, root = pool
    out = warmup(path, WarmupConfig(images=images, out=root / "held", epochs=2, batch_size=8, min_steps=12,
                                    base="bundled", holdout=0.3, progress=False))
    info = json.loads((out / "warmup.json").read_text())
    assert info["n_heldout"] == 9 and info["n_samples"] + info["n_failed"] == 21
    held = info["heldout"]
    assert held["best_step"] == info["step_kept"] and 1 <= info["step_kept"] <= info["steps"]
    assert held["best_heldout_loss"] == min(loss for _, loss in held["heldout_losses"])


def test_warmup_auto_switches_to_pool_perception_when_the_base_does_not_read(pool, monkeypatch):
    import mmsift.train.warmup as wu
    from mmsift.cli.warmup import warmup_lines

    path, images, raw, root = pool
    monkeypatch.setattr(wu, "SHUFFLE_MIN", 1e9)  # no proxy "reads": auto must switch, and then warn
    out = wu.warmup(path, wu.WarmupConfig(images=images, out=root / "auto", epochs=1, batch_size=8, min_steps=2,
                                          progress=False))
    info = json.loads((out / "warmup.json").read_text())
    assert info["base"] == "none" and info["base_option"] == "auto" and info["lr"] == 3e-3
    assert info["switched_from"]["base"]["key"] and "increase" in info["switched_from"]["image_shuffle"]
    assert "barely reads the images" in info["warning"] and "--base none" not in info["warning"]
    lines = warmup_lines(info)
    assert lines[0].startswith("the pretrained base did not read") and any(ln.startswith("warning:") for ln in lines)
    monkeypatch.setattr(wu, "SHUFFLE_MIN", -1e9)  # every proxy "reads": auto stays on the base
    out = wu.warmup(path, wu.WarmupConfig(images=images, out=root / "auto2", epochs=1, batch_size=8, min_steps=2,
                                          progress=False))
    info = json.loads((out / "warmup.json").read_text())
    assert info["base"]["key"] and "switched_from" not in info and info["warning"] is None


def test_warmup_lines_say_what_the_min_steps_floor_did():
    from mmsift.cli.warmup import warmup_lines

    info = {"steps": 300, "steps_planned": 300, "n_samples": 6, "batch_size": 16, "epochs": 2, "min_steps": 300,
            "epoch_losses": [1.0 / (k + 1) for k in range(300)], "n_pool_records": 6,
            "image_shuffle": {"n_records": 0}, "seconds": 3.0}
    lines = warmup_lines(info)
    assert "--min-steps 300 raised it from --epochs 2" in lines[0] and "800.0 passes" in lines[0]
    assert "... (294 more)" in lines[1] and lines[1].count(":") == 7  # 6 losses shown, not 300
    assert lines[-1].startswith("warning: only 6 valid records")
