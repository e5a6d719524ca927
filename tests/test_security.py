"""Untrusted files and bad input (issue 12; docs/security.md): every attack here was once
reproduced against recap. Code-execution tests plant a payload that would create a marker file
and check that it does not exist; the others check for a clear RecapError instead of a
traceback, a wrong result or lost work. The HTTP attacks are in test_serve.py, the score
archives in test_musicxml.py."""

from __future__ import annotations

import builtins
import json
import os
import random
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from support import RATE, SONGS, tone
from test_train import fake_music_embeddings, make_dataset, tiny_config

import recap.training.train as train_mod
from recap.inference.caption_job import caption_files
from recap.inference.captioner import Captioner
from recap.inference.generate import DecodeSettings
from recap.inference.inputs import collect_inputs
from recap.training.checkpoint import rng_state, set_rng_state
from recap.utils import RecapError

pytestmark = pytest.mark.usefixtures("one_thread")


class Payload:
    """Unpickling this runs `open(marker, "w")`: what a hostile pickle does."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


# ----------------------------------------------------------------------------- 1, 5, 9: resume


@pytest.fixture(scope="module")
def paused_run(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset, RUN) of a tiny run stopped after 2 steps, RUN/last written."""
    root = tmp_path_factory.mktemp("resume")
    data = make_dataset(root / "data", n_songs=5, per_song=2)
    config = tiny_config(data, root / "run", max_steps=2, epochs=1)
    run = train_mod.train(config, embed=fake_music_embeddings)
    assert (run / "last" / "optimizer.pt").is_file() and not (run / "done.json").exists()
    return data, run


def _resume(data: Path, run: Path, monkeypatch, **overrides) -> Path:
    values = dict(resume=True, max_steps=3, epochs=1)
    values.update(overrides)
    return train_mod.train(tiny_config(data, run, **values), embed=fake_music_embeddings)


def test_resume_refuses_a_planted_optimizer_payload(paused_run, tmp_path, monkeypatch):
    data, original = paused_run
    run = shutil.copytree(original, tmp_path / "run")
    marker = tmp_path / "pwned"
    torch.save({"state": Payload(marker)}, run / "last" / "optimizer.pt")
    with pytest.raises(RecapError, match="refused to load .*optimizer.pt"):
        _resume(data, run, monkeypatch)
    assert not marker.exists()
    # the same for the RNG state, which every process reads
    shutil.copy2(original / "last" / "optimizer.pt", run / "last" / "optimizer.pt")
    torch.save({"python": Payload(marker)}, run / "last" / "rng_state_0.pt")
    with pytest.raises(RecapError, match="refused to load .*rng_state_0.pt"):
        _resume(data, run, monkeypatch)
    assert not marker.exists()


def test_rng_state_round_trips_without_pickle(tmp_path):
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    assert again == expected


def test_corrupt_or_incomplete_last_is_reported(paused_run, tmp_path, monkeypatch):
    data, original = paused_run
    run = shutil.copytree(original, tmp_path / "run")
    (run / "last" / "rng_state_0.pt").unlink()
    with pytest.raises(RecapError, match="rng_state_0.pt is missing") as err:
        _resume(data, run, monkeypatch)
    assert "fewer processes" not in str(err.value)
    shutil.copy2(original / "last" / "rng_state_0.pt", run / "last" / "rng_state_0.pt")
    (run / "last" / "state.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(RecapError, match="state.json"):
        _resume(data, run, monkeypatch)
    (run / "last" / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(RecapError, match="model.safetensors"):
        _resume(data, run, monkeypatch)


def test_resume_accepts_other_spellings_of_the_same_paths(paused_run, tmp_path, monkeypatch):
    data, original = paused_run
    moved = shutil.copytree(original, tmp_path / "elsewhere" / "run")  # the run folder moved
    monkeypatch.chdir(data.parent)
    run = _resume(Path(os.path.relpath(data, data.parent)), moved, monkeypatch)  # relative data
    assert run == moved and (run / "done.json").is_file()  # resumed and finished
    (moved / "done.json").unlink()
    with pytest.raises(RecapError, match="other settings") as err:
        _resume(data, moved, monkeypatch, lr=0.5)
    assert "--overwrite" not in str(err.value)  # it would delete the run being continued


# ----------------------------------------------------------------------------- 2: tokenizer


def test_tokenizer_with_auto_map_is_refused_without_a_prompt(tmp_path, monkeypatch):
    from recap.models.pretrained import _maybe_tokenizer
    from recap.models.tokenizer import load_tokenizer, train_bpe_tokenizer

    folder = tmp_path / "model"
    train_bpe_tokenizer(["some words to learn", "more words"] * 5, 300, out_dir=folder)
    marker = tmp_path / "pwned"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n", "utf-8")
    config = json.loads((folder / "tokenizer_config.json").read_text("utf-8"))
    config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), "utf-8")

    def no_prompt(*args, **kwargs):
        raise AssertionError("prompted the user")

    monkeypatch.setattr(builtins, "input", no_prompt)
    with pytest.raises(RecapError, match="auto_map"):
        load_tokenizer(folder)
    with pytest.raises(RecapError, match="auto_map"):  # model folders too, not "no tokenizer"
        _maybe_tokenizer(folder)
    assert not marker.exists()


