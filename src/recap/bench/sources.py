"""Where the scores come from, and what the benchmark reads out of one score.

A score becomes a `ScoreData`: the melody (the part that carries the lyrics) and the accompaniment
(every other pitched part) as note events in quarter-note time, the lyrics text, the metre and the
key estimated from the notes. Scores that cannot give all of these raise `ScoreError` with the
reason, which the build records in its skip report.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recap.bench.musicxml import (
    ArchiveTooLarge,
    Unsupported,
    check_archive,
    join_verses,
    merge_ties,
    read_member,
    read_musicxml,
)
from recap.utils import RecapError

SCORE_SUFFIXES = (".mxl", ".musicxml", ".xml", ".krn", ".abc")
MUSICXML_SUFFIXES = (".mxl", ".musicxml", ".xml")
DEFAULT_LIEDER = Path("..") / "shared" / "data" / "openscore-lieder"

# Krumhansl-Kessler key profiles (probe-tone ratings), index 0 = tonic.
_MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


class ScoreError(Exception):
    """A score the benchmark cannot use (the message is the reason written to the skip report)."""


@dataclass(frozen=True)
class ScoreSource:
    """One score file, its work id (the split unit) and an optional lyrics text file beside it."""

    path: str
    work_id: str
    lyrics_path: str | None = None


@dataclass
class ScoreData:
    """What a rendering needs from one score. Events are float arrays (n, 3): onset and duration
    in quarter notes, MIDI pitch."""

    melody: np.ndarray
    accompaniment: np.ndarray
    lyrics: str
    numerator: int
    bar_quarters: float  # bar length in quarter notes, for the downbeat accents
    tonic_pc: int  # tonic pitch class at the written pitch (0 = C)
    mode: str

    @property
    def length_quarters(self) -> float:
        ends = [ev[:, 0] + ev[:, 1] for ev in (self.melody, self.accompaniment) if len(ev)]
        return float(max(e.max() for e in ends))


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "score"


def _has_lyrics_marker(path: Path) -> bool:
    """A cheap look into the file for lyrics, so the corpus scan does not parse ~3,000 scores."""
    try:
        if path.suffix == ".mxl":
            check_archive(path)
            with zipfile.ZipFile(path) as zf:
                data = b"".join(
                    read_member(zf, n) for n in zf.namelist() if not n.startswith("META-INF")
                )
        else:
            data = path.read_bytes()
    except (OSError, zipfile.BadZipFile, ArchiveTooLarge):
        return True  # let the parser report the real problem
    if path.suffix in (".mxl", ".musicxml", ".xml"):
        return b"<lyric" in data
    if path.suffix == ".krn":
        return b"**text" in data or b"**silbe" in data
    if path.suffix == ".abc":
        return b"\nw:" in data
    return False


def music21_sources() -> list[ScoreSource]:
    """The scores with lyrics in music21's installed corpus (about 450)."""
    from music21 import corpus

    sources = []
    for p in sorted(str(p) for p in corpus.getCorePaths()):
        path = Path(p)
        if path.suffix not in SCORE_SUFFIXES or not _has_lyrics_marker(path):
            continue
        rel = p.split("corpus/", 1)[-1]
        sources.append(ScoreSource(p, "m21-" + slug(rel.rsplit(".", 1)[0])))
    return sources


def directory_sources(root: str | Path) -> list[ScoreSource]:
    """Every score file under `root`; a `.txt` with the same stem is taken as its lyrics."""
    root = Path(root)
    if not root.is_dir():
        raise RecapError(f"score folder not found: {root}")
    sources = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in SCORE_SUFFIXES):
        txt = path.with_suffix(".txt")
        rel = path.relative_to(root).with_suffix("")
        sources.append(ScoreSource(str(path), slug(str(rel)), str(txt) if txt.is_file() else None))
    if not sources:
        raise RecapError(f"no score files ({', '.join(SCORE_SUFFIXES)}) under {root}")
    return sources


def find_sources(source: str) -> list[ScoreSource]:
    """`music21`, `openscore-lieder` (../shared/data/openscore-lieder) or a folder of scores."""
    if source == "music21":
        return music21_sources()
    if source == "openscore-lieder":
        if not DEFAULT_LIEDER.is_dir():
            raise RecapError(
                f"{DEFAULT_LIEDER} not found: clone the public OpenScore/Lieder repository and "
                "pass its path as --source"
            )
        source = str(DEFAULT_LIEDER)
    return directory_sources(source)


def _lyrics_from_part(part) -> str:
    """The sung text of a part, verse after verse, syllables joined by their `syllabic` marks."""
    return join_verses(
        [
            (lyric.number or 1, lyric.text, lyric.syllabic in ("begin", "middle"))
            for n in part.recurse().notes
            for lyric in n.lyrics or ()
            if lyric.text
        ]
    )


