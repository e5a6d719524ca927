"""Decode + resample + log-mel throughput: recap's pipeline against librosa, in one run.

Clips are what Music4All ships: 30 s stereo mp3 at 44.1 kHz (generated here: chords + noise).
Everything runs in one process with one thread, so the figures are per core.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/audio_pipeline.py --clips 6 --rounds 3

Rows:
- recap 15 s excerpt: `load_excerpt` (decodes only the 15 s it needs) + `MusicEncoder.log_mel`
  — what `recap precompute` does per song;
- recap full 30 s: the same with duration=30, to compare like with like;
- librosa 30 s / 15 s: `librosa.load(path, sr=16000[, duration=15])` (soxr_hq) +
  `librosa.feature.melspectrogram` with the encoder's settings (n_fft 512, hop 256, 128 HTK mels,
  no norm, fmax 8000) + `power_to_db`.
"×realtime" is seconds of audio turned into log-mels per second of wall time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch


def make_clips(folder: Path, n: int, seconds: float = 30.0, sr: int = 44100) -> list[Path]:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    paths = []
    for i in range(n):
        freqs = 110.0 * 2 ** (rng.integers(0, 36, size=4) / 12)  # a random 4-note chord
        x = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28)) for f in freqs) / 8
        x = np.stack([x, np.roll(x, 50)], axis=1) + 0.01 * rng.standard_normal((len(t), 2))
        path = folder / f"clip{i}.mp3"
        sf.write(path, x.astype(np.float32), sr)
        paths.append(path)
    return paths


def recap_pipeline(duration: float) -> Callable[[Path], np.ndarray]:
    from recap.data.audio import AudioConfig, load_excerpt
    from recap.models.music_encoder import MusicEncoder, MusicEncoderConfig

    config = AudioConfig(duration=duration)
    encoder = MusicEncoder(MusicEncoderConfig()).eval()  # reference front end: 128 mels

    def run(path: Path) -> np.ndarray:
        wave = torch.from_numpy(load_excerpt(path, config).waveform)
        with torch.inference_mode():
            return encoder.log_mel(wave[None])[0].numpy()  # (128, frames)

    return run


def librosa_pipeline(duration: float | None) -> Callable[[Path], np.ndarray]:
    import librosa

    def run(path: Path) -> np.ndarray:
        y, _ = librosa.load(path, sr=16000, duration=duration)
        mel = librosa.feature.melspectrogram(
            y=y, sr=16000, n_fft=512, hop_length=256, n_mels=128, htk=True, norm=None, fmax=8000
        )
        return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)

    return run


def cache_sizes() -> dict[str, int]:
    """Bytes on disk per song for each cache kind (one float16 .npy each)."""
    from recap.data.cache import FeatureStore

    shapes = {"embeddings": (119, 256), "logmel": (128, 938), "waveform": (240_000,)}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore.create(tmp, {"kind": "bench"})
        for kind, shape in shapes.items():
            store.put(kind, np.zeros(shape, np.float32))
            out[kind] = store.path_for(kind).stat().st_size
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3, help="best of this many passes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        clips = make_clips(Path(tmp), args.clips)
        pipelines = {
            "recap, 15 s excerpt": (recap_pipeline(15.0), 15.0),
            "librosa, 15 s (duration=15)": (librosa_pipeline(15.0), 15.0),
            "recap, full 30 s": (recap_pipeline(30.0), 30.0),
            "librosa, full 30 s": (librosa_pipeline(None), 30.0),
        }
        # agreement check: both produce the same log-mel (up to mp3/resampler details)
        a = pipelines["recap, full 30 s"][0](clips[0])
        b = pipelines["librosa, full 30 s"][0](clips[0])
        frames = min(a.shape[1], b.shape[1])
        diff = np.median(np.abs(a[:, 5 : frames - 5] - b[:, 5 : frames - 5]))
        results = {}
        for name, (run, seconds) in pipelines.items():
            run(clips[0])  # warm-up: imports, JIT, allocator
            best = float("inf")
            for _ in range(args.rounds):
                start = time.perf_counter()
                for path in clips:
                    run(path)
                best = min(best, time.perf_counter() - start)
            results[name] = (len(clips) / best, seconds)
    print(f"{args.clips} clips of 30 s stereo mp3 at 44.1 kHz, 1 thread, best of {args.rounds}")
    print(f"median |recap − librosa| log-mel difference: {diff:.3f} dB\n")
    print("| pipeline | clips/s per core | ms per clip | × realtime |")
    print("|---|---|---|---|")
    for name, (rate, seconds) in results.items():
        print(f"| {name} | {rate:.2f} | {1000 / rate:.0f} | {rate * seconds:.0f}× |")
    print("\n| cache kind | bytes per song |")
    print("|---|---|")
    for kind, size in cache_sizes().items():
        print(f"| {kind} | {size:,} |")


if __name__ == "__main__":
    main()
