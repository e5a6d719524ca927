"""Known-words decoding: every word of a caption is the training captions' or the song's own."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from recap.inference.generate import DecodeSettings
from recap.inference.quotes import token_bytes
from recap.inference.words import (
    CAPTION_WORDS_NAME,
    WORD,
    KnownWords,
    WordVocabulary,
    caption_vocabulary,
    load_caption_words,
    save_caption_words,
)
from recap.models.tokenizer import train_bpe_tokenizer
from recap.utils import RecapError

LYRICS = [
    "Meine Seel’ erhebt den Herren,\nund mein Geist freuet sich Gottes",
    "O Ewigkeit, du Donnerwort, o Schwert, das durch die Seele bohrt",
]
CAPTIONS = [
    'The German text begins "Meine Seel’ erhebt den". A harp supports a choir.',
    "The tempo is moderate, in the key of G. It is a serene reflection on faith.",
    "The song keeps returning to Seel, Herren and Gottes: it is about faith.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer((LYRICS + CAPTIONS) * 4, vocab_size=400)


def _words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def test_the_vocabulary_is_the_lowercased_words_and_round_trips(tmp_path):
    words = caption_vocabulary(["The key of G-flat, it's", "the KEY"])
    assert words == ["flat", "g", "it", "key", "of", "s", "the"]
    save_caption_words(tmp_path, words)
    assert load_caption_words(tmp_path) == frozenset(words)
    assert load_caption_words(tmp_path / "elsewhere") is None  # a model without the file


def test_a_bad_or_huge_words_file_is_refused(tmp_path, monkeypatch):
    (tmp_path / CAPTION_WORDS_NAME).write_text(json.dumps({"the": 1}), encoding="utf-8")
    with pytest.raises(RecapError, match="JSON list of words"):
        load_caption_words(tmp_path)
    (tmp_path / CAPTION_WORDS_NAME).write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(RecapError, match="JSON list of words"):
        load_caption_words(tmp_path)
    monkeypatch.setattr("recap.inference.words.MAX_CAPTION_WORDS_BYTES", 3)
    with pytest.raises(RecapError, match="more than the 3 allowed"):
        load_caption_words(tmp_path)


def _decode(tokenizer, processor, prefix: str, rng: torch.Generator, steps: int = 30) -> str:
    """Greedy decoding from random scores under the constraint, the song in row 1 of 2."""
    table = token_bytes(tokenizer)
    ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    for _ in range(steps):
        batch = torch.full((2, len(ids)), tokenizer.pad_token_id)
        batch[1] = torch.tensor(ids)
        scores = torch.randn(2, len(table), generator=rng)
        scores[:, tokenizer.eos_token_id] = float("-inf")  # keep writing
        ids.append(int(processor(batch, scores)[1].argmax()))
    return b"".join(table[i] for i in ids).decode("utf-8", errors="ignore")


def test_random_scores_still_write_only_known_words(tokenizer):
    known = frozenset(caption_vocabulary(CAPTIONS))
    processor = KnownWords(WordVocabulary(tokenizer), known, LYRICS, rows_per_song=1)
    allowed = known | set(_words(LYRICS[1]))
    rng = torch.Generator().manual_seed(0)
    for trial in range(12):
        text = _decode(tokenizer, processor, "The song keeps returning to", rng)
        finished = _words(text)[:-1]  # the last word may be unfinished: it is a known prefix
        assert all(w in allowed for w in finished), (trial, text)
        assert any(w.startswith(_words(text)[-1]) for w in allowed), (trial, text)
    # Without the constraint the same random scores spell words no one wrote.
    free = _decode(tokenizer, lambda ids, scores: scores, "The song keeps returning to", rng)
    assert not all(w in allowed for w in _words(free)[:-1]), free


def test_a_word_of_the_other_song_is_not_allowed(tokenizer):
    known = frozenset(caption_vocabulary(CAPTIONS))
    vocab = WordVocabulary(tokenizer)
    processor = KnownWords(vocab, known, LYRICS, rows_per_song=1)
    ids = tokenizer("It speaks of", add_special_tokens=False)["input_ids"]
    batch = torch.tensor([ids, ids])
    out = processor(batch, torch.zeros(2, len(vocab.table)))
    ewig = tokenizer(" Ewigkeit", add_special_tokens=False)["input_ids"][0]
    assert torch.isinf(out[0, ewig]) and torch.isfinite(out[1, ewig])  # song 0 lacks "Ewigkeit"


def test_the_setting_is_checked_named_and_reaches_the_command_line():
    assert DecodeSettings(quote_lyrics=True, known_words=True).tag() == "beam4-quotes-words"
    with pytest.raises(RecapError, match="known_words"):
        DecodeSettings(known_words=1).check()
    import argparse

    from recap.cli.flags import add_decode_arguments, decode_from_args

    parser = argparse.ArgumentParser()
    add_decode_arguments(parser)
    assert decode_from_args(parser.parse_args(["--known-words"])).known_words is True
    assert decode_from_args(parser.parse_args([])).known_words is False


def test_a_trained_model_keeps_its_caption_words_and_decodes_with_them(
    model_dir, one_thread, tmp_path
):
    from support import CAPTIONS

    from recap.inference.generate import generate_texts, load_model_and_tokenizer
    from recap.inference.words import load_caption_words

    words = load_caption_words(model_dir)  # saved with the model, as `recap train` does
    assert words == frozenset(caption_vocabulary(CAPTIONS.values()))
    model, tok, _ = load_model_and_tokenizer(model_dir, device="cpu")
    lyrics = ["alpha beta gamma delta epsilon", "river sea stone river hill"]
    ids = [tok(t)["input_ids"] for t in lyrics]
    with torch.inference_mode():
        music = model.music_sequence(
            waveform=torch.randn(2, 240_000, generator=torch.Generator().manual_seed(0))
        )  # (B, M, D)
    settings = DecodeSettings(num_beams=2, max_new_tokens=24, known_words=True)
    for text, song in zip(generate_texts(model, tok, ids, list(music), settings), lyrics):
        assert text and all(w in words | set(_words(song)) for w in _words(text)), text
    # A model folder from before the file existed: a clear error, not free decoding.
    old = tmp_path / "old"
    shutil.copytree(model_dir, old)
    (old / CAPTION_WORDS_NAME).unlink()
    model, tok, _ = load_model_and_tokenizer(old, device="cpu")
    with pytest.raises(RecapError, match=CAPTION_WORDS_NAME):
        generate_texts(model, tok, ids, list(music), settings)
