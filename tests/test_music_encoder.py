"""CNNSA music encoder: golden reference outputs, checkpoint loading, shapes and persistence."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from recap.models.mel import htk_mel_filterbank
from recap.models.music_encoder import MusicEncoder, MusicEncoderConfig, load_music_encoder
from recap.utils import RecapError

REFERENCE_PARAMS = 10_521_652  # SPEC §1.1 / cnnsa_ref_meta.json


def tiny(**overrides) -> MusicEncoder:
    torch.manual_seed(0)
    return MusicEncoder(MusicEncoderConfig.preset("tiny", **overrides)).eval()


# ----------------------------------------------------------------------------- golden reference


def merged_reference_state(ref_dir: Path) -> dict[str, torch.Tensor]:
    """SPEC §5: one state dict in two files; floats stored as fp16, cast back to fp32."""
    state: dict[str, torch.Tensor] = {}
    for part in ("cnnsa_ref_weights_part1.pt", "cnnsa_ref_weights_part2.pt"):
        state.update(torch.load(ref_dir / part, map_location="cpu", weights_only=True))
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


@pytest.fixture(scope="module")
def reference(shared_dir: Path):
    ref_dir = shared_dir / "reference" / "cnnsa"
    state = merged_reference_state(ref_dir)
    io = torch.load(ref_dir / "cnnsa_ref_io.pt", map_location="cpu", weights_only=True)
    meta = json.loads((ref_dir / "cnnsa_ref_meta.json").read_text())
    model = MusicEncoder.from_checkpoint(state).float()
    return model, state, io, meta


def test_golden_reference_outputs(reference):
    model, _, io, meta = reference
    assert not model.training
    with torch.no_grad():
        log_mel = model.log_mel(io["waveform"])
        sequence = model(io["waveform"])
        tags = torch.sigmoid(model.tag_logits_from_sequence(sequence))
    assert log_mel.shape == (2, 128, 938) and sequence.shape == (2, 119, 256)
    err_mel = (log_mel - io["log_mel_db"]).abs().max().item()
    err_seq = (sequence - io["sequence"]).abs().max().item()
    err_tags = (tags - io["tags"]).abs().max().item()
    print(
        f"golden max abs error: log-mel dB {err_mel:.2e}, sequence {err_seq:.2e}, tags {err_tags:.2e}"
    )
    assert err_mel < 1e-2
    assert err_seq < 1e-4
    assert err_tags < 1e-5
    assert sum(p.numel() for p in model.parameters()) == meta["n_params"] == REFERENCE_PARAMS
    assert model.output_length(io["waveform"].shape[1]) == 119


def test_recomputed_filterbank_is_torchaudios(reference):
    model, state, _, _ = reference
    # float32 construction equals torchaudio's stored buffer exactly
    assert torch.equal(htk_mel_filterbank(257, 0.0, 8000.0, 128, 16000), state["spec.mel_scale.fb"])
    assert torch.equal(model.spec.spectrogram.window, state["spec.spectrogram.window"])


@pytest.mark.parametrize("fb_shape", [(0,), (128, 257), (256, 128)])
def test_checkpoint_with_other_filterbank_shape(reference, tmp_path, fb_shape):
    model, state, io, _ = reference
    odd = dict(state)
    odd["spec.mel_scale.fb"] = torch.zeros(fb_shape)
    # a training checkpoint: nested, DataParallel prefixes, plus the legacy 64-copy CLS
    odd["vec_cls"] = model.cls_vector.expand(64, -1).unsqueeze(1).clone()  # (64, 1, 256)
    path = tmp_path / "best_model.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in odd.items()}}, path)
    loaded = load_music_encoder(path)
    assert loaded.config.n_mels == 128 and loaded.config.n_tags == 50
    wav = io["waveform"][:, :4000]
    with torch.no_grad():
        assert torch.equal(loaded(wav), model(wav))


def test_explicit_config_overrides_a_stored_filterbank(reference):
    model, state, io, _ = reference
    odd = dict(state, **{"spec.mel_scale.fb": torch.zeros(257, 96)})
    # without a config, (257, 96) reads as a 96-band model ...
    assert MusicEncoder.from_checkpoint(odd).config.n_mels == 96
    # ... with one, the filterbank is recomputed for it
    loaded = MusicEncoder.from_checkpoint(odd, config=MusicEncoderConfig())
    wav = io["waveform"][:, :4000]
    with torch.no_grad():
        assert torch.equal(loaded(wav), model(wav))


# ----------------------------------------------------------------------------- architecture


def test_reference_config_keys_and_param_count(shared_dir):
    meta = json.loads((shared_dir / "reference" / "cnnsa" / "cnnsa_ref_meta.json").read_text())
    with torch.device("meta"):
        model = MusicEncoder(MusicEncoderConfig.preset("reference"))
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == meta["keys"]
    assert "cls_vector" not in shapes  # fixed, recomputed: never saved


def test_default_config_param_count_on_meta_device():
    with torch.device("meta"):
        model = MusicEncoder()
    n = sum(p.numel() for p in model.parameters())
    assert n == REFERENCE_PARAMS
    assert round(n / 1e6, 2) == 10.52
    assert model.config.hidden_size == 256 and model.config.ffn_dim == 1024


def test_cls_vector_is_the_seeded_numpy_draw():
    model = tiny()
    np.random.seed(0)
    expected = torch.tensor(np.random.random((1, 16)), dtype=torch.float32)
    assert torch.equal(model.cls_vector, expected)


def test_batches_above_64_and_rows_are_independent():
    model = tiny()
    wav = torch.randn(65, 2000)  # (B, T), B > the reference's 64-copy CLS limit
    with torch.no_grad():
        seq = model(wav)
        single = model(wav[-1:])
    assert seq.shape == (65, model.output_length(2000), 16)
    torch.testing.assert_close(seq[-1:], single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_samples", [257, 1000, 4096, 16000, 16257])
def test_output_length_matches_forward(num_samples):
    model = tiny()
    wav = torch.randn(2, num_samples)
    with torch.no_grad():
        log_mel = model.log_mel(wav)
        seq = model(wav)
    assert log_mel.shape == (2, 32, model.num_frames(num_samples))
    assert seq.shape == (2, model.output_length(num_samples), 16)


def test_reference_lengths():
    model = tiny()  # lengths depend only on hop and strides, shared with the reference
    assert model.num_frames(240_000) == 938
    assert model.output_length(240_000) == 119
    # time 938 → 469 → 235 → 118, plus CLS
    assert model.output_length(240_000) == 1 + math.ceil(math.ceil(math.ceil(938 / 2) / 2) / 2)


def test_log_mel_peaks_at_the_tone_band():
    model = tiny(n_mels=128)
    t = torch.arange(16000) / 16000
    tone = torch.sin(2 * math.pi * 1000.0 * t).unsqueeze(0)  # (1, T) 1 kHz
    log_mel = model.log_mel(tone)  # (1, 128, frames)
    peak_band = log_mel[0, :, 10:-10].mean(-1).argmax().item()
    fb = model.spec.mel_scale.fb  # (257, 128); 1 kHz is FFT bin 32
    assert peak_band == fb[32].argmax().item()


def test_filterbank_matches_librosa():
    import librosa

    for n_mels in (128, 32):
        ours = htk_mel_filterbank(257, 0.0, 8000.0, n_mels, 16000)
        theirs = librosa.filters.mel(
            sr=16000, n_fft=512, n_mels=n_mels, fmin=0.0, fmax=8000.0, htk=True, norm=None
        ).T  # (257, n_mels)
        assert ours.shape == theirs.shape
        assert np.abs(ours.numpy() - theirs).max() < 1.5e-5
        ours64 = htk_mel_filterbank(257, 0.0, 8000.0, n_mels, 16000, dtype=torch.float64)
        assert np.abs(ours64.numpy() - theirs).max() < 1e-6


def test_dtypes_follow_the_model():
    model = tiny()
    wav = torch.randn(2, 3000)
    with torch.no_grad():
        ref = model(wav)
        assert model(wav.double()).dtype == torch.float32
        torch.testing.assert_close(model(wav.half()), ref, atol=1e-2, rtol=1e-2)
        assert model.double()(wav).dtype == torch.float64


def test_mel_front_end_ignores_autocast():
    model = tiny()
    wav = 0.9 * torch.randn(2, 3000)
    reference = model.log_mel(wav)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = model.log_mel(wav)
        seq = model(wav)
    assert autocast.dtype == torch.float32
    assert torch.equal(autocast, reference)
    assert torch.isfinite(seq).all()


def test_tag_logits_train_with_bce():
    model = tiny().train()
    wav = torch.randn(4, 3000)
    target = torch.randint(0, 2, (4, 50)).float()
    logits = model.tag_logits(wav)
    assert logits.shape == (4, 50)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    loss.backward()
    assert model.layer1.conv_1.weight.grad.abs().sum() > 0
    assert model.dense.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.tag(wav), torch.sigmoid(model.tag_logits(wav)))


# ----------------------------------------------------------------------------- persistence


def test_config_round_trip_and_presets():
    config = MusicEncoderConfig.preset("tiny", n_tags=3, tag_names=["rock", "jazz", "pop"])
    again = MusicEncoderConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert MusicEncoderConfig.preset("reference") == MusicEncoderConfig()
    assert MusicEncoderConfig.preset("small").hidden_size == 64
    mini = MusicEncoderConfig.preset("mini")
    assert (mini.hidden_size, mini.n_mels, mini.top_db) == (32, 32, 80.0)
    demo = MusicEncoderConfig.preset("demo")
    assert (demo.hidden_size, demo.n_mels, demo.n_fft, demo.hop_length) == (32, 64, 2048, 512)
    assert (demo.f_min, demo.f_max, demo.top_db) == (60.0, 4000.0, 80.0)
    # 15 s → 469 frames → 59 tokens + CLS: half the reference's sequence
    assert MusicEncoder(demo).output_length(240_000) == 60
    assert MusicEncoderConfig().top_db is None  # the reference has no floor


def test_top_db_floors_each_clip_below_its_peak():
    floored = tiny(top_db=20.0)
    plain = tiny()
    plain.load_state_dict(floored.state_dict())
    log_mel = torch.randn(2, 32, 64) * 30.0  # (B, n_mels, frames) dB
    log_mel[1] += 50.0  # the second clip is louder: its floor is its own peak - 20
    log_mel[:, :, :8] = -100.0  # digital silence
    peak = log_mel.amax(dim=(1, 2), keepdim=True)
    by_hand = torch.maximum(log_mel, peak - 20.0)
    with torch.no_grad():
        torch.testing.assert_close(floored.embed_log_mel(log_mel), plain.embed_log_mel(by_hand))
        assert not torch.allclose(plain.embed_log_mel(log_mel), plain.embed_log_mel(by_hand))


def test_save_pretrained_round_trip(tmp_path):
    model = tiny(n_tags=3, tag_names=["a", "b", "c"])
    model.train()
    model(torch.randn(3, 3000))  # move BatchNorm running statistics off their init
    model.eval()
    model.save_pretrained(tmp_path / "enc")
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded = load_music_encoder(tmp_path / "enc")
    assert loaded.config == model.config and not loaded.training
    wav = torch.randn(2, 3000)
    with torch.no_grad():
        assert torch.equal(loaded(wav), model(wav))
        assert torch.equal(loaded.tag(wav), model.tag(wav))
    # The same weights saved again give the same bytes: a run's sha256 can be compared with
    # another's (safetensors wrote a two-key metadata in a changing order, 1 save in 2).
    first = (tmp_path / "enc" / "model.safetensors").read_bytes()
    for i in range(8):
        model.save_pretrained(tmp_path / f"again{i}")
        assert (tmp_path / f"again{i}" / "model.safetensors").read_bytes() == first


def test_preset_name_loads_untrained_with_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="recap.models.music_encoder"):
        model = load_music_encoder("tiny")
    assert isinstance(model, MusicEncoder) and not model.training
    assert "not a trained model" in caplog.text


# ----------------------------------------------------------------------------- errors


def test_checkpoint_head_size_wins_over_config():
    source = tiny(n_tags=7)
    loaded = MusicEncoder.from_checkpoint(
        source.state_dict(), config=MusicEncoderConfig.preset("tiny", n_tags=50)
    )
    assert loaded.config.n_tags == 7
    wav = torch.randn(1, 3000)
    with torch.no_grad():
        assert torch.equal(loaded.tag(wav), source.tag(wav))


def test_load_errors(tmp_path):
    with pytest.raises(RecapError, match="neither a folder"):
        load_music_encoder(tmp_path / "missing.pth")
    with pytest.raises(RecapError, match="not found"):
        MusicEncoder.from_checkpoint(tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(RecapError, match="cannot read"):
        load_music_encoder(garbage)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(RecapError, match="config.json missing"):
        load_music_encoder(empty_dir)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {"linear.weight": torch.zeros(2, 2)}}, foreign)
    with pytest.raises(RecapError, match="not a CNNSA checkpoint"):
        load_music_encoder(foreign)
    # the right family, the wrong sizes for the requested config
    with pytest.raises(RecapError, match="does not fit"):
        MusicEncoder.from_checkpoint(tiny().state_dict(), config=MusicEncoderConfig())
    # an unexpected key is an incompatibility too, not silently ignored
    extra = dict(tiny().state_dict(), **{"head2.weight": torch.zeros(1)})
    with pytest.raises(RecapError, match="does not fit"):
        MusicEncoder.from_checkpoint(extra)


def test_config_errors():
    with pytest.raises(RecapError, match="n_mels=256"):
        MusicEncoderConfig(n_mels=256)
    with pytest.raises(RecapError, match="not divisible"):
        MusicEncoderConfig(n_channels=6, n_heads=8)
    with pytest.raises(RecapError, match="tag_names"):
        MusicEncoderConfig(n_tags=2, tag_names=["a"])
    with pytest.raises(RecapError, match="top_db must be positive"):
        MusicEncoderConfig(top_db=0.0)
    with pytest.raises(RecapError, match="unknown music encoder preset"):
        MusicEncoderConfig.preset("huge")
    with pytest.raises(RecapError, match="unknown MusicEncoderConfig field"):
        MusicEncoderConfig.from_dict({"n_chanels": 4})
    with pytest.raises(RecapError, match="too short"):
        tiny().log_mel(torch.zeros(1, 256))


def test_chroma_tokens_hear_the_pitch_classes_and_round_trip(tmp_path):
    """`chroma_tokens`: log_mel gains 12 chroma rows, each token the profile of its frames, and
    the tokens depend on those rows; the reference's weights and cache key stay as they were."""
    model = tiny(chroma_tokens=True, n_fft=2048, n_mels=64, f_min=60.0, f_max=4000.0)
    plain = tiny(n_fft=2048, n_mels=64, f_min=60.0, f_max=4000.0)
    t = torch.arange(3 * 16_000) / 16_000
    triad = sum(torch.sin(2 * math.pi * hz * t) for hz in (440.0, 554.37, 659.26))  # A C# E
    log_mel = model.log_mel(triad.unsqueeze(0))
    assert log_mel.shape[1] == 64 + 12 == model.config.log_mel_rows
    torch.testing.assert_close(log_mel[:, :64], plain.log_mel(triad.unsqueeze(0)))
    profile = model._chroma_per_token(log_mel[:, 64:])  # (1, T', 12)
    assert profile.shape == (1, model.output_length(t.numel()) - 1, 12)
    assert set(profile[0].mean(dim=0).topk(3).indices.tolist()) == {9, 1, 4}  # A, C#, E
    model.eval()
    with torch.no_grad():
        moved = log_mel.clone()
        moved[:, 64:] = log_mel[:, 64:].roll(2, dims=1)  # the same triad two semitones up
        assert not torch.allclose(model.embed_log_mel(log_mel), model.embed_log_mel(moved))
        with pytest.raises(RecapError, match="76 log-mel rows, got 64"):
            model.embed_log_mel(log_mel[:, :64])
    # the filterbank is computed, not stored: the state dict gains only the projection
    assert set(model.state_dict()) - set(plain.state_dict()) == {
        "chroma_proj.weight",
        "chroma_proj.bias",
    }
    assert model.mel_fingerprint() != plain.mel_fingerprint()
    model.save_pretrained(tmp_path / "enc")
    loaded = load_music_encoder(tmp_path / "enc")
    assert loaded.config.chroma_tokens
    with torch.no_grad():
        assert torch.equal(loaded(triad.unsqueeze(0)), model(triad.unsqueeze(0)))
    assert MusicEncoderConfig.preset("demo-chroma").chroma_tokens
    assert not MusicEncoderConfig.preset("demo").chroma_tokens


