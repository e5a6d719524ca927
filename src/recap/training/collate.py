"""Training data as tensors: pre-tokenised examples and the collator that pads a batch to its
own length and looks up each song's precomputed music sequence."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from recap.data.batching import pad_music
from recap.data.songs import COMMENT_WITHOUT_LYRICS


@dataclass
class Example:
    """One pre-tokenised interpretation."""

    song_id: str
    lyrics_ids: list[int]
    caption_ids: list[int]
    lyrics: str = ""
    caption: str = ""
    # the reference when the lyrics are dropped (the row's `comment_without_lyrics`), if any
    caption_without_lyrics_ids: list[int] | None = None
    # False for a text-only row (`recap.bench.text_rows`): no music to look up or hear
    hears: bool = True

    @property
    def length(self) -> int:
        return len(self.lyrics_ids) + len(self.caption_ids)


class ExampleDataset(Dataset):
    def __init__(self, examples: Sequence[Example]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]


def caption_texts(rows: Sequence[Any]) -> list[str]:
    """Every caption the rows teach: each comment, and its version without the lyrics facts
    where the dataset has one (the reference under lyrics dropout)."""
    texts = [r.comment for r in rows]
    heard = (getattr(r, "extra", {}).get(COMMENT_WITHOUT_LYRICS) for r in rows)
    return texts + [str(text) for text in heard if text]


def tokenize_rows(
    rows: Sequence[Any], tokenizer: Any, max_source: int, max_target: int
) -> list[Example]:
    """`recap.data.songs.Row`s → Examples (lyrics and caption truncated to the model's lengths)."""
    if not rows:
        return []
    lyrics = [r.lyrics for r in rows]  # newlines are already ';' (recap.data.songs, SPEC §1.2)
    captions = [r.comment for r in rows]
    src = tokenizer(lyrics, truncation=True, max_length=max_source)["input_ids"]
    tgt = tokenizer(captions, truncation=True, max_length=max_target)["input_ids"]
    heard = [str(getattr(r, "extra", {}).get(COMMENT_WITHOUT_LYRICS) or "") for r in rows]
    heard_ids = tokenizer(heard, truncation=True, max_length=max_target)["input_ids"]
    return [
        Example(str(r.song_id), list(s), list(t), lyr, cap, list(h) if text else None)
        for r, s, t, lyr, cap, text, h in zip(rows, src, tgt, lyrics, captions, heard, heard_ids)
    ]


@dataclass
class Collator:
    """Pads a batch to its own longest sequence (dynamic padding) and looks up the music.

    Labels are padded with the pad id (the model masks them unless `loss_includes_padding`).
    Music embeddings stay float16 on the host: half the bytes to copy; the device casts. Songs
    heard in different numbers of windows are padded to the longest, with a `music_mask`.

    Lyrics dropout: a `lyrics_dropout` share of training examples get empty lyrics
    (`empty_lyrics_ids`, the tokenizer's encoding of "": <s></s>), so the captioner learns to
    interpret a song from its audio alone; its reference is then the row's comment without the
    lyrics facts when the dataset has one (else the whole comment, lyrics facts included). The draw is a hash of (seed, epoch, song, caption), so
    it is the same on every rank and after a resume; the trainer sets `epoch`. Validation calls
    with `train=False` (no dropout).

    `share_sources`: rows with the same song and the same (possibly dropped) lyrics share one
    source row: `input_ids`, `attention_mask`, `music_embeds`, `song_ids` and `lyrics_present`
    are then per source (U rows) and `source_index` (B,) names each caption's source, so the
    model encodes a song once for all of its captions in the batch (the sampler's `per_group`
    puts them together). Off, or when no two rows share, every row is its own source.

    Text-only rows (`Example.hears` False) get no music: a row of mask zeros (`pad_music`) and
    `music_present` False, and never lose their lyrics to the dropout.
    """

    pad_token_id: int
    embeddings: Mapping[str, np.ndarray] | None = None
    pad_to_multiple_of: int = 1
    lyrics_dropout: float = 0.0
    empty_lyrics_ids: tuple[int, ...] = (0, 2)
    seed: int = 0
    epoch: int = 0
    share_sources: bool = False
    music_dim: int = 0  # D of the music tokens: the shape of a text-only row's empty music

    def drops_lyrics(self, example: Example) -> bool:
        if self.lyrics_dropout <= 0 or not example.hears:
            return False  # a text-only row without its lyrics would have no input at all
        key = f"{self.seed}|{self.epoch}|{example.song_id}|{example.caption_ids}".encode()
        draw = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2**64
        return draw < self.lyrics_dropout

    def _pad(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        longest = max(len(s) for s in seqs)
        m = max(1, self.pad_to_multiple_of)
        longest = -(-longest // m) * m
        out = torch.full((len(seqs), longest), self.pad_token_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        return out

    def __call__(self, examples: Sequence[Example], train: bool = True) -> dict[str, Any]:
        dropped = [train and self.drops_lyrics(e) for e in examples]
        lyrics = [
            list(self.empty_lyrics_ids) if d else e.lyrics_ids for e, d in zip(examples, dropped)
        ]
        sources = list(range(len(examples)))  # row -> the row whose source it reads
        if self.share_sources:
            first: dict[tuple[str, tuple[int, ...]], int] = {}
            sources = [
                first.setdefault((e.song_id, tuple(ids)), i)
                for i, (e, ids) in enumerate(zip(examples, lyrics))
            ]
        own = sorted(set(sources))  # the source rows, in batch order
        input_ids = self._pad([lyrics[i] for i in own])  # (U, S)
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": (input_ids != self.pad_token_id).long(),
            # Without its lyrics an example learns what its audio tells, when the row says.
            "labels": self._pad(
                [
                    e.caption_without_lyrics_ids
                    if d and e.caption_without_lyrics_ids
                    else e.caption_ids
                    for e, d in zip(examples, dropped)
                ]
            ),  # (B, T)
            "song_ids": [examples[i].song_id for i in own],
            # Host-side counts for throughput logging, so the step never waits on the device.
            "n_tokens": sum(e.length for e in examples),
        }
        if len(own) < len(examples):
            where = {row: k for k, row in enumerate(own)}
            batch["source_index"] = torch.tensor([where[i] for i in sources])  # (B,) in 0..U-1
        if any(dropped):  # the model leaves these rows out of the alignment loss
            batch["lyrics_present"] = [not dropped[i] for i in own]
        if self.embeddings is not None:
            silent = np.zeros((0, self.music_dim), dtype=np.float16)
            music, music_mask = pad_music(
                [
                    np.asarray(self.embeddings[examples[i].song_id])
                    if examples[i].hears
                    else silent
                    for i in own
                ]
            )
            batch["music_embeds"] = torch.from_numpy(music)  # (U, W*119, D) float16
            if music_mask is not None:
                batch["music_mask"] = torch.from_numpy(music_mask)  # (U, W*119)
            if not all(examples[i].hears for i in own):  # left out of the alignment loss
                batch["music_present"] = [examples[i].hears for i in own]
        return batch


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if key == "music_embeds":
                value = value.float()
        out[key] = value
    return out
