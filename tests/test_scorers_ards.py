"""ARDS against a loop transcription on a hand-made 12-row table (two formats + text-only), and its format
detection against a transcription of the authors' cluster_subgroup.py."""

import math
from collections import namedtuple

import numpy as np
import pytest

from mmsift.scorers import make_scorer
from mmsift.scorers.ards import first_turn_format
from mmsift.select import select_rows
from mmsift.store import Signals

NAN = float("nan")
FMT = ["mc", "mc", "mc", "mc", "caption", "caption", "caption", "caption", "caption", "text_only", "text_only", "mc"]
LAST = [[1, 0, 0], [0.9, 0.1, 0], [1, 0.2, 0.1], [0.8, 0, 0.3], [0, 1, 0], [0.1, 1, 0.1], [0, 0.9, 0.4],
        [0.3, 1, 0], [0, 0.2, 1], [0, 0, 1], [0.5, 0.5, 0.5], [1, -0.2, 0]]
ATTN = [[0, 1], [0.1, 1], [0.3, 1], [0, 1], [1, 0], [1, 0.2], [0.9, 0.1], [1, -0.1], [0.5, 0.5], [0, 1],
        [1, 1], [0.2, 0.9]]
LOSS = [1.0, 2.0, 0.5, 1.5, 0.8, 1.2, 0.3, 2.5, 1.0, 0.7, 0.9, 1.1]
SYM = [1.5, 2.1, 2.5, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, 1.0]
PERM = [0.2, 3.0, 0.4, 2.5, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN]
NOISE = [NAN, NAN, NAN, NAN, 1.6, 1.1, 0.4, 2.6, NAN, NAN, NAN, NAN]
# loss over the multiple-choice rounds only: the same as LOSS for these single-round mc items
MC = [v if f == "mc" else NAN for v, f in zip(LOSS, FMT)]


def _signals():
    n = len(FMT)
    return Signals(ids=np.array([f"a{i}" for i in range(n)], dtype=object), index=np.arange(n),
                   tasks=np.array(["all"] * n, dtype=object),
                   columns={"fmt": np.array(FMT, dtype=object), "loss": np.array(LOSS), "loss_mc": np.array(MC), "loss_sym": np.array(SYM),
                            "loss_perm": np.array(PERM), "loss_imgnoise": np.array(NOISE),
                            "is_mc": np.array([f == "mc" for f in FMT], float),
                            "last_final": np.array(LAST, np.float16), "attn_pool": np.array(ATTN, np.float16)})


def _unit(v):
    v = [float(np.float16(t)) for t in v]
    s = math.sqrt(sum(t * t for t in v))
    return [t / s for t in v]


def _cos_r(i, j):
    # cos of [unit(last); unit(attn)] vectors: each half has norm 1, the whole sqrt(2)
    a = _unit(LAST[i]) + _unit(ATTN[i])
    b = _unit(LAST[j]) + _unit(ATTN[j])
    return sum(x * y for x, y in zip(a, b)) / 2.0


def _gap(i):
    if FMT[i] == "text_only":
        return NAN
    if FMT[i] == "mc":
        gaps = [abs(v - MC[i]) for v in (SYM[i], PERM[i]) if not math.isnan(v)]
        return max(gaps) if gaps else NAN
    return abs(NOISE[i] - LOSS[i]) if not math.isnan(NOISE[i]) else NAN


def _perturbed(i):
    """Loss of the attack that gave the mc gap (symbol wins a tie)."""
    sym = abs(SYM[i] - MC[i]) if not math.isnan(SYM[i]) else -1
    perm = abs(PERM[i] - MC[i]) if not math.isnan(PERM[i]) else -1
    return SYM[i] if sym >= perm else PERM[i]


def _expected(agg, n_worst):
    # one subgroup per format (n_subgroups=1): the subgroups are the formats, in sorted order
    groups = []
    for f in sorted(set(FMT) - {"text_only"}):
        members = [i for i in range(len(FMT)) if FMT[i] == f and not math.isnan(_gap(i))]
        members.sort(key=lambda i: (-_gap(i), i))
        groups.append(members[:n_worst])
    # the authors' code adds each mc evaluation item's attacked copy to the evaluation set: its loss joins the mean
    means = []
    for s in groups:
        losses = [LOSS[j] for j in s] + [_perturbed(j) for j in s if FMT[j] == "mc"]
        means.append(sum(losses) / len(losses))
    z = sum(math.exp(m) for m in means)
    w = [math.exp(m) / z for m in means]
    worst = {j for s in groups for j in s}
    out = []
    for i in range(len(FMT)):
        if i in worst:
            out.append(-math.inf)
            continue
        total = 0.0
        for wm, s in zip(w, groups):
            sims = [_cos_r(i, j) for j in s]
            total += wm * (sum(sims) / len(sims) if agg == "mean" else max(sims))
        out.append(total)
    return out


