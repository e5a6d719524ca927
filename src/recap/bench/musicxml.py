"""A small partwise-MusicXML reader: note events, lyrics and the first time signature.

music21 builds a full object model of a score (about 0.15 CPU-s for a chorale, 0.44 s for an
OpenScore song) and the benchmark then reads back only note onsets, durations, pitches, the sung
text and the metre. This reader gets the same from the XML directly, 5-6x faster, and is checked
against music21 on its corpus (tests/test_musicxml.py, benchmarks/score_reader.py). It follows
music21's conventions where they matter to the benchmark:

- a part with several staves becomes one "part" per staff (music21's PartStaff);
- pitches are as written (a transposing instrument is not moved to sounding pitch);
- grace notes are dropped; repeats are not expanded;
- a measure starts where the previous one's content ended (a pickup bar is short).

Anything it does not model (score-timewise files) raises `Unsupported`, and the caller falls back
to music21.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np

_STEP = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


class Unsupported(Exception):
    """A valid score this reader does not model; music21 reads it instead."""


Note = tuple[float, float, int, str | None]  # onset, quarter length, MIDI pitch, tie type


def merge_ties(notes: list[Note]) -> np.ndarray:
    """(n, 3) float array of onset, duration, pitch with tied notes merged (a running map of open
    ties: music21's stripTies costs as much as its parse). Both readers' notes come here."""
    # music21's flatten() orders by offset; the stable sort keeps chord and voice order.
    rows: list[list[float]] = []
    open_ties: dict[int, int] = {}  # MIDI pitch -> index of the row its tie extends
    for on, q, midi, tie in sorted(notes, key=lambda n: n[0]):
        if tie in ("stop", "continue") and midi in open_ties:
            row = rows[open_ties[midi]]
            row[1] = on + q - row[0]
            if tie == "stop":
                del open_ties[midi]
            continue
        rows.append([on, q, float(midi)])
        if tie in ("start", "continue"):
            open_ties[midi] = len(rows) - 1
        else:
            open_ties.pop(midi, None)
    return np.array(rows, dtype=np.float64).reshape(-1, 3)


def join_verses(syllables: list[tuple[int, str, bool]]) -> str:
    """(verse number, text, joined to the next) → the text verse after verse, syllables joined
    by their `syllabic` marks (as music21 reads them)."""
    verses: dict[int, list[str]] = {}
    for number, text, joined in syllables:
        verses.setdefault(number, []).append(text + ("" if joined else " "))
    return " ".join("".join(verses[k]).strip() for k in sorted(verses)).strip()


@dataclass
class Staff:
    """One staff's notes in document order: (onset, quarter length, midi, tie) and lyrics."""

    notes: list[Note] = field(default_factory=list)
    # (verse number, text, joined to the next syllable) in document order
    syllables: list[tuple[int, str, bool]] = field(default_factory=list)

    def events(self) -> np.ndarray:
        return merge_ties(self.notes)

    def lyrics(self) -> str:
        return join_verses(self.syllables)


@dataclass
class _RawStaff:
    notes: list[tuple[int, float, float, int, str | None]] = field(default_factory=list)
    syllables: list[tuple[int, str, bool]] = field(default_factory=list)


@dataclass
class MusicXMLScore:
    staves: list[Staff]
    time_signature: tuple[int, float] | None  # (numerator, bar length in quarter notes)


# A compressed score (.mxl) is a zip archive, and a zip member can unpack to a thousand times its
# stored size (a "zip bomb": a 1.5 MB file holding 1.5 GiB). The largest real MusicXML scores
# are a few tens of MB, so a member declared larger is refused before anything is read, and
# reads stop at the limit whatever the header claims.
MAX_MEMBER_BYTES = 64 * 1024 * 1024


class ArchiveTooLarge(ValueError):
    """An .mxl member that unpacks to more than MAX_MEMBER_BYTES."""


def check_archive(path: str | Path, limit: int = MAX_MEMBER_BYTES) -> None:
    """Refuse an .mxl whose members declare more than `limit` bytes each (before music21 or
    any other reader unpacks them; Python's zipfile never returns more than the declared size)."""
    with zipfile.ZipFile(path) as zf:
        total = 0
        for info in zf.infolist():
            if info.file_size > limit:
                raise ArchiveTooLarge(
                    f"{info.filename} unpacks to {info.file_size:,} bytes, over the "
                    f"{limit:,}-byte limit for one score member"
                )
            total += info.file_size
        if total > 2 * limit:  # many members just under the limit are a bomb too
            raise ArchiveTooLarge(f"the archive unpacks to {total:,} bytes in all")


def read_member(zf: zipfile.ZipFile, name: str, limit: int = MAX_MEMBER_BYTES) -> bytes:
    """One member's bytes, never more than `limit` of them (a size check before reading)."""
    info = zf.getinfo(name)
    if info.file_size > limit:
        raise ArchiveTooLarge(f"{name} unpacks to {info.file_size:,} bytes (limit {limit:,})")
    with zf.open(info) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ArchiveTooLarge(f"{name} unpacks to more than {limit:,} bytes")
    return data


def _container_rootfile(zf: zipfile.ZipFile, names: list[str]) -> str | None:
    """The score named by META-INF/container.xml; None when there is none, it is not
    well-formed XML (real collections hold such files, e.g. an apostrophe inside a single-quoted
    full-path) or it names a member the archive lacks."""
    if "META-INF/container.xml" not in names:
        return None
    try:
        container = ET.fromstring(read_member(zf, "META-INF/container.xml"))
    except ET.ParseError:
        return None
    for el in container.iter():
        if el.tag.endswith("rootfile") and el.get("full-path"):
            inner = el.get("full-path")
            return inner if inner in names else None
    return None


def _read_root(path: Path) -> ET.Element:
    if path.suffix.lower() == ".mxl":
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            inner = _container_rootfile(zf, names)
            if inner is None:
                candidates = [
                    n
                    for n in names
                    if not n.startswith("META-INF") and n.endswith(("xml", "musicxml"))
                ]
                if not candidates:
                    raise ValueError("no MusicXML file inside the .mxl archive")
                if len(candidates) > 1 and "META-INF/container.xml" in names:
                    # The container should have said which one; let music21 decide.
                    raise Unsupported("unreadable META-INF/container.xml and several scores")
                inner = candidates[0]
            return ET.fromstring(read_member(zf, inner))
    return ET.parse(path).getroot()


def _time_signature(el: ET.Element) -> tuple[int, float] | None:
    beats, beat_type = el.findtext("beats"), el.findtext("beat-type")
    if not beats or not beat_type:
        return None  # senza-misura
    try:
        numerator = sum(int(b) for b in beats.split("+"))
        return numerator, numerator * 4.0 / int(beat_type)
    except ValueError:
        return None


def _lyric_number(lyric: ET.Element, index: int) -> int:
    try:
        return int(lyric.get("number", ""))
    except ValueError:
        return index + 1


def _lyric_text(lyric: ET.Element) -> tuple[str, bool]:
    """The syllable's text and whether it joins the next one. Several <text> elements (an
    elision, "co_e") are one composite syllable joined by their elision marks, never joined on."""
    texts = [(t.text or "").strip() for t in lyric.iterfind("text")]
    if len(texts) == 1:
        return texts[0], (lyric.findtext("syllabic") or "").strip() in ("begin", "middle")
    elisions = [e.text if e.text is not None else "" for e in lyric.iterfind("elision")]
    out = texts[0] if texts else ""
    for i, t in enumerate(texts[1:]):
        out += (elisions[i] if i < len(elisions) else " ") + t
    return out, False


def _midi(pitch: ET.Element) -> int:
    alter = pitch.findtext("alter")
    return (
        (int(pitch.findtext("octave")) + 1) * 12
        + _STEP[pitch.findtext("step").strip()]
        + (round(float(alter)) if alter else 0)
    )


def _tie(types: set[str]) -> str | None:
    if "start" in types:
        return "continue" if "stop" in types else "start"
    return "stop" if "stop" in types else None


def read_musicxml(path: str | Path) -> MusicXMLScore:
    """Parse a .mxl / .musicxml / .xml file. XML errors propagate; see `Unsupported`."""
    root = _read_root(Path(path))
    if root.tag != "score-partwise":
        raise Unsupported(f"root element <{root.tag}>")
    time_sig = None
    staves: list[Staff] = []
    # Every part is placed on its own (as music21 does): the parts of a polymetric score (some
    # trecento motets) have measures of different lengths.
    for part in root.iterfind("part"):
        part_staves: dict[int, _RawStaff] = {}  # notes at (measure index, quarters into it)
        starts: list[float] = []  # each measure's start in quarter notes
        measure_start = Fraction(0)
        divisions = 1
        bar = Fraction(4)  # the time signature in force, for measures with no content
        for m_index, measure in enumerate(part.iterfind("measure")):
            starts.append(float(measure_start))
            # Positions are integers in `divisions` per quarter note: exact, like music21's.
            cursor = highest = last_onset = 0
            staff_no = 1
            for el in measure:
                tag = el.tag
                if tag == "note":
                    duration = pitch = None
                    grace = chord = False
                    staff_text = None
                    ties: set[str] = set()
                    lyrics = []
                    for child in el:
                        ctag = child.tag
                        if ctag == "duration":
                            duration = int(float(child.text))
                        elif ctag == "pitch":
                            pitch = child
                        elif ctag == "chord":
                            chord = True
                        elif ctag == "grace":
                            grace = True
                        elif ctag == "staff":
                            staff_text = child.text
                        elif ctag == "tie":
                            ties.add(child.get("type"))
                        elif ctag == "lyric":
                            lyrics.append(child)
                    if grace or duration is None:
                        continue
                    if chord:
                        onset = last_onset
                    else:
                        onset = last_onset = cursor
                        cursor += duration
                        # A chord drawn across two staves belongs to its first note's staff.
                        staff_no = int(staff_text or 1)
                    highest = max(highest, onset + duration)
                    staff = part_staves.get(staff_no)
                    if staff is None:
                        staff = part_staves[staff_no] = _RawStaff()
                    for i, lyric in enumerate(lyrics):
                        text, joined = _lyric_text(lyric)
                        if text:
                            staff.syllables.append((_lyric_number(lyric, i), text, joined))
                    if pitch is None or duration <= 0:
                        continue  # rest or unpitched
                    staff.notes.append(
                        (m_index, onset / divisions, duration / divisions, _midi(pitch), _tie(ties))
                    )
                elif tag == "backup":
                    cursor -= int(float(el.findtext("duration")))
                elif tag == "forward":
                    cursor += int(float(el.findtext("duration")))
                    highest = max(highest, cursor)
                elif tag == "attributes":
                    div = el.findtext("divisions")
                    if div:
                        # Rescale what this measure already counted (divisions almost always
                        # change at a measure's start, where all of these are 0).
                        new = int(float(div))
                        cursor, highest, last_onset = (
                            v * new // divisions for v in (cursor, highest, last_onset)
                        )
                        divisions = new
                    t = el.find("time")
                    if t is not None and (sig := _time_signature(t)) is not None:
                        time_sig = time_sig or sig
                        bar = Fraction(sig[1]).limit_denominator(64)
                    staves_text = el.findtext("staves")
                    if staves_text:
                        for s in range(1, int(staves_text) + 1):
                            part_staves.setdefault(s, _RawStaff())
            # The next measure starts where this one's content ends (a pickup is short); a
            # measure with no content lasts a bar, as music21 reads it.
            measure_start += Fraction(highest, divisions) or bar
        staves += [
            Staff(
                notes=[(starts[m] + on, q, midi, tie) for m, on, q, midi, tie in raw.notes],
                syllables=raw.syllables,
            )
            for raw in ([part_staves[k] for k in sorted(part_staves)] or [_RawStaff()])
        ]
    return MusicXMLScore(staves, time_sig)
