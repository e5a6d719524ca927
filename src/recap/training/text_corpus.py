"""The lyrics corpus of `recap pretrain-text`: documents read from scores and text files, the
benchmarks' held-out works excluded, and a split into training and held-out works."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import unicodedata
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recap.utils import RecapError

logger = logging.getLogger(__name__)


@dataclass
class Document:
    """One work's lyrics as the captioner sees them ('\\n' → ';'). `work_id` and `path` are what
    the benchmark's exclusion matches on."""

    doc_id: str
    text: str
    work_id: str = ""
    path: str = ""


def prepare(text: str) -> str:
    # The captioner's own rule (recap.data.songs.prepare_lyrics, SPEC §1.2).
    from recap.data.songs import prepare_lyrics

    return prepare_lyrics(text)


_SENTENCE_END = re.compile(r"(?<=;)|(?<=[.!?:])(?=\s)")


def split_sentences(text: str) -> list[str]:
    """The sentences (lines) of a prepared text: cut after each ';' (a line break or the poet's)
    and after . ! ? : before a space. The space stays at the start of the next sentence, so the
    sentences concatenate back to the text exactly: the captioner reads "a;b" (a line break) and
    "a; b" (punctuation), and so must the pretraining."""
    parts = _SENTENCE_END.split(text.strip())
    return [p for p in parts if p.strip()]


def normalize_line(text: str) -> str:
    """The form lines are matched in (exclusion, held-out): case-folded letters and digits."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.findall(r"\w+", text))


def _score_lyrics(src: Any) -> tuple[str, str, str, str | None]:
    """(work id, path, lyrics, error) of one score: the part with the most text (as the
    benchmark's melody), or the .txt beside the score."""
    from recap.bench.sources import ScoreError, read_parts

    try:
        if src.lyrics_path:
            return src.work_id, src.path, Path(src.lyrics_path).read_text("utf-8"), None
        parts, _ = read_parts(src.path)
    except (ScoreError, OSError, UnicodeDecodeError) as err:
        return src.work_id, src.path, "", str(err)
    lyrics = max((lyr for _, lyr in parts), key=len, default="")
    return src.work_id, src.path, lyrics, None if lyrics.strip() else "no lyrics"


def read_score_lyrics(source: str, workers: int = 2, progress: bool = False) -> list[Document]:
    """The lyrics of every score of `source` (music21 | openscore-lieder | a folder)."""
    from tqdm.auto import tqdm

    from recap.bench.sources import find_sources

    seen: set[str] = set()
    sources = []
    for src in find_sources(source):
        if src.work_id not in seen:  # one work in two formats is one work
            seen.add(src.work_id)
            sources.append(src)
    docs, failed = [], 0
    bar = tqdm(total=len(sources), desc=f"lyrics {source}", unit="score", disable=not progress)
    if workers > 1 and len(sources) > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_score_lyrics, sources, chunksize=8))
    else:
        results = [_score_lyrics(s) for s in sources]
    for work_id, path, lyrics, error in results:
        bar.update()
        if error:
            failed += 1
            continue
        docs.append(Document(work_id, prepare(lyrics), work_id, str(Path(path).resolve())))
    bar.close()
    logger.info("%s: lyrics of %d scores (%d without)", source, len(docs), failed)
    return docs


def read_text_file(path: str | Path) -> list[Document]:
    """Documents of a text file: JSONL rows with 'lyrics' (or 'text', and optional 'work_id',
    'path'), else paragraphs separated by blank lines (each line a lyrics line)."""
    path = Path(path)
    try:
        raw = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RecapError(f"cannot read text file {path}: {err}") from err
    docs = []
    if path.suffix == ".jsonl":
        texts: set[str] = set()
        for i, line in enumerate(raw.splitlines()):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text = row.get("lyrics") or row.get("text") or ""
            except (json.JSONDecodeError, AttributeError) as err:
                raise RecapError(f"{path}:{i + 1}: not a JSON object with 'lyrics'") from err
            text = prepare(str(text))
            if text and text not in texts:  # a dataset repeats the lyrics once per caption
                texts.add(text)
                work = str(row.get("work_id") or f"{path.name}#{i}")
                docs.append(Document(f"{path.name}#{i}", text, work, str(row.get("path") or "")))
    else:
        for i, para in enumerate(re.split(r"\n\s*\n", raw)):
            if para.strip():
                docs.append(Document(f"{path.name}#{i}", prepare(para), f"{path.name}#{i}"))
    if not docs:
        raise RecapError(f"no text in {path}")
    return docs


_WORD = re.compile(r"\w+")


def caption_wording(comment: str, lyrics: str) -> str:
    """The comment without the words it quotes from its lyrics: what the BPE should learn
    from captions is their own wording. A word quoted from the lyrics keeps the lyrics'
    tokenization; learnt from captions, where a training song's salient words recur in each
    of its comments, they became whole tokens that the decoder wrote from memory instead of
    copying from the lyrics of the song at hand (salient-word F1 38 → 31 and 39 → 6, demo)."""
    quoted = set(_WORD.findall(lyrics))
    return _WORD.sub(lambda m: "" if m.group(0) in quoted else m.group(0), comment)


