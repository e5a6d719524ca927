"""Grounding measures: does a captioner read its lyrics (issue 11)?"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from support import CAPTIONS, RATE, SONGS, tone

from recap.bench.slots import ALL_SLOTS, AUDIO_SLOTS, LYRICS_SLOTS, VOCABULARIES
from recap.bench.templates import FAMILIES, render_caption
from recap.data.songs import Row
from recap.evaluation.diagnose import (
    diagnose_examples,
    distinct_captions,
    grounding,
    partner_pairing,
    swap_test,
)
from recap.models.model import RecapModel
from recap.training.collate import tokenize_rows


def _music(model: RecapModel) -> dict:
    """song id -> (M, D) sequence of the model's own frozen encoder, as the cache would hold."""
    from recap.data.audio import AudioConfig, excerpt_from_array

    waves = torch.from_numpy(
        np.stack([excerpt_from_array(tone(f), RATE, AudioConfig()).waveform for _, f, _ in SONGS])
    )  # (S, 240000)
    with torch.no_grad():
        seqs = model.music_encoder(waves).numpy()  # (S, M, D)
    return {sid: seq for (sid, _, _), seq in zip(SONGS, seqs)}


def _examples(model: RecapModel) -> list:
    rows = [Row(sid, lyr.replace("\n", ";"), CAPTIONS[sid]) for sid, _, lyr in SONGS]
    cfg = model.config
    return tokenize_rows(rows, model.tokenizer, cfg.max_source_length, cfg.max_target_length)


def test_partner_pairing_pairs_other_texts_and_is_seeded():
    keys = ["a0", "a1", "b0", "b1", "c0"]
    texts = ["A", "A", "B", "B", "C"]  # two renderings of A and of B share their lyrics
    partner = partner_pairing(keys, texts, seed=3)
    assert all(texts[j] != texts[i] for i, j in enumerate(partner))
    assert partner == partner_pairing(keys, texts, seed=3)
    assert partner_pairing(["x", "y"], ["same", "same"]) == [0, 1]  # nothing to swap with


def test_trained_model_shows_a_positive_lyrics_gap(model_dir, one_thread):
    model = RecapModel.from_pretrained(model_dir).eval()
    result = diagnose_examples(model, _examples(model), music=_music(model))
    assert len(result["input_dependence"]) == model.config.encoder_layers + 1
    assert result["lyrics_gap"] > 0.5  # its captions name the song its lyrics belong to
    assert result["dependence_ratio"] > 0.1
    assert "audio_gap" in result


def _ignore_lyrics(model: RecapModel) -> None:
    """Make the encoder's output the same for every input: a collapsed lyrics encoder."""

    def constant(_module, _inputs, output):
        if isinstance(output, tuple):
            return (torch.zeros_like(output[0]), *output[1:])
        return torch.zeros_like(output)

    model.bart.get_encoder().layers[-1].register_forward_hook(constant)


def test_a_model_that_ignores_its_lyrics_fails_the_grounding_measures(model_dir, one_thread):
    model = RecapModel.from_pretrained(model_dir).eval()
    _ignore_lyrics(model)
    examples = _examples(model)
    music = _music(model)
    ids = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(e.lyrics_ids) for e in examples], batch_first=True, padding_value=1
    )
    same_music = torch.from_numpy(np.stack([music[SONGS[0][0]]] * len(SONGS)))  # (S, M, D)
    generated = model.generate(
        ids, (ids != 1).long(), music_embeds=same_music, num_beams=1, max_new_tokens=8
    )
    texts = model.tokenizer.batch_decode(generated, skip_special_tokens=True)
    captions = {(e.song_id, e.lyrics): t for e, t in zip(examples, texts)}
    rows = [Row(e.song_id, e.lyrics, e.caption) for e in examples]
    one = {sid: music[SONGS[0][0]] for sid in music}  # and deaf: one music for every song
    result = grounding(model, model.tokenizer, rows, captions, one, None, generate=None)
    assert result["distinct"]["captions"] == 1  # one caption for six songs
    assert result["distinct"]["rate"] == pytest.approx(1 / len(SONGS))
    assert result["diagnosis"]["dependence_ratio"] == 0.0
    assert abs(result["diagnosis"]["lyrics_gap"]) < 1e-6


def test_distinct_captions_counts_lyrics_for_a_model_that_does_not_listen():
    songs = [("a0", "A"), ("a1", "A"), ("b0", "B")]
    assert distinct_captions(songs, ["x", "x", "y"], listens=False)["rate"] == 1.0
    assert distinct_captions(songs, ["x", "x", "y"], listens=True)["rate"] == pytest.approx(2 / 3)


