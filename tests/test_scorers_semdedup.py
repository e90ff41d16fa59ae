"""SemDeDup against a loop transcription on a hand-made table with two obvious clusters."""

import math

import numpy as np
import pytest

from mmsift.scorers import make_scorer
from mmsift.select import select_rows
from mmsift.store import Signals

# cluster A around (1, 0, 0): rows 0, 1 and 3 are near-duplicates of one another, row 2 is not
# cluster B around (0, 0, 1): rows 5 and 6 are near-duplicates, rows 4 and 7 are not
VECS = [[1.0, 0.0, 0.05], [1.0, 0.02, 0.06], [1.0, 0.4, 0.0], [0.98, 0.01, 0.05],
        [0.0, 0.3, 1.0], [0.05, 0.0, 1.0], [0.06, 0.01, 1.0], [0.3, -0.3, 1.0]]
CLUSTERS = [[0, 1, 2, 3], [4, 5, 6, 7]]


def _signals(vecs=VECS):
    n = len(vecs)
    return Signals(ids=np.array([f"v{i}" for i in range(n)], dtype=object), index=np.arange(n),
                   tasks=np.array(["all"] * n, dtype=object), columns={"last": np.array(vecs, np.float16)})


def _unit(v):
    v = [float(np.float16(a)) for a in v]
    s = math.sqrt(sum(a * a for a in v))
    return [a / s for a in v]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _expected_keep(eps, keep_far=True, clusters=CLUSTERS):
    units = [_unit(v) for v in VECS]
    keep = [True] * len(VECS)
    for members in clusters:
        mean = [sum(units[i][d] for i in members) / len(members) for d in range(3)]
        norm = math.sqrt(sum(a * a for a in mean))
        cent = [a / norm for a in mean]
        sim = {i: _dot(units[i], cent) for i in members}
        visit = sorted(members, key=lambda i: (sim[i] if keep_far else -sim[i], i))
        for pos, j in enumerate(visit):
            if any(_dot(units[i], units[j]) > 1 - eps for i in visit[:pos]):
                keep[j] = False
    return keep


@pytest.mark.parametrize("keep", ["far", "near"])
@pytest.mark.parametrize("eps", [0.001, 0.01, 0.2])
def test_keep_mask_matches_transcription(eps, keep):
    scorer = make_scorer("semdedup", {"eps": eps, "n_clusters": 2, "keep": keep})
    got = scorer.keep_mask(_signals())
    assert got.tolist() == _expected_keep(eps, keep == "far")
    assert "semdedup: removed" in scorer.notes_[0]


def test_known_duplicates_removed_at_moderate_eps():
    keep = make_scorer("semdedup", {"eps": 0.01, "n_clusters": 2}).keep_mask(_signals())
    assert keep[[2, 4, 7]].all()          # the distinct ones stay
    assert keep[[0, 1, 3]].sum() == 1     # one of each duplicate group
    assert keep[[5, 6]].sum() == 1


def test_score_puts_kept_first_and_serves_as_dedup_step():
    sig = _signals()
    scorer = make_scorer("semdedup", {"eps": 0.01, "n_clusters": 2})
    s = scorer.score(sig)
    kept = scorer.details_["kept"].astype(bool)
    assert s[kept].min() > s[~kept].max() and (s[kept] < 1.5).all() and (s[~kept] >= 0).all()
    sel = select_rows(sig, make_scorer("random"), 1.0, dedup=make_scorer("semdedup", {"eps": 0.01, "n_clusters": 2}))
    assert len(sel.rows) == kept.sum() and sel.dropped_by_dedup == (~kept).sum()


def test_other_vector_changes_requires():
    scorer = make_scorer("semdedup", {"vector": "img_mean"})
    assert scorer.requires == ("img_mean",)
    with pytest.raises(KeyError, match="img_mean"):
        scorer.check_signals(_signals())


def test_nan_vector_is_an_error_naming_the_record():
    vecs = [list(v) for v in VECS]
    vecs[3][1] = float("nan")
    with pytest.raises(ValueError, match="v3"):
        make_scorer("semdedup").keep_mask(_signals(vecs))


def test_planted_near_duplicates_are_found_across_many_clusters():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((3000, 32))
    src = rng.choice(3000, 300, replace=False)
    dups = base[src] + 0.005 * rng.standard_normal((300, 32))
    n = 3300
    sig = Signals(ids=np.array([f"p{i}" for i in range(n)], dtype=object), index=np.arange(n),
                  tasks=np.array(["all"] * n, dtype=object),
                  columns={"last": np.concatenate([base, dups]).astype(np.float16)})
    keep = make_scorer("semdedup", {"eps": 0.02, "n_clusters": 10}).keep_mask(sig)
    pair_dropped = ~keep[src] | ~keep[3000:]
    assert pair_dropped.mean() > 0.9        # a duplicate and its source can land in different clusters
    assert keep[np.setdiff1d(np.arange(3000), src)].all()  # random 32-d vectors are never near-duplicates


def test_warns_when_most_of_the_pool_looks_duplicated():
    import numpy as np

    from mmsift.scorers.semdedup import SemDeDup
    from mmsift.store import Signals

    rng = np.random.default_rng(0)
    base = rng.standard_normal(16)
    x = base + 1e-3 * rng.standard_normal((40, 16))  # degenerate features: every vector nearly the same
    sig = Signals(ids=np.array([f"r{i}" for i in range(40)], dtype=object), index=np.arange(40),
                  tasks=np.array(["all"] * 40, dtype=object), columns={"last": x})
    scorer = SemDeDup()
    keep = scorer.keep_mask(sig)
    assert keep.sum() == 1
    assert any(n.startswith("warning: semdedup removed 98%") for n in scorer.notes_)