# ----------------------------------------------------------------------------- 4: song ids


@pytest.mark.parametrize("song_id", ["x" * 300, "夜の歌" * 40, "Ünïcødé ~ name"])
def test_long_and_non_ascii_song_ids_are_safe_file_names(tmp_path, song_id):
    from recap.data.cache import FeatureStore
    from recap.data.songs import audio_path
    from recap.data.stats import dataset_stats

    store = FeatureStore.create(tmp_path / "store", {"kind": "embeddings"})
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    store.put(song_id, array)
    store.put(song_id + "b", array + 1)
    files = [p.name for p in store.root.glob("*.npy")]
    assert len(files) == 2 and all(len(name.encode()) <= 255 for name in files)
    assert files[0][:8] == files[1][:8]  # a readable prefix of the id is kept
    np.testing.assert_array_equal(store[song_id], array)
    assert song_id in store and sorted(store) == sorted([song_id, song_id + "b"])
    # `data stats` on a dataset naming such a song: its audio is missing, not a crash
    data = tmp_path / "data"
    data.mkdir()
    row = {"music4all_id": song_id, "lyrics": "la la", "comment": "a song"}
    (data / "dataset.jsonl").write_text(json.dumps(row) + "\n", "utf-8")
    stats, _ = dataset_stats(data)
    assert stats["audio"]["missing"] == 1
    assert audio_path(data, song_id).name.endswith(".mp3")


# ----------------------------------------------------------------------------- 6: decode options


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (DecodeSettings(seeds=(2**64,)), "seed must be"),
        (DecodeSettings(seeds=(-1,)), "seed must be"),
        (DecodeSettings(max_new_tokens=10_000), "position limit"),
        (DecodeSettings(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
    ],
)
def test_bad_decode_options_are_refused_before_any_work(
    model_dir, songs_dir, tmp_path, monkeypatch, options, message
):
    def no_work(*args, **kwargs):
        raise AssertionError("captioning started")

    monkeypatch.setattr(Captioner, "caption_results", no_work)
    with pytest.raises(RecapError, match=message):
        caption_files(songs_dir, model_dir, out=tmp_path / "out.jsonl", decode=options)


def test_max_new_tokens_at_the_position_limit_works(model_dir, songs_dir):
    cap = Captioner.from_pretrained(model_dir)
    limit = cap.model.config.max_position_embeddings
    wave = cap.load_waveform(songs_dir / "river.wav")
    assert isinstance(
        cap.caption_waveforms([wave], ["la"], DecodeSettings(max_new_tokens=limit))[0], str
    )


def test_cli_reports_a_bad_seed_without_a_traceback(model_dir, songs_dir, tmp_path, capsys):
    from recap.cli import main

    out = tmp_path / "out.jsonl"
    rc = main(["caption", str(songs_dir), "--model", str(model_dir), "--out", str(out),
               "--sample", "--seed", str(2**64)])  # fmt: skip
    assert rc == 2 and "seed must be" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 7: NaN


def test_huge_float_audio_is_refused_not_captioned_empty(model_dir, tmp_path):
    from recap.data.audio import AudioError, load_excerpt

    path = tmp_path / "loud.wav"
    sf.write(path, (tone((440.0,)) * 1e30).astype(np.float32), RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match="sample values reach") as err:
        load_excerpt(path)
    assert err.value.reason == "range"
    cap = Captioner.from_pretrained(model_dir)
    results = list(cap.caption_results([(path, "words here"), (tmp_path / "none.wav", "x")]))
    assert "sample values reach" in results[0].error and results[0].caption is None
    # past the front end (an array handed straight in), the encoder's output is checked
    wave = np.full(240_000, 1e30, dtype=np.float32)
    with pytest.raises(RecapError, match="NaN or infinite"):
        cap.caption_waveforms([wave], ["words"], DecodeSettings())


