"""Renderings per second of `recap bench build` (target: at least 8/s on 2 cores).

    .venv/bin/python benchmarks/bench_build.py --limit 40 --workers 2

Builds the first LIMIT music21 scores into a temporary folder and prints renderings/s, the CPU
time per rendering, and the dataset's size.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from recap.bench.build import BuildConfig, build_benchmark


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="music21")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--renders-per-song", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = BuildConfig(source=args.source, out=tmp, limit=args.limit, workers=args.workers,
                          renders_per_song=args.renders_per_song)  # fmt: skip
        t0 = time.perf_counter()
        res = build_benchmark(cfg, progress=False)
        wall = time.perf_counter() - t0
        cpu = sum(
            resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
            for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        )
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
    print(f"{res.songs} renderings of {res.works} works, {len(res.skipped)} skipped")
    print(f"wall {wall:.1f} s: {res.songs / wall:.2f} renderings/s with {args.workers} workers")
    print(f"cpu {cpu:.1f} s: {cpu / res.songs:.3f} cpu-s per rendering "
          f"(= {2 * res.songs / cpu:.2f} renderings/s on 2 idle cores)")  # fmt: skip
    print(f"size {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
