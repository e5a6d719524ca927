"""Text pretraining of the captioner's BART: `recap pretrain-text` and
`pretrain_text(PretrainConfig) -> Path`.

The paper fine-tunes from `facebook/bart-base`, whose encoder already reads text. The small sizes
train BART from scratch on a thousand templated captions, and their lyrics encoder collapses to
input-independent states (issue 11). This job gives them what bart-base had: BART's own denoising
objective (Lewis et al. 2020) on lyrics the project reads offline —

* span infilling: span lengths ~ Poisson(λ = 3), ~30 % of the tokens masked, each span replaced
  by one <mask>;
* sentence permutation: the sentences (lines) of an input are shuffled;
* a share of uncorrupted inputs (pure copies), so that copying the input pays from the first
  steps — the captioner's templates quote the lyrics;

plus what the measurements (docs/training.md) showed copying needs at the small size within a
few CPU minutes: a guided cross-attention loss on the copies (`copy_attention_loss`) and the
encoder reconstruction term of `recap.models.losses.reconstruction_loss` — without either the copy
rate stays at 0-1 % — with AdamW at 2e-3 after a warm-up, and a curriculum from short to long
inputs (it saves time; copying emerges without it too).

Text: the lyrics of music21's corpus and of OpenScore Lieder (read as the benchmark reads them,
`recap.bench.sources`), plus text files, as the captioner sees them ('\\n' → ';'). A work in a
benchmark's val or test split is never trained on (`--exclude-splits-of BENCH`), nor is any line
whose text occurs in those splits' lyrics. A seeded share of the works is held out to measure
the exact-copy rate and the masked-span accuracy (never trained on either, by the same line rule).

The output folder is a Hugging Face BART checkpoint (config.json, model.safetensors, tokenizer
files), loaded by `RecapModel.from_bart(DIR)` and `recap train --bart DIR` as bart-base is, plus
`pretrain_config.json`, `pretrain_metrics.json` and `log.jsonl`. It is written beside and
renamed into place when finished; `DIR.partial/` holds a resumable checkpoint meanwhile. A
finished folder with the same settings is reused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import shutil
import time
import unicodedata
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recap.utils import RecapError, atomic_write_json, flag_field, known_fields

logger = logging.getLogger(__name__)

PRETRAIN_CONFIG_NAME = "pretrain_config.json"
METRICS_NAME = "pretrain_metrics.json"
# Settings that do not change what is trained: a finished folder is reused when only these differ.
REUSE_MUTABLE = frozenset(
    {"out", "overwrite", "progress", "workers", "corpus_cache", "threads", "checkpoint_every_steps"}
)


_opt = flag_field


@dataclass
class PretrainConfig:
    """Every setting of a text pretraining run; each field is a `recap pretrain-text --flag`."""

    # --- text
    out: str = _opt("", "output folder DIR (a Hugging Face BART checkpoint)")
    source: list = _opt(
        ["music21", "openscore-lieder"],
        "lyrics of scores: music21 | openscore-lieder | a folder of scores | none (--text only)",
    )
    text: list = _opt(
        [], "text files: .jsonl rows with 'lyrics' or 'text', else blank-line paragraphs"
    )
    exclude_splits_of: list = _opt(
        [], "benchmark folder(s) whose val/test works and lyrics are never trained on (repeat)"
    )
    held_out_share: float = _opt(0.05, "share of the works held out for the copy/infill report")
    max_eval_lines: int = _opt(200, "held-out inputs scored per measure")
    corpus_cache: str = _opt("", "JSONL file caching the lyrics read from scores ('': none)")
    workers: int = _opt(2, "score-parsing processes")
    # --- model
    size: str = _opt("small", "BART size of RecapConfig.preset", choices=("tiny", "small", "paper"))
    tokenizer: str = _opt("", "reuse this tokenizer folder ('': train a byte-level BPE)")
    vocab_size: int = _opt(0, "size of the trained BPE (0: the size's vocab_size)")
    model_overrides: dict = _opt({}, "RecapConfig BART fields, KEY=VALUE (JSON)", flag="--set")
    position_init: str = _opt(
        "random",
        "position tables: random (BART's init) | sinusoidal (scaled to init_std)",
        choices=("random", "sinusoidal"),
    )
    # --- objective
    copy_share: float = _opt(0.5, "share of inputs left uncorrupted (pure copies)")
    mask_ratio: float = _opt(0.3, "share of the tokens of a corrupted input that are masked")
    poisson_lambda: float = _opt(3.0, "mean span length of the infilling")
    permute_sentences: bool = _opt(True, "shuffle the sentences of a corrupted input")
    reconstruct_weight: float = _opt(
        1.0, "weight of predicting each input token from the encoder output (0: off)"
    )
    copy_attention_weight: float = _opt(
        1.0,
        "weight of a guided cross-attention loss on copies: head 0 of each decoder layer "
        "attends to the source token it copies (0: off)",
    )
    decoder_input_dropout: float = _opt(
        0.0, "share of decoder input tokens replaced by <mask> in training (0: off)"
    )
    # --- optimisation
    curriculum: list = _opt(
        [16, 32, 64, 128], "input-length caps in tokens, trained in turn for equal step shares"
    )
    max_steps: int = _opt(600, "optimizer steps in all")
    batch_size: int = _opt(32, "sequences per step")
    lr: float = _opt(2e-3, "peak learning rate (AdamW)")
    warmup_steps: int = _opt(50, "linear warm-up steps")
    min_lr_ratio: float = _opt(0.1, "cosine decay to this share of lr at the last step")
    weight_decay: float = _opt(0.01, "AdamW decoupled weight decay")
    max_grad_norm: float = _opt(1.0, "gradient clipping (0: off)")
    seed: int = _opt(0, "seed of weights, held-out works, batches and corruption")
    checkpoint_every_steps: int = _opt(250, "write DIR.partial every N steps (0: never)")
    log_every_steps: int = _opt(50, "log the losses every N steps")
    threads: int = _opt(0, "torch CPU threads (0: torch's default; 1 is fastest on busy cores)")
    overwrite: bool = _opt(False, "train again even when DIR holds a finished model")
    progress: bool = _opt(True, "tqdm progress bar")

    def resolved(self) -> PretrainConfig:
        """A checked copy (RecapError on bad values)."""
        if not self.out:
            raise RecapError("pretrain-text needs --out DIR")
        source = [s for s in self.source if s != "none"]
        if not source and not self.text:
            raise RecapError("nothing to read: give --source and/or --text")
        if self.position_init not in ("sinusoidal", "random"):
            raise RecapError(f"position_init must be sinusoidal or random: {self.position_init!r}")
        if not 0 <= self.copy_share <= 1:
            raise RecapError("copy_share must lie in [0, 1]")
        if not 0 < self.mask_ratio < 1:
            raise RecapError("mask_ratio must lie in (0, 1)")
        if not 0 <= self.held_out_share < 1:
            raise RecapError("held_out_share must lie in [0, 1)")
        if not self.curriculum or any(int(c) < 4 for c in self.curriculum):
            raise RecapError("curriculum: one or more length caps of at least 4 tokens")
        if self.max_steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise RecapError("max_steps and batch_size must be positive and lr > 0")
        if self.copy_attention_weight < 0 or self.reconstruct_weight < 0:
            raise RecapError("loss weights must be >= 0")
        if not 0 <= self.decoder_input_dropout < 1:
            raise RecapError("decoder_input_dropout must lie in [0, 1)")
        if self.poisson_lambda <= 0:
            raise RecapError("poisson_lambda must be > 0")
        return dataclasses.replace(
            self, source=source, curriculum=[int(c) for c in self.curriculum]
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        return cls(**known_fields(cls, data, "PretrainConfig"))


# ============================================================================ text


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


def read_corpus(cfg: PretrainConfig) -> list[Document]:
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


# ============================================================================ segments


@dataclass
class Segment:
    """Token ids of consecutive sentences (no <s>/</s>) and where each sentence starts."""

    ids: list[int]
    starts: list[int]


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def make_segments(
    documents: Sequence[Sequence[str]], tokenizer: Any, cap: int, encoded: dict | None = None
) -> list[Segment]:
    """Pack each document's consecutive sentences greedily into segments of at most `cap` tokens
    (a longer sentence alone is cut at `cap`). A segment's text is its sentences concatenated,
    its first one without leading space; byte-level BPE pre-tokenises at these cuts, so the
    sentences' tokens concatenate to the segment's."""
    encoded = {} if encoded is None else encoded

    def enc(text: str) -> list[int]:
        if text not in encoded:
            encoded[text] = _encode(tokenizer, text)
        return encoded[text]

    segments = []
    for doc in documents:
        ids: list[int] = []
        starts: list[int] = []
        for sentence in doc:
            if ids and len(ids) + len(enc(sentence)) > cap:
                segments.append(Segment(ids, starts))
                ids, starts = [], []
            piece = enc(sentence) if ids else enc(sentence.lstrip())
            starts.append(len(ids))
            ids = ids + piece[: cap - len(ids)]
        if ids:
            segments.append(Segment(ids, starts))
    return segments


# ============================================================================ corruption


@dataclass
class Corrupted:
    """One training pair: the encoder input and, per target token, whether it was masked."""

    source: list[int]
    target: list[int]
    masked: list[bool]
    copy: bool


def span_length(rng: np.random.Generator, lam: float, remaining: int) -> int:
    """One span length ~ Poisson(λ), at least 1 (BART's zero-length spans, which insert a
    <mask>, are left out: every <mask> here stands for tokens) and at most `remaining`."""
    return min(max(1, int(rng.poisson(lam))), remaining)


def corrupt(
    segment: Segment,
    rng: np.random.Generator,
    mask_id: int,
    copy_share: float = 0.5,
    mask_ratio: float = 0.3,
    poisson_lambda: float = 3.0,
    permute_sentences: bool = True,
) -> Corrupted:
    """BART's noise on one segment: with probability `copy_share` none (a pure copy); else the
    sentences are permuted and spans covering `mask_ratio` of the tokens are each replaced by a
    single <mask> (spans that touch merge into one). The target is always the original."""
    ids = list(segment.ids)
    n = len(ids)
    if rng.random() < copy_share or n == 0:
        return Corrupted(ids, ids, [False] * n, True)
    # order[i] = the original position of the token at position i of the permuted input
    bounds = [*segment.starts, n]
    chunks = [list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    if permute_sentences and len(chunks) > 1:
        chunks = [chunks[i] for i in rng.permutation(len(chunks))]
    order = [i for chunk in chunks for i in chunk]
    masked_at = np.zeros(n, dtype=bool)  # over permuted positions
    n_mask = int(round(n * mask_ratio))
    while int(masked_at.sum()) < n_mask:
        length = span_length(rng, poisson_lambda, n_mask - int(masked_at.sum()))
        free = np.flatnonzero(~masked_at)
        # A span starts at an unmasked token and runs on (over masked ones too, which merges
        # it with a neighbour) until it has masked `length` new tokens or hits the end.
        start = int(free[rng.integers(len(free))])
        pos, added = start, 0
        while pos < n and added < length:
            if not masked_at[pos]:
                masked_at[pos] = True
                added += 1
            pos += 1
    source: list[int] = []
    for i in range(n):
        if masked_at[i]:
            if not (i > 0 and masked_at[i - 1]):
                source.append(mask_id)
        else:
            source.append(ids[order[i]])
    masked = [False] * n
    for i in np.flatnonzero(masked_at):
        masked[order[int(i)]] = True
    return Corrupted(source, ids, masked, False)


# ============================================================================ model


def _bart_config(cfg: PretrainConfig, tokenizer: Any) -> Any:
    from recap.models.config import RecapConfig

    overrides = dict(cfg.model_overrides)
    overrides.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,  # BART decodes from </s>
    )
    if cfg.copy_attention_weight > 0:
        # Attention weights are returned by the eager implementation only; the saved config
        # does not keep it (from_bart chooses its own).
        overrides["attn_implementation"] = "eager"
    rc = RecapConfig.preset("bart", cfg.size, **overrides)
    needed = max(cfg.curriculum) + 2  # <s> ... </s>
    if rc.max_position_embeddings < needed:
        raise RecapError(
            f"curriculum cap {max(cfg.curriculum)} exceeds max_position_embeddings "
            f"{rc.max_position_embeddings} of size {cfg.size}"
        )
    return rc.bart_config()


def sinusoidal_positions(model: Any, std: float) -> None:
    """Fill BART's learned position tables with sinusoids of RMS `std` (the token embeddings'
    init scale): a lever for copying (decoder step t must find encoder position t), kept as an
    option — with the guided copy attention it made no difference (docs/training.md). The
    tables stay learned parameters; the checkpoint format is BART's."""
    for emb in (model.model.encoder.embed_positions, model.model.decoder.embed_positions):
        rows, dim = emb.weight.shape
        offset = getattr(emb, "offset", 2)
        pos = torch.arange(rows, dtype=torch.float32)[:, None] - offset
        freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        table = torch.zeros(rows, dim)
        table[:, 0::2] = torch.sin(pos * freq)
        table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
        table *= std / table.pow(2).mean().sqrt()
        with torch.no_grad():
            emb.weight.copy_(table)


