"""CPU time of one training step with each song encoded once for several of its captions.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/shared_sources.py

`recap train --captions-per-song K` puts K captions of one song into a batch and encodes the song
once for them (`Collator.share_sources`). One Adafactor step of the `small` captioners at the demo
benchmark's mean lengths (76 lyrics tokens, 109 caption tokens; 16 captions per batch, 119 music
tokens of width 32), K = 1 (the baseline: 16 songs) against K = 2 and 4, in the same run.
"""

from __future__ import annotations

import argparse

import torch


def main(argv: list[str] | None = None) -> None:
    from recap.training.speed import captioner_step, seconds_per_step

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="bart,bart-fusion,recap")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--source", type=int, default=76)
    ap.add_argument("--target", type=int, default=109)
    ap.add_argument("--per-song", default="1,2,4")
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args(argv)
    ks = [int(k) for k in args.per_song.split(",")]
    print(f"threads {torch.get_num_threads()}, batch {args.batch} captions, "
          f"lyrics {args.source} tokens, captions {args.target} tokens")  # fmt: skip
    print("| method | " + " | ".join(f"K = {k}: s / step" for k in ks) + " | speed-up at K = "
          f"{ks[-1]} |\n|---|" + "---|" * (len(ks) + 1))  # fmt: skip
    for method in args.methods.split(","):
        seconds = [
            seconds_per_step(
                captioner_step(method, {}, args.batch, args.source, args.target, k), args.steps
            )
            for k in ks
        ]
        cells = " | ".join(f"{s:.3f}" for s in seconds)
        print(f"| {method} | {cells} | {seconds[0] / seconds[-1]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
