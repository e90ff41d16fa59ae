"""The bundled preset of the bench: an easy-vqa pool with injected defects and the easy-vqa *test* split.

``mmsift bench`` without ``--pool`` runs it: :func:`prepare_preset` builds the pool (:mod:`mmsift.bench.pool`,
defects from :mod:`mmsift.bench.defects`, truth under the ``bench`` field) and the evaluation items
(:func:`mmsift.bench.evaluate.build_eval_set`), then the generic runner (:mod:`mmsift.bench.runner`) does the
rest, exactly as for a user's pool. Everything easy-vqa-specific about the bench lives here and in ``pool``,
``defects`` and ``evaluate``'s builders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mmsift.bench.inputs import BenchInputs

TRUTH_FIELD = "bench"
# Columns the score averages: those the target trained on the full clean pool answers well above chance on a
# validation split (docs/benchmark.md has the measurements; yes/no and multiple choice stay near chance and are
# left out). The report prints every evaluated column's full-clean accuracy against chance on each run.
SCORE_COLUMNS = ("shape", "color", "ocr")
QUICK_METHODS = ("random", "datatailor", "ards", "selfcheck", "coincide")


@dataclass(frozen=True)
class PresetConfig:
    """Sizes of the bundled easy-vqa preset (``mmsift bench`` without ``--pool``); a user's pool ignores them."""

    n_images: int = 400
    n_ocr: int = 120
    eval_per_type: int = 300
    eval_mc: int = 300
    eval_ocr: int = 300
    mc_attacks: bool = False  # also the permuted / symbol-attacked MC versions (ARDS's columns)
    open_types: tuple = ("shape", "color", "yesno")  # open question types of the evaluation set
    rates: object = None  # mmsift.bench.defects.DefectRates; None = the documented defaults
    score_columns: tuple = SCORE_COLUMNS
    # Evaluate on a validation split instead of easy-vqa test: the pool-range train images this pool does not use
    # (for choosing the preset's settings; the test split is never used to tune anything).
    validation: bool = False


# --quick: a smaller pool, and only the score columns' items (yes/no and MC are not learned: docs/benchmark.md).
QUICK_PRESET = PresetConfig(n_images=200, n_ocr=64, eval_mc=0, open_types=("shape", "color"))


def prepare_preset(cfg, out: Path) -> BenchInputs:
    """Build the preset's pool and evaluation set under ``out`` (``pool/``, ``eval/``)."""
    from mmsift.bench.evaluate import build_eval_set, load_eval_set
    from mmsift.bench.pool import build_bench_pool

    preset = cfg.preset
    pool_path = build_bench_pool(out / "pool", n_images=preset.n_images, n_ocr=preset.n_ocr, seed=cfg.seed,
                                 rates=preset.rates)
    validation_ids = unused_pool_images(pool_path) if preset.validation else None
    items = load_eval_set(build_eval_set(out / "eval", n_per_type=preset.eval_per_type, n_mc=preset.eval_mc,
                                         n_ocr=preset.eval_ocr, seed=cfg.seed, mc_attacks=preset.mc_attacks,
                                         open_types=preset.open_types, validation_ids=validation_ids))
    split = "validation (unused pool-range train images)" if preset.validation else "test"
    return BenchInputs(pool_path=pool_path, images=out / "pool" / "images", items=items,
                       eval_images=out / "eval" / "images", truth_field=TRUTH_FIELD,
                       score_columns=tuple(preset.score_columns),
                       eval_summary=f"evaluation: {len(items)} easy-vqa {split} items")


def unused_pool_images(pool_path: Path) -> list[int]:
    """Pool-range easy-vqa train image ids that no record of the pool at ``pool_path`` shows."""
    import json

    from mmsift.data.easyvqa import POOL_IMAGE_IDS

    records = json.loads(Path(pool_path).read_text(encoding="utf-8"))
    # Copies (exact and near duplicates, the truth's dup_of) show their original's image or an altered file of it.
    used = {int(Path(r["image"]).stem) for r in records
            if str(r["image"]).startswith("easyvqa/") and r[TRUTH_FIELD]["dup_of"] is None}
    return [i for i in POOL_IMAGE_IDS if i not in used]


def defect_rates(cfg) -> dict:
    from dataclasses import asdict

    from mmsift.bench.defects import DefectRates

    return asdict(cfg.preset.rates or DefectRates())
