"""Renderings per second of `recap bench build` (target: at least 8/s on 2 cores).

    .venv/bin/python benchmarks/bench_build.py --limit 60 --workers 2

Builds the first LIMIT music21 scores into a temporary folder once per score reader (recap's
MusicXML reader, `auto`, against the music21 parser as the baseline, in the same run) and prints
renderings/s, the CPU time per rendering and the dataset's size for each.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from recap.bench.build import BuildConfig, build_benchmark


def _cpu_seconds() -> float:
    return sum(
        resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="music21")
    ap.add_argument("--limit", type=int, default=60)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--renders-per-song", type=int, default=2)
    ap.add_argument("--parsers", default="auto,music21", help="score readers to compare")
    args = ap.parse_args(argv)
    print(
        "| parser | renderings | wall s | renderings/s | CPU-s per rendering | idle 2-core/s | MB |"
    )
    print("|---|---|---|---|---|---|---|")
    for parser in args.parsers.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = BuildConfig(source=args.source, out=tmp, limit=args.limit, workers=args.workers,
                              renders_per_song=args.renders_per_song, parser=parser)  # fmt: skip
            cpu0, t0 = _cpu_seconds(), time.perf_counter()
            res = build_benchmark(cfg, progress=False)
            wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
            size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
        print(f"| {parser} | {res.songs} | {wall:.1f} | {res.songs / wall:.2f} | "
              f"{cpu / res.songs:.3f} | {2 * res.songs / cpu:.2f} | {size / 1e6:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
