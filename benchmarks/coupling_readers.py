"""How far can a reader trained on the train works get on a coupled benchmark's retrieval?

Issue 17's bar asks RECAP's aligned space for recall@10 ≥ 2× chance. Whatever RECAP's lyrics side
learns, it learns from the train works; this script bounds that from above with readers given
the train works' *true* labels: a logistic regression from the words a text contains (binary
bag of words) or from its character n-grams (tf-idf, so the lexicon's stems are seen inside
inflected words) to its theme and to its colour. Each test text's predicted labels are read
through the coupling table (`recap.bench.coupling.COUPLING`), and lyrics j scores against audio i
by how many of i's coupled facts they name (the oracle's scoring, ties at random): a reader that
hears every audio fact exactly. Also for a coupling on the theme alone (colour := theme), the
variant docs/results.md weighs. With `--runs`, the retrieval of trained models' aligned spaces
raw and with both sides centred (each side's mean subtracted: a remedy for hubs).

    .venv/bin/python benchmarks/coupling_readers.py --bench runs/demo-alignment/bench \\
        [--runs runs/demo-alignment/experiments/full/recap/seed0,... --tagger runs/demo/tagger]

Seconds per benchmark (the logistic regressions); the runs add a few seconds each.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

C_VALUES = (1.0, 10.0, 100.0)


def featurizers() -> dict[str, Any]:
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

    from recap.bench.facts import words

    return {
        "bag of words": lambda: CountVectorizer(analyzer=words, binary=True),
        "character 3-5-grams": lambda: TfidfVectorizer(
            analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True
        ),
        "character 4-6-grams": lambda: TfidfVectorizer(
            analyzer="char_wb", ngram_range=(4, 6), sublinear_tf=True
        ),
    }


def labels(truths: list[dict[str, Any]], slot: str) -> np.ndarray:
    return np.array([t.get(slot) or t["theme"] for t in truths])


def table_retrieval(
    truths: list[dict[str, Any]], read: list[tuple[str, str]], groups: np.ndarray, theme_only: bool
) -> dict[str, dict[str, float]]:
    """Retrieval of a reader that names (theme, colour) `read` for each test text and hears each
    test audio's facts exactly (the coupling-table oracle's scoring when `read` is the truth)."""
    from recap.evaluation.aligned_space import coupled_facts, fact_match_scores, ranked_retrieval

    def facts(theme: str, colour: str) -> dict[str, str]:
        return coupled_facts({"theme": theme, "colour": theme if theme_only else colour})

    heard = [facts(t["theme"], t.get("colour") or t["theme"]) for t in truths]
    named = [facts(theme, colour) for theme, colour in read]
    return ranked_retrieval(fact_match_scores(heard, named), groups)


def readers(bench: str) -> None:
    from sklearn.linear_model import LogisticRegression

    from recap.evaluation.aligned_space import SplitSongs, ranked_retrieval

    train, test = SplitSongs.load(bench, "train"), SplitSongs.load(bench)
    n = len(test.ids)
    chance = ranked_retrieval(np.zeros((n, n)), test.groups, draws=200)  # all tied: random
    print(f"{bench}: {n} test renderings, {len(set(test.groups))} distinct texts; random order "
          f"recall@10 {chance['audio_to_lyrics']['recall@10']:.3f} / "
          f"{chance['lyrics_to_audio']['recall@10']:.3f}\n")  # fmt: skip
    print("| coupling | reader | C | theme acc. | colour acc. | A→L R@10 | L→A R@10 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    truth = list(zip(labels(test.truths, "theme"), labels(test.truths, "colour")))
    for theme_only in (False, True):
        coupling = "theme alone" if theme_only else "theme + colour"
        r = table_retrieval(test.truths, truth, test.groups, theme_only)
        print(f"| {coupling} | oracle (the true labels) | | 100 | 100 | "
              f"{r['audio_to_lyrics']['recall@10']:.3f} | "
              f"{r['lyrics_to_audio']['recall@10']:.3f} |")  # fmt: skip
        for name, make in featurizers().items():
            vectorizer = make()
            x_train = vectorizer.fit_transform(train.lyrics)  # (N, features) sparse
            x_test = vectorizer.transform(test.lyrics)
            for c in C_VALUES:
                guesses, accuracy = [], []
                for slot in ("theme", "colour"):
                    model = LogisticRegression(C=c, max_iter=5000)
                    guess = model.fit(x_train, labels(train.truths, slot)).predict(x_test)
                    accuracy.append(100 * float((guess == labels(test.truths, slot)).mean()))
                    guesses.append(guess)
                r = table_retrieval(test.truths, list(zip(*guesses)), test.groups, theme_only)
                print(f"| {coupling} | {name} | {c:g} | {accuracy[0]:.0f} | {accuracy[1]:.0f} | "
                      f"{r['audio_to_lyrics']['recall@10']:.3f} | "
                      f"{r['lyrics_to_audio']['recall@10']:.3f} |")  # fmt: skip


def centred_runs(bench: str, tagger: str, runs: list[str]) -> None:
    from recap.bench import load_truth
    from recap.data.cache import ensure_embeddings
    from recap.evaluation.aligned_space import SplitSongs, embed_test_songs, ranked_retrieval
    from recap.inference.index import normalize

    test, train = SplitSongs.load(bench), SplitSongs.load(bench, "train")
    store = ensure_embeddings(bench, tagger, sorted(load_truth(bench)), progress=False)
    print("\n| run | raw R@10 A→L / L→A | centred on the test songs | centred on the train songs |")
    print("|---|---|---|---|")

    def cell(score: np.ndarray) -> str:
        r = ranked_retrieval(score, test.groups)
        return f"{r['audio_to_lyrics']['recall@10']:.3f} / {r['lyrics_to_audio']['recall@10']:.3f}"

    for run in runs:
        audio, lyrics = embed_test_songs(run, test, store)  # (N, D) unit vectors each
        train_audio, train_lyrics = embed_test_songs(run, train, store)
        cells = [cell(audio @ lyrics.T)]
        for a_mean, l_mean in ((audio.mean(0), lyrics.mean(0)),
                               (train_audio.mean(0), train_lyrics.mean(0))):  # fmt: skip
            cells.append(cell(normalize(audio - a_mean) @ normalize(lyrics - l_mean).T))
        print(f"| {run} | " + " | ".join(cells) + " |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", default="runs/demo-alignment/bench")
    parser.add_argument("--runs", default="", help="trained runs, comma-separated")
    parser.add_argument("--tagger", default="runs/demo/tagger")
    args = parser.parse_args(argv)
    readers(args.bench)
    if args.runs:
        centred_runs(args.bench, args.tagger, args.runs.split(","))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
