"""Caption templates, and the parser that reads a caption back into slot values.

A caption is one sentence from each sentence family, in a shuffled order. Every family has several
wordings; each slot value is either a word of a closed vocabulary that no template uses elsewhere,
the quoted first line, or one of the salient words, which stand unquoted at fixed places of the
"words" sentences, so `parse_caption` finds the slots whatever the order or wording.

Why the salient words are not quoted: a word right after a quotation mark is a different BPE token
from the same word after a space (`"Gott` vs ` Gott`), and in the lyrics the words stand after
spaces. Unquoted, stating them is copying the lyrics' own tokens; the first line is quoted because
the lyrics begin with it, without a space before.
"""

from __future__ import annotations

import random
import re

from recap.bench.facts import WORD, normalize_phrase
from recap.bench.slots import ALL_SLOTS, VOCABULARIES

# One list of wordings per family; {a_melody} is the instrument with its article.
SENTENCES: dict[str, tuple[str, ...]] = {
    "instruments": (
        "{A_melody} carries the tune over {a_accompaniment}.",
        "The melody is played by {a_melody}, accompanied by {a_accompaniment}.",
        "{A_accompaniment} supports {a_melody} that leads the melody.",
    ),
    "tempo_key": (
        "The tempo is {tempo}, in the key of {key}.",
        "It moves at a {tempo} pace in the key of {key}.",
        "Set in the key of {key}, it goes at a {tempo} tempo.",
    ),
    "text": (
        'The {language} text begins "{first_line}".',
        'Sung in {language}, it opens with "{first_line}".',
        'The words, in {language}, start "{first_line}".',
    ),
    "words": (
        "Words like {w1}, {w2} and {w3} point to {theme}.",
        "Its key words, {w1}, {w2} and {w3}, speak of {theme}.",
        "The song keeps returning to {w1}, {w2} and {w3}: it is about {theme}.",
    ),
    "reading": (
        "Together the music makes it a {mood} song about {theme}.",
        "Heard with its words, it is a {mood} reflection on {theme}.",
        "The {mood} sound turns this into a song of {theme}.",
    ),
}
FAMILIES: tuple[str, ...] = tuple(SENTENCES)
# What a listener without the words can state. The reading names the theme, which comes from
# the lyrics (the mood beside it follows the tempo), so it stays out too.
AUDIO_FAMILIES: tuple[str, ...] = ("instruments", "tempo_key")
# What a reader without the music can state: the reading joins the theme to the mood, which the
# tempo sets, so it stays out here too.
LYRICS_FAMILIES: tuple[str, ...] = ("text", "words")

_ARTICLE_AN = {"oboe", "organ"}
_PLURAL = {"strings"}
_QUOTED = re.compile(r'"([^"]*)"')
# The "words" sentences up to their third word, the words as groups (a word: letters,
# elisions). What follows the words is the theme's, scored as its own slot: a caption that names
# the words and then ends the sentence in another wording still states them.
_WORDS_SENTENCES = [
    re.compile(
        re.escape(t[: t.index("{w3}") + len("{w3}")])
        .replace(re.escape("{w1}"), f"({WORD.pattern})")
        .replace(re.escape("{w2}"), f"({WORD.pattern})")
        .replace(re.escape("{w3}"), f"({WORD.pattern})")
        + r"(?![^\W\d_]|['’][^\W\d_])"
    )
    for t in SENTENCES["words"]
]
# Each "words" sentence up to its first word place: a caption that begins one and does not
# parse listed its words in a form the parser cannot read (most often two words run together).
_WORDS_OPENINGS = tuple(t[: t.index("{w1}")] for t in SENTENCES["words"])
_KEY = re.compile(r"\bkey of ([A-G](?:-flat|-sharp)?)(?![\w-])")


def _with_article(name: str) -> str:
    if name in _PLURAL:
        return name
    return ("an " if name in _ARTICLE_AN else "a ") + name


def _fields(slots: dict[str, object]) -> dict[str, str]:
    words = list(slots["salient_words"])  # type: ignore[arg-type]
    a_mel, a_acc = _with_article(str(slots["melody"])), _with_article(str(slots["accompaniment"]))
    return {
        **{k: str(v) for k, v in slots.items() if k != "salient_words"},
        "a_melody": a_mel,
        "A_melody": a_mel[0].upper() + a_mel[1:],
        "a_accompaniment": a_acc,
        "A_accompaniment": a_acc[0].upper() + a_acc[1:],
        "w1": words[0],
        "w2": words[1],
        "w3": words[2],
    }


