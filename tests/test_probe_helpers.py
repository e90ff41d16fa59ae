"""Shared builders for the probe tests: a small LLaVA-style pool with PIL-made images and the tiny proxy."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

COLORS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220), "white": (250, 250, 250),
          "black": (5, 5, 5), "yellow": (240, 230, 40)}


def conv(*texts):
    return [{"from": "human" if k % 2 == 0 else "gpt", "value": t} for k, t in enumerate(texts)]


def make_images(images_dir):
    from PIL import Image, ImageDraw

    for k, (name, rgb) in enumerate(COLORS.items()):
        folder = images_dir / ("shapes" if k % 2 == 0 else "colors")
        folder.mkdir(parents=True, exist_ok=True)
        im = Image.new("RGB", (40 + 6 * k, 36), rgb)
        ImageDraw.Draw(im).ellipse((5, 5, 25, 25), fill=(255 - rgb[0], 255 - rgb[1], 255 - rgb[2]))
        im.save(folder / f"{name}.png")


def image_of(k):
    name = list(COLORS)[k % len(COLORS)]
    return f"{'shapes' if (k % len(COLORS)) % 2 == 0 else 'colors'}/{name}.png"


def pool_records(n: int = 18) -> list[dict]:
    """Single- and multi-turn, multiple-choice, region, caption, text-only and two-image records."""
    recs = []
    for k in range(n):
        kind = k % 6
        img = image_of(k)
        color = list(COLORS)[k % len(COLORS)]
        if kind == 0:
            r = {"image": img, "conversations": conv("<image>\nWhat colour is the background?", color.capitalize())}
        elif kind == 1:
            r = {"image": img, "conversations": conv(
                "<image>\nWhat colour is it?\nA. red\nB. green\nC. blue\nD. white\n"
                "Answer with the option's letter from the given choices directly.", "ABCD"[k % 4])}
        elif kind == 2:
            r = {"image": img, "conversations": conv(
                "<image>\nIs there a circle?", "Yes, there is a circle in the middle.",
                "What colour is the circle?", f"It is the inverse of {color}, roughly.",
                "Describe the picture.", "A plain background with one round shape near the top left corner.")}
        elif kind == 3:
            r = {"conversations": conv(f"Name a word that rhymes with {color}.", "Bed." if k % 2 else "Sled.")}
        elif kind == 4:
            r = {"image": [img, image_of(k + 1)], "conversations": conv(
                "<image>\n<image>\nAre the two backgrounds the same colour?", "No, they differ.")}
        else:
            r = {"image": img, "conversations": conv(
                "<image>\nPlease describe the region [0.12, 0.10, 0.62, 0.70] in detail.",
                "A round blob of a single flat colour, centred in the region and filling most of it.")}
        r["id"] = f"r{k:02d}"
        recs.append(r)
    return recs


def write_pool(path, records):
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path


def pool_texts(records):
    return [t["value"].replace("<image>", "") for r in records for t in r["conversations"]]


@pytest.fixture(scope="module")
def probe_setup(tmp_path_factory):
    """(pool_path, images_dir, model_dir) with 18 records and a freshly built (untrained) proxy."""
    from mmsift.models.proxy import build_proxy

    root = tmp_path_factory.mktemp("probe")
    make_images(root / "images")
    records = pool_records()
    pool = write_pool(root / "pool.json", records)
    model = build_proxy(root / "model", texts=pool_texts(records), seed=0)
    sharpen(model)
    return pool, root / "images", model


def sharpen(model_dir):
    """Scale up q/k projections and the LM head of the freshly initialised proxy and save it again.

    With init std 0.02 every attention row is nearly uniform and every token loss is nearly log(V), so tests
    comparing against references could not tell a wrong shift or a wrong RoPE from a right one.
    """
    from transformers import AutoModelForImageTextToText

    m = AutoModelForImageTextToText.from_pretrained(model_dir)
    with torch.no_grad():
        for layer in m.model.language_model.layers:
            layer.self_attn.q_proj.weight.mul_(12.0)
            layer.self_attn.k_proj.weight.mul_(12.0)
        m.lm_head.weight.mul_(40.0)
    m.save_pretrained(model_dir)


@pytest.fixture(scope="module")
def loaded(probe_setup):
    from mmsift.models.loading import load_model

    return load_model(probe_setup[2])
