"""What a captioner reads: songs (audio with or without lyrics) named by a file, a folder or a
manifest, and how many windows of a song a model hears.

A song is heard in as many windows of 15 s as the model was trained on (`RecapConfig.
music_windows`), or, for a model trained on several, in up to `DEFAULT_WINDOWS` (its first 3
minutes); `listening_config` turns that into the `AudioConfig` the audio is decoded with.
`collect_inputs` reads one audio file (lyrics from `<stem>.txt` or a given file), a folder of
audio files with `<stem>.txt` lyrics beside them, or a manifest (CSV / JSONL with `audio` and
`lyrics` or `lyrics_path` columns); a manifest row that cannot be used is reported and skipped.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recap.utils import RecapError, SkipReport

log = logging.getLogger(__name__)


AUDIO_SUFFIXES = (
    ".mp3",
    ".wav",
    ".flac",
    ".ogg",
    ".oga",
    ".aiff",
    ".aif",
)  # libsndfile reads these
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json")

AudioInput = str | os.PathLike | np.ndarray
# Whole songs: up to 12 windows of 15 s, the first 3 minutes (the paper hears the first 15 s).
# Heard by default only by a model trained on several windows (`RecapConfig.music_windows`):
# a captioner trained on one window captions worse from more (docs/results.md).
DEFAULT_WINDOWS = 12


def no_audio_message(method: str) -> str:
    return (
        f"the {method} model reads lyrics only and hears no audio, so it cannot interpret a song "
        "without lyrics: give the lyrics, or use a model that listens (bart-fusion or recap)"
    )


def default_windows(model_config: Any) -> int:
    """The windows a model hears when the caller does not say: the whole song (up to
    DEFAULT_WINDOWS) for a model trained on several windows, else the count it was trained on
    (1 for the paper's single excerpt and for models saved before windows existed)."""
    trained = int(getattr(model_config, "music_windows", 1) or 1)
    return max(DEFAULT_WINDOWS, trained) if trained > 1 else trained


def listening_config(
    model_config: Any, windows: int | None = None, hop: float | None = None
) -> Any:
    """The `AudioConfig` a model hears songs with: `windows` (default: `default_windows`)
    excerpts of 15 s, `hop` seconds apart (default: back to back)."""
    from recap.data.audio import AudioConfig

    return AudioConfig(
        windows=windows if windows is not None else default_windows(model_config), hop=hop
    )


# ---------------------------------------------------------------------------- inputs
@dataclass
class SongInput:
    """One song to caption or index. `lyrics` None (or empty) means the song has none: its
    interpretation comes from the audio alone."""

    id: str
    audio: AudioInput
    lyrics: str | None
    sample_rate: int | None = None
    split: str | None = None
    work: str | None = None  # renderings of one piece share a work id (the index lists it once)

    @property
    def audio_label(self) -> str:
        return "<array>" if isinstance(self.audio, np.ndarray) else str(self.audio)


def collect_inputs(
    source: str | os.PathLike,
    lyrics: str | os.PathLike | None = None,
    report: SkipReport | None = None,
) -> list[SongInput]:
    """The songs named by `source`: an audio file (lyrics from `lyrics` or `<stem>.txt`), a
    folder of audio files with `<stem>.txt` lyrics beside them, or a CSV/JSONL manifest (its
    unusable rows go to `report`)."""
    source = Path(source)
    if not source.exists():
        raise RecapError(f"{source} does not exist")
    if source.is_dir():
        if lyrics is not None:
            raise RecapError(
                "--lyrics goes with a single audio file; a folder uses <stem>.txt files"
            )
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise RecapError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) in {source}")
        return [SongInput(p.stem, p, _read_lyrics_file(p.with_suffix(".txt"))) for p in files]
    if source.suffix.lower() in MANIFEST_SUFFIXES:
        if lyrics is not None:
            raise RecapError("--lyrics goes with a single audio file; a manifest holds the lyrics")
        return read_manifest(source, report)
    lyrics_path = Path(lyrics) if lyrics is not None else source.with_suffix(".txt")
    if lyrics is not None and not lyrics_path.is_file():
        raise RecapError(
            f"lyrics file {lyrics_path} does not exist (to give the lyrics themselves, use "
            "--lyrics-text)"
        )
    return [SongInput(source.stem, source, _read_lyrics_file(lyrics_path))]


