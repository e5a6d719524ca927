"""Coupled renderings: audio choices that follow what the lyrics are about.

In the plain benchmark every audio choice is drawn independently of the text, so nothing links a
song's sound to its words and an audio↔lyrics alignment has nothing to find. `recap bench build
--coupling P` renders a share P of the songs the way real songs tend to sound: a hymn with an
organ, a love song with strings, a lament slow. Which renderings are coupled is drawn from its
own seeded stream, so the other choices (and the whole build at P = 0) stay as they were.

The lyrics' meaning is read with the benchmark's own theme lexicon (`recap.bench.facts`): the
*theme* (the theme with most keyword hits, the `theme` slot) and the *colour* (the runner-up theme
with at least one hit, else the theme itself). The theme chooses the accompaniment and the key,
the colour the tempo and the melody instrument. The colour matters because the music21 corpus is
88 % faith: with the theme alone nearly every coupled song would sound the same.

`--couple-by language` reads the lyrics another way: each language has its house style
(`BY_LANGUAGE`), all four facts at once. It is the correspondence a reader of a few hundred texts
can learn (no reader learns the lexicon's colour from them, docs/results.md), so it tests whether
the alignment finds a correspondence that is there to be learnt.

`--couple-by language-tone` reads one thing more: the *tone* of the text's opening (`tone`), which
exclaims when its first `TONE_WORDS` words hold an exclamation mark and is calm otherwise. Each
language and tone has its own row (`BY_LANGUAGE_TONE`): the language's instruments, a fast tempo
for an exclaiming opening and a slow one for a calm opening, and a key of its own. With three
languages the language alone leaves every song one of a third of the others (even a perfect
reader retrieves at ~2.5x chance, docs/results.md); the tone halves each group, and any reader
sees it (one character).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from recap.bench.facts import theme_counts, word_matches, words
from recap.bench.render import Performance
from recap.bench.slots import (
    ACCOMPANIMENTS,
    LANGUAGES,
    MELODY_INSTRUMENTS,
    TEMPO_CLASSES,
    THEMES,
    TONICS,
)


@dataclass(frozen=True)
class Rendering:
    """One row of a mapping: a theme's (COUPLING) or a language's (BY_LANGUAGE)."""

    tempo: str  # when it is the colour
    melody: str  # when it is the colour
    accompaniment: str  # when it is the theme
    key: str  # when it is the theme: the tonic the score is transposed to (mode stays the score's)


# THE mapping (docs/benchmark.md, "Coupled renderings", mirrors it; a test keeps them equal).
# Keys loosely after Schubart's key characteristics (1806): E-flat devotion, A love, F (minor)
# funeral lament, G the pastoral, B-flat (minor) "garments of night", D triumph and rejoicing,
# B (minor) patient awaiting.
COUPLING: dict[str, Rendering] = {
    "faith": Rendering(tempo="slow", melody="choir", accompaniment="organ", key="E-flat"),
    "love": Rendering(tempo="moderate", melody="violin", accompaniment="strings", key="A"),
    "death": Rendering(tempo="slow", melody="horn", accompaniment="organ", key="F"),
    "nature": Rendering(tempo="fast", melody="flute", accompaniment="harp", key="G"),
    "night": Rendering(tempo="slow", melody="clarinet", accompaniment="guitar", key="B-flat"),
    "joy": Rendering(tempo="fast", melody="trumpet", accompaniment="piano", key="D"),
    "longing": Rendering(tempo="moderate", melody="oboe", accompaniment="piano", key="B"),
}


# How a coupled rendering reads its lyrics (`BuildConfig.couple_by`): the lexicon's theme and
# colour through COUPLING, or the language through BY_LANGUAGE.
COUPLE_BY = ("meaning", "language", "language-tone")

# The learnable mapping: a house style per language, its melody, accompaniment and key unlike
# every other's (docs/benchmark.md mirrors it; a test keeps them equal and apart).
BY_LANGUAGE: dict[str, Rendering] = {
    "German": Rendering(tempo="moderate", melody="violin", accompaniment="strings", key="A"),
    "English": Rendering(tempo="fast", melody="flute", accompaniment="harp", key="G"),
    "French": Rendering(tempo="slow", melody="clarinet", accompaniment="guitar", key="B-flat"),
    "Italian": Rendering(tempo="fast", melody="trumpet", accompaniment="piano", key="D"),
    "Latin": Rendering(tempo="slow", melody="choir", accompaniment="organ", key="E-flat"),
}


# The opening's tone (`tone`): the words a small captioner's lyrics encoder reads whole (its 128
# tokens hold ~60 words); 38 % of the Lieder's first 420 texts have an exclamation mark in them,
# 63 % anywhere.
TONE_WORDS = 40
TONES = ("exclaiming", "calm")

# Coupled by language and tone: the instruments of the language's house style (BY_LANGUAGE), the
# tempo of the tone (exclaiming: fast, calm: slow) and one key per row, no two rows alike
# (docs/benchmark.md mirrors it; a test keeps them equal and apart).
BY_LANGUAGE_TONE: dict[tuple[str, str], Rendering] = {
    ("German", "exclaiming"): Rendering("fast", "violin", "strings", "A"),
    ("German", "calm"): Rendering("slow", "violin", "strings", "F"),
    ("English", "exclaiming"): Rendering("fast", "flute", "harp", "G"),
    ("English", "calm"): Rendering("slow", "flute", "harp", "E"),
    ("French", "exclaiming"): Rendering("fast", "clarinet", "guitar", "D"),
    ("French", "calm"): Rendering("slow", "clarinet", "guitar", "B-flat"),
    ("Italian", "exclaiming"): Rendering("fast", "trumpet", "piano", "C"),
    ("Italian", "calm"): Rendering("slow", "trumpet", "piano", "A-flat"),
    ("Latin", "exclaiming"): Rendering("fast", "choir", "organ", "E-flat"),
    ("Latin", "calm"): Rendering("slow", "choir", "organ", "B"),
}


def tone(lyrics: str) -> str:
    """The opening's tone: exclaiming when the text's first TONE_WORDS words, with the
    punctuation between and right after them, hold an exclamation mark; calm otherwise."""
    found = word_matches(lyrics)
    if len(found) > TONE_WORDS:
        head = found[0].string[: found[TONE_WORDS].start()]  # up to the next word
    else:
        head = found[0].string if found else lyrics
    return "exclaiming" if "!" in head else "calm"


def reading(truth: Mapping[str, object], couple_by: str) -> dict[str, str]:
    """What the coupling reads from a song's lyrics facts: {"theme", "colour"} for `meaning`
    (the colour falls back to the theme), {"language"} for `language`, {"language", "tone"}
    for `language-tone`."""
    if couple_by == "language":
        return {"language": str(truth["language"])}
    if couple_by == "language-tone":
        return {"language": str(truth["language"]), "tone": str(truth["tone"])}
    if couple_by != "meaning":
        raise ValueError(f"couple_by is one of {COUPLE_BY}, not {couple_by!r}")
    theme = str(truth["theme"])
    return {"theme": theme, "colour": str(truth.get("colour") or theme)}


def reading_labels(couple_by: str) -> dict[str, tuple[str, ...]]:
    """Each label `reading` returns for `couple_by`, with its values."""
    if couple_by == "language":
        return {"language": LANGUAGES}
    if couple_by == "language-tone":
        return {"language": LANGUAGES, "tone": TONES}
    return {"theme": THEMES, "colour": THEMES}


def reading_features(readings: Sequence[Mapping[str, str]], couple_by: str) -> np.ndarray:
    """(N, sum of the labels' value counts) one-hot blocks of `reading`s, one block per label of
    `reading_labels` (theme then colour, or the language)."""
    labels = reading_labels(couple_by)
    x = np.zeros((len(readings), sum(len(v) for v in labels.values())), dtype=np.float32)
    for n, read in enumerate(readings):
        offset = 0
        for name, values in labels.items():
            x[n, offset + values.index(read[name])] = 1.0
            offset += len(values)
    return x


def coupled_rows(truth: Mapping[str, object], couple_by: str) -> tuple[Rendering, Rendering]:
    """The rows that set a song's (accompaniment, key) and its (tempo, melody)."""
    read = reading(truth, couple_by)
    if couple_by == "language":
        row = BY_LANGUAGE[read["language"]]
        return row, row
    if couple_by == "language-tone":
        row = BY_LANGUAGE_TONE[(read["language"], read["tone"])]
        return row, row
    return COUPLING[read["theme"]], COUPLING[read["colour"]]


def theme_and_colour(lyrics: str, language: str) -> tuple[str, str]:
    """The text's theme (as `facts.detect_theme` gives it) and its colour (the runner-up theme
    with at least one keyword hit, ties in the order of THEMES; the theme when none has a hit)."""
    counts = theme_counts(words(lyrics), language)
    theme = max(THEMES, key=lambda t: counts[t])
    others = [t for t in THEMES if t != theme]
    runner_up = max(others, key=lambda t: counts[t])
    return theme, runner_up if counts[runner_up] > 0 else theme


def is_coupled(rng: random.Random, coupling: float) -> bool:
    # At P = 0 or 1 nothing is drawn: the answer is certain.
    if coupling <= 0.0:
        return False
    return coupling >= 1.0 or rng.random() < coupling


def transpose_to(tonic_pc: int, key: str, transpose_range: tuple[int, int]) -> int:
    """The transposition inside `transpose_range` that puts the score's tonic on `key` (the
    smallest in size when the range holds several)."""
    target = TONICS.index(key)
    fits = [
        t
        for t in range(transpose_range[0], transpose_range[1] + 1)
        if (tonic_pc + t) % 12 == target
    ]
    if not fits:
        raise ValueError(f"no transposition in {transpose_range} reaches {key}")
    return min(fits, key=lambda t: (abs(t), t))


def couple(
    perf: Performance,
    about: Rendering,
    coloured: Rendering,
    tonic_of: Callable[[Performance], int],
    transpose_range: tuple[int, int],
    rng: random.Random,
) -> tuple[Performance, str]:
    """`perf` with the accompaniment and key of `about`, the tempo and melody of `coloured`
    (`coupled_rows`); the excerpt window is kept. The BPM inside the tempo class is drawn from
    `rng` (the coupling's own stream). `tonic_of(p)`: the tonic pitch class the build states for
    the performance `p` played untransposed (the tempo decides which notes a heard window
    holds, so it is read after the BPM is set)."""
    lo, hi = TEMPO_CLASSES[coloured.tempo]
    coupled = replace(
        perf,
        melody_program=MELODY_INSTRUMENTS[coloured.melody],
        accompaniment_program=ACCOMPANIMENTS[about.accompaniment],
        bpm=float(rng.randint(lo, hi)),
    )
    transpose = transpose_to(tonic_of(coupled), about.key, transpose_range)
    return replace(coupled, transpose=transpose), coloured.tempo
