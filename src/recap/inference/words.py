"""Captions in words the captioner knows: a decoding constraint (`DecodeSettings.known_words`).

A small captioner with a copy head spells words that are in neither its training captions nor
the song ("frehebt", "modermn", "Herr,kes"): a copied BPE piece is continued from the
vocabulary, or a word is broken off and another begun. With this constraint every word a caption
writes is a word of the captioner's training captions (`caption_words.json`, saved with the
model by `recap train`) or of the song's own lyrics, compared without case. A word is a run of
letters and digits; everything else (white space, punctuation, apostrophes, quote marks) ends
one. What the model prefers among the allowed tokens, and how long the caption is, stay its own.
A token that holds only part of a character is never chosen under the constraint (byte-level BPE
merges the characters of its training text into whole tokens; inside a quote, where
`quote_lyrics` may need one, the quote constraint decides alone).

The check runs on each beam's text so far (decoded from the byte-level tokens, so a letter
split over two tokens counts once it is whole): the word being written must be the beginning of
an allowed word, and a token that ends it must end an allowed word.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor

from recap.inference.quotes import keep_only, token_bytes
from recap.utils import RecapError, atomic_write_json

CAPTION_WORDS_NAME = "caption_words.json"
MAX_CAPTION_WORDS_BYTES = 16 * 2**20  # a file from a user: read only below this size
WORD = re.compile(r"[^\W_]+")
_TRAILING_WORD = re.compile(r"[^\W_]+$")
# The tokens of one beam decoded to find the word it is writing (words are shorter than this).
_TAIL_TOKENS = 32


def caption_vocabulary(texts: Iterable[str]) -> list[str]:
    """The distinct words of `texts`, lower-cased and sorted: what `caption_words.json` holds."""
    return sorted({w.lower() for text in texts for w in WORD.findall(text)})


def save_caption_words(directory: str | Path, words: Iterable[str]) -> Path:
    path = Path(directory) / CAPTION_WORDS_NAME
    atomic_write_json(path, sorted(set(words)))
    return path


def load_caption_words(directory: str | Path) -> frozenset[str] | None:
    """The words saved with a model, or None when the folder has none (a model trained before
    the file existed). A RecapError for a file too large or not a JSON list of strings."""
    path = Path(directory) / CAPTION_WORDS_NAME
    if not path.is_file():
        return None
    size = path.stat().st_size
    if size > MAX_CAPTION_WORDS_BYTES:
        raise RecapError(f"{path}: {size} bytes, more than the {MAX_CAPTION_WORDS_BYTES} allowed")
    try:
        words = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecapError(f"cannot read {path}: {exc}") from exc
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise RecapError(f"{path} must hold a JSON list of words (strings)")
    return frozenset(w.lower() for w in words)


class WordVocabulary:
    """What the constraint needs to know of a tokenizer, computed once: each id's text split at
    the word boundaries it holds (its leading letters, the words inside it, its trailing letters).
    """

    def __init__(self, tokenizer: Any) -> None:
        table = token_bytes(tokenizer)
        self.table = table
        self.boundary_led: list[tuple[int, tuple[str, ...], str]] = []  # (id, inner, trailing)
        self.by_lead: dict[str, list[tuple[int, bool, tuple[str, ...], str]]] = {}
        special = set(tokenizer.all_special_ids)
        for i, piece in enumerate(table):
            if i in special:
                continue
            try:
                text = piece.decode("utf-8").lower()
            except UnicodeDecodeError:
                # Part of a character: which letter it makes is not known yet, so it is left
                # out (byte-level BPE merges the characters of its corpus into whole tokens).
                continue
            if not text:
                continue
            parts = re.split(r"[\W_]+", text)  # words, with "" where a boundary leads/trails
            if len(parts) == 1:  # no boundary in it
                self.by_lead.setdefault(parts[0], []).append((i, False, (), ""))
                continue
            lead, inner, trail = parts[0], tuple(w for w in parts[1:-1] if w), parts[-1]
            if lead:
                self.by_lead.setdefault(lead, []).append((i, True, inner, trail))
            else:
                self.boundary_led.append((i, inner, trail))
        self.eos = tokenizer.eos_token_id


class _SongWords:
    """The allowed words of one song and the answers already worked out for it."""

    def __init__(self, vocab: WordVocabulary, words: frozenset[str]) -> None:
        self.vocab = vocab
        self.words = words
        self.sorted = sorted(words)
        self.prefixes = {w[:k] for w in words for k in range(1, len(w) + 1)}
        self.cache: dict[str, torch.Tensor] = {}
        ends = [i for i, inner, trail in vocab.boundary_led if self._rest_ok(inner, trail)]
        self.ends_word = ends + ([vocab.eos] if vocab.eos is not None else [])

    def _rest_ok(self, inner: tuple[str, ...], trail: str) -> bool:
        return all(w in self.words for w in inner) and (not trail or trail in self.prefixes)

    def allowed(self, partial: str) -> torch.Tensor:
        """Ids that may follow a text whose last, unfinished word is `partial` ("" after a
        boundary), as a LongTensor (cached: every beam asks again at every step)."""
        found = self.cache.get(partial)
        if found is not None:
            return found
        vocab = self.vocab
        ids: list[int] = []
        if not partial or partial in self.words:
            ids += self.ends_word
        # Tokens that continue the word: their leading letters must extend `partial` along an
        # allowed word, and, when they also end it, end exactly on one.
        start = bisect.bisect_left(self.sorted, partial)
        leads: set[str] = set()
        for word in self.sorted[start:]:
            if not word.startswith(partial):
                break
            leads.update(word[len(partial) : k] for k in range(len(partial) + 1, len(word) + 1))
        for lead in leads:
            for i, ends, inner, trail in vocab.by_lead.get(lead, ()):
                if not ends or (partial + lead in self.words and self._rest_ok(inner, trail)):
                    ids.append(i)
        if not ids:  # a word already off the list (a split letter): end it at once
            ids = list(self.ends_word)
        found = self.cache[partial] = torch.tensor(ids, dtype=torch.long)
        return found


class KnownWords(LogitsProcessor):
    """Only tokens that keep every word of the caption a known one (see the module).

    `lyrics`: the text of each song in the batch; rows of `input_ids` are song-major,
    `rows_per_song` of them per song (the beams).
    """

    def __init__(
        self,
        vocabulary: WordVocabulary,
        caption_words: frozenset[str],
        lyrics: Sequence[str],
        rows_per_song: int,
    ) -> None:
        self.vocabulary = vocabulary
        self.rows_per_song = rows_per_song
        self.songs = [
            _SongWords(vocabulary, caption_words | {w.lower() for w in WORD.findall(text)})
            for text in lyrics
        ]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        table = self.vocabulary.table
        allowed_by_row = {}
        for row, ids in enumerate(input_ids[:, -_TAIL_TOKENS:].tolist()):
            text = b"".join(table[i] for i in ids).decode("utf-8", errors="ignore")
            partial = _TRAILING_WORD.search(text)
            allowed_by_row[row] = self.songs[row // self.rows_per_song].allowed(
                partial.group().lower() if partial else ""
            )
        # a row whose allowed tokens are all banned already (a quote, repeats) is left as it is
        return keep_only(scores, allowed_by_row)


__all__ = [
    "CAPTION_WORDS_NAME",
    "KnownWords",
    "WordVocabulary",
    "caption_vocabulary",
    "load_caption_words",
    "save_caption_words",
]
