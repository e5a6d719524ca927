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
from recap.inference.captioner import Captioner, collect_inputs
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
    with pytest.raises(RecapError, match="empty"):
        captioner.caption(songs_dir / "river.wav", "  \n ")
    with pytest.raises(RecapError, match="sample_rate"):
        captioner.caption(np.zeros(1000, dtype=np.float32), "words")
    results = list(
        captioner.caption_results([(junk, "words"), (songs_dir / "road.wav", None)], batch_size=2)
    )
    assert "unreadable audio" in results[0].error and results[0].caption is None
    assert "lyrics" in results[1].error


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
    assert "lyrics" in rows["nolyrics"]["error"]
    report = json.loads(out.with_suffix(".skipped.json").read_text())
    assert report["skipped"] == 2
    assert "captioned 2/4" in capsys.readouterr().err


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
    from recap.inference.captioner import resolve_model_dir

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