def read_bpe_text(path: str | Path) -> list[str]:
    """Text the BPE learns from besides the corpus: the captions ('comment') of a dataset
    JSONL's training rows without the words they quote from their lyrics (`caption_wording`;
    so the fine-tuned captioner's vocabulary has the wording of its captions), else the
    documents of `read_text_file`."""
    path = Path(path)
    if path.suffix != ".jsonl":
        return [d.text for d in read_text_file(path)]
    try:
        lines = path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise RecapError(f"cannot read text file {path}: {err}") from err
    texts = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            comment, split = row.get("comment"), row.get("split", "train")
            lyrics = str(row.get("lyrics") or "")
        except (json.JSONDecodeError, AttributeError) as err:
            raise RecapError(f"{path}:{i + 1}: not a JSON object") from err
        if comment is None:  # not a dataset: a text file's rows
            return [d.text for d in read_text_file(path)]
        if split == "train":  # val/test captions stay unseen, even by the BPE
            texts.append(caption_wording(str(comment), lyrics))
    if not texts:
        raise RecapError(f"{path}: no training rows with a 'comment'")
    return texts


def read_corpus(cfg: Any) -> list[Document]:
    """Every document of the configured sources and text files (score lyrics cached in
    `cfg.corpus_cache` when set, keyed by the source list)."""
    docs: list[Document] = []
    if cfg.source:
        cache = Path(cfg.corpus_cache) if cfg.corpus_cache else None
        key = json.dumps(sorted(cfg.source))
        cached = None
        if cache is not None and cache.is_file():
            lines = cache.read_text("utf-8").splitlines()
            if lines and json.loads(lines[0]).get("sources") == key:
                cached = [Document(**json.loads(line)) for line in lines[1:]]
        if cached is None:
            cached = [
                d for s in cfg.source for d in read_score_lyrics(s, cfg.workers, cfg.progress)
            ]
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                body = [json.dumps({"sources": key})]
                body += [json.dumps(dataclasses.asdict(d), ensure_ascii=False) for d in cached]
                cache.write_text("\n".join(body) + "\n", "utf-8")
        docs += cached
    for path in cfg.text:
        docs += read_text_file(path)
    return docs


@dataclass
class Exclusion:
    """What must never be trained on: val/test works of a benchmark (by work id and score path)
    and every line of their lyrics (a hymn text set twice lives under two work ids)."""

    work_ids: set[str] = field(default_factory=set)
    paths: set[str] = field(default_factory=set)
    lines: set[str] = field(default_factory=set)

    @classmethod
    def from_benchmarks(cls, folders: Iterable[str | Path]) -> Exclusion:
        from recap.bench.scoring import read_songs

        ex = cls()
        for folder in folders:
            folder = Path(folder)
            held: set[str] = set()
            for row in read_songs(folder).values():
                if row.get("split") in ("val", "test"):
                    held.add(str(row["song_id"]))
                    ex.work_ids.add(str(row["work_id"]))
                    if row.get("source"):
                        ex.paths.add(str(Path(row["source"]).resolve()))
            dataset = folder / "dataset.jsonl"
            if dataset.is_file():  # the lyrics, as the captioner saw them
                for line in dataset.read_text("utf-8").splitlines():
                    if not line.strip():
                        continue
                    row = json.loads(line)
                    song = str(row.get("music4all_id") or row.get("song_id") or "")
                    if song in held or row.get("split") in ("val", "test"):
                        ex.add_text(prepare(str(row.get("lyrics") or "")))
        return ex

    def add_text(self, text: str) -> None:
        self.lines.update(n for n in map(normalize_line, split_sentences(text)) if n)

    def excludes(self, doc: Document) -> bool:
        return doc.work_id in self.work_ids or (bool(doc.path) and doc.path in self.paths)


@dataclass
class Corpus:
    """Training and held-out documents, each a list of sentences."""

    train: list[list[str]]
    held_out: list[list[str]]
    stats: dict[str, int]


def split_corpus(
    docs: Sequence[Document], exclusion: Exclusion, held_out_share: float, seed: int
) -> Corpus:
    """Drop excluded works, hold out a seeded share of the works, and remove from training every
    line whose normalised text is an excluded or held-out line (a training document is cut into
    its remaining runs of consecutive lines)."""
    kept = [d for d in docs if not exclusion.excludes(d)]
    stats = {"documents": len(docs), "excluded_works": len(docs) - len(kept)}
    works = sorted({d.work_id or d.doc_id for d in kept})
    rng = np.random.default_rng([seed, 7])
    n_held = int(round(len(works) * held_out_share)) if held_out_share > 0 else 0
    held_works = set(rng.permutation(works)[:n_held].tolist()) if n_held else set()
    held_docs = [d for d in kept if (d.work_id or d.doc_id) in held_works]
    held_out = []
    held_lines: set[str] = set()
    for d in held_docs:
        sentences = [s for s in split_sentences(d.text) if normalize_line(s) not in exclusion.lines]
        if sentences:
            held_out.append(sentences)
            held_lines.update(normalize_line(s) for s in sentences)
    banned = exclusion.lines | held_lines
    train: list[list[str]] = []
    dropped = 0
    seen_texts: set[str] = set()
    for d in kept:
        if (d.work_id or d.doc_id) in held_works:
            continue
        run: list[str] = []
        for s in split_sentences(d.text):
            if normalize_line(s) in banned:
                dropped += 1
                if run:
                    train.append(run)
                run = []
            else:
                run.append(s)
        if run:
            train.append(run)
    # The same text twice (one chorale in two harmonisations) is trained on once.
    unique = []
    for run in train:
        key = "".join(run).strip()
        if key not in seen_texts:
            seen_texts.add(key)
            unique.append(run)
    stats.update(
        train_documents=len(unique),
        held_out_works=len(held_docs),
        held_out_documents=len(held_out),
        dropped_lines=dropped,
    )
    return Corpus(unique, held_out, stats)
