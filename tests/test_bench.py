"""The rendered-songs benchmark: templates and parser, scoring, and a tiny end-to-end build."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import random
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from recap.bench import (
    AUDIO_SLOTS,
    LYRICS_SLOTS,
    audio_tag_vocabulary,
    audio_tags,
    load_truth,
    parse_caption,
    score_captions,
)
from recap.bench.build import BuildConfig, build_benchmark, rng_for
from recap.bench.coupling import (
    BY_LANGUAGE,
    BY_LANGUAGE_TONE,
    COUPLING,
    TONE_WORDS,
    Rendering,
    coupled_rows,
    is_coupled,
    reading_features,
    theme_and_colour,
    tone,
    transpose_to,
)
from recap.bench.facts import lyrics_facts
from recap.bench.scoring import first_line_miss, salient_words_miss
from recap.bench.slots import (
    ALL_SLOTS,
    MELODY_INSTRUMENTS,
    TEMPO_CLASSES,
    THEMES,
    TONICS,
    VOCABULARIES,
    mood_for,
)
from recap.bench.templates import FAMILIES, SENTENCES, render_caption
from recap.utils import RecapError


def _random_slots(rng: random.Random) -> dict[str, object]:
    slots: dict[str, object] = {
        s: rng.choice(VOCABULARIES[s]) for s in ALL_SLOTS if s in VOCABULARIES
    }
    slots["mood"] = mood_for(str(slots["tempo"]))
    # Lyric words that collide with vocabulary words must not be read as slots.
    slots["first_line"] = rng.choice(
        ["piano e forte amor", "in the fast night", "o haupt voll blut"]
    )
    slots["salient_words"] = rng.sample(["organ", "key", "herz", "love", "slow", "nacht"], 3)
    return slots


def test_parser_recovers_every_template_in_any_order():
    rng = random.Random(0)
    wordings = [range(len(SENTENCES[f])) for f in FAMILIES]
    for combo in itertools.product(*wordings):
        choice = dict(zip(FAMILIES, combo))
        order = list(FAMILIES)
        rng.shuffle(order)
        slots = _random_slots(rng)
        caption = render_caption(slots, choice, order)
        assert parse_caption(caption) == slots, caption


def test_score_captions_counts_wrong_and_missing_slots():
    rng = random.Random(1)
    truths = [_random_slots(rng) for _ in range(4)]
    order = list(FAMILIES)
    perfect = [render_caption(t, dict.fromkeys(FAMILIES, 0), order) for t in truths]
    report = score_captions(perfect, truths)
    assert all(v == 1.0 for v in report["accuracy"].values())
    assert report["salient_words"]["f1"] == 1.0
    assert report["audio_mean"] == report["lyrics_mean"] == 1.0

    wrong = dict(truths[0])
    wrong["melody"] = next(v for v in VOCABULARIES["melody"] if v != truths[0]["melody"])
    preds = [render_caption(wrong, dict.fromkeys(FAMILIES, 1), order), "no facts at all"]
    report = score_captions(preds, truths[:2])
    assert report["accuracy"]["melody"] == 0.0
    assert report["accuracy"]["tempo"] == 0.5  # the empty caption states nothing
    assert report["salient_words"]["recall"] == 0.5
    assert report["salient_words"]["precision"] == 1.0
    assert report["audio_mean"] == pytest.approx(1.5 / 4)  # melody 0, three audio slots at 0.5
    assert report["lyrics_mean"] == pytest.approx((3 * 0.5 + 2 / 3) / 4)  # words F1 = 2/3
    assert report["first_line_misses"]["not_stated"] == 1


def test_first_line_misses_say_whether_the_quote_ran_on_or_stopped_short():
    true = "Meine Seel’ erhebt den"
    assert first_line_miss("meine seel' erhebt den", true) is None  # scoring normalises
    assert first_line_miss("Meine Seel’ erhebt den Herren", true) == "too_long"
    assert first_line_miss("Meine Seel’", true) == "too_short"
    assert first_line_miss("Nun danket alle Gott", true) == "other_words"
    assert first_line_miss(None, true) == "not_stated"
    truths = [{"first_line": true}] * 3
    captions = [f'The German text begins "{q}".' for q in ("Meine Seel’ erhebt den Herren", true)]
    report = score_captions([*captions, "no facts"], truths)
    assert report["accuracy"]["first_line"] == pytest.approx(1 / 3)
    assert report["first_line_misses"] == {
        "not_stated": 1,
        "too_long": 1,
        "too_short": 0,
        "other_words": 0,
    }


def test_lyrics_facts_language_and_theme():
    de = lyrics_facts("Nun danket alle Gott mit Herzen, Mund und Händen, der große Dinge tut, Gott")
    assert de is not None and de.language == "German" and de.theme == "faith"
    # Quoted as written, so that stating them is copying the tokens the model reads.
    assert de.first_line == "Nun danket alle Gott"
    assert de.salient_words[0] == "Gott"
    quoted = lyrics_facts('"Ah," she said:\nthe night, the night is deep and night falls')
    assert quoted is not None and quoted.first_line == "Ah, she said: the"
    fr = lyrics_facts("Mon amour, mon coeur, je t'aime, amour de la nuit et du coeur tendre")
    assert fr is not None and fr.language == "French" and fr.theme == "love"
    assert lyrics_facts("la la") is None


def test_audio_tags_cover_vocabulary():
    vocab = audio_tag_vocabulary()
    truth = _random_slots(random.Random(2))
    tags = audio_tags(truth)
    assert len(tags) == len(AUDIO_SLOTS) and set(tags) <= set(vocab)
    assert len(vocab) == len(set(vocab)) == sum(len(VOCABULARIES[s]) for s in AUDIO_SLOTS)
    assert not set(LYRICS_SLOTS) & set(AUDIO_SLOTS)


# --- end to end ------------------------------------------------------------------------------

CHORALES = ("bach/bwv10.7.mxl", "bach/bwv11.6.mxl", "bach/bwv101.7.mxl", "bach/bwv102.7.mxl")


@pytest.fixture(scope="module")
def score_dir(tmp_path_factory) -> Path:
    from music21 import corpus, note, stream

    root = tmp_path_factory.mktemp("scores")
    for rel in CHORALES:
        shutil.copy(corpus.getWork(rel.split("/")[1].rsplit(".", 1)[0]), root / rel.split("/")[1])
    (root / "broken.mxl").write_bytes(b"this is not a zip file")
    s = stream.Stream([note.Note("C4", quarterLength=1) for _ in range(8)])
    s.write("musicxml", fp=root / "nolyrics.musicxml")
    return root


# The fixtures below state the whole score's key, as builds did before `key_seconds`: the digest
# and the coupling tests compare with what those builds wrote.
WHOLE_SCORE_KEY = 0.0


def _build(
    src: Path, out: Path, seed: int = 3, key_seconds: float = WHOLE_SCORE_KEY
) -> BuildConfig:
    cfg = BuildConfig(
        source=str(src), out=str(out), renders_per_song=2, comments_per_render=6,
        seed=seed, workers=1, seconds=3.0, key_seconds=key_seconds,
    )  # fmt: skip
    build_benchmark(cfg, progress=False)
    return cfg


@pytest.fixture(scope="module")
def built(score_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    _build(score_dir, out)
    return out


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def test_build_format(built):
    rows, songs = _rows(built / "dataset.jsonl"), _rows(built / "songs.jsonl")
    assert len(songs) == 2 * len(CHORALES) and len(rows) == 6 * len(songs)
    for row in rows:
        assert isinstance(row["music4all_id"], str) and isinstance(row["votes"], int)
        assert row["split"] in ("train", "val", "test") and row["lyrics"] and row["comment"]
        assert set(row["slots"]) == set(row["slots_correct"]) == set(ALL_SLOTS)
        assert parse_caption(row["comment"]) == row["slots"]  # the caption says what it stores
    truth = load_truth(built)
    assert set(truth) == {s["song_id"] for s in songs}
    for song in songs:
        audio, sr = sf.read(built / "audios" / f"{song['song_id']}.mp3")
        assert sr == 44100 and abs(len(audio) / sr - 3.0) < 0.1
        assert np.abs(audio).max() > 0.1
        assert set(audio_tags(song["truth"])) <= set(audio_tag_vocabulary())


def test_split_by_work_and_votes(built):
    rows = _rows(built / "dataset.jsonl")
    splits_of_work: dict[str, set] = {}
    for row in rows:
        splits_of_work.setdefault(row["work_id"], set()).add(row["split"])
        ok = all(row["slots_correct"].values())
        assert (row["votes"] < 0) == (not ok)  # wrong ones are down-voted, and only those
    assert all(len(s) == 1 for s in splits_of_work.values())
    assert {"train", "val", "test"} <= set().union(*splits_of_work.values())
    votes = [r["votes"] for r in rows]
    full, not_negative, positive = len(votes), sum(v >= 0 for v in votes), sum(v > 0 for v in votes)
    assert full > not_negative > positive > 0  # the three variants differ


def test_bad_inputs_are_reported(built):
    report = json.loads((built / "skipped.json").read_text())
    reasons = {Path(i["item"]).name: i["reason"] for i in report["items"]}
    assert report["skipped"] == 2
    assert reasons["broken.mxl"].startswith("cannot parse")
    assert reasons["nolyrics.musicxml"] == "no lyrics"


def test_same_seed_same_dataset(score_dir, built, tmp_path):
    _build(score_dir, tmp_path)
    assert (tmp_path / "dataset.jsonl").read_bytes() == (built / "dataset.jsonl").read_bytes()
    assert (tmp_path / "songs.jsonl").read_bytes() == (built / "songs.jsonl").read_bytes()
    name = sorted((built / "audios").iterdir())[0].name
    assert (tmp_path / "audios" / name).read_bytes() == (built / "audios" / name).read_bytes()


def test_cli_registers_build_and_probe():
    from recap.cli.bench import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "build", "--out", "x", "--limit", "3"])
    assert args.limit == 3 and args.source == "music21" and callable(args.func)
    args = parser.parse_args(["bench", "probe", "d"])
    assert args.data_dir == "d" and callable(args.func)


def test_a_slot_given_two_values_counts_wrong():
    """Trigram blocking made the demo's captioners end "... it is about faith." and then "... a
    song of love.": the first-stated value must not earn the slot."""
    from recap.bench.templates import contradicted_slots

    rng = random.Random(2)
    truth = _random_slots(rng)
    truth["theme"] = "faith"
    order = list(FAMILIES)
    choice = dict.fromkeys(FAMILIES, 0)
    clean = render_caption(truth, choice, order)
    other = dict(truth, theme="love")
    # the same caption whose closing reading names another theme
    torn = clean.replace(render_caption(truth, choice, ["reading"]),
                         render_caption(other, choice, ["reading"]))  # fmt: skip
    assert torn != clean and parse_caption(torn)["theme"] == "faith"
    assert contradicted_slots(clean) == [] and contradicted_slots(torn) == ["theme"]
    report = score_captions([clean, torn], [truth, truth])
    assert report["accuracy"]["theme"] == 0.5
    assert report["contradicted"]["theme"] == 1 and report["contradicting_captions"] == 1
    assert report["accuracy"]["melody"] == 1.0  # the other slots of the torn caption still count
    from recap.evaluation.evaluate import attribute_summary

    assert (
        attribute_summary(report)["contradicting captions"] == 0.5
    )  # what `recap evaluate` prints
    two_keys = clean + " It is in the key of C, or in the key of D."
    assert "key" in contradicted_slots(two_keys)