def read_manifest(path: str | os.PathLike, report: SkipReport | None = None) -> list[SongInput]:
    """Rows of a CSV / JSONL / JSON-list manifest. Columns: `audio` (path, relative to the
    manifest's folder), `lyrics` (text) or `lyrics_path`; optional `id` and `split`.

    A row that cannot be used (no audio, lyrics that are not text, a line that is not JSON) is
    logged and recorded in `report` with its line number, and the other rows go on.
    """
    path = Path(path)
    report = report if report is not None else SkipReport("manifest")
    try:
        # utf-8-sig: spreadsheet programs start CSV files with a byte-order mark, which would
        # otherwise become part of the first column's name.
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecapError(f"cannot read manifest {path}: {exc}") from exc
    suffix = path.suffix.lower()
    rows: list[tuple[str, Any]] = []
    try:
        if suffix == ".csv":
            reader = csv.DictReader(io.StringIO(text))
            rows = [(f"{path.name}:{reader.line_num}", row) for row in reader]
        elif suffix == ".json":
            data = json.loads(text)
            if not isinstance(data, list):
                raise RecapError(f"manifest {path} must hold a JSON list of objects, one per song")
            rows = [(f"{path.name}[{i}]", row) for i, row in enumerate(data)]
        else:
            for number, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                where = f"{path.name}:{number}"
                try:
                    rows.append((where, json.loads(line)))
                except json.JSONDecodeError as exc:
                    _skip_row(report, where, f"not valid JSON ({exc.msg}, column {exc.colno})")
                except RecursionError:
                    _skip_row(report, where, "JSON nested too deeply")
    except (json.JSONDecodeError, csv.Error) as exc:
        raise RecapError(f"manifest {path} is not valid {suffix[1:].upper()}: {exc}") from exc
    except RecursionError as exc:
        raise RecapError(f"manifest {path}: JSON nested too deeply") from exc
    items = []
    for where, row in rows:
        try:
            items.append(_manifest_song(row, path.parent))
        except ValueError as exc:
            _skip_row(report, where, str(exc))
    if not items:
        raise RecapError(
            f"manifest {path} has no usable rows"
            + (f" ({report.items[0]['item']}: {report.items[0]['reason']})" if len(report) else "")
        )
    return items


def _skip_row(report: SkipReport, where: str, reason: str) -> None:
    log.warning("skipping %s: %s", where, reason)
    report.add(where, reason)


def _manifest_song(row: Any, base: Path) -> SongInput:
    """One manifest row as a SongInput; ValueError says what is wrong with it."""
    if not isinstance(row, dict):
        raise ValueError(f"expected an object with audio and lyrics, got {type(row).__name__}")
    audio = row.get("audio") or row.get("audio_path") or row.get("path")
    if audio is None or (isinstance(audio, str) and not audio.strip()):
        raise ValueError("no audio file named (empty or missing 'audio' column)")
    if not isinstance(audio, str):
        raise ValueError(f"'audio' must be a file name, got {type(audio).__name__}")
    audio_path = Path(audio) if Path(audio).is_absolute() else base / audio
    text_value = row.get("lyrics")
    if text_value is not None and not isinstance(text_value, str):
        raise ValueError(f"'lyrics' must be text, got {type(text_value).__name__}")
    lyrics_path = row.get("lyrics_path")
    if not text_value and lyrics_path:
        if not isinstance(lyrics_path, str):
            raise ValueError(f"'lyrics_path' must be a file name, got {type(lyrics_path).__name__}")
        lp = Path(lyrics_path)
        text_value = _read_lyrics_file(lp if lp.is_absolute() else base / lp)
    song_id = row.get("id") or row.get("song_id") or audio_path.stem
    split = row.get("split")
    work = row.get("work_id")
    return SongInput(
        str(song_id),
        audio_path,
        text_value or None,
        split=str(split) if split else None,
        work=str(work) if work else None,
    )


def _read_lyrics_file(path: Path) -> str | None:
    """The text of a lyrics file, or None when it does not exist or cannot be read."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return decode_text(data)


def decode_text(data: bytes) -> str:
    """UTF-8 (a byte-order mark is dropped); else Windows-1252, else Latin-1, which decodes any
    bytes: older lyrics files are often in a Western 8-bit encoding, and reading them as
    "missing" would lose the song."""
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")