def _pad(seqs: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def make_batch(pairs: Sequence[Corrupted], bos: int, eos: int, pad: int) -> dict[str, torch.Tensor]:
    """Encoder inputs <s> source </s>; labels <s> target </s> (the decoder input is the labels
    shifted right after </s>, as BART); `masked` marks the label positions that were masked."""
    src = [[bos, *p.source, eos] for p in pairs]
    tgt = [[bos, *p.target, eos] for p in pairs]
    input_ids = _pad(src, pad)
    labels = _pad(tgt, -100)
    masked = torch.zeros_like(labels, dtype=torch.bool)
    for i, p in enumerate(pairs):
        masked[i, 1 : 1 + len(p.masked)] = torch.tensor(p.masked, dtype=torch.bool)
    return {
        "input_ids": input_ids,
        "attention_mask": (input_ids != pad).long(),
        "labels": labels,
        "masked": masked,
        "copy": torch.tensor([p.copy for p in pairs], dtype=torch.bool),
    }


def _losses(
    model: Any,
    batch: dict[str, torch.Tensor],
    cfg: PretrainConfig | None = None,
    mask_id: int | None = None,
) -> dict[str, Any]:
    """The denoising loss and, with `cfg` (training), the auxiliary terms it switches on."""
    from transformers.models.bart.modeling_bart import shift_tokens_right

    from recap.models.losses import reconstruction_loss

    config = model.config
    labels = batch["labels"]
    enc = model.model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    dec_in = shift_tokens_right(
        labels.masked_fill(labels == -100, config.pad_token_id),
        config.pad_token_id,
        config.decoder_start_token_id,
    )
    if cfg is not None and cfg.decoder_input_dropout > 0:
        # Hide some of the tokens the decoder has written so far: a decoder that can predict
        # the next word from its own prefix never needs the encoder (the LM shortcut).
        drop = torch.rand(dec_in.shape) < cfg.decoder_input_dropout
        drop[:, :2] = False  # the start tokens </s> <s>
        dec_in = dec_in.masked_fill(drop & (dec_in != config.pad_token_id), mask_id)
    guided = cfg is not None and cfg.copy_attention_weight > 0 and bool(batch["copy"].any())
    out = model(
        encoder_outputs=enc,
        attention_mask=batch["attention_mask"],
        decoder_input_ids=dec_in,
        labels=labels,
        output_attentions=guided,
    )
    result = {"loss": out.loss, "denoise": out.loss, "logits": out.logits}
    if cfg is not None and cfg.reconstruct_weight > 0:
        logits = model.lm_head(enc.last_hidden_state) + model.final_logits_bias
        result["reconstruct"] = reconstruction_loss(
            logits, batch["input_ids"], batch["attention_mask"]
        )
    if guided:
        result["copy_attention"] = copy_attention_loss(out.cross_attentions, batch)
    return result


def copy_attention_loss(cross_attentions: Sequence[torch.Tensor], batch: dict) -> torch.Tensor:
    """-log of the attention that head 0 of each decoder layer pays, at decoder step j of a copy,
    to source position j (the token that step writes: both read <s> x1 … xn </s>).

    Why: copying needs cross-attention to walk the source in step with the output. From the
    token loss alone that alignment was not learned in 400 steps (the decoder learns the
    language and ignores the encoder: 0-1 % exact copies); told which position to read, as
    guided attention does in speech synthesis, it is learned in ~200 steps (docs/training.md).
    Only head 0 is guided; the others stay free for infilling."""
    rows = batch["copy"]
    # A copy's source is as long as its labels; the batch's padded widths need not agree.
    length = min(batch["labels"].shape[1], batch["input_ids"].shape[1])
    valid = batch["labels"][rows, :length] != -100  # (B, T)
    idx = torch.arange(length)
    total = torch.zeros(())
    for attn in cross_attentions:
        diag = attn[rows][:, 0, idx, idx]  # (B, T): step j on source position j
        total = total - torch.log(diag.clamp_min(1e-6))[valid].mean()
    return total / len(cross_attentions)


# ============================================================================ evaluation


@torch.no_grad()
def evaluate(
    model: Any,
    tokenizer: Any,
    held_out: Sequence[Sequence[str]],
    cfg: PretrainConfig,
    caps: Sequence[int] | None = None,
) -> dict[str, Any]:
    """On held-out works: greedy exact copy of uncorrupted inputs — single lines and segments
    packed up to each cap — and teacher-forced token accuracy on masked spans."""
    from recap.inference.generate import generate_ids

    model.eval()
    bos, eos, pad, mask = (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        tokenizer.mask_token_id,
    )
    top = max(cfg.curriculum)
    caps = sorted({c for c in (caps or (32, 64, top)) if c <= top} | {top})
    rng = np.random.default_rng([cfg.seed, 99])
    report: dict[str, Any] = {}

    def copy_rate(segments: list[Segment]) -> tuple[float, int]:
        if not segments:
            return float("nan"), 0
        pick = rng.permutation(len(segments))[: cfg.max_eval_lines]
        chosen = [segments[i] for i in sorted(pick)]
        hits = 0
        for start in range(0, len(chosen), 32):
            part = chosen[start : start + 32]
            pairs = [Corrupted(s.ids, s.ids, [False] * len(s.ids), True) for s in part]
            batch = make_batch(pairs, bos, eos, pad)
            out = generate_ids(
                model,
                batch["input_ids"],
                batch["attention_mask"],
                num_beams=1,
                do_sample=False,
                max_new_tokens=max(len(s.ids) for s in part) + 4,
                no_repeat_ngram_size=0,  # lyrics repeat themselves; a copy must too
                forced_bos_token_id=bos,
                forced_eos_token_id=eos,
            )
            for s, row in zip(part, out.tolist()):
                got = [t for t in row if t not in (bos, eos, pad)]
                hits += got == s.ids
        return hits / len(chosen), len(chosen)

    lines = [[sentence] for doc in held_out for sentence in doc]
    rate, n = copy_rate(make_segments(lines, tokenizer, top))
    report["copy_lines"] = {"exact": rate, "n": n}
    for cap in caps:
        rate, n = copy_rate(make_segments(held_out, tokenizer, cap))
        report[f"copy_{cap}"] = {"exact": rate, "n": n}
    # Masked spans, every input corrupted (copy_share 0), teacher-forced.
    segments = make_segments(held_out, tokenizer, top)
    pick = sorted(rng.permutation(len(segments))[: cfg.max_eval_lines].tolist())
    right = total = 0
    for start in range(0, len(pick), 32):
        pairs = [
            corrupt(
                segments[i],
                rng,
                mask,
                0.0,
                cfg.mask_ratio,
                cfg.poisson_lambda,
                cfg.permute_sentences,
            )  # fmt: skip
            for i in pick[start : start + 32]
        ]
        batch = make_batch(pairs, bos, eos, pad)
        logits = _losses(model, batch)["logits"]
        pred = logits.argmax(-1)
        m = batch["masked"]
        right += int((pred[m] == batch["labels"][m]).sum())
        total += int(m.sum())
    report["masked_span_accuracy"] = {"accuracy": right / total if total else float("nan")}
    report["masked_span_accuracy"]["n_tokens"] = total
    model.train()
    return report


# ============================================================================ training


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio · lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _cap_at(step: int, cfg: PretrainConfig) -> int:
    phase = min(len(cfg.curriculum) - 1, step * len(cfg.curriculum) // cfg.max_steps)
    return cfg.curriculum[phase]


def _same_settings(a: dict[str, Any], b: dict[str, Any]) -> bool:
    strip = lambda d: {k: v for k, v in d.items() if k not in REUSE_MUTABLE}  # noqa: E731
    return strip(a) == strip(b)


def is_finished(out: str | Path, cfg: PretrainConfig) -> bool:
    """Whether `out` holds a finished model trained with `cfg`'s settings."""
    saved = Path(out) / PRETRAIN_CONFIG_NAME
    if not (saved.is_file() and (Path(out) / METRICS_NAME).is_file()):
        return False
    try:
        return _same_settings(json.loads(saved.read_text("utf-8")), cfg.to_dict())
    except (OSError, json.JSONDecodeError):
        return False


def _tokenizer_for(cfg: PretrainConfig, corpus: Corpus, work: Path) -> Any:
    from recap.models.config import RecapConfig
    from recap.models.tokenizer import load_tokenizer, train_bpe_tokenizer

    if cfg.tokenizer:
        tok = load_tokenizer(cfg.tokenizer)
        if tok.mask_token_id is None:
            raise RecapError(f"the tokenizer of {cfg.tokenizer} has no <mask> token")
        return tok
    tok_dir = work / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        vocab = cfg.vocab_size or RecapConfig.preset("bart", cfg.size).vocab_size
        # Trained on the training text only: held-out lines stay unseen even by the BPE.
        train_bpe_tokenizer(("".join(d).strip() for d in corpus.train), vocab, out_dir=tok_dir)
    return load_tokenizer(tok_dir)


def pretrain_text(config: PretrainConfig) -> Path:
    """Pretrain a BART on lyrics by denoising and return the finished folder `config.out`.

    A folder already holding a finished model with the same settings is returned at once (the
    demo caches it so); different settings need `overwrite`. A killed run resumes from
    `OUT.partial/` when started again with the same settings.
    """
    from tqdm.auto import tqdm
    from transformers import BartForConditionalGeneration

    cfg = config.resolved()
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        if is_finished(out, cfg):
            logger.info("%s holds a finished model with these settings; reusing it", out)
            return out
        raise RecapError(
            f"{out} exists and is not a finished pretraining with these settings; "
            "pass --overwrite to replace it"
        )
    work = out.with_name(out.name + ".partial")
    saved = work / PRETRAIN_CONFIG_NAME
    if saved.is_file() and not _same_settings(json.loads(saved.read_text()), cfg.to_dict()):
        logger.info("%s was started with other settings; starting afresh", work)
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(saved, cfg.to_dict())
    t_start = time.perf_counter()

    # --- text
    docs = read_corpus(cfg)
    exclusion = Exclusion.from_benchmarks(cfg.exclude_splits_of)
    corpus = split_corpus(docs, exclusion, cfg.held_out_share, cfg.seed)
    if not corpus.train:
        raise RecapError("no training text left after the exclusions")
    tokenizer = _tokenizer_for(cfg, corpus, work)
    encoded: dict[str, list[int]] = {}
    phases = {cap: make_segments(corpus.train, tokenizer, cap, encoded) for cap in cfg.curriculum}
    n_tokens = sum(len(s.ids) for s in phases[max(cfg.curriculum)])
    logger.info(
        "text: %d training documents (%d tokens), %d held-out works, %d works excluded, "
        "%d lines dropped as excluded/held-out",
        corpus.stats["train_documents"],
        n_tokens,
        corpus.stats["held_out_works"],
        corpus.stats["excluded_works"],
        corpus.stats["dropped_lines"],
    )
    t_text = time.perf_counter() - t_start

    # --- model and optimizer
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = BartForConditionalGeneration(_bart_config(cfg, tokenizer))
    if cfg.position_init == "sinusoidal":
        sinusoidal_positions(model, model.config.init_std)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed_positions" not in n]
    rest = [
        p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed_positions" not in n)
    ]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    step = 0
    last = work / "last"
    if (last / "state.json").is_file():
        from safetensors.torch import load_model

        load_model(model, str(last / "model.safetensors"))
        optimizer.load_state_dict(torch.load(last / "optimizer.pt", weights_only=False))
        step = int(json.loads((last / "state.json").read_text())["step"])
        logger.info("resuming %s at step %d", work, step)
    model.train()
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    log_path = work / "log.jsonl"
    bar = tqdm(total=cfg.max_steps, initial=step, desc="pretrain-text", disable=not cfg.progress)
    t_train = time.perf_counter()
    steps_at_start = step
    sums: dict[str, float] = {}
    while step < cfg.max_steps:
        # Each step's batch and noise are a function of (seed, step): a resumed run sees
        # exactly the batches an uninterrupted one would.
        rng = np.random.default_rng([cfg.seed, step])
        torch.manual_seed(int(rng.integers(2**62)))  # dropout masks too
        cap = _cap_at(step, cfg)
        pool = phases[cap]
        pairs = [
            corrupt(
                pool[int(i)],
                rng,
                tokenizer.mask_token_id,
                cfg.copy_share,
                cfg.mask_ratio,
                cfg.poisson_lambda,
                cfg.permute_sentences,
            )  # fmt: skip
            for i in rng.integers(len(pool), size=cfg.batch_size)
        ]
        batch = make_batch(pairs, bos, eos, pad)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, cfg)
        terms = _losses(model, batch, cfg, tokenizer.mask_token_id)
        loss = terms["denoise"]
        if "reconstruct" in terms:
            loss = loss + cfg.reconstruct_weight * terms["reconstruct"]
        if "copy_attention" in terms:
            loss = loss + cfg.copy_attention_weight * terms["copy_attention"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        step += 1
        bar.update()
        for k in ("denoise", "reconstruct", "copy_attention"):
            if k in terms:
                sums[k] = sums.get(k, 0.0) + float(terms[k].detach())
        if step % cfg.log_every_steps == 0 or step == cfg.max_steps:
            n = (step - 1) % cfg.log_every_steps + 1
            record = {"step": step, "cap": cap, "lr": _lr_at(step - 1, cfg)}
            record.update({k: round(v / n, 4) for k, v in sums.items()})
            record["seconds"] = round(time.perf_counter() - t_train, 1)
            sums = {}
            with log_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=record.get("denoise"), cap=cap)
        if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
            _save_last(model, optimizer, step, work)
    bar.close()
    train_seconds = time.perf_counter() - t_train

    # --- report and the folder
    t_eval = time.perf_counter()
    metrics = evaluate(model, tokenizer, corpus.held_out, cfg)
    metrics.update(
        {
            "corpus": {**corpus.stats, "train_tokens": n_tokens},
            "steps": cfg.max_steps,
            "steps_this_run": cfg.max_steps - steps_at_start,
            "seconds": {
                "text": round(t_text, 1),
                "train": round(train_seconds, 1),
                "eval": round(time.perf_counter() - t_eval, 1),
            },
            "parameters": sum(p.numel() for p in model.parameters()),
            "bar_exact_copy_lines": 0.9,
        }
    )
    final = work / "final"
    if final.exists():
        shutil.rmtree(final)
    model.save_pretrained(str(final))
    tokenizer.save_pretrained(str(final))
    atomic_write_json(final / PRETRAIN_CONFIG_NAME, cfg.to_dict())
    if log_path.is_file():
        shutil.copy(log_path, final / "log.jsonl")
    atomic_write_json(final / METRICS_NAME, metrics)  # written last: marks a finished model
    if out.exists():
        shutil.rmtree(out)
    final.replace(out)
    shutil.rmtree(work)
    return out


def _save_last(model: Any, optimizer: Any, step: int, work: Path) -> None:
    """`work/last`, written beside and renamed in, so a kill leaves a whole checkpoint."""
    from safetensors.torch import save_model

    tmp = work / ".last.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    atomic_write_json(tmp / "state.json", {"step": step})
    last = work / "last"
    if last.exists():
        shutil.rmtree(last)
    tmp.replace(last)


def format_metrics(metrics: dict[str, Any]) -> str:
    lines = []
    for key, value in metrics.items():
        if key.startswith("copy_"):
            lines.append(f"exact copy, {key[5:]:>5}: {value['exact']:.1%} of {value['n']}")
    acc = metrics.get("masked_span_accuracy", {})
    if acc:
        lines.append(
            f"masked-span token accuracy: {acc['accuracy']:.1%} of {acc['n_tokens']} tokens"
        )
    return "\n".join(lines)


__all__ = [
    "Corrupted",
    "copy_attention_loss",
    "is_finished",
    "Document",
    "Exclusion",
    "PretrainConfig",
    "Segment",
    "corrupt",
    "evaluate",
    "make_segments",
    "pretrain_text",
    "read_corpus",
    "split_corpus",
]
