"""Metric functions against hand-computed values (ROUGE recall vs F1, METEOR with WordNet)."""

from __future__ import annotations

import numpy as np
import pytest

from recap import metrics
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
        metrics.load_wordnet()
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
    root = metrics.ensure_wordnet(tmp_path / "nltk")
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
        metrics.ensure_wordnet(tmp_path / "nltk", source=tmp_path / "nowhere")


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