def test_apart_forgives_one_caption_for_inputs_with_the_same_facts():
    # Two verses of one hymn (same facts) and a third text with other facts.
    rng = random.Random(3)
    hymn, other = _truth(rng), _truth(rng)
    truths = {"v1": hymn, "v2": dict(hymn), "o": other}
    songs = [("v1", "verse one"), ("v2", "verse two"), ("o", "other text")]
    reader = distinct_captions(songs, ["x", "x", "y"], listens=False, truths=truths)
    assert reader["rate"] == pytest.approx(2 / 3)  # the raw count calls it a failure
    assert reader["apart"] == 1.0 and reader["fact_sets"] == 2
    blind = distinct_captions(songs, ["x", "x", "x"], listens=False, truths=truths)
    assert blind["apart"] == 0.0  # one caption for texts with other facts
    half = distinct_captions(songs, ["x", "y", "x"], listens=False, truths=truths)
    assert half["apart"] == pytest.approx(1 / 3)  # v2 stands apart; v1 and o collide


def _truth(rng: random.Random) -> dict:
    truth = {slot: rng.choice(VOCABULARIES[slot]) for slot in ALL_SLOTS if slot in VOCABULARIES}
    words = ["".join(rng.choice("klmnoprst") for _ in range(6)) for _ in range(7)]
    truth.update(first_line=" ".join(words[:4]), salient_words=words[4:])
    return truth


def test_swap_test_scores_audio_against_a_and_lyrics_against_b():
    rng = random.Random(0)
    truths = {"A": _truth(rng), "B": _truth(rng)}
    while truths["B"]["melody"] == truths["A"]["melody"]:
        truths["B"] = _truth(rng)
    songs = [("A", "lyrics of A"), ("B", "lyrics of B")]
    order = list(FAMILIES)
    choice = dict.fromkeys(FAMILIES, 0)

    def faithful(pairs):  # states the music's facts of the first song, the lyrics' of the second
        out = []
        for music_of, lyrics in pairs:
            lyrics_of = "A" if lyrics.endswith("A") else "B"
            stated = {**truths[lyrics_of], **{s: truths[music_of][s] for s in AUDIO_SLOTS}}
            stated["mood"] = truths[music_of]["mood"]
            out.append(render_caption(stated, choice, order))
        return out

    def reads_only_lyrics(pairs):  # the lyrics' song's own caption: deaf to the swapped audio
        return [
            render_caption(truths["A" if lyr.endswith("A") else "B"], choice, order)
            for _, lyr in pairs
        ]

    good = swap_test(songs, truths, faithful)
    assert good["n"] == 2 and good["audio_mean"] == 1.0 and good["lyrics_mean"] == 1.0
    deaf = swap_test(songs, truths, reads_only_lyrics)
    assert deaf["lyrics_mean"] == 1.0
    assert deaf["accuracy"]["melody"] == 0.0  # the melody is B's, the audio was A's
    assert set(LYRICS_SLOTS) <= set(good["accuracy"]) | {"salient_words"}


def test_audio_only_test_counts_captions_that_invent_lyrics_facts():
    from recap.bench.templates import AUDIO_FAMILIES
    from recap.evaluation.diagnose import audio_only_test

    rng = random.Random(1)
    truths = {"A": _truth(rng), "B": _truth(rng)}
    songs = [("A", "lyrics of A"), ("B", "lyrics of B")]
    choice = dict.fromkeys(FAMILIES, 0)

    def honest(pairs):  # only what the audio tells
        assert all(lyrics == "" for _, lyrics in pairs)  # the test gives no lyrics
        return [render_caption(truths[song], choice, AUDIO_FAMILIES) for song, _ in pairs]

    def inventive(pairs):  # the whole caption, a first line it cannot know included
        return [render_caption(truths[song], choice, FAMILIES) for song, _ in pairs]

    good = audio_only_test(songs, truths, honest)
    assert good["n"] == 2 and good["audio_mean"] == 1.0 and good["states_lyrics_facts"] == 0.0
    assert set(AUDIO_SLOTS) <= set(good["accuracy"])
    assert not set(LYRICS_SLOTS) & set(good["accuracy"])
    assert audio_only_test(songs, truths, inventive)["states_lyrics_facts"] == 1.0


def test_a_model_without_audio_looks_its_swap_captions_up():
    from recap.evaluation.diagnose import captions_by_lyrics

    asked = []

    def generate(pairs):
        asked.extend(pairs)
        return [f"about {lyrics}" for _, lyrics in pairs]

    captions = {("a", "rain"): "about rain", ("b", "sun"): "about sun"}
    lookup = captions_by_lyrics(captions, generate)
    # audio of a with lyrics of b: what it wrote for b, nothing decoded
    assert lookup([("a", "sun"), ("b", "rain")]) == ["about sun", "about rain"]
    assert asked == []
    # lyrics it never captioned are decoded once
    assert lookup([("a", "snow"), ("b", "snow")]) == ["about snow", "about snow"]
    assert asked == [("", "snow")]
