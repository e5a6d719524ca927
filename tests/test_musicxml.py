"""The fast MusicXML reader: agreement with music21 on its corpus, and the notation it models."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from recap.bench.musicxml import Unsupported, read_musicxml
from recap.bench.sources import ScoreError, ScoreSource, load_score, read_parts

# Chorales (4 parts), songs with the piano on two staves (several verses, pickups), and a madrigal
# with composite (elided) syllables.
CORPUS = (
    "bach/bwv10.7.mxl",
    "bach/bwv269.mxl",
    "schumann_robert/dichterliebe_no2.xml",
    "verdi/laDonnaEMobile.mxl",
    "monteverdi/madrigal.3.1.mxl",
)


def _sorted(ev: np.ndarray) -> np.ndarray:
    return ev[np.lexsort((ev[:, 2], ev[:, 1], ev[:, 0]))]


@pytest.mark.parametrize("rel", CORPUS)
def test_fast_reader_agrees_with_music21(rel):
    from music21 import corpus

    path = str(corpus.getWork(rel))
    fast_parts, fast_ts = read_parts(path, "fast")
    m21_parts, m21_ts = read_parts(path, "music21")
    assert fast_ts == m21_ts
    assert len(fast_parts) == len(m21_parts)
    for (ev_a, lyr_a), (ev_b, lyr_b) in zip(fast_parts, m21_parts):
        assert lyr_a == lyr_b
        assert ev_a.shape == ev_b.shape
        np.testing.assert_allclose(_sorted(ev_a), _sorted(ev_b), atol=1e-9)


HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<score-partwise version="3.1"><part-list>
<score-part id="P1"><part-name>Voice</part-name></score-part>
<score-part id="P2"><part-name>Piano</part-name></score-part></part-list>
"""


def _note(step, octave, dur, *extra, alter=None, staff=None):
    alter_xml = f"<alter>{alter}</alter>" if alter is not None else ""
    staff_xml = f"<staff>{staff}</staff>" if staff else ""
    pitch = f"<pitch><step>{step}</step>{alter_xml}<octave>{octave}</octave></pitch>"
    chord = "<chord/>" if "chord" in extra else ""
    grace = "<grace/>" if "grace" in extra else ""
    body = "".join(e for e in extra if e.startswith("<"))
    duration = "" if grace else f"<duration>{dur}</duration>"
    return f"<note>{grace}{chord}{pitch}{duration}{body}{staff_xml}</note>"


def _lyric(text, syllabic="single", number=1):
    return f'<lyric number="{number}"><syllabic>{syllabic}</syllabic><text>{text}</text></lyric>'


VOICE = (
    '<part id="P1">'
    # a one-beat pickup in 3/4 (divisions 2), sung "Ah"
    '<measure number="0" implicit="yes"><attributes><divisions>2</divisions>'
    "<time><beats>3</beats><beat-type>4</beat-type></time></attributes>"
    + _note("G", 4, 2, _lyric("Ah"))
    + "</measure>"
    # a grace note (dropped), then C5 tied over the bar, "Hal-le-"
    + '<measure number="1">'
    + _note("B", 4, 0, "grace")
    + _note("C", 5, 2, _lyric("Hal", "begin"))
    + _note("C", 5, 4, '<tie type="start"/>', _lyric("le", "middle"))
    + "</measure>"
    + '<measure number="2">'
    + _note("C", 5, 2, '<tie type="stop"/>')
    # an elided syllable: "lu_ia" is one composite syllable
    + _note(
        "B", 4, 4, "<lyric><syllabic>end</syllabic><text>lu</text><elision>_</elision>"
        "<syllabic>single</syllabic><text>ia</text></lyric>", alter=-1,
    )
    + "</measure>"
    # a whole-measure rest written one beat short: the written duration is kept
    + '<measure number="3"><note><rest measure="yes"/><duration>4</duration></note></measure>'
    + '<measure number="4">' + _note("D", 5, 6, _lyric("O")) + "</measure>"
    + "</part>"
)  # fmt: skip

PIANO = (
    '<part id="P2">'
    '<measure number="0" implicit="yes"><attributes><divisions>1</divisions><staves>2</staves>'
    "<time><beats>3</beats><beat-type>4</beat-type></time></attributes>"
    + _note("C", 4, 1, staff=1)
    + "</measure>"
    # two voices on staff 1 (backup), a chord drawn across both staves, a forward
    + '<measure number="1">'
    + _note("E", 4, 3, staff=1)
    + "<backup><duration>3</duration></backup>"
    + _note("C", 3, 1, staff=2)
    + _note("G", 3, 1, "chord", staff=1)  # belongs to staff 2 with its chord's first note
    + "<forward><duration>2</duration></forward>"
    + "</measure>"
    + '<measure number="2">' + _note("F", 3, 3, staff=2) + "</measure>"
    + '<measure number="3">' + _note("G", 3, 2, staff=2) + "</measure>"
    + '<measure number="4">' + _note("C", 3, 3, staff=2) + "</measure>"
    + "</part></score-partwise>"
)  # fmt: skip


