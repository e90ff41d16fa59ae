"""The scorer contract, checked for every method in the registry (new methods are covered automatically).

Each method runs on a random store built with ``from_arrays`` holding every canonical signal (plus judge-style
columns derived from the method's ``requires``). The second half of the pool repeats the first half's signals,
so equal scores (and the pool-order tie rule) actually occur.
"""

import inspect

import numpy as np
import pytest

from mmsift import signals as canonical
from mmsift.budget import resolve_budget
from mmsift.scorers import SCORERS, make_scorer
from mmsift.scorers.base import Scorer
from mmsift.select import select_rows
from mmsift.store import SignalStore, from_arrays

N_HALF = 150
DIM = 12
FORMATS = np.array(["phrase", "mc", "img_caption", "region_desc", "region_bbox", "other_image", "text_only"],
                   dtype=object)


def _extra_column(name, rng, n):
    if name.endswith("_task"):  # a judged category (e.g. scale_task): strings
        return np.array(["counting", "ocr", "colour"], dtype=object)[rng.integers(0, 3, n)]
    if name.startswith("style_"):
        return rng.integers(0, 2, n).astype(np.float64)
    if name.startswith("cap_"):
        v = rng.integers(0, 6, n).astype(np.float64)
        v[rng.random(n) < 0.03] = np.nan  # unparseable judge answers
        return v
    return rng.integers(1, 6, n).astype(np.float64)


def _half(rng, n, extra_names):
    fmt = FORMATS[rng.integers(0, len(FORMATS), n)]
    mc = fmt == "mc"
    loss = np.round(rng.gamma(2.0, 0.6, n), 1)  # rounded: ties inside the half too
    cols = {
        "loss": loss,
        "n_tokens": rng.integers(10, 400, n).astype(np.int64),
        "n_answer_tokens": rng.integers(1, 100, n).astype(np.int64),
        "n_rounds": rng.integers(1, 5, n).astype(np.int64),
        "n_images": (fmt != "text_only").astype(np.int64),
        "el2n": np.round(rng.uniform(0, 1.4, n), 2),
        "loss_noq": loss + np.round(rng.normal(0.3, 0.4, n), 1),
        "tok_loss_max": loss * 3,
        "tok_loss_std": loss / 2,
        "sv_entropy": rng.uniform(0.5, 4.0, n),
        "sv_tau": rng.uniform(0.05, 0.9, n),
        "loss_mc": np.where(mc, loss, np.nan),
        "loss_sym": np.where(mc, loss + rng.normal(0.5, 0.5, n), np.nan),
        "loss_perm": np.where(mc, loss + rng.normal(0.5, 0.5, n), np.nan),
        "loss_imgnoise": np.where(~mc & (fmt != "text_only"), loss + rng.normal(0.3, 0.3, n), np.nan),
        "is_mc": mc.astype(np.int64),
        "fmt": fmt,
    }
    centres = rng.standard_normal((6, DIM)) * 3
    group = rng.integers(0, 6, n)
    for v in canonical.VECTORS:
        cols[v] = (centres[group] + rng.standard_normal((n, DIM))).astype(np.float16)
    for name in extra_names:
        cols[name] = _extra_column(name, rng, n)
    return cols


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    known = set(canonical.SCALARS) | set(canonical.VECTORS)
    # instance requires: a scorer may add signals according to its default parameters
    extra = sorted({r for m in SCORERS for r in make_scorer(m).requires} - known)
    rng = np.random.default_rng(7)
    half = _half(rng, N_HALF, extra)
    cols = {k: np.concatenate([v, v]) for k, v in half.items()}
    n = 2 * N_HALF
    tasks = np.array(["coco", "gqa", "ocr_vqa"], dtype=object)[rng.integers(0, 3, N_HALF)]
    return from_arrays(tmp_path_factory.mktemp("contract"), ids=[f"rec{i:04d}" for i in range(n)],
                       columns=cols, tasks=np.concatenate([tasks, tasks]))