def test_model_with_nan_weights_is_refused(model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = shutil.copytree(model_dir, tmp_path / "model")
    state = load_file(str(broken / "model.safetensors"))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(RecapError, match="NaN or infinite weights"):
        Captioner.from_pretrained(broken)


def test_nan_index_vectors_are_an_error_not_zero_hits(tmp_path):
    from recap.inference.index import IndexSettings, SongEntry, SongIndex

    vectors = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    songs = [SongEntry(f"s{i}", "", f"k{i}") for i in range(4)]
    bad = vectors.copy()
    bad[2] = np.nan
    with pytest.raises(RecapError, match="s2"):
        SongIndex(songs, bad, vectors, IndexSettings("flat"))
    index = SongIndex(songs, vectors, vectors, IndexSettings("flat"))
    with pytest.raises(RecapError, match="NaN"):
        index.search(np.full(8, np.nan, dtype=np.float32), "audio")


# ----------------------------------------------------------------------------- 9: index folders


def _corruptions():
    def meta(edit):
        def apply(folder: Path) -> None:
            m = json.loads((folder / "meta.json").read_text())
            (folder / "meta.json").write_text(json.dumps(edit(m)))

        return apply

    def write(name, data):
        return lambda folder: (folder / name).write_bytes(data)

    def save(name, array, **kw):
        return lambda folder: np.save(folder / name, array, **kw)

    return {
        "meta_not_json": write("meta.json", b"{"),
        "meta_a_list": write("meta.json", b"[]"),
        "meta_nested": write("meta.json", b"[" * 100_000 + b"]" * 100_000),
        "songs_not_a_list": meta(lambda m: {**m, "songs": 5}),
        "song_fields_wrong": meta(lambda m: {**m, "songs": [{"x": 1}] * 20}),
        "song_id_a_list": meta(lambda m: {**m, "songs": [{**s, "song_id": [1]} for s in m["songs"]]}),
        "settings_unknown": meta(lambda m: {**m, "settings": {"bogus": 1}}),
        "settings_kind": meta(lambda m: {**m, "settings": {**m["settings"], "kind": "magic"}}),
        "settings_nlist": meta(lambda m: {**m, "settings": {**m["settings"], "kind": "ivf", "nlist": 10**6}}),
        "settings_nlist_zero": meta(lambda m: {**m, "settings": {**m["settings"], "kind": "ivf", "nlist": -3}}),
        "audio_missing": lambda folder: (folder / "audio.npy").unlink(),
        "audio_truncated": write("audio.npy", b"\x93NUMPY\x01\x00"),
        "audio_pickled": save("audio.npy", np.array([{"a": 1}] * 20, dtype=object), allow_pickle=True),
        "audio_1d": save("audio.npy", np.zeros(20, dtype=np.float32)),
        "audio_rows": save("audio.npy", np.zeros((3, 8), dtype=np.float32)),
        "audio_ints": save("audio.npy", np.zeros((20, 8), dtype=np.int64)),
        "audio_nan": save("audio.npy", np.full((20, 8), np.nan, dtype=np.float32)),
        "lyrics_dim": save("lyrics.npy", np.zeros((20, 5), dtype=np.float32)),
        "no_dims": lambda folder: [np.save(folder / f"{side}.npy", np.zeros((20, 0), np.float32))
                                   for side in ("audio", "lyrics")],
    }  # fmt: skip


@pytest.mark.parametrize("case", sorted(_corruptions()))
def test_corrupt_index_folders_give_clear_errors(tmp_path, case):
    from recap.inference.index import IndexSettings, SongEntry, SongIndex

    vectors = np.random.default_rng(1).standard_normal((20, 8)).astype(np.float32)
    songs = [SongEntry(f"s{i}", "line", f"k{i}") for i in range(20)]
    folder = SongIndex(songs, vectors, vectors, IndexSettings("flat")).save(tmp_path / "index")
    _corruptions()[case](folder)
    with pytest.raises(RecapError):
        SongIndex.load(folder)


def test_saved_ivf_lists_are_read_not_retrained(tmp_path, monkeypatch):
    import recap.inference.index as index_mod
    from recap.inference.index import IndexSettings, SongEntry, SongIndex

    vectors = np.random.default_rng(2).standard_normal((400, 8)).astype(np.float32)
    songs = [SongEntry(f"s{i}", "", f"k{i}") for i in range(400)]
    built = SongIndex(songs, vectors, vectors, IndexSettings("ivf", nlist=8, nprobe=2))
    built.save(tmp_path / "ivf")
    expected = built.search(vectors[:5], "audio", 5)
    seen = []
    real = index_mod.make_faiss_index
    monkeypatch.setattr(index_mod, "make_faiss_index",
                        lambda v, s, c=None: seen.append(c is not None) or real(v, s, c))  # fmt: skip
    loaded = SongIndex.load(tmp_path / "ivf")
    assert seen == [True, True]
    assert loaded.search(vectors[:5], "audio", 5) == expected


def test_index_build_refuses_a_bad_out_before_embedding(model_dir, songs_dir, tmp_path):
    from recap.inference.indexing import build_index

    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RecapError, match="not a recap index"):
        build_index(tmp_path / "no-model-here", songs_dir, out, progress=False)
    assert (out / "notes.txt").read_text() == "mine"


