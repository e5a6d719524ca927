"""Captioner API and `recap caption` on a tiny model trained in the test.

`make_catalogue`, `tiny_model_dir` and `tone` are shared with test_index, test_serve and
test_serve_browser (one tiny model per session).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from recap.captioner import Captioner, collect_inputs
from recap.cli import main
from recap.utils import RecapError

RATE = 22_050
# (song id, tone frequencies in Hz, lyrics): distinct audio and distinct words per song.
SONGS = [
    ("river", (220.0, 330.0), "the river runs down to the sea\nand carries my heart away"),
    ("winter", (440.0,), "cold winter night\nthe snow is falling on the town"),
    ("dance", (880.0, 1320.0), "dance with me until the morning light\nwe never sleep"),
    ("storm", (150.0, 600.0), "thunder and rain\nthe storm is coming home tonight"),
    ("garden", (520.0, 780.0), "roses in the garden\nmy mother sings a quiet song"),
    ("road", (300.0, 1000.0), "long road ahead\ndriving west with nothing left"),
]
CAPTIONS = {sid: f"a song about the {sid}" for sid, _, _ in SONGS}


def tone(freqs: tuple[float, ...], seconds: float = 2.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = sum(np.sin(2 * np.pi * f * t) * (0.3 + 0.2 * np.sin(2 * np.pi * 2 * t)) for f in freqs)
    return (0.4 * wave / len(freqs)).astype(np.float32)


def make_catalogue(folder: Path) -> Path:
    """`folder/<id>.wav` + `folder/<id>.txt` for every song in SONGS."""
    folder.mkdir(parents=True, exist_ok=True)
    for song_id, freqs, lyrics in SONGS:
        sf.write(folder / f"{song_id}.wav", tone(freqs), RATE)
        (folder / f"{song_id}.txt").write_text(lyrics + "\n", encoding="utf-8")
    return folder


def make_tiny_model(folder: Path, steps: int = 80) -> Path:
    """A tiny RECAP model, trained a few steps on SONGS so captions are words and the aligned
    space pairs each song's audio with its lyrics (retrieval better than chance)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from threads on a busy machine
    try:
        return _train_tiny_model(folder, steps)
    finally:
        torch.set_num_threads(threads)


def _train_tiny_model(folder: Path, steps: int) -> Path:
    import torch

    from recap.audio import AudioConfig, excerpt_from_array
    from recap.config import RecapConfig
    from recap.model import RecapModel
    from recap.tokenizer import train_bpe_tokenizer

    torch.manual_seed(0)
    texts = [lyr for _, _, lyr in SONGS] + list(CAPTIONS.values())
    tokenizer = train_bpe_tokenizer(texts * 3, vocab_size=320)
    model = RecapModel(RecapConfig.preset("recap", "tiny", with_music_encoder=True))
    model.config.generation.num_beams = 1
    waves = torch.from_numpy(
        np.stack([excerpt_from_array(tone(f), RATE, AudioConfig()).waveform for _, f, _ in SONGS])
    )  # (S, 240000)
    # An untrained CNNSA maps every input to nearly the same vector; calibrating its BatchNorm
    # statistics on these songs (no gradient) spreads them apart, as pretraining would.
    for module in model.music_encoder.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration pass
    model.music_encoder.train()
    with torch.no_grad():
        model.music_encoder(waves)
    model.eval()  # no dropout: a deterministic few steps
    with torch.no_grad():
        music = model.music_encoder(waves)  # (S, 119, C), fixed: the encoder is frozen
    enc = tokenizer(
        [lyr.replace("\n", ";") for _, _, lyr in SONGS], padding=True, return_tensors="pt"
    )
    labels = tokenizer([CAPTIONS[s] for s, _, _ in SONGS], padding=True, return_tensors="pt")
    targets = labels["input_ids"].masked_fill(labels["attention_mask"] == 0, -100)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        out = model(enc["input_ids"], enc["attention_mask"], labels=targets, music_embeds=music)
        a = torch.nn.functional.normalize(model.embed_music(music), dim=-1)  # (S, D)
        b = torch.nn.functional.normalize(
            model.embed_lyrics(enc["input_ids"], enc["attention_mask"]), dim=-1
        )
        logits = a @ b.T / 0.05  # (S, S): the diagonal holds the true pairs
        ref = torch.arange(len(SONGS))
        nce = torch.nn.functional.cross_entropy(logits, ref)
        nce = nce + torch.nn.functional.cross_entropy(logits.T, ref)
        opt.zero_grad()
        (out.loss + nce).backward()
        opt.step()
    model.save_pretrained(folder, tokenizer=tokenizer)
    return folder


_BUILT: dict[str, Path] = {}


def tiny_model_dir(tmp_path_factory) -> Path:
    """One tiny model per test session, shared by the test modules that import this."""
    if "model" not in _BUILT:
        _BUILT["model"] = make_tiny_model(tmp_path_factory.mktemp("model"))
    return _BUILT["model"]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def songs_dir(tmp_path_factory) -> Path:
    return make_catalogue(tmp_path_factory.mktemp("songs"))


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
    assert rc == 2 and "lyrics file" in capsys.readouterr().err


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
