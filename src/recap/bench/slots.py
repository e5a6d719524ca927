"""The facts a benchmark caption states: slot names, their closed vocabularies, and the tags.

Audio slots are chosen per rendering (instruments, tempo, transposition → key); lyrics slots come from the text alone. Every vocabulary is closed and its words are
disjoint from the other slots' words, so a caption can be parsed back whatever its sentence order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# Melody instruments: General MIDI programs (0-based) chosen to sound clearly different from each
# other in a FluidSynth rendering (reed vs brass vs flue vs bowed vs voice).
MELODY_INSTRUMENTS: dict[str, int] = {
    "flute": 73,
    "oboe": 68,
    "clarinet": 71,
    "saxophone": 65,
    "trumpet": 56,
    "horn": 60,
    "violin": 40,
    "choir": 52,
}
# Accompaniment instruments; names disjoint from the melody list so the parser never confuses them.
ACCOMPANIMENTS: dict[str, int] = {
    "piano": 0,
    "organ": 19,
    "strings": 48,
    "harp": 46,
    "guitar": 24,
}
# Quarter-note BPM ranges; the gaps between classes keep the classes audible.
TEMPO_CLASSES: dict[str, tuple[int, int]] = {
    "slow": (54, 70),
    "moderate": (88, 106),
    "fast": (126, 150),
}
# Tonic spelled one fixed way per pitch class: the key slot is a pitch class, not a spelling.
TONICS: tuple[str, ...] = (
    "C", "D-flat", "D", "E-flat", "E", "F", "F-sharp", "G", "A-flat", "A", "B-flat", "B",
)  # fmt: skip
MODES: tuple[str, ...] = ("major", "minor")
METRES: tuple[str, ...] = ("duple", "triple", "compound")
LANGUAGES: tuple[str, ...] = ("German", "English", "French", "Italian", "Latin")
THEMES: tuple[str, ...] = ("faith", "love", "death", "nature", "night", "joy", "longing")

# The interpretive slot joins the two modalities' readings: a mood heard in the music applied to
# what the text is about (theme). Mode would have made a richer mood (major/minor x tempo), but
# neither mode nor metre is recoverable from the audio (`recap bench probe`, docs/benchmark.md):
# both stay in the truth for reference and are left out of the captions.
MOODS: dict[str, str] = {"slow": "solemn", "moderate": "serene", "fast": "jubilant"}

AUDIO_SLOTS: tuple[str, ...] = ("melody", "accompaniment", "tempo", "key")
LYRICS_SLOTS: tuple[str, ...] = ("language", "first_line", "salient_words", "theme")
INTERPRETIVE_SLOTS: tuple[str, ...] = ("mood",)
ALL_SLOTS: tuple[str, ...] = AUDIO_SLOTS + LYRICS_SLOTS + INTERPRETIVE_SLOTS
# In the truth of every song, not stated by captions (the audio does not carry them).
SCORE_ONLY_SLOTS: tuple[str, ...] = ("mode", "metre")

# Slots whose value is one label of a closed vocabulary (the others are free text from the lyrics).
VOCABULARIES: dict[str, tuple[str, ...]] = {
    "melody": tuple(MELODY_INSTRUMENTS),
    "accompaniment": tuple(ACCOMPANIMENTS),
    "tempo": tuple(TEMPO_CLASSES),
    "key": TONICS,
    "mode": MODES,
    "metre": METRES,
    "language": LANGUAGES,
    "theme": THEMES,
    "mood": tuple(MOODS.values()),
}


def mood_for(tempo: str) -> str:
    return MOODS[tempo]


def metre_class(numerator: int) -> str:
    """Simple duple/quadruple, simple triple, or compound (6/8, 9/8, 12/8) from a time signature."""
    if numerator > 3 and numerator % 3 == 0:
        return "compound"
    if numerator == 3:
        return "triple"
    return "duple"


def audio_tags(truth: Mapping[str, object]) -> list[str]:
    """The multi-label tags of one song for the music-encoder tagger, e.g. "melody=flute"."""
    return [f"{slot}={truth[slot]}" for slot in AUDIO_SLOTS if slot in truth]


def audio_tag_vocabulary(truths: Iterable[Mapping[str, object]] | None = None) -> list[str]:
    """Every audio tag, in a fixed order: the full closed vocabularies (independent of `truths`,
    so two datasets share one tag order), plus any unexpected value seen in `truths`."""
    tags = [f"{slot}={value}" for slot in AUDIO_SLOTS for value in VOCABULARIES[slot]]
    known = set(tags)
    for truth in truths or ():
        for tag in audio_tags(truth):
            if tag not in known:
                known.add(tag)
                tags.append(tag)
    return tags