@pytest.fixture
def song(tmp_path) -> Path:
    path = tmp_path / "song.musicxml"
    path.write_text(HEAD + VOICE + PIANO, "utf-8")
    return path


def test_reader_models_the_notation_the_benchmark_uses(song):
    score = read_musicxml(song)
    assert score.time_signature == (3, 3.0)
    voice, right, left = score.staves  # the piano's two staves become two parts, as in music21
    # pickup of one beat, so bar 1 starts at 1; the grace note is dropped; the tie is merged
    np.testing.assert_allclose(
        voice.events(),
        [[0, 1, 67], [1, 1, 72], [2, 3, 72], [5, 2, 70], [9, 3, 74]],  # the short rest bar: 2 beats
    )
    assert voice.lyrics() == "Ah Hallelu_ia O"
    np.testing.assert_allclose(right.events(), [[0, 1, 60], [1, 3, 64]])
    np.testing.assert_allclose(
        _sorted(left.events()), [[1, 1, 48], [1, 1, 55], [4, 3, 53], [7, 2, 55], [9, 3, 48]]
    )
    assert right.lyrics() == left.lyrics() == ""


def test_load_score_takes_the_sung_part_as_melody(song):
    score = load_score(ScoreSource(str(song), "song"))
    assert score.lyrics == "Ah Hallelu_ia O"
    assert score.melody[:, 2].tolist() == [67, 72, 72, 70, 74]
    assert len(score.accompaniment) == 7 and (score.numerator, score.bar_quarters) == (3, 3.0)


def test_compressed_mxl_and_verses(tmp_path, song):
    text = song.read_text("utf-8").replace(_lyric("O"), _lyric("O") + _lyric("Du", number=2))
    mxl = tmp_path / "song.mxl"
    with zipfile.ZipFile(mxl, "w") as zf:
        zf.writestr(
            "META-INF/container.xml",
            '<container><rootfiles><rootfile full-path="inner/score.xml"/></rootfiles></container>',
        )
        zf.writestr("inner/score.xml", text)
    assert read_musicxml(mxl).staves[0].lyrics() == "Ah Hallelu_ia O Du"  # verse 1, then verse 2


def test_errors_name_the_reason(tmp_path):
    timewise = tmp_path / "timewise.xml"
    timewise.write_text('<?xml version="1.0"?><score-timewise version="3.1"/>', "utf-8")
    with pytest.raises(Unsupported, match="score-timewise"):
        read_musicxml(timewise)
    with pytest.raises(ScoreError, match="cannot parse: Unsupported"):
        read_parts(str(timewise), "fast")
    broken = tmp_path / "broken.xml"
    broken.write_text("<score-partwise><part>", "utf-8")
    with pytest.raises(ScoreError, match="cannot parse: ParseError"):
        read_parts(str(broken))
    empty = tmp_path / "empty.mxl"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("readme.txt", "nothing")
    with pytest.raises(ScoreError, match="no MusicXML file"):
        read_parts(str(empty))


def test_malformed_container_falls_back_to_the_only_score(tmp_path, song):
    mxl = tmp_path / "song.mxl"
    with zipfile.ZipFile(mxl, "w") as zf:
        # an apostrophe inside a single-quoted attribute: not well-formed XML
        zf.writestr("META-INF/container.xml",
                    "<container><rootfiles><rootfile full-path='Tom's song.xml'/></rootfiles>"
                    "</container>")  # fmt: skip
        zf.writestr("Tom's song.xml", song.read_text("utf-8"))
    parts, time_sig = read_parts(str(mxl), "auto")
    assert parts[0][1] == "Ah Hallelu_ia O" and time_sig == (3, 3.0)
    assert read_musicxml(mxl).staves[0].lyrics() == "Ah Hallelu_ia O"


def test_zip_bomb_is_refused_before_it_is_unpacked(tmp_path, song, monkeypatch):
    import recap.bench.sources as sources

    bomb = tmp_path / "bomb.mxl"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("score.xml", song.read_text("utf-8"))
        zf.writestr("padding.xml", b"\0" * (65 * 1024 * 1024))  # 65 MB in ~64 kB
    assert bomb.stat().st_size < 200_000
    read = []
    real_read = zipfile.ZipExtFile.read
    monkeypatch.setattr(zipfile.ZipExtFile, "read",
                        lambda self, n=-1: read.append(n) or real_read(self, n))  # fmt: skip
    with pytest.raises(ScoreError, match="unpacks to"):
        read_parts(str(bomb), "auto")
    assert read == []  # refused from the archive's directory, nothing decompressed
    assert sources._has_lyrics_marker(bomb)  # the corpus scan leaves the verdict to the parser
    assert read == []