def render_caption(
    slots: dict[str, object], choice: dict[str, int], order: list[str] | tuple[str, ...]
) -> str:
    """The caption stating `slots` with wording `choice[family]`, families in `order`."""
    fields = _fields(slots)
    return " ".join(SENTENCES[family][choice[family]].format(**fields) for family in order)


def random_wording(rng: random.Random) -> tuple[dict[str, int], list[str]]:
    """A random wording per family and a random family order (the reading last half of the
    time, as a closing interpretation)."""
    choice = {family: rng.randrange(len(SENTENCES[family])) for family in FAMILIES}
    order = list(FAMILIES)
    rng.shuffle(order)
    if rng.random() < 0.5:
        order.remove("reading")
        order.append("reading")
    return choice, order


def random_caption(slots: dict[str, object], rng: random.Random) -> tuple[str, str]:
    """A caption in a random wording (`random_wording`), and the same caption's sentences that
    can be told from the audio alone: the reference of a training example whose lyrics are
    dropped."""
    choice, order = random_wording(rng)
    heard = [family for family in order if family in AUDIO_FAMILIES]
    return render_caption(slots, choice, order), render_caption(slots, choice, heard)


def _read(text: str) -> tuple[dict[str, object], dict[str, list[str]]]:
    """(the quoted first line and salient words, every closed-vocabulary value stated per slot
    in the order stated): what `parse_caption` and `contradicted_slots` read."""
    slots: dict[str, object] = {}
    # Quotes are kept as written (scoring normalises both sides); their word count decides.
    quoted = [q.strip() for q in _QUOTED.findall(text) if normalize_phrase(q)]
    phrases = [q for q in quoted if " " in normalize_phrase(q)]
    singles = [q for q in quoted if " " not in normalize_phrase(q)]
    if phrases:
        slots["first_line"] = phrases[0]
    outside = _QUOTED.sub(lambda m: " " * len(m.group()), text)
    found = next((m for p in _WORDS_SENTENCES if (m := p.search(outside))), None)
    if found:
        singles = list(found.groups())
        for i in range(1, 4):  # blank the words, keep the sentence's theme
            start, end = found.span(i)
            outside = outside[:start] + " " * (end - start) + outside[end:]
    if singles:
        slots["salient_words"] = list(dict.fromkeys(singles))
    stated: dict[str, list[str]] = {}
    keys = list(dict.fromkeys(m.group(1) for m in _KEY.finditer(outside)))
    if keys:
        stated["key"] = keys
    lowered = outside.lower()
    for slot in ALL_SLOTS:
        vocab = VOCABULARIES.get(slot)
        if vocab is None or slot == "key":
            continue
        hits = []
        for value in vocab:
            m = re.search(r"\b" + re.escape(value.lower()) + r"\b", lowered)
            if m:
                hits.append((m.start(), value))
        if hits:
            stated[slot] = [value for _, value in sorted(hits)]
    return slots, stated


def parse_caption(text: str) -> dict[str, object]:
    """The slot values a caption states; slots it does not state are absent.

    A quoted piece of several words is the first line; the salient words are those at the word
    places of a "words" sentence (or single quoted words, as benchmarks built before 2026-12
    wrote them). Everything else is matched against the closed vocabularies outside the quotes
    and the word places, so a lyric word such as "piano" is never read as an instrument; a
    slot given two values reads as the first (`contradicted_slots` lists such slots).
    """
    slots, stated = _read(text)
    slots.update({slot: values[0] for slot, values in stated.items()})
    return slots


def begins_words_sentence(text: str) -> bool:
    """Whether the caption begins one of the "words" sentences (read or not by the parser)."""
    return any(opening in text for opening in _WORDS_OPENINGS)


def contradicted_slots(text: str) -> list[str]:
    """The slots a caption gives two or more different values ("... it is about faith. ... a
    song of love."): scoring counts them wrong whichever value comes first."""
    return [slot for slot, values in _read(text)[1].items() if len(values) > 1]
