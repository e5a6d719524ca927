"""recap's MusicXML reader against music21's parser: time per score and agreement.

    .venv/bin/python benchmarks/score_reader.py --source music21
    .venv/bin/python benchmarks/score_reader.py --source openscore-lieder --limit 60

Reads every MusicXML score of the source with both readers (one process, one core) and prints
the mean time per score of each and the scores whose events, lyrics or metre differ, with what
differs (docs/benchmark.md explains the known differences).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from recap.bench.sources import MUSICXML_SUFFIXES, ScoreError, find_sources, read_parts


def _differences(fast, m21) -> list[str]:
    if isinstance(fast, ScoreError) or isinstance(m21, ScoreError):
        same = isinstance(fast, ScoreError) and isinstance(m21, ScoreError)
        return [] if same else [f"error: fast {fast!s:.80} | music21 {m21!s:.80}"]
    out = []
    if fast[1] != m21[1]:
        out.append(f"time signature {fast[1]} vs {m21[1]}")
    if len(fast[0]) != len(m21[0]):
        return out + [f"{len(fast[0])} parts vs {len(m21[0])}"]
    for i, ((ev_a, lyr_a), (ev_b, lyr_b)) in enumerate(zip(fast[0], m21[0])):
        if lyr_a != lyr_b:
            out.append(f"part {i}: lyrics differ")
        ev_a = ev_a[np.lexsort(ev_a.T[::-1])]
        ev_b = ev_b[np.lexsort(ev_b.T[::-1])]
        if ev_a.shape != ev_b.shape or not np.allclose(ev_a, ev_b, atol=1e-6):
            out.append(f"part {i}: {len(ev_a)} vs {len(ev_b)} events, or other onsets")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="music21")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args(argv)
    sources = [s for s in find_sources(args.source) if s.path.lower().endswith(MUSICXML_SUFFIXES)]
    sources = sources[: args.limit]
    seconds = {"fast": 0.0, "music21": 0.0}
    differing = 0
    for src in sources:
        got = {}
        for parser in seconds:
            t0 = time.perf_counter()
            try:
                got[parser] = read_parts(src.path, parser)
            except ScoreError as err:
                got[parser] = err
            seconds[parser] += time.perf_counter() - t0
        diffs = _differences(got["fast"], got["music21"])
        if diffs:
            differing += 1
            print(f"{src.path}: {'; '.join(diffs)}")
    n = len(sources)
    print(f"\n{n} MusicXML scores: {n - differing} read identically, {differing} differ")
    print("| reader | s per score |\n|---|---|")
    for parser, s in seconds.items():
        print(f"| {parser} | {s / n:.4f} |")


if __name__ == "__main__":
    main()
