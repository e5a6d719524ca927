"""`recap data stats`: what a dataset holds (songs, interpretations, splits, variants, lengths)
and whether its audio files are there and readable."""

from __future__ import annotations

import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from recap.data.songs import (
    VARIANTS,
    _csv_files,
    _dataset_file,
    _read_csv,
    audio_path,
    in_variant,
    load_rows,
)
from recap.utils import SkipReport, is_file


def _percentiles(
    values: list[int], qs: tuple[int, ...] = (5, 25, 50, 75, 95, 100)
) -> dict[str, int]:
    if not values:
        return {}
    ordered = sorted(values)
    # nearest-rank percentiles: every reported number is a real row's length
    return {f"p{q}": ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] for q in qs}


def dataset_stats(
    path: str | os.PathLike, check_audio: bool = True, workers: int | None = None
) -> tuple[dict[str, Any], SkipReport]:
    """Counts, length percentiles (whitespace tokens) and audio availability of a dataset."""
    path = Path(path)
    report = SkipReport("data stats")
    rows = load_rows(path, report, newline_to_semicolon=False)
    stats: dict[str, Any] = {
        "path": str(path),
        "songs": len({r.song_id for r in rows}),
        "interpretations": len(rows),
        "splits": dict(Counter(r.split or "none" for r in rows)),
    }
    folder = path if path.is_dir() else path.parent
    csvs = _csv_files(folder) if path.is_dir() else {}
    if csvs and _dataset_file(folder) is None:
        # the CSV release has no votes: each variant is its own pair of files
        stats["variants"] = {
            v: sum(len(_read_csv(csvs[(v, s)])) for s in ("train", "val") if (v, s) in csvs)
            for v in VARIANTS
        }
    elif rows and all(r.votes is not None for r in rows):
        stats["variants"] = {v: sum(in_variant(r, v) for r in rows) for v in VARIANTS}
    else:
        stats["variants"] = {"full": len(rows), "note": "no votes in this source"}
    # Lengths in whitespace-separated tokens: tokenizer-free, so comparable across tokenizers.
    stats["lyrics_tokens"] = _percentiles([len(r.lyrics.split()) for r in rows])
    stats["comment_tokens"] = _percentiles([len(r.comment.split()) for r in rows])
    if check_audio:
        stats["audio"] = audio_stats(folder, sorted({r.song_id for r in rows}), workers)
    stats["skipped_rows"] = len(report)
    return stats, report


def audio_stats(data_dir: Path, song_ids: list[str], workers: int | None = None) -> dict[str, Any]:
    """Found / missing / unreadable counts; each found file is decoded completely."""
    from recap.data.audio import check_audio_file

    paths = {sid: audio_path(data_dir, sid) for sid in song_ids}
    missing = [sid for sid, p in paths.items() if not is_file(p)]
    present = [sid for sid in song_ids if sid not in set(missing)]
    # libsndfile releases the GIL while decoding, so threads use every core without the start-up
    # cost of processes.
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        problems = list(pool.map(lambda sid: check_audio_file(paths[sid]), present))
    unreadable = {sid: why for sid, why in zip(present, problems) if why}
    return {
        "found": len(present) - len(unreadable),
        "missing": len(missing),
        "unreadable": len(unreadable),
        "unreadable_files": dict(list(unreadable.items())[:20]),
        "missing_examples": missing[:5],
    }