@pytest.mark.parametrize("agg", ["mean", "max"])
@pytest.mark.parametrize("n_worst", [1, 2, 3])
def test_scores_match_loop_transcription(agg, n_worst):
    scorer = make_scorer("ards", {"agg": agg, "n_worst": n_worst, "n_subgroups": 1})
    got = scorer.score(_signals())
    np.testing.assert_allclose(got, _expected(agg, n_worst), rtol=1e-5, atol=1e-6)
    assert any(f"{sum(1 for v in got if v == -np.inf)} worst-case" in n for n in scorer.notes_)


def test_worst_case_members_are_the_attack_sensitive_ones():
    scorer = make_scorer("ards", {"n_worst": 2, "n_subgroups": 1})
    s = scorer.score(_signals())
    # mc gaps: a0 .8, a1 1.0, a2 2.0, a3 1.0, a11 .1 -> a2, then a1 before a3 on the 1.0 tie
    worst = set(np.flatnonzero(s == -np.inf).tolist())
    assert {1, 2} <= worst and 3 not in worst                   # pool order breaks the 1.0 tie
    assert 9 not in worst and 10 not in worst                   # text-only items are never evaluation items
    assert np.isfinite(s[[9, 10]]).all()                        # ...but they are scored as training candidates


def test_subgroups_split_a_format_and_selection_skips_evaluation_items():
    sig = _signals()
    scorer = make_scorer("ards", {"n_subgroups": 2, "n_worst": 1})
    s = scorer.score(sig)
    groups = scorer.details_["subgroup"]
    assert len(set(groups[groups >= 0].tolist())) == 4  # 2 formats x 2 subgroups
    usable = {g for g, gap in zip(groups, scorer.details_["gap"]) if g >= 0 and np.isfinite(gap)}
    assert np.isinf(s).sum() == len(usable)  # one item per subgroup that has a perturbed loss
    for g in usable:  # ...and it is the subgroup's most attack-sensitive member
        members = np.flatnonzero(groups == g)
        gaps = np.where(np.isfinite(scorer.details_["gap"][members]), scorer.details_["gap"][members], -1)
        assert s[members[np.argmax(gaps)]] == -np.inf
    sel = select_rows(sig, scorer, 6)
    assert np.isfinite(s[sel.rows]).all()


def test_missing_perturbations_is_a_clear_error():
    sig = _signals()
    for k in ("loss_sym", "loss_perm", "loss_imgnoise"):
        sig.columns[k] = np.full(len(FMT), np.nan)
    with pytest.raises(ValueError, match="worst-case"):
        make_scorer("ards").score(sig)


def test_subgroup_weights_include_the_perturbed_copies():
    # evaluation items: mc a2 (loss 0.5; its symbol attack, loss 2.5, gave the gap 2.0) and caption a4 (loss 0.8).
    # With the attacked copy the mc subgroup's mean loss is (0.5 + 2.5) / 2 = 1.5, so w = softmax(1.5, 0.8);
    # clean losses only (the old rule) gave softmax(0.5, 0.8), which puts more weight on the caption subgroup.
    scorer = make_scorer("ards", {"n_worst": 1, "n_subgroups": 1})
    s = scorer.score(_signals())
    assert set(np.flatnonzero(s == -np.inf).tolist()) == {2, 4}
    w_mc = math.exp(1.5) / (math.exp(1.5) + math.exp(0.8))
    assert s[0] == pytest.approx(w_mc * _cos_r(0, 2) + (1 - w_mc) * _cos_r(0, 4), rel=1e-5)
    w_old = math.exp(0.5) / (math.exp(0.5) + math.exp(0.8))
    assert s[0] != pytest.approx(w_old * _cos_r(0, 2) + (1 - w_old) * _cos_r(0, 4), rel=1e-3)


def test_both_vector_halves_come_from_the_final_layer():
    assert "last_final" in make_scorer("ards").requires and "last" not in make_scorer("ards").requires


def test_mc_gap_is_measured_on_the_multiple_choice_rounds():
    # a11 is a merged record: whole-conversation loss 1.1, but its multiple-choice round has loss 0.0 and 1.0
    # under the symbol attack. Against loss_mc its gap is 1.0 and it joins the four worst (a2 2.0; a1, a3, a11
    # 1.0); against the whole-conversation loss (the old, diluted rule) it was 0.1 and a0 (0.8) took its place.
    sig = _signals()
    sig.columns["loss_mc"] = sig.columns["loss_mc"].copy()
    sig.columns["loss_mc"][11] = 0.0
    scorer = make_scorer("ards", {"n_worst": 4, "n_subgroups": 1})
    s = scorer.score(sig)
    assert scorer.details_["gap"][11] == pytest.approx(1.0)
    mc_worst = {i for i in np.flatnonzero(s == -np.inf).tolist() if FMT[i] == "mc"}
    assert mc_worst == {1, 2, 3, 11}


