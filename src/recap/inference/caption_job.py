"""`recap caption`'s job: caption a file, a folder or a manifest and write the results.

Results are written one at a time as they are made (text, JSONL or CSV), so a killed job keeps
every caption made so far. Bad items (unreadable audio) are reported per item in the output and
in a skip report; the job goes on, and exits non-zero only when every item failed. Songs without
lyrics get an audio-only caption.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recap.inference.captioner import Captioner, CaptionResult
from recap.inference.generate import DecodeSettings
from recap.inference.inputs import collect_inputs
from recap.utils import RecapError, SkipReport

# ---------------------------------------------------------------------------- output
_FIELDS = ["id", "audio", "caption", "error", "windows", "song_windows", "lyrics"]


def _format_one(r: CaptionResult, fmt: str) -> str:
    if fmt == "text":
        return f"{r.caption}\n" if r.error is None else f"[{r.id}] error: {r.error}\n"
    if fmt == "jsonl":
        return json.dumps(r.to_dict(), ensure_ascii=False) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        csv.DictWriter(buf, fieldnames=_FIELDS).writerow(r.to_dict())
        return buf.getvalue()
    raise RecapError(f"unknown format {fmt!r}")


def _header(fmt: str) -> str:
    return ",".join(_FIELDS) + "\r\n" if fmt == "csv" else ""


def format_results(results: Sequence[CaptionResult], fmt: str) -> str:
    if fmt not in ("text", "jsonl", "csv"):
        raise RecapError(f"unknown format {fmt!r}")
    return _header(fmt) + "".join(_format_one(r, fmt) for r in results)


def check_output_path(out: str | os.PathLike) -> Path:
    """Refuse an output file that cannot be written, before any work is done."""
    out = Path(out)
    if out.is_dir():
        raise RecapError(
            f"--out {out} is a folder; give a file name such as {out / 'captions.jsonl'}"
        )
    parent = out.parent
    existing = parent
    while not existing.exists():  # the nearest folder that exists must let us create the rest
        existing = existing.parent
    if not existing.is_dir():
        raise RecapError(f"cannot write {out}: {existing} is not a folder")
    if not os.access(out if out.exists() else existing, os.W_OK):
        raise RecapError(f"cannot write {out}: permission denied")
    return out


def caption_files(
    source: str | os.PathLike,
    model: str | os.PathLike | Captioner,
    lyrics: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    fmt: str | None = None,
    batch_size: int | None = None,
    device: Any = None,
    decode: DecodeSettings | None = None,
    progress: bool = True,
    encoder: Any = None,
    windows: int | None = None,
    hop: float | None = None,
    lyrics_text: str | None = None,
    int8: bool = False,
) -> tuple[list[CaptionResult], SkipReport]:
    """The job behind `recap caption`: caption `source`, write the results, report failures.

    `model`: a model or RUN folder (loaded with `device`, `encoder`, `windows`, `hop`; see
    `Captioner.from_pretrained`), or a ready Captioner.

    Writes to `out` (format from `fmt` or the suffix) or to stdout, one result at a time as it
    is made, so a killed job keeps every caption made so far. Failed items stay in the output
    with their error and go into `<out>.skipped.json`, with the manifest rows that could not be
    read. `lyrics_text`: the lyrics of a single audio file as text (instead of a `lyrics` file).
    """
    if out is not None:
        check_output_path(out)
    if lyrics_text is not None and lyrics is not None:
        raise RecapError(
            "give the lyrics as a file (--lyrics) or as text (--lyrics-text), not both"
        )
    skipped = SkipReport("caption")
    songs = collect_inputs(source, lyrics, skipped)
    if lyrics_text is not None:
        if len(songs) != 1 or Path(source).is_dir():
            raise RecapError("--lyrics-text goes with a single audio file")
        songs[0].lyrics = lyrics_text
    captioner = (
        model
        if isinstance(model, Captioner)
        else Captioner.from_pretrained(
            model, device=device, encoder=encoder, windows=windows, hop=hop, int8=int8
        )
    )
    decode = decode or DecodeSettings()
    decode.check(captioner.model.config.max_position_embeddings)  # refused before any work
    if fmt is None:
        suffix = Path(out).suffix.lower() if out else ""
        fmt = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "text"}.get(
            suffix, "text" if len(songs) == 1 else "jsonl"
        )
    if fmt not in ("text", "jsonl", "csv"):
        raise RecapError(f"unknown format {fmt!r}")
    results: list[CaptionResult] = []
    stream = open(out, "w", encoding="utf-8", newline="") if out else sys.stdout  # noqa: SIM115
    try:
        stream.write(_header(fmt))
        for r in captioner.caption_results(
            songs, batch_size=batch_size, progress=progress, options=decode
        ):
            results.append(r)
            stream.write(_format_one(r, fmt))
            stream.flush()
            if r.error is not None:
                skipped.add(f"{r.id} ({r.audio})", r.error)
    finally:
        if out:
            stream.close()
            if len(skipped):
                skipped.write(Path(out).with_suffix(".skipped.json"))
    return results, skipped


def heard_summary(results: Sequence[CaptionResult], trained: int, explicit: bool = False) -> str:
    """What the model listened to, for the job's last line: ', heard in 2 windows of 15 s', or,
    when the songs hold more than was heard, ', heard 1 of 12 windows of 15 s (the model was
    trained on 1; --windows 12 to hear the whole song)'. `explicit`: the caller chose the
    window count (no hint then)."""
    done = [r for r in results if r.error is None and r.windows is not None]
    if not done:
        return ""

    def span(values: Sequence[int]) -> str:
        return f"{min(values)}" if min(values) == max(values) else f"{min(values)}-{max(values)}"

    heard = [r.windows for r in done]  # type: ignore[misc]
    whole = [r.song_windows or r.windows for r in done]  # type: ignore[misc]
    no_lyrics = sum(not r.lyrics for r in done)
    lyrics = ""
    if no_lyrics:
        lyrics = ", audio only (no lyrics)" if len(done) == 1 else f", {no_lyrics} without lyrics"
    if all(h >= w for h, w in zip(heard, whole)) or explicit:
        plural = "s" if max(heard) > 1 else ""
        return f", heard in {span(heard)} window{plural} of 15 s{lyrics}"
    return (
        f", heard {span(heard)} of {span(whole)} windows of 15 s{lyrics} (the model was trained "
        f"on {trained}; --windows {max(whole)} to hear the whole song)"
    )