def test_best_old_is_used_after_a_kill_between_renames(model_dir, tmp_path):
    from recap.inference.generate import resolve_model_dir

    run = tmp_path / "run"
    shutil.copytree(model_dir, run / "best.old")
    assert resolve_model_dir(run) == run / "best.old"
    assert Captioner.from_pretrained(run).source == run / "best.old"


# ----------------------------------------------------------------------------- 10: manifests


def test_bad_manifest_rows_are_skipped_and_reported(model_dir, songs_dir, tmp_path):
    manifest = tmp_path / "songs.jsonl"
    lines = [
        json.dumps({"audio": str(songs_dir / "river.wav"), "lyrics": "the river"}),
        "",
        json.dumps({"audio": str(songs_dir / "storm.wav"), "lyrics": 12345}),  # line 3
        json.dumps({"audio": "", "lyrics": "no audio"}),  # line 4
        '{"audio": "broken',  # line 5
        json.dumps({"audio": str(songs_dir / "dance.wav"), "lyrics": "dance"}),
    ]
    manifest.write_text("\n".join(lines) + "\n", "utf-8")
    out = tmp_path / "out.jsonl"
    results, skipped = caption_files(manifest, model_dir, out=out, progress=False)
    assert [r.id for r in results] == ["river", "dance"] and all(r.caption for r in results)
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["river", "dance"]
    reasons = {item["item"]: item["reason"] for item in skipped.items}
    assert set(reasons) == {"songs.jsonl:3", "songs.jsonl:4", "songs.jsonl:5"}
    assert "int" in reasons["songs.jsonl:3"] and "JSON" in reasons["songs.jsonl:5"]
    assert json.loads(out.with_suffix(".skipped.json").read_text())["skipped"] == 3


def test_csv_with_a_byte_order_mark(model_dir, songs_dir, tmp_path):
    from recap.data.songs import load_rows

    manifest = tmp_path / "songs.csv"
    manifest.write_text(f"audio,lyrics\n{songs_dir / 'road.wav'},long road\n", "utf-8-sig")
    assert [s.id for s in collect_inputs(manifest)] == ["road"]
    dataset = tmp_path / "data"
    dataset.mkdir()
    (dataset / "df_full_train.csv").write_text(
        "music4all_id,lyrics,comment\nabc,some lyrics,a comment\n", "utf-8-sig"
    )
    assert [r.song_id for r in load_rows(dataset)] == ["abc"]


def test_captions_are_written_as_they_go(model_dir, songs_dir, tmp_path, monkeypatch):
    real = Captioner.caption_waveforms
    calls = []

    def killed_on_the_third_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Captioner, "caption_waveforms", killed_on_the_third_batch)
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        caption_files(songs_dir, model_dir, out=out, batch_size=1, progress=False)
    done = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(done) == 2 and all(d["caption"] for d in done)


def test_out_that_is_a_folder_is_refused_before_work(model_dir, songs_dir, tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("loaded the model")

    monkeypatch.setattr(Captioner, "from_pretrained", no_model)
    with pytest.raises(RecapError, match="is a folder"):
        caption_files(songs_dir, model_dir, out=tmp_path)


# ----------------------------------------------------------------------------- 12: the rest


def test_outputs_honour_the_umask(tmp_path):
    from recap.inference.index import IndexSettings, SongEntry, SongIndex
    from recap.utils import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        vectors = np.eye(3, dtype=np.float32)
        songs = [SongEntry(f"s{i}", "", f"k{i}") for i in range(3)]
        SongIndex(songs, vectors, vectors, IndexSettings("flat")).save(tmp_path / "index")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "index").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "index" / "meta.json").stat().st_mode) == 0o644


def test_deeply_nested_json_is_a_clear_error(tmp_path):
    from recap.data.songs import load_rows
    from recap.inference.inputs import read_manifest
    from recap.models.config import RecapConfig

    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "dataset.json").write_text(deep)
    with pytest.raises(RecapError, match="nested too deeply"):
        load_rows(tmp_path / "dataset.json")
    (tmp_path / "m.json").write_text(deep)
    with pytest.raises(RecapError, match="nested too deeply"):
        read_manifest(tmp_path / "m.json")
    (tmp_path / "config.json").write_text(deep)
    with pytest.raises(RecapError, match="RecursionError"):
        RecapConfig.load(tmp_path / "config.json")


def test_latin1_lyrics_are_read_not_missing(tmp_path):
    song_id, freqs, _ = SONGS[0]
    sf.write(tmp_path / f"{song_id}.wav", tone(freqs), RATE)
    (tmp_path / f"{song_id}.txt").write_bytes("Café für Straße\nÀ bientôt".encode("latin-1"))
    (song,) = collect_inputs(tmp_path)
    assert song.lyrics.startswith("Café für Straße")