def test_probe_writes_table(built, tmp_path):
    from recap.bench.probe import format_table, run_probe

    report = run_probe(built, out=tmp_path / "probe.json", folds=2, seconds=3.0, workers=1)
    assert json.loads((tmp_path / "probe.json").read_text())["slots"] == report["slots"]
    assert "melody" in report["slots"]
    for r in report["slots"].values():
        assert 0.0 <= r["audio"] <= 1.0 and 0.0 <= r["lyrics"] <= 1.0 and 0.0 <= r["chance"] <= 1.0
    assert "melody" in format_table(report)


def test_probe_reads_the_key_from_the_excerpts_notes(built, tmp_path):
    """The `notes` columns: the excerpt's notes are the score's at the rendering's transposition,
    Krumhansl-Schmuckler on notes spanning the whole score names the build's own key, and a
    song whose score is gone is listed, not fatal."""
    from recap.bench.probe import excerpt_notes, format_table, run_probe
    from recap.bench.sources import ScoreError, ScoreSource, estimate_key, load_score

    songs = _rows(built / "songs.jsonl")
    song = songs[0]
    score = load_score(ScoreSource(path=song["source"], work_id=song["work_id"]))
    notes = excerpt_notes(song, 3.0, {})
    assert notes[:, 0].min() >= 0 and (notes[:, 0] < 3.0).all() and (notes[:, 1] > 0).all()
    written = set(np.concatenate([score.melody, score.accompaniment])[:, 2].astype(int))
    assert {int(p) - song["render"]["transpose"] for p in notes[:, 2]} <= written
    # Long enough to play the whole score: its key, moved by the transposition, is the truth's.
    whole = excerpt_notes(song, 10_000.0, {})
    tonic, mode = estimate_key(whole)
    assert (TONICS[tonic], mode) == (song["truth"]["key"], song["truth"]["mode"])

    gone = dict(song, source=str(tmp_path / "missing.mxl"))
    with pytest.raises(ScoreError, match="not found"):
        excerpt_notes(gone, 3.0, {})
    moved = tmp_path / "moved"
    shutil.copytree(built, moved)
    lines = (moved / "songs.jsonl").read_text("utf-8").splitlines()
    lines[0] = json.dumps(gone)
    (moved / "songs.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
    report = run_probe(moved, folds=2, seconds=3.0, workers=1, audio=False)
    assert [s["song_id"] for s in report["notes_skipped"]] == [song["song_id"]]
    key = report["slots"]["key"]
    assert key["notes_songs"] == len(songs) - 1
    assert 0.0 <= key["notes"] <= 1.0 and 0.0 <= key["notes_ks"] <= 1.0
    assert "KS" in format_table(report) and "1 songs left out" in format_table(report)


def build_digest(out: Path) -> str:
    """sha256 of a build's dataset.jsonl bytes and of songs.jsonl without the machine-dependent
    parts (the score's absolute path, the soundfont's name). Rows are hashed as the build wrote
    them before `comment_without_lyrics` (derived from the same draws) was added."""
    rows = [json.loads(line) for line in (out / "dataset.jsonl").read_text("utf-8").splitlines()]
    for row in rows:
        assert row.pop("comment_without_lyrics")
    h = hashlib.sha256("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    for line in (out / "songs.jsonl").read_text("utf-8").splitlines():
        song = json.loads(line)
        song["source"] = Path(song["source"]).name
        song["render"].pop("soundfont")
        h.update(json.dumps(song, ensure_ascii=False).encode())
    return h.hexdigest()


# Computed from the tiny build above with the code as it was before `--coupling` existed
# (commit c747044 with this commit's templates: the first line quoted as written, the salient
# words unquoted; d3af52c's captions gave 5fb9d848…): any extra draw from the existing random
# streams changes it.
DIGEST_BEFORE_COUPLING = "8a231a2fa2f1741cced4f753d23473ed77648562d51a34dcf9d141e5387d843f"


def test_uncoupled_build_is_unchanged(built):
    assert build_digest(built) == DIGEST_BEFORE_COUPLING


def test_truth_states_the_key_heard(score_dir, built, tmp_path):
    """By default the key and mode are Krumhansl-Schmuckler's on the notes of the first
    `key_seconds` (here the whole 3 s clip): the renderings are the whole-score build's, only the
    key and mode in the truth (and the captions that state them) differ. Built again into the
    same folder with `key_seconds` 0, the kept audio gets the whole score's truth back."""
    from recap.bench.probe import excerpt_notes
    from recap.bench.sources import estimate_key

    cfg = BuildConfig(
        source=str(score_dir), out=str(tmp_path), renders_per_song=2, comments_per_render=6,
        seed=3, workers=1, seconds=3.0,
    )  # fmt: skip
    assert cfg.key_seconds == 15.0
    build_benchmark(cfg, progress=False)
    plain = {s["song_id"]: s for s in _rows(built / "songs.jsonl")}
    songs = _rows(tmp_path / "songs.jsonl")
    assert {s["song_id"] for s in songs} == set(plain)
    moved = 0
    for song in songs:
        truth, before = song["truth"], plain[song["song_id"]]
        tonic, mode = estimate_key(excerpt_notes(song, 3.0, {}))
        assert (truth["key"], truth["mode"]) == (TONICS[tonic], mode)
        assert song["render"] == before["render"]
        heard_only = ("key", "mode")
        assert {k: v for k, v in truth.items() if k not in heard_only} == {
            k: v for k, v in before["truth"].items() if k not in heard_only
        }
        moved += truth["key"] != before["truth"]["key"]
        name = f"{song['song_id']}.mp3"
        assert (tmp_path / "audios" / name).read_bytes() == (built / "audios" / name).read_bytes()
    assert moved  # 3 s of a chorale often sit in another key than the whole
    for row in _rows(tmp_path / "dataset.jsonl"):
        assert parse_caption(row["comment"]) == row["slots"]
    assert json.loads((tmp_path / "build.json").read_text())["key_seconds"] == 15.0
    assert BuildConfig.from_dict({}).key_seconds == 0.0  # a build.json from before the option

    build_benchmark(dataclasses.replace(cfg, key_seconds=0.0), progress=False)
    assert build_digest(tmp_path) == DIGEST_BEFORE_COUPLING


def test_coupling_transposes_to_the_heard_key(score_dir, tmp_path):
    """Coupled renderings are transposed so that the key heard is the table's; a coupled build
    keyed another way is refused (its kept audio is transposed differently)."""
    from recap.bench.probe import excerpt_notes
    from recap.bench.sources import estimate_key

    cfg = BuildConfig(
        source=str(score_dir), out=str(tmp_path), renders_per_song=2, comments_per_render=6,
        seed=3, workers=1, seconds=3.0, coupling=1.0,
    )  # fmt: skip
    build_benchmark(cfg, progress=False)
    for song in _rows(tmp_path / "songs.jsonl"):
        truth = song["truth"]
        assert truth["key"] == COUPLING[truth["theme"]].key
        assert TONICS[estimate_key(excerpt_notes(song, 3.0, {}))[0]] == truth["key"]
    with pytest.raises(RecapError, match="key_seconds"):
        build_benchmark(dataclasses.replace(cfg, key_seconds=0.0), progress=False)
    with pytest.raises(RecapError, match="key_seconds"):
        BuildConfig(key_seconds=-1.0)


# --- coupling ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coupled(score_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("coupled")
    cfg = BuildConfig(
        source=str(score_dir), out=str(out), renders_per_song=2, comments_per_render=6,
        seed=3, workers=1, seconds=3.0, coupling=1.0, key_seconds=WHOLE_SCORE_KEY,
    )  # fmt: skip
    build_benchmark(cfg, progress=False)
    return out


def test_coupled_build_follows_the_table(built, coupled):
    plain = {s["song_id"]: s for s in _rows(built / "songs.jsonl")}
    songs = _rows(coupled / "songs.jsonl")
    assert len(songs) == len(plain)
    for song in songs:
        truth, render = song["truth"], song["render"]
        about, colour = COUPLING[truth["theme"]], COUPLING[truth["colour"]]
        assert truth["coupled"] is True
        assert (truth["melody"], truth["tempo"]) == (colour.melody, colour.tempo)
        assert (truth["accompaniment"], truth["key"]) == (about.accompaniment, about.key)
        assert render["melody_program"] == MELODY_INSTRUMENTS[colour.melody]
        lo, hi = TEMPO_CLASSES[colour.tempo]
        assert lo <= render["bpm"] <= hi and -5 <= render["transpose"] <= 6
        assert truth["mood"] == mood_for(truth["tempo"])
        # Same score, same window: only what the mapping sets differs from the plain rendering.
        before = plain[song["song_id"]]
        assert render["start_bar"] == before["render"]["start_bar"]
        assert {k: v for k, v in truth.items() if k not in ("coupled", "colour")}.keys() == set(
            before["truth"]
        )
        for slot in LYRICS_SLOTS + ("mode", "metre"):
            assert truth[slot] == before["truth"][slot]
    for row in _rows(coupled / "dataset.jsonl"):
        assert parse_caption(row["comment"]) == row["slots"]
    assert json.loads((coupled / "build.json").read_text())["coupling"] == 1.0


def test_language_coupling_follows_its_table(score_dir, coupled, tmp_path):
    cfg = BuildConfig(
        source=str(score_dir), out=str(tmp_path), renders_per_song=2, comments_per_render=6,
        seed=3, workers=1, seconds=3.0, coupling=1.0, couple_by="language",
        key_seconds=WHOLE_SCORE_KEY,
    )  # fmt: skip
    build_benchmark(cfg, progress=False)
    by_meaning = {s["song_id"]: s for s in _rows(coupled / "songs.jsonl")}
    for song in _rows(tmp_path / "songs.jsonl"):
        truth, render = song["truth"], song["render"]
        style = BY_LANGUAGE[truth["language"]]
        assert truth["coupled"] is True and truth["couple_by"] == "language"
        assert (truth["melody"], truth["tempo"], truth["accompaniment"], truth["key"]) == (
            style.melody, style.tempo, style.accompaniment, style.key
        )  # fmt: skip
        assert render["melody_program"] == MELODY_INSTRUMENTS[style.melody]
        before = by_meaning[song["song_id"]]
        assert render["start_bar"] == before["render"]["start_bar"]
        for slot in LYRICS_SLOTS + ("mode", "metre", "colour"):
            assert truth[slot] == before["truth"][slot]
    built = json.loads((tmp_path / "build.json").read_text())
    assert (built["coupling"], built["couple_by"]) == (1.0, "language")
    # the lexicon's coupling keeps the build.json it wrote before `couple_by` existed
    assert "couple_by" not in json.loads((coupled / "build.json").read_text())
    with pytest.raises(RecapError, match="couple_by meaning, not language"):
        build_benchmark(
            BuildConfig(source="unused", out=str(coupled), seed=3, coupling=1.0,
                        couple_by="language", key_seconds=WHOLE_SCORE_KEY)
        )  # fmt: skip


def test_partial_coupling_leaves_the_other_renderings_as_they_were(score_dir, built, tmp_path):
    cfg = BuildConfig(
        source=str(score_dir), out=str(tmp_path), renders_per_song=2, comments_per_render=6,
        seed=3, workers=1, seconds=3.0, coupling=0.5, key_seconds=WHOLE_SCORE_KEY,
    )  # fmt: skip
    build_benchmark(cfg, progress=False)
    plain = {s["song_id"]: s for s in _rows(built / "songs.jsonl")}
    songs = _rows(tmp_path / "songs.jsonl")
    for song in songs:
        if not song["truth"].pop("coupled"):
            song["truth"].pop("colour")
            before = plain[song["song_id"]]
            assert (song["truth"], song["render"]) == (before["truth"], before["render"])
            name = f"{song['song_id']}.mp3"
            assert (tmp_path / "audios" / name).read_bytes() == (
                built / "audios" / name
            ).read_bytes()


def test_coupling_share_follows_p():
    for p in (0.0, 0.3, 1.0):
        hits = [is_coupled(rng_for(0, f"w{i}", 0, "coupling"), p) for i in range(4000)]
        assert abs(sum(hits) / len(hits) - p) < 0.03


def test_coupling_options_are_checked(built):
    with pytest.raises(RecapError):
        BuildConfig(coupling=1.5)
    with pytest.raises(RecapError):  # some keys out of reach
        BuildConfig(coupling=0.5, transpose_range=(-2, 2))
    assert "coupling" not in BuildConfig().to_dict()
    assert BuildConfig.from_dict(BuildConfig(coupling=0.25).to_dict()).coupling == 0.25
    with pytest.raises(RecapError, match="couple_by"):
        BuildConfig(coupling=1.0, couple_by="mood")
    with pytest.raises(RecapError, match="needs a coupling"):  # nothing would follow it
        BuildConfig(couple_by="language")
    again = BuildConfig.from_dict(BuildConfig(coupling=1.0, couple_by="language").to_dict())
    assert again.couple_by == "language"
    with pytest.raises(RecapError, match="coupling"):  # its kept MP3s are uncoupled renderings
        build_benchmark(BuildConfig(source="unused", out=str(built), seed=3, coupling=1.0))


def test_language_tone_coupling_follows_its_table(score_dir, tmp_path):
    cfg = BuildConfig(
        source=str(score_dir), out=str(tmp_path), renders_per_song=2, comments_per_render=6,
        seed=3, workers=1, seconds=3.0, coupling=1.0, couple_by="language-tone",
        key_seconds=WHOLE_SCORE_KEY,
    )  # fmt: skip
    build_benchmark(cfg, progress=False)
    lyrics = {r["music4all_id"]: r["lyrics"] for r in _rows(tmp_path / "dataset.jsonl")}
    for song in _rows(tmp_path / "songs.jsonl"):
        truth, render = song["truth"], song["render"]
        assert truth["couple_by"] == "language-tone" and truth["tone"] == tone(
            lyrics[song["song_id"]]
        )
        row = BY_LANGUAGE_TONE[(truth["language"], truth["tone"])]
        assert coupled_rows(truth, "language-tone") == (row, row)
        assert (truth["melody"], truth["tempo"], truth["accompaniment"], truth["key"]) == (
            row.melody, row.tempo, row.accompaniment, row.key
        )  # fmt: skip
        assert render["melody_program"] == MELODY_INSTRUMENTS[row.melody]
    assert json.loads((tmp_path / "build.json").read_text())["couple_by"] == "language-tone"


def test_tone_reads_the_opening():
    words = [f"wort{i}" for i in range(TONE_WORDS + 10)]
    assert tone(" ".join(words)) == "calm"
    assert tone(" ".join(words[:TONE_WORDS]) + "! " + " ".join(words[TONE_WORDS:])) == "exclaiming"
    assert tone(" ".join(words[: TONE_WORDS + 1]) + "! " + " ".join(words[TONE_WORDS + 1 :])) == (
        "calm"
    )  # the mark after the first TONE_WORDS words is not read
    assert tone("O Ewigkeit, du Donnerwort!") == "exclaiming"
    assert tone("") == "calm"
    x = reading_features([{"language": "French", "tone": "calm"}], "language-tone")
    assert x.shape == (1, 5 + 2) and x[0, 2] == 1 and x[0, 6] == 1 and x.sum() == 2


def test_theme_colour_and_transposition():
    assert theme_and_colour("the lord god holy and his love in the heart of god", "English") == (
        "faith",
        "love",
    )
    assert theme_and_colour("the lord god holy", "English") == ("faith", "faith")
    for tonic in range(12):
        for key in TONICS:
            t = transpose_to(tonic, key, (-5, 6))
            assert -5 <= t <= 6 and TONICS[(tonic + t) % 12] == key


def test_docs_state_the_coupling_table():
    """docs/benchmark.md's tables of the mappings are the code's tables."""
    doc = (Path(__file__).parent.parent / "docs" / "benchmark.md").read_text("utf-8")
    section = doc.split("## Coupled renderings", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip(" `*") for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] in {*COUPLING, *BY_LANGUAGE}:
            rows[cells[0]] = Rendering(*cells[1:])
        elif len(cells) == 6 and tuple(cells[:2]) in BY_LANGUAGE_TONE:
            rows[tuple(cells[:2])] = Rendering(*cells[2:])
    assert rows == {**COUPLING, **BY_LANGUAGE, **BY_LANGUAGE_TONE}
    # a language and tone row: the language's instruments, the tone's tempo, a key of its own
    for (language, tone_), row in BY_LANGUAGE_TONE.items():
        style = BY_LANGUAGE[language]
        assert (row.melody, row.accompaniment) == (style.melody, style.accompaniment)
        assert row.tempo == {"exclaiming": "fast", "calm": "slow"}[tone_]
    assert len({row.key for row in BY_LANGUAGE_TONE.values()}) == len(BY_LANGUAGE_TONE)
    # every language's style differs from every other's in all but the tempo
    for a, b in itertools.combinations(BY_LANGUAGE.values(), 2):
        assert a.melody != b.melody and a.accompaniment != b.accompaniment and a.key != b.key


def _fake_benchmark(root: Path, coupling: float, n: int = 140) -> Path:
    """Songs whose lyrics state a theme and a colour in English words; their audio slots follow
    COUPLING with probability `coupling`, else drawn at random (no audio files: the probe is
    asked for the lyrics only)."""
    lexicon = resources.files("recap.bench").joinpath("lexicon").joinpath("themes.json")
    stems = {t: json.loads(lexicon.read_text("utf-8"))[t]["English"] for t in THEMES}
    rng = random.Random(7)
    root.mkdir()
    songs, rows = [], []
    for i in range(n):
        theme, colour = rng.choice(THEMES), rng.choice(THEMES)
        words = rng.sample(stems[theme], 3) + ([stems[colour][0]] if colour != theme else [])
        text = " ".join(["and the", *words, "in all the world"])
        th, co = theme_and_colour(text, "English")
        if rng.random() < coupling:
            truth = {
                "melody": COUPLING[co].melody, "tempo": COUPLING[co].tempo,
                "accompaniment": COUPLING[th].accompaniment, "key": COUPLING[th].key,
            }  # fmt: skip
        else:
            truth = {s: rng.choice(VOCABULARIES[s]) for s in AUDIO_SLOTS}
        truth.update(theme=th, language="English")
        songs.append({"song_id": f"s{i}", "work_id": f"w{i}", "truth": truth})
        rows.append({"music4all_id": f"s{i}", "lyrics": text})
    (root / "songs.jsonl").write_text("".join(json.dumps(s) + "\n" for s in songs), "utf-8")
    (root / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return root


def test_probe_reads_the_coupling_from_the_lyrics(tmp_path):
    from recap.bench.probe import format_table, run_probe

    full = run_probe(_fake_benchmark(tmp_path / "p1", 1.0), folds=3, audio=False)["slots"]
    none = run_probe(_fake_benchmark(tmp_path / "p0", 0.0), folds=3, audio=False)["slots"]
    for slot in AUDIO_SLOTS:
        assert full[slot]["meaning"] >= 0.9 and full[slot]["audio"] is None
        # Uncoupled, the lyrics say nothing about the audio: near chance.
        assert none[slot]["meaning"] < none[slot]["chance"] + 0.15
    assert "meaning" in format_table({"songs": 1, "works": 1, "folds": 3, "slots": full})


def test_demo_passes_the_coupling_and_keeps_benchmarks_apart(built, tmp_path):
    from recap.cli.demo import register
    from recap.demo import DemoConfig, build_bench

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["demo", "--coupling", "0.5"]).coupling == 0.5
    assert parser.parse_args(["demo"]).coupling == 0.0
    assert parser.parse_args(["demo", "--couple-by", "language"]).couple_by == "language"
    assert parser.parse_args(["demo"]).couple_by == "meaning"
    shutil.copytree(built, tmp_path / "bench")  # an uncoupled benchmark from an earlier run
    made = json.loads((built / "build.json").read_text("utf-8"))
    same = DemoConfig(out=str(tmp_path), renders_per_song=made["renders_per_song"],
                      comments_per_render=made["comments_per_render"])  # fmt: skip
    # It states the whole score's key: its tagger and captioners must not be reused.
    with pytest.raises(RecapError, match="the whole score, this recap the key of the first 15 s"):
        build_bench(same)
    made["key_seconds"] = 15.0  # as this recap builds it
    (tmp_path / "bench" / "build.json").write_text(json.dumps(made), "utf-8")
    assert build_bench(same) == tmp_path / "bench"  # reused
    with pytest.raises(RecapError, match="coupling"):
        build_bench(dataclasses.replace(same, coupling=0.5))
    with pytest.raises(RecapError, match="by meaning, not 1.0 by language"):
        build_bench(dataclasses.replace(same, coupling=1.0, couple_by="language"))


def test_each_comment_has_its_audio_only_sentences(built):
    from recap.bench.slots import AUDIO_SLOTS, LYRICS_SLOTS
    from recap.bench.templates import parse_caption

    rows = [json.loads(line) for line in (built / "dataset.jsonl").read_text("utf-8").splitlines()]
    for row in rows:
        heard = row["comment_without_lyrics"]
        assert (
            heard
            and heard in row["comment"]
            or all(sentence in row["comment"] for sentence in heard.split(". "))
        )
        parsed = parse_caption(heard)
        assert {s: parsed.get(s) for s in AUDIO_SLOTS} == {s: row["slots"][s] for s in AUDIO_SLOTS}
        assert not any(parsed.get(s) for s in LYRICS_SLOTS), parsed
        assert row["slots"]["first_line"] not in heard


def test_salient_word_misses_say_whether_a_list_was_unreadable_or_repeated():
    truth = {"salient_words": ["Seel", "erhebt", "Herren"]}
    captions = [
        "Its key words, Seel, erhebt and Herren, speak of faith.",  # right
        "Its key words, seel, Erhebt and herren, speak of faith.",  # right: scoring normalises
        "Its key words, Seel’ erhebt and Herren, speak of faith.",  # two words run together
        "Its key words, Herren, Seel and Herren, speak of faith.",  # one named twice
        "Words like Seel, Gott and Herren point to faith.",  # one wrong
        "A harp supports a choir that leads the melody.",  # no words sentence
    ]
    report = score_captions(captions, [truth] * len(captions))
    assert report["salient_word_misses"] == {
        "not_stated": 1,
        "unreadable": 1,
        "repeated": 1,
        "other_words": 1,
    }
    wanted = {"seel", "erhebt", "herren"}  # as normalize_phrase writes them
    assert salient_words_miss(captions[0], set(wanted), wanted) is None
    assert salient_words_miss(captions[3], {"herren", "seel"}, wanted) == "repeated"
    assert salient_words_miss(captions[2], set(), wanted) == "unreadable"
