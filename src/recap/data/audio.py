"""Audio front end: decode → mono → 16 kHz → fixed-length excerpt.

The music encoder expects 15 s of mono audio at 16 kHz (240,000 samples; SPEC §1.1). Music4All
ships 30 s mp3 clips at 44.1 kHz, and the reference captioner took the first 240,000 samples
WITHOUT resampling (5.4 s of audio at the wrong rate). Here every file is resampled with soxr's
high-quality filter, so a 1 kHz tone stays a 1 kHz tone.

Only the frames the excerpt needs are decoded (plus a short margin so the resampling filter sees
real context at the edges), which is why this is faster than decoding the whole clip.

Policy for bad audio (each raises `AudioError` with the reason, so jobs can record and skip it):
- missing file, empty file, file with no frames, corrupt or truncated data;
- NaN or infinite samples, or samples far outside [-1, 1] (above MAX_ABS_SAMPLE);
- source sample rate outside [MIN_SOURCE_RATE, MAX_SOURCE_RATE] or more than MAX_CHANNELS channels;
- a silent excerpt (peak below `AudioConfig.silence_threshold`), unless `allow_silent=True`:
  15 s of digital silence carries nothing for a captioner and is almost always a broken file
  (a failed render or download), so by default it is skipped and reported, not trained on.
Clips shorter than the excerpt are zero-padded at the end and flagged `padded=True`.

Whole songs (`load_windows`): with `AudioConfig.windows = W > 1` a song is heard as up to W
excerpts of `duration` seconds whose starts are `hop` seconds apart (default: back to back), from
`offset` on (or centred as a block). A window after the first is kept only when at least
MIN_WINDOW_FILL of it is real audio, so a 30 s clip gives two 15 s windows and a 20 s one gives
one; 12 windows of 15 s cover the first 3 minutes. The span is decoded and resampled once and cut
into windows, so window k is exactly the excerpt `offset + k * hop` of a one-window config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile as sf
import soxr

from recap.utils import RecapError, is_file

# Bump when the decoding/resampling code changes its output, so cached features are rebuilt.
PIPELINE_VERSION = 1
MIN_SOURCE_RATE = 8_000
MAX_SOURCE_RATE = 192_000
MAX_CHANNELS = 8
AUDIO_EXTENSIONS = (".mp3", ".wav", ".flac", ".ogg")
# A float file's samples belong in [-1, 1]; far beyond that the mel power overflows float32 and
# the encoder's output turns to NaN (an empty caption, with no error). 1e4 is 80 dB over full
# scale: no real recording, only an unscaled or corrupt file.
MAX_ABS_SAMPLE = 1e4
# Source frames decoded beyond each edge of the excerpt: the soxr HQ filter is a few ms long, so
# 50 ms of real context removes the edge transient that zero-extension would cause.
_MARGIN_SECONDS = 0.05
# A later window must hold at least this share of real audio (the rest is zero padding) to count:
# a clip a few ms longer than a whole number of windows must not add a window of silence.
MIN_WINDOW_FILL = 0.5


class AudioError(RecapError):
    """A file that cannot give a usable excerpt; `reason` is the short machine-readable cause."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = (
            reason  # missing|empty|corrupt|truncated|silent|nonfinite|range|rate|channels|shape
        )


