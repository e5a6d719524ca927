"""What whole-song listening costs: decode + music encoder per song for 1, 2 and 12 windows.

A song is heard in up to W windows of 15 s (`recap.data.audio.load_windows`); the encoder runs
on each and fusion attends over all their tokens. This times, for one 3-minute song (44.1 kHz
stereo mp3, as users' files are), the two per-song costs that grow with W, in one run, with
W = 1 (the paper's excerpt) as the baseline beside the others:
- decode: `load_windows` (decode the span once, resample, cut into windows);
- encoder: the frozen music encoder on the (W, 240000) windows, batched;
and the token count fusion then attends over (W * 119).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/whole_song.py --encoder reference --threads 1
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/whole_song.py --encoder runs/demo/tagger

`--encoder`: a preset (random weights time the same as trained ones) or a saved tagger folder.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from recap.data.audio import AudioConfig, load_windows
from recap.models.music_encoder import load_music_encoder


def make_song(path: Path, seconds: float = 180.0, sr: int = 44100) -> Path:
    """A 3-minute stereo mp3: a 4-note chord that changes every 15 s, plus a little noise."""
    rng = np.random.default_rng(0)
    n = int(seconds * sr)
    x = np.zeros(n, dtype=np.float32)
    for start in range(0, n, 15 * sr):
        t = np.arange(min(15 * sr, n - start)) / sr
        freqs = 110.0 * 2 ** (rng.integers(0, 36, size=4) / 12)
        x[start : start + t.size] = sum(np.sin(2 * np.pi * f * t) for f in freqs) / 8
    stereo = np.stack([x, np.roll(x, 50)], axis=1) + 0.01 * rng.standard_normal((n, 2))
    sf.write(path, stereo.astype(np.float32), sr)
    return path


def best_of(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", default="reference", help="preset or saved encoder folder")
    p.add_argument("--windows", default="1,2,12", help="window counts to time")
    p.add_argument("--rounds", type=int, default=3, help="best of N")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    encoder = load_music_encoder(args.encoder).eval()
    counts = [int(w) for w in args.windows.split(",")]
    print(
        f"encoder {args.encoder}: {encoder.num_parameters() / 1e6:.2f} M parameters, "
        f"{args.threads} thread(s), best of {args.rounds}"
    )
    print("| windows | audio heard | tokens | decode (s) | encoder (s) | total (s) | × 1 window |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        song = make_song(Path(tmp) / "song.mp3")
        baseline = None
        for w in counts:
            config = AudioConfig(windows=w)
            heard = load_windows(song, config)
            decode = best_of(lambda c=config: load_windows(song, c), args.rounds)
            x = torch.from_numpy(heard.waveforms)  # (W, 240000)

            def encode(x: torch.Tensor = x) -> torch.Tensor:
                with torch.inference_mode():
                    return encoder(x)  # (W, 119, D)

            out = encode()
            tokens = out.shape[0] * out.shape[1]
            enc = best_of(encode, args.rounds)
            total = decode + enc
            baseline = baseline or total
            print(
                f"| {heard.count} | {heard.count * 15} s | {tokens} | {decode:.3f} | {enc:.3f} | "
                f"{total:.3f} | {total / baseline:.1f} |"
            )


if __name__ == "__main__":
    main()
