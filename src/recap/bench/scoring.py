"""Attribute accuracy: parse generated captions back into slots and compare with the truth."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from recap.bench.facts import SALIENT_WORDS, normalize_phrase, words
from recap.bench.slots import AUDIO_SLOTS, INTERPRETIVE_SLOTS, LYRICS_SLOTS
from recap.bench.templates import begins_words_sentence, contradicted_slots, parse_caption
from recap.utils import RecapError

EXACT_SLOTS = tuple(
    s for s in AUDIO_SLOTS + LYRICS_SLOTS + INTERPRETIVE_SLOTS if s != "salient_words"
)


def read_songs(data_dir: str | Path, need_truth: bool = False) -> dict[str, dict]:
    """song_id -> the benchmark's record of the song (split, work_id, source, truth, ...), in
    file order, from DATA_DIR/songs.jsonl: the one reader of that file. `need_truth`: a record
    without its truth is an error."""
    path = Path(data_dir) / "songs.jsonl"
    if not path.is_file():
        raise RecapError(
            f"{path} not found: is {data_dir} a benchmark built by `recap bench build`?"
        )
    songs: dict[str, dict] = {}
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if need_truth or "truth" in record:
                    record["truth"] = dict(record["truth"])
                songs[str(record["song_id"])] = record
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise RecapError(f"{path}:{n}: not a song record ({err})") from err
    return songs


def load_truth(data_dir: str | Path) -> dict[str, dict]:
    """song_id -> the true value of every slot, from DATA_DIR/songs.jsonl."""
    return {sid: song["truth"] for sid, song in read_songs(data_dir, need_truth=True).items()}


def _same(slot: str, predicted: object, true: object) -> bool:
    if predicted is None:
        return False
    if slot == "first_line":
        return normalize_phrase(str(predicted)) == normalize_phrase(str(true))
    return str(predicted) == str(true)


FIRST_LINE_MISSES = ("not_stated", "too_long", "too_short", "other_words")


def first_line_miss(predicted: object, true: object) -> str | None:
    """Why a quoted first line is wrong, or None when it is right: not stated; the true words
    and more (`too_long`: the quote ran on into the lyrics); only the true line's first words
    (`too_short`); anything else (`other_words`)."""
    if predicted is None or not str(predicted).strip():
        return "not_stated"
    said, wanted = words(str(predicted)), words(str(true))  # as normalize_phrase compares them
    if said == wanted:
        return None
    if said[: len(wanted)] == wanted:
        return "too_long"
    if said and wanted[: len(said)] == said:
        return "too_short"
    return "other_words"


SALIENT_WORD_MISSES = ("not_stated", "unreadable", "repeated", "other_words")


def salient_words_miss(caption: str, said: set[str], wanted: set[str]) -> str | None:
    """Why a caption's salient words (`said`, as `normalize_phrase` writes them; empty when the
    parser found none) are not the true ones (`wanted`, likewise), or None when they are: no
    "words" sentence (`not_stated`); one the parser cannot read, most often two words run
    together without a comma (`unreadable`); a list naming one word twice (`repeated`);
    three different words, some of them wrong (`other_words`)."""
    if not said:
        return "unreadable" if begins_words_sentence(caption) else "not_stated"
    if said == wanted:
        return None
    return "repeated" if len(said) < SALIENT_WORDS else "other_words"


def score_captions(predictions: Sequence[str], truths: Sequence[Mapping[str, object]]) -> dict:
    """Per-slot accuracy (a slot the caption does not state, or states with two different values,
    counts as wrong), micro precision / recall / F1 of the salient words, and the means over
    audio and lyrics slots (the lyrics mean counts salient-word F1 as that slot's score).
    `first_line_misses` counts the wrong first lines by `first_line_miss`'s reason: a quote's
    length and its words fail differently; `salient_word_misses` the wrong word lists by
    `salient_words_miss`'s. `contradicted` counts, per slot, the captions that
    give it two values (`contradicting_captions`: those with any such slot)."""
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} predictions for {len(truths)} truths")
    n = len(predictions)
    correct = dict.fromkeys(EXACT_SLOTS, 0)
    misses = dict.fromkeys(FIRST_LINE_MISSES, 0)
    word_misses = dict.fromkeys(SALIENT_WORD_MISSES, 0)
    contradicted = dict.fromkeys(EXACT_SLOTS, 0)
    contradicting = 0
    tp = n_pred = n_true = 0
    for caption, truth in zip(predictions, truths):
        parsed = parse_caption(caption)
        both_ways = set(contradicted_slots(caption))
        contradicting += bool(both_ways)
        if truth.get("first_line"):
            miss = first_line_miss(parsed.get("first_line"), truth["first_line"])
            if miss:
                misses[miss] += 1
        for slot in EXACT_SLOTS:
            if slot in both_ways:
                contradicted[slot] += 1
            else:
                correct[slot] += _same(slot, parsed.get(slot), truth.get(slot))
        pred_words = {normalize_phrase(str(w)) for w in parsed.get("salient_words", ())}  # type: ignore[union-attr]
        true_words = {normalize_phrase(str(w)) for w in truth.get("salient_words", ())}  # type: ignore[union-attr]
        if true_words:
            word_miss = salient_words_miss(caption, pred_words, true_words)
            if word_miss:
                word_misses[word_miss] += 1
        tp += len(pred_words & true_words)
        n_pred += len(pred_words)
        n_true += len(true_words)
    acc = {slot: (correct[slot] / n if n else 0.0) for slot in EXACT_SLOTS}
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    audio = [acc[s] for s in AUDIO_SLOTS]
    lyrics = [f1 if s == "salient_words" else acc[s] for s in LYRICS_SLOTS]
    return {
        "n": n,
        "accuracy": acc,
        "first_line_misses": misses,
        "salient_word_misses": word_misses,
        "contradicted": contradicted,
        "contradicting_captions": contradicting,
        "salient_words": {"precision": precision, "recall": recall, "f1": f1},
        "audio_mean": sum(audio) / len(audio),
        "lyrics_mean": sum(lyrics) / len(lyrics),
    }