@dataclass(frozen=True)
class AudioConfig:
    """How a file becomes the encoder's input. Every field except `allow_silent` and
    `silence_threshold` changes the samples produced, so they all enter `fingerprint()`."""

    sample_rate: int = 16_000
    duration: float = 15.0
    offset: float | Literal["centre"] = 0.0  # seconds from the start, or "centre" of the clip
    quality: str = "HQ"  # soxr quality: "HQ" (librosa's default too) or "VHQ"
    allow_silent: bool = False
    silence_threshold: float = 1e-4  # peak |x| below this (−80 dBFS) counts as silence
    # Whole-song listening (`load_windows`): at most `windows` excerpts, `hop` seconds apart
    # (None: `duration`, back to back). 1 is the paper's single excerpt.
    windows: int = 1
    hop: float | None = None

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.duration <= 0:
            raise RecapError(f"sample_rate and duration must be positive: {self}")
        if isinstance(self.windows, bool) or not isinstance(self.windows, int) or self.windows < 1:
            raise RecapError(f"windows must be an integer >= 1, not {self.windows!r}")
        if self.hop is not None and self.hop <= 0:
            raise RecapError(f"hop must be positive seconds (or None), not {self.hop!r}")
        if isinstance(self.offset, str):
            if self.offset not in ("centre", "center"):
                raise RecapError(f"offset must be seconds or 'centre', not {self.offset!r}")
            object.__setattr__(self, "offset", "centre")
        elif self.offset < 0:
            raise RecapError(f"offset must be >= 0, not {self.offset}")
        if self.quality not in ("HQ", "VHQ"):
            raise RecapError(f"quality must be 'HQ' or 'VHQ', not {self.quality!r}")

    @property
    def n_samples(self) -> int:
        return int(round(self.sample_rate * self.duration))

    @property
    def hop_seconds(self) -> float:
        return float(self.hop) if self.hop is not None else float(self.duration)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AudioConfig:
        return cls(**{k: v for k, v in d.items() if k in _FIELDS})

    def fingerprint(self) -> str:
        """A stable short hash of every setting that changes the excerpt's samples."""
        key = {
            "pipeline": PIPELINE_VERSION,
            "sample_rate": self.sample_rate,
            "n_samples": self.n_samples,
            "offset": self.offset if self.offset == "centre" else float(self.offset),
            "quality": self.quality,
        }
        if self.windows > 1:  # one window keeps the keys (and caches) made before windows existed
            key["windows"] = self.windows
            key["hop"] = self.hop_seconds
        blob = json.dumps(key, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


_FIELDS = {f for f in AudioConfig.__dataclass_fields__}


@dataclass(frozen=True, eq=False)  # eq would compare arrays elementwise
class Excerpt:
    waveform: np.ndarray  # float32 (n_samples,), mono at config.sample_rate
    padded: bool  # the source was shorter than offset + duration; zeros fill the end
    source_sample_rate: int
    source_duration: float  # seconds, as declared by the file (or the array's length)
    source_channels: int = 1


def _check_format(samplerate: int, channels: int, where: str) -> None:
    if not MIN_SOURCE_RATE <= samplerate <= MAX_SOURCE_RATE:
        raise AudioError(
            "rate",
            f"{where}: unsupported sample rate {samplerate} Hz "
            f"(supported: {MIN_SOURCE_RATE}–{MAX_SOURCE_RATE} Hz)",
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(
            "channels", f"{where}: unsupported channel count {channels} (1–{MAX_CHANNELS})"
        )


def _mix_down(block: np.ndarray) -> np.ndarray:
    """(T, C) float32 → (T,) channel mean. A matrix-vector product, because numpy's
    `mean(axis=1)` over the short, interleaved channel axis is ~10× slower (47 ms for 15 s of
    stereo at 44.1 kHz, more than decoding it) and was what made this pipeline trail librosa."""
    if block.shape[1] == 1:
        return block[:, 0]
    return block @ np.full(block.shape[1], 1.0 / block.shape[1], dtype=block.dtype)


def _start_seconds(config: AudioConfig, source_duration: float) -> float:
    if config.offset == "centre":
        return max(0.0, (source_duration - config.duration) / 2)
    return float(config.offset)


def _finish(
    mono: np.ndarray, src_rate: int, skip_out: int, config: AudioConfig, where: str
) -> tuple[np.ndarray, bool]:
    """Resample `mono` (source rate), drop `skip_out` output samples of leading margin, then cut
    or zero-pad to exactly config.n_samples. Returns (waveform, padded)."""
    if not np.isfinite(mono).all():
        raise AudioError("nonfinite", f"{where}: audio contains NaN or infinite samples")
    peak = float(np.max(np.abs(mono), initial=0.0))
    if peak > MAX_ABS_SAMPLE:
        raise AudioError(
            "range",
            f"{where}: sample values reach {peak:.3g}; audio samples belong in [-1, 1] "
            "(an unscaled float file?)",
        )
    if src_rate != config.sample_rate:
        mono = soxr.resample(mono, src_rate, config.sample_rate, quality=config.quality)
    mono = np.asarray(mono[skip_out:], dtype=np.float32)
    n = config.n_samples
    padded = mono.shape[0] < n
    out = np.zeros(n, dtype=np.float32)
    out[: min(n, mono.shape[0])] = mono[:n]
    if (
        not config.allow_silent
        and float(np.max(np.abs(out), initial=0.0)) < config.silence_threshold
    ):
        raise AudioError(
            "silent", f"{where}: the excerpt is silent (peak < {config.silence_threshold:g})"
        )
    return out, padded


def decode_error_reason(err: BaseException) -> str:
    """libsndfile's reason without the file path it quotes, and without its misleading "File
    does not exist" (what it says of an existing file in a format it does not know)."""
    reason = getattr(err, "error_string", None) or str(err)
    if "does not exist" in reason or "not a regular file" in reason:
        return "not a supported audio format, or corrupt data"
    return reason.rstrip(".")


def load_excerpt(path: str | os.PathLike, config: AudioConfig = AudioConfig()) -> Excerpt:
    """Decode the excerpt `config` describes from an audio file (mp3/wav/flac/ogg, any channels).

    Raises AudioError (a RecapError) with `.reason` for every unusable file (module docstring).
    """
    path = Path(path)
    where = str(path)
    if not is_file(path):
        raise AudioError("missing", f"{where}: no such file")
    if path.stat().st_size == 0:
        raise AudioError("empty", f"{where}: the file is empty (0 bytes)")
    try:
        with sf.SoundFile(path) as f:
            src_rate, channels, declared = f.samplerate, f.channels, f.frames
            _check_format(src_rate, channels, where)
            if declared <= 0:
                raise AudioError("empty", f"{where}: the file holds no audio frames")
            source_duration = declared / src_rate
            start = int(round(_start_seconds(config, source_duration) * src_rate))
            margin = int(math.ceil(_MARGIN_SECONDS * src_rate))
            read_from = max(0, start - margin)
            wanted = (start - read_from) + int(math.ceil(config.duration * src_rate)) + margin
            if read_from >= declared:
                block = np.zeros((0, channels), dtype=np.float32)
            else:
                if read_from:
                    f.seek(read_from)
                block = f.read(frames=wanted, dtype="float32", always_2d=True)  # (T, C)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise AudioError("corrupt", f"{where}: cannot decode ({decode_error_reason(err)})") from err
    # libsndfile trusts the header for the frame count; a decoder that stops well short of what
    # the header promised means the file was cut off (a half-finished download, typically).
    expected = min(wanted, max(0, declared - read_from))
    if expected - block.shape[0] > max(2048, 0.01 * declared):
        raise AudioError(
            "truncated",
            f"{where}: truncated or corrupt: header declares {declared} frames, decoding stopped "
            f"at {read_from + block.shape[0]}",
        )
    mono = _mix_down(block)  # (T, C) → (T,)
    # The leading margin, measured in output samples, is cut after resampling.
    skip_out = int(round((start - read_from) * config.sample_rate / src_rate))
    waveform, padded = _finish(mono, src_rate, skip_out, config, where)
    return Excerpt(waveform, padded, src_rate, source_duration, channels)


def excerpt_from_array(
    array: np.ndarray, sample_rate: int, config: AudioConfig = AudioConfig()
) -> Excerpt:
    """The same excerpt from samples already in memory.

    `array` is (T,) mono, or 2-D with channels on the SHORTER axis: (T, C) as soundfile returns
    or (C, T) as torchaudio returns; C must be at most MAX_CHANNELS. Integer arrays are scaled to
    [-1, 1) by their type's range; float arrays are taken as they are.
    """
    x = np.asarray(array)
    where = "array"
    if x.ndim == 1:
        x = x[:, None]  # (T, 1)
    elif x.ndim == 2:
        if x.shape[0] == x.shape[1]:
            raise AudioError("shape", f"ambiguous square array {x.shape}: pass (T,) or (T, C)")
        if x.shape[0] < x.shape[1]:
            x = x.T  # (C, T) -> (T, C)
    else:
        raise AudioError("shape", f"expected (T,), (T, C) or (C, T) samples, got shape {x.shape}")
    if x.shape[0] == 0:
        raise AudioError("empty", "array holds no samples")
    _check_format(int(sample_rate), x.shape[1], where)
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float32) / float(np.iinfo(x.dtype).max + 1)
    x = x.astype(np.float32, copy=False)
    source_duration = x.shape[0] / sample_rate
    start = int(round(_start_seconds(config, source_duration) * sample_rate))
    mono = _mix_down(x)  # (T, C) → (T,)
    margin = int(math.ceil(_MARGIN_SECONDS * sample_rate))
    read_from = max(0, start - margin)
    stop = start + int(math.ceil(config.duration * sample_rate)) + margin
    skip_out = int(round((start - read_from) * config.sample_rate / sample_rate))
    waveform, padded = _finish(mono[read_from:stop], int(sample_rate), skip_out, config, where)
    return Excerpt(waveform, padded, int(sample_rate), source_duration, x.shape[1])


def check_audio_file(path: str | os.PathLike, block_frames: int = 1 << 18) -> str | None:
    """Decode a whole file without keeping it; None when it reads cleanly, else the reason.

    Used by `recap data stats` to tell found-and-readable from found-but-unreadable files.
    """
    path = Path(path)
    if not is_file(path):
        return "missing"
    if path.stat().st_size == 0:
        return "empty file"
    try:
        with sf.SoundFile(path) as f:
            _check_format(f.samplerate, f.channels, str(path))
            declared, got = f.frames, 0
            if declared <= 0:
                return "no audio frames"
            while True:  # not f.blocks(): it counts the header's frames, hiding truncation
                block = f.read(frames=block_frames, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                if not np.isfinite(block).all():
                    return "NaN or infinite samples"
                got += block.shape[0]
    except AudioError as err:
        return str(err)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        return f"cannot decode ({decode_error_reason(err)})"
    if declared - got > max(2048, 0.01 * declared):
        return f"truncated: header declares {declared} frames, decoded {got}"
    return None


# --------------------------------------------------------------------------- whole songs


@dataclass(frozen=True, eq=False)
class Windows:
    """The windows a song is heard in."""

    waveforms: np.ndarray  # float32 (W, n_samples), W >= 1
    starts: tuple[float, ...]  # each window's start in seconds from the beginning of the source
    padded: bool  # the last window runs past the end of the source (zeros fill it)
    source_duration: float

    @property
    def count(self) -> int:
        return int(self.waveforms.shape[0])


def window_starts(config: AudioConfig, source_duration: float) -> list[float]:
    """Start times (s) of the windows `config` takes from a source of `source_duration` s."""
    hop = config.hop_seconds
    block_start = 0.0 if config.offset == "centre" else float(config.offset)
    available = source_duration - block_start
    count = 1
    while (
        count < config.windows
        and available - count * hop >= MIN_WINDOW_FILL * config.duration - 1e-9
    ):
        count += 1
    if config.offset == "centre":
        span = (count - 1) * hop + config.duration
        block_start = max(0.0, (source_duration - span) / 2)
    return [block_start + k * hop for k in range(count)]


def _cut_windows(span: Excerpt, starts: list[float], config: AudioConfig) -> Windows:
    """Cut the decoded span (starting at starts[0]) into (W, n_samples) windows."""
    n, rate = config.n_samples, config.sample_rate
    wave = span.waveform
    out = np.zeros((len(starts), n), dtype=np.float32)  # (W, n)
    for k, start in enumerate(starts):
        first = int(round((start - starts[0]) * rate))
        piece = wave[first : first + n]
        out[k, : piece.shape[0]] = piece
    end = starts[-1] + config.duration
    return Windows(out, tuple(starts), end > span.source_duration + 1e-9, span.source_duration)


def _span_config(config: AudioConfig, starts: list[float]) -> AudioConfig:
    span = starts[-1] - starts[0] + config.duration
    return dataclasses.replace(config, duration=span, offset=starts[0], windows=1, hop=None)


def load_windows(path: str | os.PathLike, config: AudioConfig = AudioConfig()) -> Windows:
    """The windows `config` takes from an audio file (module docstring); errors as
    `load_excerpt`. With `config.windows == 1` the one window is `load_excerpt(path, config)`."""
    if config.windows == 1:
        one = load_excerpt(path, config)
        start = _start_seconds(config, one.source_duration)
        return Windows(one.waveform[None], (start,), one.padded, one.source_duration)
    path = Path(path)
    if not is_file(path):
        raise AudioError("missing", f"{path}: no such file")
    try:
        info = sf.info(str(path))
        duration = info.frames / info.samplerate if info.samplerate > 0 else 0.0
    except (sf.LibsndfileError, RuntimeError, ValueError):
        duration = 0.0  # load_excerpt below says what is wrong with the file
    starts = window_starts(config, duration)
    return _cut_windows(load_excerpt(path, _span_config(config, starts)), starts, config)


def windows_from_array(
    array: np.ndarray, sample_rate: int, config: AudioConfig = AudioConfig()
) -> Windows:
    """`load_windows` for samples already in memory (layouts as `excerpt_from_array`)."""
    x = np.asarray(array)
    frames = max(x.shape) if x.ndim == 2 else (x.shape[0] if x.ndim == 1 else 0)
    starts = window_starts(config, frames / sample_rate if sample_rate > 0 else 0.0)
    span_config = _span_config(config, starts) if config.windows > 1 else config
    return _cut_windows(excerpt_from_array(x, sample_rate, span_config), starts, config)
