"""Quote-constrained decoding: what a caption quotes is the song's own words."""

from __future__ import annotations

import re

import pytest
import torch

from recap.bench.templates import parse_caption
from recap.inference.generate import DecodeSettings
from recap.inference.quotes import (
    QuoteFromLyrics,
    QuoteVocabulary,
    byte_level_alphabet,
    keep_only,
    token_bytes,
)
from recap.models.tokenizer import train_bpe_tokenizer
from recap.utils import RecapError

LYRICS = [
    "Meine Seel’ erhebt den Herren,\nund mein Geist freuet sich Gottes",
    "O Ewigkeit, du Donnerwort, o Schwert, das durch die Seele bohrt",
]
CAPTIONS = [
    'The German text begins "Meine Seel’ erhebt den". A harp supports a choir.',
    'Sung in German, it opens with "O Ewigkeit, du Donnerwort". An oboe leads.',
    "The song keeps returning to Seel, Herren and Gottes: it is about faith.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer((LYRICS + CAPTIONS) * 4, vocab_size=400)


def test_the_byte_table_covers_every_byte_once():
    table = byte_level_alphabet()
    assert sorted(table.values()) == list(range(256))
    assert table["!"] == ord("!") and table["Ġ"] == ord(" ")  # the space of GPT-2's vocabulary


def test_token_bytes_spell_what_the_tokenizer_decodes(tokenizer):
    table = token_bytes(tokenizer)
    for text in LYRICS + CAPTIONS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert b"".join(table[i] for i in ids).decode("utf-8") == text
    assert all(table[i] == b"" for i in tokenizer.all_special_ids)


def test_a_vocabulary_that_is_not_byte_level_is_refused(tokenizer):
    class WordPieces:
        all_special_ids = [0]

        def get_vocab(self):
            return {"[PAD]": 0, "song": 1, "##s": 2}

    with pytest.raises(RecapError, match="byte-level BPE"):
        token_bytes(WordPieces())


def _quote_after(tokenizer, song: int, prefix: str, rng: torch.Generator, steps: int = 40):
    """Decode greedily from random scores under the constraint until the quote closes."""
    table = token_bytes(tokenizer)
    processor = QuoteFromLyrics(QuoteVocabulary(tokenizer), LYRICS, rows_per_song=1)
    ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    for _ in range(steps):
        batch = torch.full((2, len(ids)), tokenizer.pad_token_id)
        batch[song] = torch.tensor(ids)
        scores = torch.randn(2, len(table), generator=rng)
        ids.append(int(processor(batch, scores)[song].argmax()))
        text = b"".join(table[i] for i in ids).decode("utf-8", errors="replace")
        if text.count('"') == 2:
            return text
    return b"".join(table[i] for i in ids).decode("utf-8", errors="replace")


def test_a_constrained_quote_is_the_songs_own_words_ending_at_a_word(tokenizer):
    rng = torch.Generator().manual_seed(0)
    for trial in range(24):
        song = trial % 2
        text = _quote_after(tokenizer, song, 'It opens with "', rng)
        quoted = re.search(r'"([^"]*)"', text)
        assert quoted, text  # random scores, yet the quote closes within 40 tokens
        piece = quoted.group(1)
        flat = " ".join(LYRICS[song].split())
        at = flat.find(piece)
        assert piece and at >= 0, (piece, flat)
        # ...begins at a word and never stops inside one (’ belongs to its word).
        assert at == 0 or not flat[at - 1].isalnum()
        rest = flat[at + len(piece) :]
        assert rest == "" or rest[0] in " ,." or rest.startswith(", ")


def test_the_quote_may_not_close_inside_a_word_nor_before_its_apostrophe(tokenizer):
    table = token_bytes(tokenizer)
    processor = QuoteFromLyrics(QuoteVocabulary(tokenizer), LYRICS, rows_per_song=1)
    closing = [i for i, piece in enumerate(table) if piece == b'"']
    assert closing
    for prefix, may_close in (
        ('begins "Meine Se', False),
        ('begins "Meine Seel', False),  # "Seel’": the apostrophe is part of the word
        ('begins "Meine Seel’', True),
        ('begins "Meine Seel’ erhebt den Herren', True),  # before the comma
        ('begins "Meine Seel’ erhebt den Herren,', True),
    ):
        ids = torch.tensor([tokenizer(prefix, add_special_tokens=False)["input_ids"]])
        scores = processor(ids, torch.zeros(1, len(table)))
        assert bool(torch.isfinite(scores[0, closing]).all()) == may_close, prefix


def test_outside_quotes_and_without_lyrics_nothing_is_forced(tokenizer):
    table = token_bytes(tokenizer)
    processor = QuoteFromLyrics(QuoteVocabulary(tokenizer), ["", LYRICS[0]], rows_per_song=2)
    free = torch.tensor([tokenizer('The "Meine" text', add_special_tokens=False)["input_ids"]] * 4)
    scores = torch.randn(4, len(table))
    assert torch.equal(processor(free, scores.clone()), scores)
    # No lyrics (an audio-only caption): an opened quote can only close.
    opened = torch.tensor([tokenizer('The text begins "', add_special_tokens=False)["input_ids"]])
    out = processor(opened, torch.zeros(1, len(table)))
    finite = torch.isfinite(out[0]).nonzero().flatten().tolist()
    assert finite and all(b'"' in table[i] for i in finite)


def test_the_setting_is_checked_named_and_reaches_the_command_line():
    assert DecodeSettings(quote_lyrics=True).tag() == "beam4-quotes"
    assert DecodeSettings().tag() == "beam4"
    with pytest.raises(RecapError, match="quote_lyrics"):
        DecodeSettings(quote_lyrics="yes").check()
    import argparse

    from recap.cli.flags import add_decode_arguments, decode_from_args

    parser = argparse.ArgumentParser()
    add_decode_arguments(parser)
    assert decode_from_args(parser.parse_args(["--quote-lyrics"])).quote_lyrics is True
    assert decode_from_args(parser.parse_args([])).quote_lyrics is False


class _OpenQuoteAt(torch.nn.Module):
    """Forces `"` as the caption's `at`-th token (an untrained model seldom opens a quote)."""

    def __init__(self, quote_id: int, at: int) -> None:
        super().__init__()
        self.quote_id, self.at = quote_id, at

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] == self.at:
            forced = torch.full_like(scores, float("-inf"))
            forced[:, self.quote_id] = 0.0
            return forced
        return scores


