"""The bundled preset of the bench: an easy-vqa pool with injected defects and the easy-vqa *test* split.

``mmsift bench`` without ``--pool`` runs it: :func:`prepare_preset` builds the pool (:mod:`mmsift.bench.pool`,
defects from :mod:`mmsift.bench.defects`, truth under the ``bench`` field) and the evaluation items
(:func:`mmsift.bench.evaluate.build_eval_set`), then the generic runner (:mod:`mmsift.bench.runner`) does the
rest, exactly as for a user's pool. Everything easy-vqa-specific about the bench lives here and in ``pool``,
``defects`` and ``evaluate``'s builders.
"""

from __future__ import annotations

from pathlib import Path

from mmsift.bench.inputs import BenchInputs

TRUTH_FIELD = "bench"
# Columns the score averages: those the target trained on the full clean pool answers well above chance on a
# validation split (docs/benchmark.md has the measurements; yes/no and multiple choice stay near chance and are
# left out). The report prints every evaluated column's full-clean accuracy against chance on each run.
SCORE_COLUMNS = ("shape", "color", "ocr")
QUICK_METHODS = ("random", "datatailor", "ards", "selfcheck", "coincide")


def prepare_preset(cfg, out: Path) -> BenchInputs:
    """Build the preset's pool and evaluation set under ``out`` (``pool/``, ``eval/``)."""
    from mmsift.bench.evaluate import build_eval_set, load_eval_set
    from mmsift.bench.pool import build_bench_pool

    pool_path = build_bench_pool(out / "pool", n_images=cfg.n_images, n_ocr=cfg.n_ocr, seed=cfg.seed,
                                 rates=cfg.rates)
    items = load_eval_set(build_eval_set(out / "eval", n_per_type=cfg.eval_per_type, n_mc=cfg.eval_mc,
                                         n_ocr=cfg.eval_ocr, seed=cfg.seed, mc_attacks=cfg.mc_attacks,
                                         open_types=cfg.open_types))
    return BenchInputs(pool_path=pool_path, images=out / "pool" / "images", items=items,
                       eval_images=out / "eval" / "images", truth_field=TRUTH_FIELD,
                       score_columns=tuple(cfg.score_columns), eval_summary=f"evaluation: {len(items)} easy-vqa test "
                                                                            "items")


def defect_rates(cfg) -> dict:
    from dataclasses import asdict

    from mmsift.bench.defects import DefectRates

    return asdict(cfg.rates or DefectRates())