def _load(store: SignalStore, scorer: Scorer):
    return store.load(sorted(set(scorer.requires)))


def test_registry_entries_are_well_formed():
    for key, cls in SCORERS.items():
        assert key == cls.name and cls.summary and cls.paper, key
        params = inspect.signature(cls.__init__).parameters
        assert "random_state" in params, key
        assert all(p.kind == p.KEYWORD_ONLY for n, p in params.items() if n != "self"), key
        assert not any(p.kind == p.VAR_KEYWORD for p in params.values()), key
        doc = inspect.getdoc(cls) or ""
        assert len(doc) > 80, f"{key}: the docstring must state formula, direction, signals and paper"


@pytest.mark.parametrize("method", sorted(SCORERS))
def test_contract(store, method):
    scorer = make_scorer(method, random_state=3)
    sig = _load(store, scorer)
    n = len(sig)
    scores = np.asarray(scorer.score(sig), dtype=np.float64)
    assert scores.shape == (n,)
    assert not np.isnan(scores).any() and not np.isposinf(scores).any()
    if np.isneginf(scores).any():
        assert "-inf" in (inspect.getdoc(type(scorer)) or ""), f"{method}: -inf exclusions must be documented"
        assert scorer.notes_, f"{method}: excluded rows must be reported in notes_"

    budget = 0.3
    n_keep = resolve_budget(budget, n)
    first = select_rows(sig, make_scorer(method, random_state=3), budget)
    again = select_rows(_load(store, scorer), make_scorer(method, random_state=3), budget)
    assert first.ids == again.ids, f"{method}: same seed must give the same ids"
    np.testing.assert_array_equal(first.scores, again.scores)
    if len(first.rows) < n_keep:  # a method may keep fewer (IFD's rate of the rows left), never silently
        assert any("budget" in n for n in first.notes), f"{method}: kept {len(first.rows)} of {n_keep}, no note"
    assert 0 < len(first.rows) <= n_keep, f"{method}: kept {len(first.rows)} for a budget of {n_keep}"
    assert len(set(first.ids)) == len(first.ids)
    assert (np.diff(first.index) > 0).all(), "ids come back in pool order"
    assert np.isfinite(first.scores[first.rows]).all(), f"{method}: chose an excluded (-inf) row"

    probe = make_scorer(method, random_state=3)
    probe_scores = probe.score(sig)
    if probe.choose(sig, probe_scores, n_keep) is not None:
        return  # the method picks rows itself: the top-k tie rule does not apply
    quotas = probe.quotas(sig, probe_scores, n_keep)
    groups = [np.arange(n)] if quotas is None else [np.flatnonzero(sig.tasks == t) for t in quotas]
    chosen = set(first.rows.tolist())
    for rows in groups:
        kept = [r for r in rows if r in chosen]
        if not kept or len(kept) == len(rows):
            continue
        boundary = min(scores[kept])
        above = rows[scores[rows] > boundary]
        assert set(above.tolist()) <= chosen, f"{method}: a higher score was passed over"
        tied = rows[scores[rows] == boundary]
        n_tied_kept = len([r for r in tied if r in chosen])
        earliest = tied[np.argsort(sig.index[tied], kind="stable")][:n_tied_kept]
        assert sorted(r for r in tied if r in chosen) == sorted(earliest.tolist()), \
            f"{method}: equal scores must go to the earlier record"


def test_duplicated_half_produces_ties_for_most_methods(store):
    """Guard for the tie check above: it only bites if ties occur, so make sure they do."""
    tied = 0
    for method in sorted(SCORERS):
        scorer = make_scorer(method, random_state=3)
        s = scorer.score(_load(store, scorer))
        finite = s[np.isfinite(s)]
        tied += len(np.unique(finite)) < len(finite)
    assert tied >= len(SCORERS) // 2