def test_chroma_make_low_band_compressed_and_clip_normalised():
    """`chroma_f_max`, `chroma_power`, `chroma_norm` (preset `demo-key`): bins above the band
    leave the profile, the cache key follows the rows' make (not the normalisation, which is
    applied after the cache), and with "clip" the token profiles weigh by loudness: their mean
    is the excerpt's profile, a quiet token's profile is small."""
    front = dict(chroma_tokens=True, n_fft=2048, n_mels=64, f_min=60.0, f_max=4000.0)
    run_t, key = tiny(**front), tiny(**front, chroma_f_max=1000.0, chroma_power=0.25)
    clip = tiny(**front, chroma_f_max=1000.0, chroma_power=0.25, chroma_norm="clip")
    t = torch.arange(2 * 16_000) / 16_000
    # A 440 Hz for the first second, then a quiet E 1318.5 Hz (above 1 kHz) alone
    wave = torch.where(
        t < 1.0, torch.sin(2 * math.pi * 440.0 * t), 0.01 * torch.sin(2 * math.pi * 1318.5 * t)
    )
    rows = {m: m.log_mel(wave.unsqueeze(0))[:, 64:] for m in (run_t, key, clip)}
    for model, heard in ((run_t, True), (key, False)):  # the E alone: heard below 2 kHz only
        late = rows[model][0, :, 80:]  # (12, frames) of the second second
        assert ((late[4] - late.mean(dim=0)).mean() > 20) == heard
    assert run_t.mel_fingerprint() != key.mel_fingerprint() == clip.mel_fingerprint()
    by_token = key._chroma_per_token(rows[key])[0]  # (T', 12), each summing to 0 (12 p - 1)
    by_clip = clip._chroma_per_token(rows[clip])[0]
    torch.testing.assert_close(
        by_token.sum(dim=-1), torch.zeros(by_token.shape[0]), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(by_clip.mean(dim=0).sum(), torch.tensor(0.0), atol=1e-4, rtol=0)
    quiet = by_clip[-1]  # a token of the quiet second: near the flat -1 of silence
    assert quiet.max() < by_clip[0].max() and quiet.mean() < -0.5
    assert by_clip.mean(dim=0).argmax() == 9  # the excerpt's profile: A
    assert MusicEncoderConfig.preset("demo-key").chroma_norm == "clip"
    # chroma_at "output": the transformer reads the mel rows alone, the profiles join after it
    after = tiny(**front, chroma_at="output").eval()
    moved = rows[clip].roll(3, dims=1)  # the chroma three semitones up, the mel rows kept
    mels = after.log_mel(wave.unsqueeze(0))[:, :64]
    with torch.no_grad():
        a, b = (after.embed_log_mel(torch.cat([mels, c], dim=1)) for c in (rows[run_t], moved))
        shift = after.chroma_proj(after._chroma_per_token(moved)) - after.chroma_proj(
            after._chroma_per_token(rows[run_t])
        )  # (1, T', hidden)
    assert torch.equal(a[:, 0], b[:, 0])  # the CLS (the tagging head's input) hears no chroma
    torch.testing.assert_close(b[:, 1:] - a[:, 1:], shift, atol=1e-5, rtol=1e-4)
    with pytest.raises(RecapError, match="chroma_norm"):
        MusicEncoderConfig(chroma_norm="frame")
    with pytest.raises(RecapError, match="chroma_power"):
        MusicEncoderConfig(chroma_power=0.0)
    with pytest.raises(RecapError, match="chroma_at"):
        MusicEncoderConfig(chroma_at="middle")
