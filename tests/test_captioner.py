"""Captioner API and `recap caption` on a tiny model trained in the test session."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from support import SONGS

from recap.cli import main
from recap.data.audio import AudioConfig
from recap.inference.captioner import Captioner
from recap.inference.inputs import collect_inputs
from recap.utils import RecapError


@pytest.fixture(scope="session")
def captioner(model_dir) -> Captioner:
    return Captioner.from_pretrained(model_dir, device="cpu")


def test_caption_path_and_array_agree(captioner, songs_dir):
    lyrics = SONGS[0][2]
    from_path = captioner.caption(songs_dir / "river.wav", lyrics)
    samples, rate = sf.read(songs_dir / "river.wav", dtype="float32")
    from_array = captioner.caption(samples, lyrics, sample_rate=rate)
    assert isinstance(from_path, str) and from_path.strip()
    assert from_path == from_array
    # The model learnt its six captions: a song's caption names its own subject.
    assert "river" in from_path


def test_batched_equals_unbatched(captioner, songs_dir):
    items = [(songs_dir / f"{sid}.wav", lyr) for sid, _, lyr in SONGS]
    single = [captioner.caption(a, lyr) for a, lyr in items]
    assert captioner.caption_batch(items, batch_size=4) == single
    assert captioner.caption_batch(items, batch_size=16) == single
    assert len(set(single)) > 1  # different songs, different captions


def test_decode_options_change_the_output(captioner, songs_dir):
    audio, lyrics = songs_dir / "dance.wav", SONGS[2][2]
    short = captioner.caption(audio, lyrics, max_new_tokens=2)
    full = captioner.caption(audio, lyrics, num_beams=2)
    assert len(short.split()) < len(full.split())
    s1 = captioner.caption(audio, lyrics, do_sample=True, top_p=0.9, seed=3)
    s2 = captioner.caption(audio, lyrics, do_sample=True, top_p=0.9, seed=3)
    assert s1 == s2  # a seed makes sampling reproducible
    with pytest.raises(RecapError, match="top_p"):
        captioner.caption(audio, lyrics, do_sample=True, top_p=1.5)


def test_bad_inputs_raise_recap_errors(captioner, songs_dir, tmp_path):
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"this is not audio" * 100)
    with pytest.raises(RecapError):
        captioner.caption(junk, "some words")
    with pytest.raises(RecapError, match="sample_rate"):
        captioner.caption(np.zeros(1000, dtype=np.float32), "words")
    results = list(
        captioner.caption_results([(junk, "words"), (songs_dir / "road.wav", None)], batch_size=2)
    )
    assert "unreadable audio" in results[0].error and results[0].caption is None
    # A song without lyrics is no error: it gets an audio-only interpretation.
    assert results[1].error is None and results[1].caption and results[1].lyrics is False


def test_songs_without_lyrics_are_interpreted_from_audio(captioner, songs_dir):
    river = songs_dir / "river.wav"
    audio_only = captioner.caption(river)
    assert isinstance(audio_only, str) and audio_only.strip()
    # Missing, empty and blank lyrics are one thing: the empty text <s></s>.
    assert captioner.caption(river, "  \n ") == audio_only == captioner.caption(river, "")
    assert captioner.encode_lyrics([None])["input_ids"].tolist() == [
        captioner.tokenizer("")["input_ids"]
    ]
    # Mixed batches: with and without lyrics in one generate call give the single results.
    items = [(river, None), (river, SONGS[0][2])]
    assert captioner.caption_batch(items) == [audio_only, captioner.caption(river, SONGS[0][2])]


def test_lyrics_only_model_refuses_songs_without_lyrics(captioner, songs_dir):
    from recap.models.config import RecapConfig
    from recap.models.model import RecapModel

    cfg = RecapConfig.preset("bart", "tiny", vocab_size=len(captioner.tokenizer))
    bart = Captioner(RecapModel(cfg).eval(), captioner.tokenizer)
    assert bart.caption(songs_dir / "river.wav", "the river runs").strip() is not None
    with pytest.raises(RecapError, match="hears no audio"):
        bart.caption(songs_dir / "river.wav")
    (result,) = bart.caption_results([(songs_dir / "river.wav", None)])
    assert result.caption is None and "hears no audio" in result.error


def test_model_folder_errors(model_dir, tmp_path):
    with pytest.raises(RecapError, match="does not exist"):
        Captioner.from_pretrained(tmp_path / "nope")
    with pytest.raises(RecapError, match="neither a model folder"):
        Captioner.from_pretrained(tmp_path)
    # A training RUN folder is accepted: its best/ is the model.
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    for f in model_dir.iterdir():
        (run / "best" / f.name).write_bytes(f.read_bytes())
    assert Captioner.from_pretrained(run).source == run / "best"
    # Another format version, then a truncated checkpoint: clear errors, no tracebacks.
    old = tmp_path / "old"
    old.mkdir()
    for f in model_dir.iterdir():
        (old / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((old / "config.json").read_text())
    cfg["format_version"] = 99
    (old / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RecapError, match="format_version"):
        Captioner.from_pretrained(old)
    cfg["format_version"] = json.loads((model_dir / "config.json").read_text())["format_version"]
    (old / "config.json").write_text(json.dumps(cfg))
    weights = (old / "model.safetensors").read_bytes()
    (old / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(RecapError):
        Captioner.from_pretrained(old)
    rc = main(["caption", str(tmp_path / "x.wav"), "--model", str(old)])
    assert rc == 2


def test_collect_inputs_forms(songs_dir, tmp_path):
    assert [s.id for s in collect_inputs(songs_dir)] == sorted(s for s, _, _ in SONGS)
    one = collect_inputs(songs_dir / "river.wav")
    assert one[0].lyrics.startswith("the river")
    with pytest.raises(RecapError, match="lyrics file"):
        collect_inputs(songs_dir / "river.wav", tmp_path / "none.txt")
    with pytest.raises(RecapError, match="no audio files"):
        collect_inputs(tmp_path)


def test_caption_cli_single_file(model_dir, songs_dir, tmp_path, capsys):
    lyrics = tmp_path / "lyrics.txt"
    lyrics.write_text(SONGS[1][2])
    rc = main(
        [
            "caption",
            str(songs_dir / "winter.wav"),
            "--lyrics",
            str(lyrics),
            "--model",
            str(model_dir),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "winter" in out
    # A missing lyrics file is a clear error with exit 2.
    rc = main(
        [
            "caption",
            str(songs_dir / "winter.wav"),
            "--lyrics",
            str(tmp_path / "x.txt"),
            "--model",
            str(model_dir),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "lyrics file" in err and "--lyrics-text" in err


def test_caption_cli_lyrics_as_text_without_progress(model_dir, songs_dir, tmp_path, capsys):
    base = ["caption", str(songs_dir / "winter.wav"), "--model", str(model_dir)]
    rc = main([*base, "--lyrics-text", SONGS[1][2], "--no-progress", "--format", "jsonl"])
    captured = capsys.readouterr()
    assert rc == 0 and "winter" in json.loads(captured.out)["caption"]
    assert "100%" not in captured.err  # no tqdm bar
    # the text wins over winter.txt beside the audio: other lyrics, another caption
    rc = main([*base, "--lyrics-text", SONGS[3][2], "--no-progress"])
    assert rc == 0 and "storm" in capsys.readouterr().out
    lyrics = tmp_path / "l.txt"
    lyrics.write_text("words")
    rc = main([*base, "--lyrics-text", "words", "--lyrics", str(lyrics)])
    assert rc == 2 and "not both" in capsys.readouterr().err
    rc = main(["caption", str(songs_dir), "--model", str(model_dir), "--lyrics-text", "words"])
    assert rc == 2 and "single audio file" in capsys.readouterr().err


def test_caption_cli_folder_with_bad_items(model_dir, songs_dir, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("river", "storm"):
        for ext in (".wav", ".txt"):
            (folder / f"{name}{ext}").write_bytes((songs_dir / f"{name}{ext}").read_bytes())
    (folder / "broken.mp3").write_bytes(b"\x00" * 5000)  # corrupt audio
    (folder / "broken.txt").write_text("words")
    (folder / "nolyrics.wav").write_bytes((songs_dir / "road.wav").read_bytes())
    out = tmp_path / "captions.jsonl"
    rc = main(
        ["caption", str(folder), "--model", str(model_dir), "--out", str(out), "--batch-size", "2"]
    )
    assert rc == 0  # some items failed, not all
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"river", "storm", "broken", "nolyrics"}
    assert "river" in rows["river"]["caption"] and rows["river"]["error"] is None
    assert "unreadable audio" in rows["broken"]["error"]
    assert rows["nolyrics"]["error"] is None and rows["nolyrics"]["caption"]
    assert rows["nolyrics"]["lyrics"] is False and rows["river"]["lyrics"] is True
    report = json.loads(out.with_suffix(".skipped.json").read_text())
    assert report["skipped"] == 1
    assert "captioned 3/4" in capsys.readouterr().err


def test_caption_cli_manifest_csv_and_jsonl(model_dir, songs_dir, tmp_path, captioner):
    manifest = tmp_path / "songs.jsonl"
    lines = [
        {"id": sid, "audio": str(songs_dir / f"{sid}.wav"), "lyrics": lyr}
        for sid, _, lyr in SONGS[:3]
    ]
    lines.append({"id": "gone", "audio": "missing.wav", "lyrics": "la la"})
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out.csv"
    assert (
        main(
            ["caption", str(manifest), "--model", str(model_dir), "--out", str(out), "--beams", "2"]
        )
        == 0
    )
    rows = list(csv.DictReader(out.open()))
    assert [r["id"] for r in rows] == ["river", "winter", "dance", "gone"]
    assert rows[3]["error"] and not rows[3]["caption"]
    # The CLI's decoding flags reach the model: the same caption as the API with 2 beams.
    assert rows[2]["caption"] == captioner.caption(
        songs_dir / "dance.wav", SONGS[2][2], num_beams=2
    )
    # Every item failing is a non-zero exit.
    bad = tmp_path / "bad.csv"
    bad.write_text("audio,lyrics\nmissing.wav,hello\n")
    assert (
        main(["caption", str(bad), "--model", str(model_dir), "--out", str(tmp_path / "o.jsonl")])
        == 2
    )


def test_a_folder_of_runs_resolves_to_its_one_model_or_lists_them(tmp_path):
    from recap.inference.generate import resolve_model_dir

    def run(*parts: str) -> Path:
        best = tmp_path.joinpath(*parts, "best")
        best.mkdir(parents=True)
        (best / "config.json").write_text("{}")
        (best / "model.safetensors").write_bytes(b"")
        return best

    demo = tmp_path / "demo"
    (demo / "tagger").mkdir(parents=True)
    (demo / "tagger" / "config.json").write_text("{}")  # a music encoder, not a captioner
    only = run("demo", "experiments", "full", "bart", "seed0")
    assert resolve_model_dir(demo) == only  # the one model below
    recap = run("demo", "experiments", "full", "recap", "seed0")
    run("demo", "experiments", "full", "bart-fusion", "seed0")
    with pytest.raises(RecapError, match="holds 3 trained models") as err:
        resolve_model_dir(demo)
    assert str(recap) in str(err.value)  # the message lists where they are
    (demo / "demo_config.json").write_text("{}")
    assert resolve_model_dir(demo) == recap  # `recap demo`'s captioner is its RECAP model


def three_minute_song(tmp_path: Path) -> tuple[Path, list[np.ndarray], int]:
    from support import tone

    song = tmp_path / "long.wav"
    rate = 8000
    # 3 minutes: a tone whose pitch changes every 15 s, so each window hears other music.
    parts = [tone((200.0 + 60 * k, 330.0), seconds=15.0, rate=rate) for k in range(12)]
    sf.write(song, np.concatenate(parts), rate)
    return song, parts, rate


def test_a_three_minute_song_is_heard_in_several_windows(model_dir, captioner, tmp_path, capsys):
    song, parts, rate = three_minute_song(tmp_path)
    whole_song = Captioner(captioner.model, captioner.tokenizer, AudioConfig(windows=12))
    assert whole_song.load_waveform(song).shape == (12, 240_000)
    args = ["caption", str(song), "--model", str(model_dir), "--format", "jsonl"]
    assert main([*args, "--windows", "12"]) == 0
    out, err = capsys.readouterr()
    row = json.loads(out)
    assert row["windows"] == 12 and row["song_windows"] == 12
    assert row["caption"] and row["lyrics"] is False
    assert "heard in 12 windows" in err and "audio only" in err and "trained on" not in err
    # All 12 windows count: a different last window changes the music the model attends to.
    whole = whole_song.music([whole_song.load_waveform(song)])["music_embeds"]
    first = Captioner(captioner.model, captioner.tokenizer, AudioConfig())
    assert whole.shape[1] == 12 * first.music([first.load_waveform(song)])["music_embeds"].shape[1]
    # Songs of different lengths in one batch: padded with a mask, same captions as alone.
    short = tmp_path / "short.wav"
    sf.write(short, np.concatenate(parts[:2]), rate)
    items = [(song, None), (short, None)]
    assert whole_song.caption_batch(items) == [whole_song.caption(a) for a, _ in items]


def test_a_model_hears_the_window_count_it_was_trained_on_by_default(
    model_dir, captioner, tmp_path, capsys
):
    """Trained on one window (the paper's excerpt), a model captions worse from more
    (docs/results.md), so it hears one unless told; trained on several, it hears the whole
    song. `--windows` always decides."""
    import shutil

    from recap.inference.inputs import DEFAULT_WINDOWS, default_windows
    from recap.models.config import RecapConfig

    song, _, _ = three_minute_song(tmp_path)
    assert captioner.model.config.music_windows == 1  # trained on one
    assert captioner.audio_config.windows == 1 and captioner.trained_windows == 1
    assert main(["caption", str(song), "--model", str(model_dir), "--format", "jsonl"]) == 0
    out, err = capsys.readouterr()
    row = json.loads(out)
    assert (row["windows"], row["song_windows"]) == (1, 12)
    assert (
        "heard 1 of 12 windows of 15 s, audio only (no lyrics) (the model was trained on 1; "
        "--windows 12 to hear the whole song)" in err
    )
    assert main(["caption", str(song), "--model", str(model_dir), "--windows", "1"]) == 0
    err = capsys.readouterr().err
    assert "heard in 1 window of" in err and "--windows 12" not in err  # asked for: no hint

    # A model trained on 2 windows: the whole song (up to 12 windows) by default.
    several = tmp_path / "several"
    shutil.copytree(model_dir, several)
    config = json.loads((several / "config.json").read_text())
    config["music_windows"] = 2
    (several / "config.json").write_text(json.dumps(config))
    assert Captioner.from_pretrained(several, device="cpu").audio_config.windows == DEFAULT_WINDOWS
    assert Captioner.from_pretrained(several, "cpu", windows=3).audio_config.windows == 3
    assert main(["caption", str(song), "--model", str(several), "--format", "jsonl"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["windows"] == 12 and "heard in 12 windows" in err

    # A config.json written before the field existed: trained on one window.
    del config["music_windows"]
    assert RecapConfig.from_dict(config).music_windows == 1
    assert default_windows(RecapConfig.from_dict(config)) == 1
    with pytest.raises(RecapError, match="music_windows"):
        RecapConfig.from_dict({**config, "music_windows": 0})