# ---- format detection (ARDS's cluster_subgroup.py) ------------------------------------------------------------
CODE_POOL = [
    "Answer the question using a single word or phrase.",
    "Answer with the option's letter from the given choices directly.",
    "Provide a one-sentence caption for the provided image",
    "Provide a short description for this region",
    "Provide the bounding box coordinate of the region this sentence describes",
]
CODE_ABBR = dict(zip(CODE_POOL, ["fmt_phrase", "fmt_choice", "fmt_one_img_caption", "fmt_desc_region",
                                 "fmt_bbox_region"]))
Turn = namedtuple("Turn", "role text")  # the fields of a record's turns that first_turn_format reads
MMSIFT_NAME = {"fmt_phrase": "phrase", "fmt_choice": "mc", "fmt_one_img_caption": "img_caption",
               "fmt_desc_region": "region_desc", "fmt_bbox_region": "region_bbox",
               "fmt_other_has_img": "other_image", "fmt_other_plain_text": "text_only"}


def code_format(conversations, has_image):
    """The code's loop: the first pool string inside the first turn's value (both lower-cased)."""
    first = conversations[0]["value"]
    for fmt in CODE_POOL:
        if fmt.lower() in first.lower():
            return CODE_ABBR[fmt]
    return "fmt_other_has_img" if has_image else "fmt_other_plain_text"


CONVERSATIONS = [
    (["<image>\nWhat is the dog doing?\nAnswer the question using a single word or phrase.", "Running"], 1),
    (["<image>\nWhich animal?\nA. cat\nB. dog\nAnswer with the option's letter from the given choices directly.",
      "B"], 1),
    (["<image>\nPROVIDE A ONE-SENTENCE CAPTION FOR THE PROVIDED IMAGE.", "A dog on grass."], 1),
    (["<image>\nPlease provide a short description for this region: [0.1, 0.2, 0.5, 0.6]", "A red car."], 1),
    (["<image>\nPlease provide the bounding box coordinate of the region this sentence describes: a red car.",
      "[0.1, 0.2, 0.5, 0.6]"], 1),
    # the instruction only in a later turn: the code looks at the first turn only
    (["<image>\nDescribe the scene.", "A street.", "What colour is the car?\nAnswer the question using a single "
      "word or phrase.", "Red"], 1),
    # a region instruction and a phrase instruction: the pool order decides (phrase first)
    (["<image>\nProvide a short description for this region. Answer the question using a single word or "
      "phrase.", "Car"], 1),
    (["What is 2 + 2?\nAnswer the question using a single word or phrase.", "4"], 0),  # text-only, instructed
    (["Write a poem about the sea.", "Waves..."], 0),
    (["<image>\nWhy is the man running?", "He is late."], 1),
]


@pytest.mark.parametrize("texts,n_images", CONVERSATIONS)
def test_first_turn_format_matches_the_code(texts, n_images):
    conv = [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]
    turns = [Turn("user" if c["from"] == "human" else "assistant", c["value"]) for c in conv]
    want = MMSIFT_NAME[code_format(conv, n_images > 0)]
    assert first_turn_format(turns, n_images) == want
    # a system turn before the conversation does not count as the first turn
    assert first_turn_format([Turn("system", CODE_POOL[3])] + turns, n_images) == want


def test_the_two_region_formats_are_separate_subgroups():
    """Description and bounding-box regions are different formats in the code; with first-turn labels the scorer
    clusters them apart (n_subgroups=1: one subgroup per format), even where their vectors coincide."""
    sig = _signals()
    fmt = np.array(FMT, dtype=object)
    fmt[[4, 5, 6]], fmt[[7, 8]] = "region_desc", "region_bbox"
    sig.columns["fmt"] = fmt
    sig.columns["last_final"] = sig.columns["last_final"].copy()
    sig.columns["last_final"][7] = sig.columns["last_final"][4]
    sig.columns["attn_pool"] = sig.columns["attn_pool"].copy()
    sig.columns["attn_pool"][7] = sig.columns["attn_pool"][4]
    scorer = make_scorer("ards", {"n_subgroups": 1, "n_worst": 1})
    s = scorer.score(sig)
    g = scorer.details_["subgroup"]
    assert g[4] == g[5] == g[6] and g[7] == g[8] and g[4] != g[7]
    assert (s == -np.inf).sum() == 3  # one evaluation item per format: mc, region_desc, region_bbox
    assert not any("all-turn" in n for n in scorer.notes_)
    merged = make_scorer("ards", {"n_subgroups": 1, "n_worst": 1})
    sig.columns["fmt"] = np.where(np.isin(fmt, ["region_desc", "region_bbox"]), "region", fmt).astype(object)
    merged.score(sig)
    assert merged.details_["subgroup"][4] == merged.details_["subgroup"][7]
    assert any("all-turn patterns" in n for n in merged.notes_)
