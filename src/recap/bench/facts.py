"""Lyrics-only facts: language, first line, salient words and theme, from a small lexicon.

Everything here reads only the text, so these slots cannot be recovered from the audio.
The lexicon (stopwords and theme stems in five languages) lives in `lexicon/` beside this file.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import cache
from importlib import resources

from recap.bench.slots import LANGUAGES, THEMES

FIRST_LINE_WORDS = 4  # the "first line" is the text's first few words: a lyric has no line breaks
SALIENT_WORDS = 3
# Captions quote the lyrics as written (case, apostrophes) so that stating them is copying the
# tokens the model reads; a lower-cased quote would ask a captioner to learn a case mapping for
# every word it has never seen. Scoring compares both sides through `normalize_phrase`.
WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?", re.UNICODE)


@dataclass(frozen=True)
class LyricsFacts:
    language: str
    first_line: str
    salient_words: list[str]
    theme: str

    def to_dict(self) -> dict[str, object]:
        return {
            "language": self.language,
            "first_line": self.first_line,
            "salient_words": list(self.salient_words),
            "theme": self.theme,
        }


@cache
def _lexicon(name: str) -> dict:
    return json.loads(
        resources.files("recap.bench").joinpath("lexicon").joinpath(name).read_text("utf-8")
    )


def words(text: str) -> list[str]:
    """Lower-cased words (letters only; an elision like "l'amour" stays one token)."""
    return [_lower(m.group()) for m in word_matches(text)]


def _lower(word: str) -> str:
    return word.lower().replace("’", "'")


def word_matches(text: str) -> list[re.Match[str]]:
    return list(WORD.finditer(unicodedata.normalize("NFC", text)))


def opening(text: str, n: int = FIRST_LINE_WORDS) -> str:
    """The text's first `n` words as written, punctuation between them included (line breaks
    become spaces): what a caption quotes as the first line."""
    found = word_matches(text)[:n]
    if not found:
        return ""
    span = found[0].string[found[0].start() : found[-1].end()]
    return " ".join(span.replace('"', " ").split())  # a quote inside would end the caption's


def normalize_phrase(text: str) -> str:
    """Words joined by single spaces: the form first lines are compared in."""
    return " ".join(words(text))


def detect_language(tokens: list[str]) -> str:
    """The language whose stopword list covers the most tokens (ties: the order of LANGUAGES)."""
    stop = _lexicon("stopwords.json")
    counts = {lang: sum(t in set(stop[lang]) for t in tokens) for lang in LANGUAGES}
    return max(LANGUAGES, key=lambda lang: counts[lang])


def _matches(token: str, stem: str) -> bool:
    # Short stems only match whole words ("sin" must not match "sing").
    return token == stem or (len(stem) >= 4 and token.startswith(stem))


def theme_counts(tokens: list[str], language: str) -> dict[str, int]:
    """Per theme, how many tokens match one of its keyword stems in the text's own language."""
    themes = _lexicon("themes.json")
    return {
        theme: sum(any(_matches(t, s) for s in themes[theme][language]) for t in tokens)
        for theme in THEMES
    }


def detect_theme(tokens: list[str], language: str) -> str:
    """The theme with the most keyword hits in the text's own language (ties: order of THEMES)."""
    counts = theme_counts(tokens, language)
    return max(THEMES, key=lambda theme: counts[theme])


def content_words(tokens: list[str], language: str) -> list[str]:
    """The tokens that can be salient: not stopwords, at least 4 letters, no elision."""
    stop = set(_lexicon("stopwords.json")[language])
    return [t for t in tokens if t not in stop and len(t) >= 4 and "'" not in t]


def salient_words(tokens: list[str], language: str, k: int = SALIENT_WORDS) -> list[str]:
    """The k most frequent content words (not stopwords, at least 4 letters); ties by first use."""
    content = content_words(tokens, language)
    counts = Counter(content)
    first = {}
    for i, t in enumerate(content):
        first.setdefault(t, i)
    return sorted(counts, key=lambda t: (-counts[t], first[t]))[:k]


def lyrics_facts(text: str) -> LyricsFacts | None:
    """The lyrics slots of one text, or None when it has too few words to state them."""
    found = word_matches(text)
    tokens = [_lower(m.group()) for m in found]
    if len(tokens) < FIRST_LINE_WORDS + SALIENT_WORDS:
        return None
    language = detect_language(tokens)
    salient = salient_words(tokens, language)
    if len(salient) < SALIENT_WORDS:
        return None
    written: dict[str, str] = {}
    for low, m in zip(tokens, found):
        written.setdefault(low, m.group())  # the form of its first occurrence
    return LyricsFacts(
        language=language,
        first_line=opening(text),
        salient_words=[written[w] for w in salient],
        theme=detect_theme(tokens, language),
    )
