"""Metric functions against hand-computed values (ROUGE recall vs F1, METEOR with WordNet)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from recap.evaluation import coco, metrics, wordnet
from recap.utils import RecapError


def test_rouge_recall_and_f1_differ_as_computed_by_hand():
    # reference 6 tokens, prediction 3 tokens, all 3 in the reference in order.
    pred, ref = "the cat sat", "the cat sat on the mat"
    r = metrics.rouge_scores([pred], [ref], bootstrap=10)
    # ROUGE-1: overlap 3 → recall 3/6, precision 3/3, F1 = 2·0.5·1/1.5 = 2/3.
    assert r["rouge1"]["recall"]["mid"] == pytest.approx(0.5)
    assert r["rouge1"]["precision"]["mid"] == pytest.approx(1.0)
    assert r["rouge1"]["f1"]["mid"] == pytest.approx(2 / 3)
    # ROUGE-2: bigrams "the cat", "cat sat" of 5 reference bigrams → recall 2/5, precision 1.
    assert r["rouge2"]["recall"]["mid"] == pytest.approx(2 / 5)
    assert r["rouge2"]["f1"]["mid"] == pytest.approx(2 * 0.4 / 1.4)
    # ROUGE-L: LCS 3 → same as ROUGE-1 here.
    assert r["rougeL"]["recall"]["mid"] == pytest.approx(0.5)


def test_rouge_has_no_stemming():
    # With a stemmer "songs" would match "song"; the papers' setting has none.
    r = metrics.rouge_scores(["songs"], ["song"], bootstrap=10)
    assert r["rouge1"]["recall"]["mid"] == 0.0


def test_zero_bootstrap_resamples_is_a_clear_error_not_a_crash_after_generation():
    with pytest.raises(RecapError, match="at least 1 resample"):
        metrics.rouge_scores(["a song"], ["a song"], bootstrap=0)
    with pytest.raises(RecapError, match="at least 1 resample"):
        metrics.bootstrap_interval([0.5, 1.0], n_samples=0)
    # The commands refuse it before any model is loaded.
    from recap.cli import main

    for command in (["evaluate", "--model", "M", "--data", "D"], ["score", "P.csv", "--data", "D"]):
        with pytest.raises(SystemExit) as exc:
            main([*command, "--bootstrap", "0"])
        assert exc.value.code == 2


def test_bootstrap_interval_contains_mid_and_is_seeded():
    rng = np.random.default_rng(1)
    words = "a b c d e f g h i j".split()
    preds = [" ".join(rng.choice(words, 6)) for _ in range(40)]
    refs = [" ".join(rng.choice(words, 6)) for _ in range(40)]
    r1 = metrics.rouge_scores(preds, refs, bootstrap=200, seed=3)
    r2 = metrics.rouge_scores(preds, refs, bootstrap=200, seed=3)
    for t in metrics.ROUGE_TYPES:
        for stat in ("recall", "f1"):
            band = r1[t][stat]
            assert band["low"] <= band["mid"] <= band["high"]
            assert band["low"] < band["high"]  # 40 varied pairs: a real interval
            assert band == r2[t][stat]
    state = np.random.get_state()[1].copy()
    metrics.rouge_scores(preds, refs, bootstrap=20, seed=5)
    assert (np.random.get_state()[1] == state).all()  # the caller's numpy state is untouched
    b = metrics.bootstrap_interval([0.1, 0.5, 0.9, 0.3], n_samples=500, seed=0)
    assert b["low"] <= b["mid"] <= b["high"] and b["mean"] == pytest.approx(0.45)


def test_mismatched_lists_are_refused():
    with pytest.raises(RecapError):
        metrics.rouge_scores(["a"], ["a", "b"])


def test_meteor_nltk_uses_wordnet_synonyms():
    """ "vocalist" matches "singer" only through WordNet; no skip: a missing WordNet fails here."""
    try:
        wordnet.load_wordnet()
    except RecapError as err:
        pytest.fail(f"WordNet is required for METEOR (NLTK): {err}")
    pred, ref = ["the vocalist is sad"], ["the singer is sad"]
    with_wn = metrics.meteor_nltk(pred, ref, bootstrap=10)
    without = metrics.meteor_nltk(pred, ref, bootstrap=10, use_wordnet=False)
    assert with_wn["label"] == "METEOR (NLTK)"
    # Hand-computed: all 4 words match (one by synonym): P = R = 1, Fmean = 1, 1 chunk →
    # penalty 0.5·(1/4)^3 → 1 − 1/128.
    assert with_wn["mean"] == pytest.approx(1 - 0.5 * (1 / 4) ** 3)
    # Without synonyms 3 of 4 words match in 2 chunks: P = R = 3/4, penalty 0.5·(2/3)^3.
    assert without["mean"] == pytest.approx(0.75 * (1 - 0.5 * (2 / 3) ** 3))
    assert with_wn["mean"] > without["mean"]


def test_ensure_wordnet_lays_out_nltk_folder(tmp_path):
    root = wordnet.ensure_wordnet(tmp_path / "nltk")
    folder = root / "corpora" / "wordnet"
    lexnames = (folder / "lexnames").read_text().splitlines()
    assert (
        len(lexnames) == 45
        and lexnames[0] == "00\tadj.all\t3"
        and lexnames[44].startswith("44\tadj.ppl")
    )
    assert (folder / "data.noun").stat().st_nlink == 1  # a copy: NLTK refuses hard links


def test_ensure_wordnet_names_the_debian_packages_when_missing(tmp_path):
    with pytest.raises(RecapError, match="wordnet-base wordnet-sense-index"):
        wordnet.ensure_wordnet(tmp_path / "nltk", source=tmp_path / "nowhere")


def test_meteor_15_runs_offline_and_is_labelled():
    # One jar start (it loads its paraphrase table each time): three pairs in one call.
    preds = ["the vocalist is sad", "a fast piano waltz", "a slow piano waltz"]
    refs = ["the singer is sad", "a slow piano waltz about love", "a slow piano waltz"]
    m = metrics.meteor_15(preds, refs, bootstrap=10)
    assert m["label"] == "METEOR 1.5"
    assert len(m["per_example"]) == 3
    mismatch, identical = m["per_example"][1], m["per_example"][2]
    assert 0 < m["per_example"][0] < 1 and 0 < mismatch < 0.9 < identical <= 1
    assert 0 < m["corpus"] < 1
    # Several references in one segment: the matching one decides (pycocoevalcap's Meteor).
    multi = metrics.meteor_15(
        preds[2:], [["an organ fugue in a minor key", "a slow piano waltz"]], bootstrap=5
    )
    assert multi["per_example"][0] == pytest.approx(identical, abs=0.02)


def test_meteor_15_reuses_one_jar_and_replaces_a_dead_one():
    # The jar loads its paraphrase table once per process; a killed one is started again.
    preds, refs = ["a slow piano waltz"], ["a slow piano waltz about love"]
    first = metrics.meteor_15(preds, refs, bootstrap=5)
    session = metrics._meteor_session(shutil.which("java"), str(metrics._meteor_jar()))
    again = metrics.meteor_15(preds, refs, bootstrap=5)
    assert metrics._meteor_session(shutil.which("java"), str(metrics._meteor_jar())) is session
    assert again["per_example"] == first["per_example"]
    session.proc.kill()
    session.proc.wait()
    revived = metrics.meteor_15(preds, refs, bootstrap=5)
    assert revived["per_example"] == first["per_example"]
    assert metrics._meteor_session(shutil.which("java"), str(metrics._meteor_jar())) is not session


# ----------------------------------------------------------------------------- caption set

# A fixed example: four songs, two or three interpretations each, punctuation and case to
# tokenise. The expected values are pycocoevalcap's own pipeline on the same input.
CAPTION_PREDS = [
    "A slow piano waltz about love.",
    "The singer is sad, isn't she?",
    "a fast organ song (in D major)",
    "Rain on the road home",
]
CAPTION_REFS = [
    ["A slow waltz for piano; it is about love.", "love song, slow piano"],
    ["The vocalist sounds sad.", "She is sad and the singer knows it!", "a sad song"],
    ["An organ song in D major, fast.", "fast organ"],
    ["a song about the rain and the road", "Going home in the rain."],
]


def _pycocoevalcap_reference(preds, refs):
    """BLEU-1..4, CIDEr-D and ROUGE-L exactly as pycocoevalcap's COCOEvalCap computes them."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts = {i: [{"caption": r} for r in rs] for i, rs in enumerate(refs)}
    res = {i: [{"caption": p}] for i, p in enumerate(preds)}
    tok = PTBTokenizer()
    gts, res = tok.tokenize(gts), tok.tokenize(res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    return bleu, float(cider), float(rouge)


def test_caption_set_equals_pycocoevalcap_on_a_fixed_example():
    bleu, cider, rouge = _pycocoevalcap_reference(CAPTION_PREDS, CAPTION_REFS)
    assert 0 < bleu[3] < bleu[0] < 1 and cider > 0  # a non-degenerate example
    m = coco.caption_set(CAPTION_PREDS, CAPTION_REFS, meteor15=False, bootstrap=200)
    s = m["summary"]
    assert m["tokenizer"] == coco.PTB_TOKENIZER_LABEL
    for n in range(4):
        assert s[f"BLEU-{n + 1}"] == pytest.approx(bleu[n], rel=1e-12)
    assert s["CIDEr-D"] == pytest.approx(cider, rel=1e-12)
    assert s["ROUGE-L (COCO)"] == pytest.approx(rouge, rel=1e-12)
    for key in m["summary"]:
        if not key.endswith((" low", " high")):
            assert s[f"{key} low"] <= s[f"{key} high"]
    # Multi-reference matters: against only the first reference every score is lower.
    single = coco.caption_set(
        CAPTION_PREDS, [r[:1] for r in CAPTION_REFS], meteor15=False, bootstrap=10
    )
    assert single["summary"]["BLEU-1"] < s["BLEU-1"]
    assert single["summary"]["CIDEr-D"] != pytest.approx(s["CIDEr-D"])


def test_python_tokenizer_stands_in_for_ptb():
    ptb, label = coco.coco_tokenize(CAPTION_PREDS + ['He said "don\'t" -- twice...'], "ptb")
    py, py_label = coco.coco_tokenize(CAPTION_PREDS + ['He said "don\'t" -- twice...'], "python")
    assert label != py_label
    assert ptb == py
    assert ptb[0] == "a slow piano waltz about love"  # lower-cased, punctuation removed


def test_bleu_by_hand_and_its_bootstrap():
    # One item, tokens already split: "a b c d" against "a b c e".
    # 1-grams 3/4, 2-grams 2/3, 3-grams 1/2, 4-grams 0/1 (+1e-15 smoothing); no brevity penalty.
    b = coco.bleu_scores(["a b c d"], [["a b c e"]], bootstrap=20)
    assert b["BLEU-1"]["corpus"] == pytest.approx(0.75)
    assert b["BLEU-2"]["corpus"] == pytest.approx((0.75 * 2 / 3) ** 0.5)
    assert b["BLEU-3"]["corpus"] == pytest.approx((0.75 * 2 / 3 * 0.5) ** (1 / 3))
    assert b["BLEU-4"]["corpus"] < 1e-3
    # The closest reference length sets the brevity penalty: "a b" vs a 4-token reference.
    short = coco.bleu_scores(["a b"], [["a b c d", "x y z w v u"]], bootstrap=5)
    assert short["BLEU-1"]["corpus"] == pytest.approx(np.exp(1 - 4 / 2))


def test_metric_sets_are_labelled_and_group_references_by_song():
    songs = ["s1", "s1", "s2", "s3"]
    refs = ["a slow song about love", "a love song", "a fast dance", "rain on the road"]
    preds = ["a slow love song", "a slow love song", "a dance song", "the road in rain"]
    r = metrics.metric_sets(songs, refs, preds, meteor15=False, bootstrap=20)
    assert r["paper"]["n_items"] == 4 and r["caption"]["n_items"] == 3
    assert r["caption"]["n_references"] == 4 and r["caption"]["n_songs_with_several_captions"] == 0
    assert r["metric_sets"]["paper"][0] == "ROUGE-1 recall"
    assert "CIDEr-D" in r["metric_sets"]["caption"] and "BLEU-4" in r["metric_sets"]["caption"]
    assert set(r["summary"]) >= {"ROUGE-L recall", "METEOR (NLTK)", "BLEU-4", "CIDEr-D"}
    with pytest.raises(RecapError, match="one of each per row"):
        metrics.metric_sets(songs, refs, preds[:3], meteor15=False)
