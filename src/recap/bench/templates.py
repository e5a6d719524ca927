"""Caption templates, and the parser that reads a caption back into slot values.

A caption is one sentence from each sentence family, in a shuffled order. Every family has several
wordings; each slot value is either a word of a closed vocabulary that no template uses elsewhere,
or a quoted piece of the lyrics, so `parse_caption` finds the slots whatever the order or wording.
"""

from __future__ import annotations

import random
import re

from recap.bench.facts import normalize_phrase
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
        'Words like "{w1}", "{w2}" and "{w3}" point to {theme}.',
        'Its key words, "{w1}", "{w2}" and "{w3}", speak of {theme}.',
        'The song keeps returning to "{w1}", "{w2}" and "{w3}": it is about {theme}.',
    ),
    "reading": (
        "Together the music makes it a {mood} song about {theme}.",
        "Heard with its words, it is a {mood} reflection on {theme}.",
        "The {mood} sound turns this into a song of {theme}.",
    ),
}
FAMILIES: tuple[str, ...] = tuple(SENTENCES)

_ARTICLE_AN = {"oboe", "organ"}
_PLURAL = {"strings"}
_QUOTED = re.compile(r'"([^"]*)"')
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


def random_caption(slots: dict[str, object], rng: random.Random) -> str:
    """A caption with a random wording per family and a random family order (the reading last
    half of the time, as a closing interpretation)."""
    choice = {family: rng.randrange(len(SENTENCES[family])) for family in FAMILIES}
    order = list(FAMILIES)
    rng.shuffle(order)
    if rng.random() < 0.5:
        order.remove("reading")
        order.append("reading")
    return render_caption(slots, choice, order)


def parse_caption(text: str) -> dict[str, object]:
    """The slot values a caption states; slots it does not state are absent.

    Quoted pieces are lyrics: the one with several words is the first line, single words are the
    salient words. Everything else is matched against the closed vocabularies outside the quotes,
    so a lyric word such as "piano" is never read as an instrument.
    """
    slots: dict[str, object] = {}
    # Quotes are kept as written (scoring normalises both sides); their word count decides.
    quoted = [q.strip() for q in _QUOTED.findall(text) if normalize_phrase(q)]
    phrases = [q for q in quoted if " " in normalize_phrase(q)]
    singles = [q for q in quoted if " " not in normalize_phrase(q)]
    if phrases:
        slots["first_line"] = phrases[0]
    if singles:
        slots["salient_words"] = list(dict.fromkeys(singles))
    outside = _QUOTED.sub(" ", text)
    key = _KEY.search(outside)
    if key:
        slots["key"] = key.group(1)
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
            slots[slot] = min(hits)[1]  # the first one stated
    return slots