def _events(part) -> np.ndarray:
    """Note events of a part (each pitch of a chord with the chord's tie), tied notes merged."""
    notes = []
    for n in part.flatten().notes:
        ql = float(n.quarterLength)
        if ql <= 0:  # grace notes
            continue
        tie = n.tie.type if n.tie is not None else None
        notes += [(float(n.offset), ql, int(p.midi), tie) for p in getattr(n, "pitches", ())]
    return merge_ties(notes)


def estimate_key(events: np.ndarray) -> tuple[int, str]:
    """Krumhansl-Schmuckler: the key whose profile best correlates with the duration-weighted
    pitch-class histogram."""
    hist = np.zeros(12)
    np.add.at(hist, events[:, 2].astype(int) % 12, events[:, 1])
    best = (-2.0, 0, "major")
    for tonic in range(12):
        rolled = np.roll(hist, -tonic)  # index 0 = candidate tonic
        for mode, profile in (("major", _MAJOR_PROFILE), ("minor", _MINOR_PROFILE)):
            r = float(np.corrcoef(rolled, profile)[0, 1])
            if r > best[0]:
                best = (r, tonic, mode)
    return best[1], best[2]


def _read_music21(path: str) -> tuple[list[tuple[np.ndarray, str]], tuple[int, float] | None]:
    """(events, lyrics) per part and the first time signature, through music21's parser."""
    from music21 import converter

    # forceSource: no pickles written into the user's music21 scratch folder. music21 warns
    # about notation it does not model (directions, spacing): noise for a build log.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        score = converter.parse(path, forceSource=True)
    parts = list(getattr(score, "parts", None) or [score])
    ts = score.recurse().getElementsByClass("TimeSignature").first()
    time_sig = (int(ts.numerator), float(ts.barDuration.quarterLength)) if ts is not None else None
    return [(_events(p), _lyrics_from_part(p)) for p in parts], time_sig


def _read_fast(path: str) -> tuple[list[tuple[np.ndarray, str]], tuple[int, float] | None]:
    """The same from the MusicXML directly (recap.bench.musicxml), for .mxl/.musicxml/.xml."""
    score = read_musicxml(path)
    return [(s.events(), s.lyrics()) for s in score.staves], score.time_signature


def read_parts(
    path: str, parser: str = "auto"
) -> tuple[list[tuple[np.ndarray, str]], tuple[int, float] | None]:
    """Per part (events, lyrics) and the first time signature; `parser` is auto, fast or music21.

    auto reads MusicXML with the fast reader and everything else (and MusicXML it does not model)
    with music21. Any parse failure is a ScoreError with the reason.
    """
    try:
        if Path(path).suffix.lower() == ".mxl":
            check_archive(path)  # every reader unpacks it: refuse a zip bomb first
        if parser != "music21" and Path(path).suffix.lower() in MUSICXML_SUFFIXES:
            try:
                return _read_fast(path)
            except Unsupported:
                if parser == "fast":
                    raise
        return _read_music21(path)
    except Exception as err:  # XML, zip and music21 errors of many types for malformed files
        raise ScoreError(f"cannot parse: {type(err).__name__}: {err}"[:300]) from err


def load_score(src: ScoreSource, parser: str = "auto") -> ScoreData:
    """Parse one score into `ScoreData`; raises ScoreError with the reason it cannot be used."""
    parts, time_sig = read_parts(src.path, parser)
    lyrics_by_part = [lyr for _, lyr in parts]
    events = [ev for ev, _ in parts]
    if not any(len(e) for e in events):
        raise ScoreError("no notes")
    # The melody is the part that carries the most text (the voice); ties go to the upper part.
    lengths = [len(t) for t in lyrics_by_part]
    melody_idx = int(np.argmax(lengths))
    lyrics = lyrics_by_part[melody_idx]
    if src.lyrics_path:
        try:
            lyrics = Path(src.lyrics_path).read_text("utf-8").strip() or lyrics
        except (OSError, UnicodeDecodeError) as err:
            raise ScoreError(f"unreadable lyrics file {src.lyrics_path}: {err}") from err
    if not lyrics.strip():
        raise ScoreError("no lyrics")
    melody = events[melody_idx]
    if not len(melody):
        raise ScoreError("the part with lyrics has no notes")
    others = [e for i, e in enumerate(events) if i != melody_idx and len(e)]
    if others:
        accompaniment = np.concatenate(others)
    else:
        # A lone voice: the accompaniment doubles it an octave lower, so both channels sound.
        accompaniment = melody.copy()
        accompaniment[:, 2] -= 12
    accompaniment = accompaniment[np.lexsort((accompaniment[:, 2], accompaniment[:, 0]))]
    numerator, bar = time_sig or (4, 4.0)
    tonic, mode = estimate_key(np.concatenate([melody, accompaniment]))
    return ScoreData(melody, accompaniment, lyrics, numerator, bar, tonic, mode)