def test_beam_search_quotes_each_song_from_its_own_lyrics(model_dir, one_thread):
    from transformers import LogitsProcessorList

    from recap.inference.generate import generate_ids, load_model_and_tokenizer

    model, tok, _ = load_model_and_tokenizer(model_dir, device="cpu")
    lyrics = ["alpha beta gamma delta epsilon", "river sea stone river hill", "one two three"]
    enc = tok(lyrics, padding=True, return_tensors="pt")
    with torch.inference_mode():
        music = model.music_sequence(
            waveform=torch.randn(3, 240_000, generator=torch.Generator().manual_seed(0))
        )  # (B, M, D)
    quote = tok.convert_tokens_to_ids('"')
    processors = LogitsProcessorList(
        [_OpenQuoteAt(quote, at=4), QuoteFromLyrics(QuoteVocabulary(tok), lyrics, rows_per_song=3)]
    )
    ids = generate_ids(
        model, enc["input_ids"], enc["attention_mask"], music_embeds=music, num_beams=3,
        max_new_tokens=20, logits_processor=processors, no_repeat_ngram_size=0,
    )  # fmt: skip
    for text, song in zip(tok.batch_decode(ids, skip_special_tokens=True), lyrics):
        assert text.count('"') >= 1, text
        piece = text.split('"')[1]
        assert piece and piece in song, (piece, song)  # its own song, never another's


def test_the_salient_words_are_read_whatever_ends_their_sentence():
    # The theme after the words is its own slot; a caption that names the words and ends the
    # sentence in another wording still states them.
    parsed = parse_caption("The song keeps returning to Seel, erhebt and Herren, speak of nature.")
    assert parsed["salient_words"] == ["Seel", "erhebt", "Herren"]
    assert parsed["theme"] == "nature"
    parsed = parse_caption("Its key words, Seel’s, Licht and Herrenhaus: it is about faith.")
    assert parsed["salient_words"] == ["Seel’s", "Licht", "Herrenhaus"]
    assert "salient_words" not in parse_caption("The song keeps returning to faith.")


def test_keep_only_masks_the_listed_rows_and_spares_a_row_with_nothing_left():
    inf = float("-inf")
    scores = torch.tensor(
        [
            [0.5, 1.0, 2.0, 3.0],  # restricted to {1, 3}
            [0.1, 0.2, 0.3, 0.4],  # not listed: untouched
            [inf, inf, 1.0, 2.0],  # its allowed {0, 1} are banned already: left as it is
        ]
    )
    out = keep_only(scores.clone(), {0: [1, 3], 2: torch.tensor([0, 1])})
    assert out[0].tolist() == [inf, 1.0, inf, 3.0]
    assert torch.equal(out[1], scores[1])
    assert torch.equal(out[2], scores[2])
    assert keep_only(scores, {}) is scores
