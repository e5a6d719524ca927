"""Quotations that are the song's own words: a decoding constraint (`DecodeSettings.quote_lyrics`).

A caption quotes its lyrics between straight double quotes ("Meine Seel’ erhebt den"). Left free,
a small captioner misquotes: it jumps from one occurrence of a token to another ("O Ewort"),
fuses two words ("denkes'") or closes the quote inside a word. With this constraint, once a
caption has opened a quote, every next token must continue, byte for byte, a stretch of the
song's lyrics that begins at a word, and the closing quote may only come where a word of the
lyrics ends (before a space, the end of the text or a sentence mark; an apostrophe belongs to
its word). Outside quotes nothing changes, nor does what the model prefers among the allowed
tokens: how long a quote is, and whether there is one, stay the model's choice.

The comparison is on bytes (the captioners' BPE is byte-level, and a token may hold part of a
character such as ’), with every run of white space in the lyrics read as one space.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor

from recap.utils import RecapError

QUOTE = ord('"')
# Where a quote may close: the end of the lyrics, white space, or sentence marks then either.
_CLOSES_BEFORE = re.compile(rb"(?:$|\s|[,.;:!?)\]\xc2\xbb-]+(?:$|\s))")


def byte_level_alphabet() -> dict[str, int]:
    """The character → byte table of byte-level BPE vocabularies (GPT-2, BART, ours): printable
    Latin-1 bytes stand for themselves, the other 68 bytes for the code points from 256 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in table.values():
            table[chr(256 + extra)] = b
            extra += 1
    return table


def token_bytes(tokenizer: Any) -> list[bytes]:
    """The bytes each vocabulary id stands for (b"" for special tokens), by id. A RecapError
    when the vocabulary is not byte-level BPE (its 256 byte symbols are not all tokens)."""
    alphabet = byte_level_alphabet()
    special = set(tokenizer.all_special_ids)
    vocab = tokenizer.get_vocab()  # token string -> id
    missing = sum(symbol not in vocab for symbol in alphabet)
    if missing:
        raise RecapError(
            f"quote_lyrics needs a byte-level BPE tokenizer (as BART's); {missing} of its 256 "
            "byte symbols are not in this vocabulary"
        )
    out = [b""] * (max(vocab.values()) + 1)
    for text, i in vocab.items():
        if i in special:
            continue
        try:
            out[i] = bytes(alphabet[c] for c in text)
        except KeyError:  # not a byte-level token (an added word): never part of a quote
            out[i] = b""
    return out


def _word_starts(text: str) -> list[int]:
    """Byte offsets where a quote may begin: each run of non-space characters, and its first
    letter when punctuation leads it („Meine, (Herr)."""
    chars = sorted(
        {m.start() for m in re.finditer(r"\S+", text)}
        | {m.end() for m in re.finditer(r"(?<!\S)[^\w\s]+(?=\w)", text)}
    )
    return [len(text[:i].encode("utf-8")) for i in chars]


class QuoteVocabulary:
    """What the constraint needs to know of a vocabulary, computed once per tokenizer: the bytes
    of each id, how many quote marks each holds, the ids that close a quote, and the others by
    their first byte."""

    def __init__(self, tokenizer: Any) -> None:
        self.table = token_bytes(tokenizer)
        self.quote_marks = torch.tensor([piece.count(QUOTE) for piece in self.table])  # (V,)
        self.by_first_byte: dict[int, list[tuple[int, bytes]]] = {}
        self.closing: list[tuple[int, bytes]] = []
        for i, piece in enumerate(self.table):
            if not piece:
                continue
            if QUOTE in piece:
                self.closing.append((i, piece))
            else:
                self.by_first_byte.setdefault(piece[0], []).append((i, piece))


class QuoteFromLyrics(LogitsProcessor):
    """Inside an open quote, only tokens that continue the song's lyrics (see the module).

    `lyrics`: the text of each song in the batch; rows of `input_ids` are song-major, `rows_per_song`
    of them per song (the beams). The decoder's start tokens are special: they hold no bytes.
    """

    def __init__(
        self, vocabulary: QuoteVocabulary, lyrics: Sequence[str], rows_per_song: int
    ) -> None:
        self.vocabulary = vocabulary
        self.rows_per_song = rows_per_song
        texts = [" ".join(text.split()) for text in lyrics]
        self.lyrics = [text.encode("utf-8") for text in texts]
        self.starts = [_word_starts(text) for text in texts]

    def _allowed(self, song: int, quoted: bytes) -> list[int]:
        text = self.lyrics[song]
        # Where the quote so far ends, for each place of the lyrics it matches (usually one).
        ends = {s + len(quoted) for s in self.starts[song] if text.startswith(quoted, s)}
        allowed: set[int] = set()
        for end in ends:
            if end < len(text):
                for i, piece in self.vocabulary.by_first_byte.get(text[end], ()):
                    if text.startswith(piece, end):
                        allowed.add(i)
        for i, piece in self.vocabulary.closing:
            # The bytes before the closing mark continue the quote; those after it are free.
            before = piece[: piece.index(QUOTE)]
            if (quoted + before).strip() and any(
                text.startswith(before, end) and _CLOSES_BEFORE.match(text, end + len(before))
                for end in ends
            ):
                allowed.add(i)
        return sorted(allowed)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        vocab = self.vocabulary
        marks = vocab.quote_marks.to(input_ids.device)[input_ids]  # (rows, T) quotes per token
        inside = (marks.sum(dim=1) % 2 == 1).nonzero().flatten().tolist()  # outside: free
        allowed_by_row = {}
        for row in inside:
            opened = int(marks[row].nonzero().max())  # the token that opened the quote
            tail = b"".join(vocab.table[i] for i in input_ids[row, opened:].tolist())
            quoted = tail[tail.rindex(QUOTE) + 1 :]
            allowed = self._allowed(row // self.rows_per_song, quoted)
            if not allowed:  # nothing of the lyrics continues it (no lyrics): close at once
                allowed = [i for i, _ in vocab.closing]
            allowed_by_row[row] = allowed
        # a row whose allowed tokens are all banned already (repeated n-grams) is left as it is
        return keep_only(scores, allowed_by_row)


def keep_only(scores: torch.Tensor, allowed_by_row: dict[int, Sequence[int]]) -> torch.Tensor:
    """`scores` (rows, V) with every token outside its row's allowed ids set to -inf, for the rows
    in `allowed_by_row` (the others are untouched). A row whose allowed tokens are all -inf
    already (banned by another processor) is left as it is: some token must stay possible. One
    masking for the whole batch: a decoding step calls this for every beam."""
    if not allowed_by_row:
        return scores
    rows = list(allowed_by_row)
    ids = [torch.as_tensor(allowed_by_row[r], dtype=torch.long) for r in rows]
    row_index = torch.repeat_interleave(torch.tensor(rows), torch.tensor([len(i) for i in ids]))
    allowed = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    allowed[row_index.to(scores.device), torch.cat(ids).to(scores.device)] = True
    kept = scores.masked_fill(~allowed, float("-inf"))  # (rows, V)
    restricted = torch.zeros(scores.size(0), dtype=torch.bool, device=scores.device)
    restricted[rows] = True
    restricted &= ~torch.isinf(kept).all(dim=1)  # rows with some allowed token still possible
    return torch.where(restricted[:, None], kept, scores)


__all__ = ["QuoteFromLyrics", "QuoteVocabulary", "byte_level_alphabet", "keep_only", "token_bytes"]
