"""Interpretations of texts that were never rendered: more lyrics for the captioners to read.

On the demo's benchmark the captioners learn each training text's lyrics facts by heart and
generalise less than they memorise (docs/training.md, "What the captioners learn from 277
texts"): on train songs they state 99 % of the lyrics facts, on unseen works 78 %. More texts is
what the readers lack, and texts are cheap where renderings are not: a text-only row is one
more text with interpretations written by the benchmark's own templates, without audio.

Each row (`recap train --text-rows FILE`, train split only) holds:
- `comment`: a whole interpretation whose audio facts are drawn at random, as a rendering's
  are; a captioner that hears nothing (BART) cannot tell such a row from a rendered one;
- `comment_without_audio`: the same interpretation's lyrics sentences (`LYRICS_FAMILIES`): the
  reference of a captioner that hears, which is given no music for this row.

Texts come from `recap.training.text_corpus` (score lyrics of a source, text files). Never a
text of a benchmark's val/test works (by work, score path or a shared line), nor a work a
benchmark already renders (`exclusion_for`).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from recap.bench.build import rng_for
from recap.bench.facts import LyricsFacts, lyrics_facts, words
from recap.bench.slots import VOCABULARIES, mood_for
from recap.bench.templates import LYRICS_FAMILIES, random_wording, render_caption
from recap.training.text_corpus import Document, Exclusion, normalize_line, split_sentences
from recap.utils import SkipReport, atomic_write_text

COMMENT_WITHOUT_AUDIO = "comment_without_audio"
TEXT_ROW_PREFIX = "text-"  # song ids of text-only rows: never a rendering's


def _random_audio(rng: random.Random) -> dict[str, str]:
    """Audio slots drawn as a rendering draws them when uncoupled (uniform per slot)."""
    tempo = rng.choice(VOCABULARIES["tempo"])
    return {
        "melody": rng.choice(VOCABULARIES["melody"]),
        "accompaniment": rng.choice(VOCABULARIES["accompaniment"]),
        "tempo": tempo,
        "key": rng.choice(VOCABULARIES["key"]),
        "mood": mood_for(tempo),
    }


def text_rows(
    docs: Iterable[Document],
    per_text: int = 2,
    seed: int = 0,
    exclusion: Exclusion | None = None,
    report: SkipReport | None = None,
    recombined: int = 0,
    partners: Sequence[Document] = (),
    within: str = "language",
) -> list[dict[str, Any]]:
    """`per_text` interpretations of every usable document, seeded by (seed, doc id), then
    `recombined` interpretations of new texts made from each usable document and each of
    `partners` (`recombine(..., within)`; partners are texts that may be mixed but not read as
    they are: a benchmark's train texts, rendered already)."""
    if per_text < 1:
        raise ValueError(f"per_text must be at least 1, not {per_text}")
    if recombined < 0:
        raise ValueError(f"recombined must be at least 0, not {recombined}")
    exclusion = exclusion or Exclusion()
    usable = _usable(docs, exclusion, report, check_work=True)
    rows = [row for doc, facts in usable for row in _interpretations(doc, facts, per_text, seed)]
    if recombined:
        read = {doc.text for doc, _ in usable}
        others = [d for d in partners if d.text not in read]
        pool = usable + _usable(others, exclusion, report, check_work=False)
        for doc in recombine(pool, recombined, seed, within):
            facts = lyrics_facts(doc.text)
            if facts is None:
                if report is not None:
                    report.add(doc.doc_id, "too few words for the lyrics facts")
                continue
            rows += _interpretations(doc, facts, 1, seed)
    return rows


def _usable(
    docs: Iterable[Document], exclusion: Exclusion, report: SkipReport | None, check_work: bool
) -> list[tuple[Document, LyricsFacts]]:
    """The documents text rows may use, with their lyrics facts, each distinct text once."""
    usable: list[tuple[Document, LyricsFacts]] = []
    seen: set[str] = set()
    for doc in docs:
        if check_work and exclusion.excludes(doc):
            continue  # a work of the benchmark: rendered already, or held out
        # Lines of three words or more: verse numbers and "Ah!" are shared by unrelated texts.
        lines = {n for n in map(normalize_line, split_sentences(doc.text)) if len(n.split()) >= 3}
        if lines & exclusion.lines:
            if report is not None:
                report.add(doc.doc_id, "shares a line with a held-out text")
            continue
        if doc.text in seen:
            continue  # the same text set twice adds nothing
        seen.add(doc.text)
        facts = lyrics_facts(doc.text)
        if facts is None:
            if report is not None:
                report.add(doc.doc_id, "too few words for the lyrics facts")
            continue
        usable.append((doc, facts))
    return usable


def _interpretations(doc: Document, facts: LyricsFacts, n: int, seed: int) -> list[dict[str, Any]]:
    rows = []
    for j in range(n):
        song_id = f"{TEXT_ROW_PREFIX}{doc.doc_id}-{j}"
        rng = rng_for(seed, song_id, "comments")
        slots = {
            **_random_audio(rng),
            "language": facts.language,
            "first_line": facts.first_line,
            "salient_words": list(facts.salient_words),
            "theme": facts.theme,
        }
        choice, order = random_wording(rng)
        read = [family for family in order if family in LYRICS_FAMILIES]
        rows.append(
            {
                "music4all_id": song_id,
                "songmeanings_id": f"{song_id}-c0",
                "lyrics": doc.text,
                "comment": render_caption(slots, choice, order),
                COMMENT_WITHOUT_AUDIO: render_caption(slots, choice, read),
                "votes": 1,
                "split": "train",
                "work_id": doc.work_id or doc.doc_id,
                "slots": slots,
            }
        )
    return rows


RECOMBINE_WITHIN = ("language", "theme")


def recombine(
    docs: Sequence[tuple[Document, LyricsFacts]],
    per_text: int,
    seed: int,
    within: str = "language",
) -> list[Document]:
    """`per_text` new texts for each document: its sentences shuffled together with those of
    another text in its language (`within="theme"`: in its language and of its theme), drawn at
    random, cut after the sentence that reaches the document's own word count. Why: learnt from
    a few hundred texts, the salient words are learnt by heart (99 % on train texts, under 50 %
    F1 on unseen ones); in a recombined text the most frequent words, their order and the
    opening are new, and only the rule states them. Seeded by (seed, doc id, j): the same texts
    whatever the order of `docs`."""
    if within not in RECOMBINE_WITHIN:
        raise ValueError(f"within must be one of {RECOMBINE_WITHIN}, not {within!r}")

    def group(facts: LyricsFacts) -> tuple[str, ...]:
        # a partner of another theme makes a text about it more often than the texts are
        return (facts.language, facts.theme) if within == "theme" else (facts.language,)

    groups: dict[tuple[str, ...], list[Document]] = {}
    for doc, facts in docs:
        groups.setdefault(group(facts), []).append(doc)
    out: list[Document] = []
    for doc, facts in docs:
        others = [d for d in groups[group(facts)] if d.text != doc.text] or [doc]
        for j in range(per_text):
            rng = rng_for(seed, doc.doc_id, j, "recombine")
            partner = rng.choice(others)
            sentences = [
                s.strip() for s in split_sentences(doc.text) + split_sentences(partner.text)
            ]
            rng.shuffle(sentences)
            goal, kept = len(words(doc.text)), []
            for sentence in sentences:
                kept.append(sentence)
                if len(words(" ".join(kept))) >= goal:
                    break
            out.append(Document(f"mix{j}-{doc.doc_id}", " ".join(kept), work_id=doc.work_id))
    return out


def train_texts(benches: Sequence[str | os.PathLike]) -> list[Document]:
    """The distinct lyrics of the benchmarks' train split (dataset.jsonl), one Document each:
    partners for `recombine`, never text rows as they are (their works are rendered)."""
    docs: dict[str, Document] = {}
    ids: set[str] = set()
    for folder in benches:
        dataset = Path(folder) / "dataset.jsonl"
        if not dataset.is_file():
            continue
        for line in dataset.read_text("utf-8").splitlines():
            row = json.loads(line) if line.strip() else {}
            text = str(row.get("lyrics") or "")
            if row.get("split") == "train" and text and text not in docs:
                work = str(row.get("work_id") or "")
                doc_id = f"bench-{work}"
                if doc_id in ids:  # two texts of one work: row ids must stay distinct
                    doc_id = f"{doc_id}-{len(docs)}"
                ids.add(doc_id)
                docs[text] = Document(doc_id, text, work_id=work)
    return list(docs.values())


def exclusion_for(benches: Sequence[str | os.PathLike]) -> Exclusion:
    """What text rows must not use, given the benchmarks they extend or are evaluated on: every
    val/test work of them and every text sharing a line with one (`Exclusion`), and every work
    they render already (a train work's text is there, with its audio)."""
    from recap.bench.scoring import read_songs

    exclusion = Exclusion.from_benchmarks(benches)
    for folder in benches:
        for row in read_songs(Path(folder)).values():
            exclusion.work_ids.add(str(row["work_id"]))
            if row.get("source"):
                exclusion.paths.add(str(Path(row["source"]).resolve()))
    return exclusion


def write_text_rows(rows: Sequence[dict[str, Any]], out: str | os.PathLike) -> Path:
    """The rows as JSONL (the Song Interpretation format), written atomically."""
    out = Path(out)
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_text(out, body)
    return out


def read_texts(
    sources: Sequence[str] = (),
    texts: Sequence[str | os.PathLike] = (),
    workers: int = 2,
    progress: bool = True,
) -> list[Document]:
    """The score lyrics of `sources` and the texts of the text files `texts`."""
    from recap.training.text_corpus import read_score_lyrics, read_text_file

    docs = [d for s in sources for d in read_score_lyrics(s, workers, progress)]
    return docs + [d for path in texts for d in read_text_file(path)]


def build_text_rows(
    out: str | os.PathLike,
    benches: Sequence[str | os.PathLike],
    docs: Sequence[Document],
    per_text: int = 2,
    seed: int = 0,
    recombined: int = 0,
    within: str = "language",
) -> tuple[int, SkipReport]:
    """`recap bench text-rows`: the rows of `docs` outside `benches` (`exclusion_for`), and
    `recombined` rows a text recombined from them and the benchmarks' train texts, written to
    `out`, the skipped texts beside it (OUT.skipped.json). ValueError when none is left."""
    report = SkipReport("text rows")
    partners = train_texts(benches) if recombined else []
    exclusion = exclusion_for(benches)
    rows = text_rows(docs, per_text, seed, exclusion, report, recombined, partners, within)
    report.write(Path(out).with_suffix(".skipped.json"))
    if not rows:
        raise ValueError(f"no usable text among {len(docs)} ({report.summary()})")
    write_text_rows(rows, out)
    return len(rows), report
