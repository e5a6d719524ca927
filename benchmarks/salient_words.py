"""Which key words a captioner names: where the benchmark's rule needs counting, and where it does
not (test predictions of `recap evaluate`).

    .venv/bin/python benchmarks/salient_words.py RUN/eval/test-beam4-len160-quotes-words ...

The salient words are the three most frequent content words (not stopwords, at least 4 letters;
ties by first use; `recap.bench.facts.salient_words`). For a text whose content words occur once
each, or whose repeated ones come first anyway, they are simply its first three content words
("positional"); for the rest a repeated word displaces one of those ("counted"). Per evaluation
folder (its `predictions.csv`), one row per distinct test text, the share of the true words each
caption names (recall), in both groups, beside the recall of a reader that names the first three
content words: what the rule asks beyond finding the content words in order.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def first_content_words(text: str, k: int = 3) -> list[str]:
    """The first k distinct content words of `text`, by the benchmark's definition."""
    from recap.bench.facts import content_words, detect_language, words

    tokens = words(text)
    return list(dict.fromkeys(content_words(tokens, detect_language(tokens))))[:k]


def recall_by_kind(predictions: Path) -> dict[str, tuple[int, float, float]]:
    """{kind: (texts, the captions' recall, the first-three reader's recall)}."""
    from recap.bench.facts import lyrics_facts, normalize_phrase
    from recap.bench.templates import parse_caption

    texts: dict[str, str] = {}
    with predictions.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            texts.setdefault(row["lyrics"], row["prediction"])  # one caption per distinct text
    sums: dict[str, list[float]] = {}
    for lyrics, caption in texts.items():
        facts = lyrics_facts(lyrics)
        if facts is None:
            continue
        truth = {normalize_phrase(w) for w in facts.salient_words}
        first = set(first_content_words(lyrics))
        named = {normalize_phrase(w) for w in parse_caption(caption).get("salient_words") or []}
        kind = "positional" if first == truth else "counted"
        s = sums.setdefault(kind, [0, 0.0, 0.0])
        s[0] += 1
        s[1] += len(named & truth) / len(truth)
        s[2] += len(first & truth) / len(truth)
    return {k: (int(n), hit / n, base / n) for k, (n, hit, base) in sums.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("evals", nargs="+", help="evaluation folders holding predictions.csv")
    args = ap.parse_args(argv)
    print("| evaluation | kind | texts | captions' recall | first-three reader's recall |")
    print("|---|---|---:|---:|---:|")
    for folder in map(Path, args.evals):
        for kind, (n, hit, base) in sorted(recall_by_kind(folder / "predictions.csv").items()):
            print(f"| {folder} | {kind} | {n} | {100 * hit:.0f} % | {100 * base:.0f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
