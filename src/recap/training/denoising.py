"""BART's denoising inputs for `recap pretrain-text`: token segments packed from documents,
corrupted by span masking and sentence permutation (or left whole, to learn copying), padded
into batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


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


# ============================================================================ batches


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
