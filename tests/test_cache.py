"""Feature caches: keys, atomic per-song files, resume, no-op reruns, bad audio reporting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import recap.cli
import recap.data.cache as cache
from recap.data.audio import AudioConfig, load_excerpt
from recap.data.cache import EmbeddingStore, FeatureStore, cache_key, ensure_embeddings, precompute
from recap.data.songs import audio_path
from recap.models.music_encoder import MusicEncoder, MusicEncoderConfig

GOOD = ["s0", "S0", "s1", "s2", "s3"]  # "s0"/"S0": ids differing only in case must not collide


@pytest.fixture(scope="module")
def encoder() -> MusicEncoder:
    torch.manual_seed(0)
    return MusicEncoder(MusicEncoderConfig.preset("tiny")).eval()


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Five good 2 s clips (mixed formats/rates), one corrupt file, one song without audio."""
    audios = tmp_path / "audios"
    audios.mkdir()
    rows = []
    for i, sid in enumerate(GOOD + ["bad", "gone"]):
        rows.append({"music4all_id": sid, "lyrics": "la la", "comment": f"c{i}", "votes": 1})
    for i, sid in enumerate(GOOD):
        sr = (22050, 44100, 48000, 16000, 8000)[i]
        t = np.arange(2 * sr) / sr
        x = (0.4 * np.sin(2 * np.pi * (200 + 100 * i) * t)).astype(np.float32)
        sf.write(audios / f"{sid}.{('wav', 'flac', 'mp3', 'wav', 'ogg')[i]}", x, sr)
    (audios / "bad.mp3").write_bytes(b"\x00garbage" * 300)
    (tmp_path / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_cache_key_changes_with_every_setting(encoder: MusicEncoder) -> None:
    base = AudioConfig()
    key = cache_key("embeddings", base, encoder)
    assert key == cache_key("embeddings", AudioConfig(), encoder)  # stable
    other = MusicEncoder(encoder.config)
    other.load_state_dict(encoder.state_dict())
    assert cache_key("embeddings", base, other) == key  # same weights, same key
    with torch.no_grad():
        other.dense.weight[0, 0] += 1e-3  # one weight changes
    assert cache_key("embeddings", base, other) != key
    assert cache_key("embeddings", AudioConfig(offset="centre"), encoder) != key
    assert cache_key("embeddings", AudioConfig(duration=10.0), encoder) != key
    assert len({cache_key(k, base, encoder) for k in ("embeddings", "logmel", "waveform")}) == 3
    # the log-mel depends on the front end only, not on the CNN/transformer weights
    assert cache_key("logmel", base, other) == cache_key("logmel", base, encoder)
    assert cache_key("waveform", base) != cache_key("waveform", AudioConfig(offset=1.0))


def test_precompute_embeddings_and_report(dataset: Path, encoder: MusicEncoder) -> None:
    store, report = precompute(dataset, encoder, batch_size=2, num_workers=0, progress=False)
    assert sorted(store.keys()) == sorted(GOOD)
    assert isinstance(store, EmbeddingStore)
    emb = store["s1"]
    assert emb.dtype == np.float16 and emb.shape == (119, encoder.config.hidden_size)
    with torch.no_grad():
        wave = torch.from_numpy(load_excerpt(audio_path(dataset, "s1")).waveform)
        expected = encoder(wave[None])[0].numpy()
    np.testing.assert_allclose(emb.astype(np.float32), expected, atol=2e-2, rtol=1e-2)
    assert not np.array_equal(store["s0"], store["S0"])  # different tones, different files
    reasons = {i["item"]: i["reason"] for i in report.items}
    assert set(reasons) == {"bad", "gone"}
    assert "cannot decode" in reasons["bad"] and "missing audio" in reasons["gone"]
    written = json.loads((store.root / "skipped.json").read_text())
    assert written["skipped"] == 2
    assert store.root.parent == dataset / "cache" and store.root.name.startswith("embeddings-")
    assert EmbeddingStore.open(dataset).root == store.root
    assert "bad" not in store and "nothing" not in store
    with pytest.raises(KeyError):
        store["bad"]


def test_precompute_resumes_and_second_run_is_a_noop(
    dataset: Path, encoder: MusicEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    real = cache._run_batch

    def counting(model, kind, batch, device):
        calls.append([sid for sid, _ in batch])
        if fail_on is not None and len(calls) == fail_on:
            raise KeyboardInterrupt("simulated kill")  # an encoder error no longer stops the job
        return real(model, kind, batch, device)

    monkeypatch.setattr(cache, "_run_batch", counting)
    # 1. a pre-filled partial cache: two songs done
    fail_on = None
    precompute(dataset, encoder, batch_size=2, num_workers=0, song_ids=["s0", "S0"], progress=False)
    assert calls == [["s0", "S0"]]
    # 2. a run that dies on its second batch: the first batch's files survive, no temp files
    calls.clear()
    fail_on = 2
    with pytest.raises(KeyboardInterrupt, match="simulated"):
        precompute(dataset, encoder, batch_size=1, num_workers=0, progress=False)
    assert calls == [["s1"], ["s2"]]
    store = EmbeddingStore.open(dataset)
    assert sorted(store.keys()) == ["S0", "s0", "s1"]
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]
    # 3. the rerun computes only what is missing
    calls.clear()
    fail_on = None
    store, report = precompute(dataset, encoder, batch_size=4, num_workers=0, progress=False)
    assert calls == [["s2", "s3"]]
    assert sorted(store.keys()) == sorted(GOOD) and len(report) == 2
    # 4. everything usable cached, bad songs are retried (and reported again), nothing recomputed
    calls.clear()
    before = {sid: store.path_for(sid).stat().st_mtime_ns for sid in GOOD}
    store, report = precompute(dataset, encoder, batch_size=4, num_workers=0, progress=False)
    assert calls == [] and len(report) == 2
    assert {sid: store.path_for(sid).stat().st_mtime_ns for sid in GOOD} == before
    # 5. with only good songs asked for, it returns before decoding anything
    monkeypatch.setattr(cache, "_excerpts", None)  # would fail if called
    store, report = precompute(dataset, encoder, song_ids=GOOD, progress=False)
    assert len(report) == 0


def test_waveform_cache_with_a_process_pool(dataset: Path) -> None:
    config = AudioConfig(duration=3.0, offset="centre")
    store, report = precompute(
        dataset, None, audio_config=config, kind="waveform", num_workers=2, batch_size=2,
        progress=False,
    )  # fmt: skip
    assert sorted(store.keys()) == sorted(GOOD) and len(report) == 2
    wave = store["s2"]
    assert wave.dtype == np.float16 and wave.shape == (48_000,)
    ref = load_excerpt(audio_path(dataset, "s2"), config).waveform
    np.testing.assert_allclose(wave.astype(np.float32), ref, atol=1e-3)
    assert FeatureStore.open(dataset, kind="waveform").meta["audio_config"]["offset"] == "centre"


def test_logmel_cache(dataset: Path, encoder: MusicEncoder) -> None:
    store, _ = precompute(
        dataset, encoder, kind="logmel", num_workers=0, song_ids=["s3"], progress=False
    )
    mel = store["s3"]
    assert mel.dtype == np.float16 and mel.shape == (encoder.config.n_mels, 938)


def test_ensure_embeddings_computes_only_the_requested_songs(
    dataset: Path, encoder: MusicEncoder
) -> None:
    store = ensure_embeddings(dataset, encoder, ["s1", "s3", "gone"], num_workers=0, progress=False)
    assert sorted(store.keys()) == ["s1", "s3"] and "gone" not in store


def test_precompute_command(
    dataset: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(recap.cli, "COMMAND_MODULES", ("recap.cli.precompute",))
    argv = ["precompute", "--data", str(dataset), "--kind", "waveform", "--workers", "0"]
    assert recap.cli.main(argv + ["--duration", "1"]) == 0
    out = capsys.readouterr().out
    assert "skipped: 2" in out and "missing audio" in out
    assert recap.cli.main(["precompute", "--data", str(dataset)]) == 2  # no encoder given


def test_a_song_the_encoder_fails_on_does_not_stop_the_others(dataset: Path, encoder, monkeypatch):
    import recap.data.cache as cache_mod

    real = cache_mod._run_batch

    def fails_on_s2(model, kind, batch, device):
        if any(sid == "s2" for sid, _ in batch):
            raise RuntimeError("encoder blew up")
        return real(model, kind, batch, device)

    monkeypatch.setattr(cache_mod, "_run_batch", fails_on_s2)
    store, report = precompute(dataset, encoder, batch_size=4, num_workers=0, progress=False)
    assert sorted(store) == sorted(set(GOOD) - {"s2"})  # its batch-mates were still cached
    assert any(i["item"] == "s2" and "encoder blew up" in i["reason"] for i in report.items)


def test_windowed_embedding_cache(tmp_path: Path, encoder: MusicEncoder) -> None:
    """Songs of 40 s and 10 s heard in up to 4 windows: (3*M, D) and (M, D), under their own key."""
    audios = tmp_path / "audios"
    audios.mkdir()
    sr = 8000
    for sid, seconds in (("long", 40), ("short", 10)):
        t = np.arange(seconds * sr) / sr
        sf.write(audios / f"{sid}.wav", (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), sr)
    rows = [{"music4all_id": s, "lyrics": "la", "comment": s} for s in ("long", "short")]
    (tmp_path / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = AudioConfig(windows=4)
    store, report = precompute(
        tmp_path, encoder, audio_config=config, num_workers=0, progress=False
    )
    assert (
        len(report) == 0
        and store.root.name == f"embeddings-{cache_key('embeddings', config, encoder)}"
    )
    m = encoder.output_length(config.n_samples)
    assert store["long"].shape == (3 * m, encoder.config.hidden_size)
    assert store["short"].shape == (m, encoder.config.hidden_size)
    one, _ = precompute(tmp_path, encoder, num_workers=0, progress=False)
    assert one.root != store.root  # one window: the old cache, untouched
    # Window k of the long song is the one-window embedding of the excerpt at k * 15 s.
    with torch.no_grad():
        third = encoder(
            torch.from_numpy(
                load_excerpt(audios / "long.wav", AudioConfig(offset=30.0)).waveform[None]
            )
        )
    np.testing.assert_allclose(store["long"][2 * m :], third[0].numpy(), atol=2e-2, rtol=1e-2)
    np.testing.assert_allclose(store["long"][:m], one["long"], atol=1e-3)
