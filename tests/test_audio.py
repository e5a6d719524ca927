"""Audio front end: formats, rates, channels, resampling fidelity, excerpt length, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from recap.data.audio import (
    AudioConfig,
    AudioError,
    check_audio_file,
    excerpt_from_array,
    load_excerpt,
)
from recap.utils import RecapError

N = 240_000


def tone(freq: float, seconds: float, sr: int, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def peak_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * sr / len(x))


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
@pytest.mark.parametrize("channels", [1, 2])
def test_resampling_keeps_the_tone(tmp_path: Path, fmt: str, sr: int, channels: int) -> None:
    path = tmp_path / f"tone.{fmt}"
    sf.write(path, tone(1000.0, 2.0, sr, channels), sr)
    ex = load_excerpt(path, AudioConfig())
    assert ex.waveform.dtype == np.float32 and ex.waveform.shape == (N,)
    assert ex.padded and ex.source_sample_rate == sr and ex.source_channels == channels
    assert ex.source_duration == pytest.approx(2.0, abs=0.1)
    body = ex.waveform[1600:28800]  # inside the 2 s of audio (mp3 adds a little delay)
    assert abs(peak_hz(body, 16000) - 1000.0) < 2.0
    # the level survives decoding, mixing identical channels and resampling
    assert np.sqrt(np.mean(body**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)
    assert np.all(ex.waveform[2 * 16000 + 2000 :] == 0)  # zero padding after the clip


def test_full_length_excerpt_is_not_padded_and_has_exact_length(tmp_path: Path) -> None:
    path = tmp_path / "long.mp3"
    sf.write(path, tone(440.0, 20.0, 44100, 2), 44100)
    ex = load_excerpt(path)
    assert ex.waveform.shape == (N,) and not ex.padded
    assert abs(peak_hz(ex.waveform, 16000) - 440.0) < 1.0


def test_antialiasing_removes_content_above_the_new_nyquist(tmp_path: Path) -> None:
    # a naive resampler folds 10 kHz down to 6 kHz; soxr HQ filters it out
    path = tmp_path / "high.wav"
    sf.write(path, tone(10_000.0, 1.0, 44100), 44100)
    ex = load_excerpt(path, AudioConfig(allow_silent=True))
    # away from the abrupt onset/offset, whose clicks are broadband
    assert np.max(np.abs(ex.waveform[1000:15000])) < 1e-3


def _segments(sr: int, plan: list[tuple[float, float]]) -> np.ndarray:
    return np.concatenate([tone(f, s, sr) for f, s in plan])


@pytest.mark.parametrize(("offset", "expected"), [(0.0, 500.0), (6.0, 1500.0), ("centre", 1500.0)])
def test_offset_and_centre(tmp_path: Path, offset: float | str, expected: float) -> None:
    sr = 22050
    x = _segments(sr, [(500.0, 5.0), (1500.0, 5.0), (500.0, 2.0)])  # centre of 12 s: 5..7 s
    path = tmp_path / "seg.wav"
    sf.write(path, x, sr)
    ex = load_excerpt(path, AudioConfig(duration=2.0, offset=offset))
    assert ex.waveform.shape == (32_000,) and not ex.padded
    assert abs(peak_hz(ex.waveform, 16000) - expected) < 2.0
    # the array path gives the same samples as the file path
    same = excerpt_from_array(x, sr, AudioConfig(duration=2.0, offset=offset))
    np.testing.assert_allclose(same.waveform, ex.waveform, atol=1e-4)


def test_offset_beyond_the_end_is_padded(tmp_path: Path) -> None:
    path = tmp_path / "short.wav"
    sf.write(path, tone(700.0, 3.0, 16000), 16000)
    ex = load_excerpt(path, AudioConfig(duration=2.0, offset=2.0))
    assert ex.padded and ex.waveform.shape == (32_000,)
    assert np.all(ex.waveform[16_100:] == 0) and np.any(ex.waveform[:15_000] != 0)


def test_array_layouts_and_integer_input() -> None:
    sr = 44100
    mono = tone(1000.0, 1.0, sr)
    stereo_tc = np.stack([mono, mono], axis=1)  # (T, C)
    ref = excerpt_from_array(mono, sr).waveform
    np.testing.assert_allclose(excerpt_from_array(stereo_tc, sr).waveform, ref, atol=1e-6)
    np.testing.assert_allclose(excerpt_from_array(stereo_tc.T, sr).waveform, ref, atol=1e-6)
    as_int16 = np.round(mono * 32767).astype(np.int16)
    np.testing.assert_allclose(excerpt_from_array(as_int16, sr).waveform, ref, atol=1e-3)
    with pytest.raises(AudioError):
        excerpt_from_array(np.zeros((3, 3, 3)), sr)


def test_config_fingerprint_is_stable_and_changes_with_settings() -> None:
    base = AudioConfig()
    assert base.fingerprint() == AudioConfig().fingerprint()
    assert AudioConfig.from_dict(base.to_dict()) == base
    changed = [
        AudioConfig(sample_rate=22050),
        AudioConfig(duration=10.0),
        AudioConfig(offset=3.0),
        AudioConfig(offset="centre"),
        AudioConfig(quality="VHQ"),
    ]
    prints = {c.fingerprint() for c in changed} | {base.fingerprint()}
    assert len(prints) == len(changed) + 1
    # the silence policy decides WHETHER a song is usable, not its samples
    assert AudioConfig(allow_silent=True).fingerprint() == base.fingerprint()
    with pytest.raises(RecapError):
        AudioConfig(offset="middle")


# ---------------------------------------------------------------- bad input, one reason each


def _truncated(tmp_path: Path) -> Path:
    good = tmp_path / "good.mp3"
    sf.write(good, tone(440.0, 20.0, 44100), 44100)
    data = good.read_bytes()
    bad = tmp_path / "truncated.mp3"
    bad.write_bytes(data[: len(data) // 3])
    return bad


def _write(tmp_path: Path, name: str, x: np.ndarray, sr: int, **kw: object) -> Path:
    path = tmp_path / name
    sf.write(path, x, sr, **kw)
    return path


def _bytes(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


BAD_CASES = {
    "missing": lambda d: d / "nope.mp3",
    "empty": lambda d: _bytes(d, "empty.mp3", b""),
    "corrupt": lambda d: _bytes(d, "junk.mp3", np.random.default_rng(0).bytes(4000)),
    "truncated": _truncated,
    "silent": lambda d: _write(d, "silent.wav", np.zeros(16000 * 3, np.float32), 16000),
    "nonfinite": lambda d: _write(
        d, "nan.wav", np.where(np.arange(16000) == 500, np.nan, 0.1).astype(np.float32), 16000,
        subtype="FLOAT",
    ),
    "rate": lambda d: _write(d, "low.wav", tone(300.0, 1.0, 4000), 4000),
    "channels": lambda d: _write(d, "many.wav", tone(300.0, 1.0, 16000, 12), 16000),
}  # fmt: skip


@pytest.mark.parametrize("reason", sorted(BAD_CASES))
def test_bad_audio_raises_with_reason(tmp_path: Path, reason: str) -> None:
    path = BAD_CASES[reason](tmp_path)
    with pytest.raises(AudioError) as info:
        # the truncated case reads past the cut: a 15 s excerpt of a file cut at ~6.7 s
        load_excerpt(path, AudioConfig())
    assert info.value.reason == reason
    assert isinstance(info.value, RecapError)
    if reason not in ("missing", "silent"):  # a silent file decodes cleanly
        assert check_audio_file(path) is not None


def test_silence_can_be_allowed(tmp_path: Path) -> None:
    path = _write(tmp_path, "silent.wav", np.zeros(16000, np.float32), 16000)
    ex = load_excerpt(path, AudioConfig(allow_silent=True))
    assert ex.padded and not ex.waveform.any()


def test_check_audio_file_accepts_good_files(tmp_path: Path) -> None:
    path = _write(tmp_path, "ok.flac", tone(440.0, 1.0, 48000, 2), 48000)
    assert check_audio_file(path) is None


# ----------------------------------------------------------------------------- whole songs


@pytest.mark.parametrize(
    ("seconds", "windows", "hop", "expected"),
    [
        (180.0, 12, None, [15.0 * k for k in range(12)]),  # 3 minutes: 12 windows back to back
        (200.0, 12, None, [15.0 * k for k in range(12)]),  # capped at the count
        (30.0, 12, None, [0.0, 15.0]),  # the benchmark's renderings: 2
        (29.98, 12, None, [0.0, 15.0]),  # an mp3 a few ms short still has its second window
        (20.0, 12, None, [0.0]),  # 5 s left: less than half a window, no second one
        (5.0, 12, None, [0.0]),  # shorter than one window: one padded window
        (30.0, 12, 7.5, [0.0, 7.5, 15.0, 22.5]),  # overlapping; the last is half audio
        (180.0, 1, None, [0.0]),  # one window: the paper's excerpt
    ],
)
def test_window_starts(seconds, windows, hop, expected) -> None:
    from recap.data.audio import window_starts

    got = window_starts(AudioConfig(windows=windows, hop=hop), seconds)
    assert got == pytest.approx(expected)


def test_windows_are_the_excerpts_at_their_offsets(tmp_path: Path) -> None:
    from recap.data.audio import load_windows, windows_from_array

    # 32 kHz: every window start is a whole number of samples at both rates, so the windows
    # cut from one decoded span equal excerpts decoded on their own (at 22.05 kHz an excerpt's
    # own start is rounded to a source frame, a fraction of an output sample away).
    sr = 32000
    # A rising tone (200 Hz + 10 Hz per second) over 40 s: each window has its own pitch.
    t = np.arange(40 * sr) / sr
    x = (0.5 * np.sin(2 * np.pi * (200 * t + 5 * t**2))).astype(np.float32)
    path = tmp_path / "song.wav"
    sf.write(path, x, sr)
    config = AudioConfig(windows=12)
    heard = load_windows(path, config)
    assert heard.waveforms.shape == (3, N) and heard.starts == (0.0, 15.0, 30.0)
    assert heard.padded  # the third window runs 5 s past the end
    for k, start in enumerate(heard.starts):
        alone = load_excerpt(path, AudioConfig(offset=start)).waveform
        np.testing.assert_allclose(heard.waveforms[k], alone, atol=2e-3)
    np.testing.assert_allclose(
        windows_from_array(x, sr, config).waveforms, heard.waveforms, atol=1e-4
    )  # the file holds 16-bit samples
    # One window is exactly the excerpt of old; centred blocks sit in the middle of the song.
    single = load_windows(path, AudioConfig())
    np.testing.assert_array_equal(single.waveforms[0], load_excerpt(path).waveform)
    assert load_windows(path, AudioConfig(windows=2, offset="centre")).starts == (5.0, 20.0)


def test_window_settings_enter_the_fingerprint_only_when_used() -> None:
    base = AudioConfig()
    assert AudioConfig(windows=1, hop=5.0).fingerprint() == base.fingerprint()
    two = AudioConfig(windows=2)
    assert two.fingerprint() != base.fingerprint()
    assert AudioConfig(windows=2, hop=7.5).fingerprint() != two.fingerprint()
    assert AudioConfig.from_dict(two.to_dict()) == two
    for bad in (dict(windows=0), dict(windows=1.5), dict(hop=0.0)):
        with pytest.raises(RecapError):
            AudioConfig(**bad)
