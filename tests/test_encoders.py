"""The music-encoder seam: specs and the registry, CLAP's audio tower (kind hf) on a tiny
randomly initialised checkpoint saved to a folder, its cache, a captioner trained and reloaded
with it, and config.json's music_kind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from support import RATE, SONGS, make_tiny_clap, tone

import recap.cli
from recap.data.audio import AudioConfig
from recap.data.cache import cache_key, cache_settings, precompute
from recap.models.config import RecapConfig
from recap.models.encoders import (
    MusicEncoderProtocol,
    audio_config_for,
    build_music_encoder,
    parse_encoder_spec,
)
from recap.models.hf_audio import HFAudioEncoder
from recap.models.music_encoder import MusicEncoder, MusicEncoderConfig
from recap.utils import RecapError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory) -> Path:
    return make_tiny_clap(tmp_path_factory.mktemp("clap"))


@pytest.fixture(scope="module")
def clap(clap_dir: Path) -> HFAudioEncoder:
    return build_music_encoder(f"hf:{clap_dir}")


@pytest.fixture
def audio_folder(tmp_path: Path) -> Path:
    """A dataset folder holding only audios/ (2 s tones at 22.05 kHz): precompute lists them."""
    (tmp_path / "audios").mkdir()
    for song_id, freqs, _ in SONGS[:3]:
        sf.write(tmp_path / "audios" / f"{song_id}.wav", tone(freqs), RATE)
    return tmp_path


# ----------------------------------------------------------------------------- specs


def test_specs_name_a_kind_and_what_to_load(tmp_path: Path) -> None:
    assert parse_encoder_spec("hf:laion/larger_clap_music") == ("hf", "laion/larger_clap_music")
    assert parse_encoder_spec("hf:/data/clap") == ("hf", "/data/clap")
    assert parse_encoder_spec("tiny") == ("cnnsa", "tiny")
    assert parse_encoder_spec("cnnsa:runs/tagger") == ("cnnsa", "runs/tagger")
    assert parse_encoder_spec(r"C:\encoders\best_model.pth")[0] == "cnnsa"  # a drive, no kind
    odd = tmp_path / "mert:v1"  # an existing folder whose name has a colon stays a path
    odd.mkdir()
    assert parse_encoder_spec(odd) == ("cnnsa", str(odd))
    with pytest.raises(RecapError, match="unknown music encoder kind 'mert'.*cnnsa, hf"):
        parse_encoder_spec("mert:m-a-p/MERT-v1-95M")
    with pytest.raises(RecapError, match="names no model"):
        parse_encoder_spec("hf:")


def test_offline_a_hub_name_not_in_the_cache_fails_clearly(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RecapError, match="hf:nobody/no-such-clap .*HF_HUB_OFFLINE=1"):
        build_music_encoder("hf:nobody/no-such-clap")


def test_folders_asking_for_remote_code_or_holding_other_models_are_refused(
    tmp_path: Path, clap_dir: Path
) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    config = json.loads((clap_dir / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.M"}}))
    with pytest.raises(RecapError, match="auto_map"):
        build_music_encoder(f"hf:{remote}")
    bart = tmp_path / "bart"
    bart.mkdir()
    (bart / "config.json").write_text(json.dumps({"model_type": "bart"}))
    with pytest.raises(RecapError, match="'bart' model.*CLAP"):
        build_music_encoder(f"hf:{bart}")
    with pytest.raises(RecapError, match="no config.json"):
        build_music_encoder(f"hf:{tmp_path}")


def test_both_encoders_implement_the_protocol(clap: HFAudioEncoder) -> None:
    cnnsa = MusicEncoder(MusicEncoderConfig.preset("tiny"))
    for encoder, kind, rate, width in ((cnnsa, "cnnsa", 16_000, 16), (clap, "hf", 48_000, 16)):
        assert isinstance(encoder, MusicEncoderProtocol)
        assert (encoder.kind, encoder.sample_rate, encoder.hidden_size) == (kind, rate, width)
        assert build_music_encoder(encoder) is encoder  # an encoder passes through
        assert audio_config_for(encoder).sample_rate == rate
    assert audio_config_for(None).sample_rate == AudioConfig().sample_rate


# ----------------------------------------------------------------------------- CLAP tokens


def test_clap_tokens_are_patch_tokens_of_evenly_spread_windows(clap: HFAudioEncoder) -> None:
    assert clap.window == 48_000  # max_length_s = 1 of the tiny extractor
    assert clap.window_starts(30_000) == [0]  # fits: one (repeat-padded) window
    assert clap.window_starts(48_000) == [0]
    assert clap.window_starts(120_000) == [0, 36_000, 72_000]  # 3 windows, the last ends at T
    rng = np.random.default_rng(0)
    wave = torch.from_numpy(rng.standard_normal((2, 120_000)).astype(np.float32) * 0.1)
    np.random.seed(7)
    before = np.random.get_state()[1].copy()
    with torch.no_grad():
        tokens = clap(wave)
        again = clap(wave)
        alone = clap(wave[1])  # (T,) is one clip; its tokens do not depend on its batch-mates
        # CLAP's pooled vector of each window is the mean of that window's tokens
        features, _ = clap.features(wave[:1])
        out = clap.model(input_features=features, is_longer=torch.zeros(3, 1, dtype=torch.bool))
    assert np.array_equal(np.random.get_state()[1], before)  # numpy's global state untouched
    assert tokens.shape == (2, 3 * 64, 16)  # (B, W·F'·T', D)
    assert torch.equal(tokens, again)  # deterministic: no random crops, no random fusion
    torch.testing.assert_close(alone[0], tokens[1], rtol=1e-5, atol=1e-5)
    window_means = tokens[0].reshape(3, 64, 16).mean(dim=1)  # (W, D)
    torch.testing.assert_close(window_means, out.pooler_output, rtol=1e-5, atol=1e-5)


def test_a_full_clap_checkpoint_gives_its_audio_tower_weights(tmp_path: Path) -> None:
    from transformers import ClapModel

    folder = make_tiny_clap(tmp_path / "full", full=True)
    encoder = build_music_encoder(f"hf:{folder}")
    reference = ClapModel.from_pretrained(folder).audio_model.state_dict()
    loaded = encoder.model.state_dict()
    assert set(loaded) == set(reference)
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)
    with torch.no_grad():  # its "fusion" extractor (4 mels per window) works with is_longer off
        assert encoder(torch.zeros(1, 48_000) + 0.01).shape == (1, 64, 16)


def test_fingerprint_follows_weights_and_settings_not_the_source(
    clap: HFAudioEncoder, clap_dir: Path, tmp_path: Path
) -> None:
    import shutil

    copy = Path(shutil.copytree(clap_dir, tmp_path / "elsewhere"))
    assert build_music_encoder(f"hf:{copy}").fingerprint() == clap.fingerprint()
    other = build_music_encoder(f"hf:{make_tiny_clap(tmp_path / 'other', seed=1)}")
    assert other.fingerprint() != clap.fingerprint()
    rebuilt = HFAudioEncoder.from_config(clap.config)  # the shape alone: fresh weights
    assert rebuilt.fingerprint() != clap.fingerprint()
    rebuilt.load_state_dict(clap.state_dict())
    assert rebuilt.fingerprint() == clap.fingerprint()


# ----------------------------------------------------------------------------- cache


def test_precompute_with_an_hf_encoder(
    audio_folder: Path, clap: HFAudioEncoder, clap_dir: Path, tmp_path: Path, capsys
) -> None:
    config = AudioConfig(duration=2.0)
    store, report = precompute(
        audio_folder, f"hf:{clap_dir}", audio_config=config, num_workers=0, progress=False
    )
    assert len(report) == 0 and sorted(store) == sorted(s for s, _, _ in SONGS[:3])
    assert store["river"].shape == (2 * 64, 16) and store["river"].dtype == np.float16
    meta = json.loads((store.root / "meta.json").read_text())
    assert meta["encoder_kind"] == "hf" and meta["audio_config"]["sample_rate"] == 48_000
    at_rate = audio_config_for(clap, config)
    assert store.root.name == f"embeddings-{cache_key('embeddings', at_rate, clap)}"
    assert cache_settings("embeddings", at_rate, clap)["encoder"] == clap.fingerprint()
    # the cached tokens are the encoder's own, from the file resampled 22.05 → 48 kHz
    from recap.data.audio import load_excerpt

    wave = load_excerpt(audio_folder / "audios" / "river.wav", at_rate).waveform
    with torch.no_grad():
        direct = clap(torch.from_numpy(wave)[None])[0].numpy()
    np.testing.assert_allclose(store["river"], direct, rtol=2e-3, atol=2e-3)
    # other weights: another folder beside it; the same weights again: nothing to do
    other = make_tiny_clap(tmp_path / "other", seed=1)
    store2, _ = precompute(audio_folder, f"hf:{other}", audio_config=config, num_workers=0,
                           progress=False)  # fmt: skip
    assert store2.root != store.root
    mtime = (store.root / "meta.json").stat().st_mtime_ns
    argv = ["precompute", "--data", str(audio_folder), "--encoder", f"hf:{clap_dir}"]
    assert recap.cli.main(argv + ["--duration", "2", "--workers", "0"]) == 0
    assert f"cache: {store.root} (3 songs)" in capsys.readouterr().out
    assert (store.root / "meta.json").stat().st_mtime_ns == mtime
    with pytest.raises(RecapError, match="logmel cache holds CNNSA's mel front end"):
        precompute(audio_folder, clap, kind="logmel", num_workers=0, progress=False)


def test_cnnsa_cache_settings_keep_their_shape() -> None:
    """CNNSA caches made before the seam keep their keys: the same settings are hashed."""
    encoder = MusicEncoder(MusicEncoderConfig.preset("tiny"))
    settings = cache_settings("embeddings", AudioConfig(), encoder)
    assert set(settings) == {"cache_version", "kind", "audio", "mel", "encoder"}
    assert settings["mel"] == encoder.mel_fingerprint()
    assert settings["encoder"] == encoder.fingerprint()


# ----------------------------------------------------------------------------- config


def test_music_kind_round_trips_and_old_configs_are_cnnsa(
    clap: HFAudioEncoder, tmp_path: Path
) -> None:
    config = RecapConfig.preset("recap", "tiny", music_kind="hf", music=clap.config.to_dict())
    assert config.music_dim == 16
    loaded = RecapConfig.load(config.save(tmp_path / "hf"))
    assert loaded.music_kind == "hf" and loaded.music == clap.config
    old = RecapConfig.preset("recap", "tiny").to_dict()
    del old["music_kind"]  # a config.json written before the field existed
    (tmp_path / "old.json").write_text(json.dumps(old))
    legacy = RecapConfig.load(tmp_path / "old.json")
    assert legacy.music_kind == "cnnsa" and legacy.music == MusicEncoderConfig.preset("tiny")
    with pytest.raises(RecapError, match="unknown music_kind 'mert'"):
        RecapConfig.preset("recap", "tiny", music_kind="mert")


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_a_captioner_trains_captions_and_reloads_with_clap(clap_dir: Path, tmp_path: Path):
    """recap train --encoder hf:DIR → RUN/best reloads with the CLAP tower → recap caption."""
    from test_train import make_dataset, tiny_config

    from recap.inference.caption_job import caption_files
    from recap.models.model import RecapModel
    from recap.training.train import train

    data = make_dataset(tmp_path / "data", n_songs=6, per_song=2, audio=True)
    run = train(tiny_config(data, tmp_path / "run", epochs=1, embed_workers=0,
                            encoder=f"hf:{clap_dir}"))  # fmt: skip
    saved = json.loads((run / "best" / "config.json").read_text())
    assert saved["music_kind"] == "hf" and saved["music"]["hidden_size"] == 16
    model = RecapModel.from_pretrained(run / "best")
    assert isinstance(model.music_encoder, HFAudioEncoder)
    assert model.music_encoder.fingerprint() == build_music_encoder(f"hf:{clap_dir}").fingerprint()
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any("caption_loss" in r for r in log)  # it trained
    (cache,) = (data / "cache").glob("embeddings-*")  # one cache, of CLAP tokens from 48 kHz
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["encoder_kind"] == "hf" and meta["audio_config"]["sample_rate"] == 48_000

    (tmp_path / "song.txt").write_text("love night river\nsun rain heart\n")
    sf.write(tmp_path / "song.wav", tone((330.0,)), RATE)
    results, _ = caption_files(tmp_path / "song.wav", run, out=tmp_path / "out.jsonl",
                               progress=False, encoder=f"hf:{clap_dir}")  # fmt: skip
    assert len(results) == 1 and results[0].error is None and isinstance(results[0].caption, str)
    other = make_tiny_clap(tmp_path / "other", seed=1)
    with pytest.raises(RecapError, match="carries its own music encoder"):
        caption_files(tmp_path / "song.wav", run, progress=False, encoder=f"hf:{other}")


def test_caption_attaches_the_encoder_to_a_model_saved_without_one(
    clap: HFAudioEncoder, clap_dir: Path, tmp_path: Path
) -> None:
    from support import CAPTIONS

    from recap.inference.captioner import Captioner
    from recap.models.model import RecapModel
    from recap.models.tokenizer import train_bpe_tokenizer

    texts = [lyr for _, _, lyr in SONGS] + list(CAPTIONS.values())
    tokenizer = train_bpe_tokenizer(texts * 3, vocab_size=320)
    config = RecapConfig.preset("recap", "tiny", music_kind="hf", music=clap.config)
    RecapModel(config).save_pretrained(tmp_path / "bare", tokenizer=tokenizer)
    with pytest.raises(RecapError, match="no music encoder.*--encoder"):
        Captioner.from_pretrained(tmp_path / "bare")
    with pytest.raises(RecapError, match="trained on a hf music encoder, not cnnsa"):
        Captioner.from_pretrained(tmp_path / "bare", encoder="tiny")
    captioner = Captioner.from_pretrained(tmp_path / "bare", encoder=f"hf:{clap_dir}")
    assert captioner.audio_config.sample_rate == 48_000
    sf.write(tmp_path / "song.wav", tone((440.0,)), RATE)
    caption = captioner.caption(tmp_path / "song.wav", "cold winter night", max_new_tokens=4)
    assert isinstance(caption, str)


def test_tagger_train_refuses_an_hf_encoder(clap_dir: Path, tmp_path: Path, capsys) -> None:
    argv = ["tagger", "train", "--data", str(tmp_path), "--out", str(tmp_path / "t")]
    assert recap.cli.main(argv + ["--encoder", f"hf:{clap_dir}"]) == 2
    err = capsys.readouterr().err
    assert "trains a CNNSA music encoder from scratch" in err and "RECAP uses frozen" in err
