"""The FAISS song index: build, search, eval (CLI and API) on a tiny trained model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support import SONGS

from recap.cli import main
from recap.evaluation.retrieval import chance_metrics, retrieval_metrics
from recap.inference.index import IndexSettings, SongEntry, SongIndex
from recap.inference.indexing import Searcher, build_index
from recap.utils import RecapError


@pytest.fixture(scope="session")
def manifest(songs_dir, tmp_path_factory) -> Path:
    """A JSONL manifest: the first four songs are 'test', the rest 'train'."""
    path = tmp_path_factory.mktemp("manifest") / "songs.jsonl"
    rows = [
        {
            "id": sid,
            "audio": str(songs_dir / f"{sid}.wav"),
            "lyrics": lyr,
            "split": "test" if n < 4 else "train",
        }
        for n, (sid, _, lyr) in enumerate(SONGS)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def index_dir(model_dir, manifest, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("idx") / "index"
    assert (
        main(
            [
                "index",
                "build",
                "--model",
                str(model_dir),
                "--data",
                str(manifest),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def test_build_writes_a_loadable_index(index_dir, model_dir):
    meta = json.loads((index_dir / "meta.json").read_text())
    assert meta["format_version"] == 1 and meta["count"] == len(SONGS)
    assert meta["settings"]["kind"] == "flat"  # a small catalogue is searched exactly
    assert Path(meta["model_path"]) == model_dir.resolve()
    index = SongIndex.load(index_dir)
    assert np.allclose(np.linalg.norm(index.audio, axis=1), 1, atol=1e-5)
    assert index.songs[0].first_line == "the river runs down to the sea"


def test_search_finds_the_paired_song(index_dir, songs_dir):
    searcher = Searcher.load(index_dir)  # the model path recorded in the index
    # The tiny model was trained to pair each song's audio with its lyrics.
    top = [searcher.search_audio(songs_dir / f"{sid}.wav", k=3)[0].song_id for sid, _, _ in SONGS]
    assert sum(t == sid for t, (sid, _, _) in zip(top, SONGS)) >= len(SONGS) - 1
    hits = searcher.search_lyrics(SONGS[1][2], k=len(SONGS) + 5)
    assert len(hits) == len(SONGS)  # k is capped at the catalogue size
    assert [h.rank for h in hits] == list(range(1, len(SONGS) + 1))
    assert "winter" in [h.song_id for h in hits[:2]]
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))


def test_search_cli(index_dir, songs_dir, capsys):
    assert (
        main(
            [
                "search",
                "--index",
                str(index_dir),
                "--audio",
                str(songs_dir / "dance.wav"),
                "-k",
                "2",
                "--json",
            ]
        )
        == 0
    )
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 2 and "dance" in [h["song_id"] for h in hits]
    assert (
        main(["search", "--index", str(index_dir), "--lyrics", "cold winter night", "-k", "3"]) == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("top 3 songs") and "winter" in out
    assert main(["search", "--index", str(index_dir), "--audio", str(songs_dir / "nope.wav")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_eval_beats_chance(index_dir, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert (
        main(["index", "eval", "--index", str(index_dir), "--split", "test", "--json", str(out)])
        == 0
    )
    table = capsys.readouterr().out
    assert "audio → lyrics" in table and "random chance" in table
    m = json.loads(out.read_text())
    assert m["songs"] == 4
    assert m["chance"]["recall@1"] == pytest.approx(0.25)
    assert m["audio_to_lyrics"]["recall@1"] > m["chance"]["recall@1"]
    assert m["lyrics_to_audio"]["mrr"] > m["chance"]["mrr"]
    assert main(["index", "eval", "--index", str(index_dir), "--split", "val"]) == 2


def test_flat_and_ivf_agree(tmp_path):
    rng = np.random.default_rng(0)
    n, dim = 2000, 32
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    songs = [SongEntry(f"s{i}", "", f"k{i}") for i in range(n)]
    flat = SongIndex(songs, vectors, vectors, IndexSettings("flat"))
    ivf = SongIndex(songs, vectors, vectors, IndexSettings("ivf", nlist=16, nprobe=16))
    auto = SongIndex(songs, vectors, vectors, IndexSettings(ivf_threshold=1000))
    assert flat.settings.kind == "flat" and auto.settings.kind == "ivf"
    queries = rng.standard_normal((20, dim)).astype(np.float32)
    exact = [[h.song_id for h in hits] for hits in flat.search(queries, "audio", 10)]
    full_probe = [[h.song_id for h in hits] for hits in ivf.search(queries, "audio", 10)]
    assert full_probe == exact  # visiting every list is exact search
    few = SongIndex(songs, vectors, vectors, IndexSettings("ivf", nlist=16, nprobe=2))
    approx = [[h.song_id for h in hits] for hits in few.search(queries, "audio", 10)]
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert 0.1 < recall < 1.0  # approximate: most but not all neighbours
    # Saved IVF lists are reused on load (no retraining); nprobe can be changed at load time.
    few.save(tmp_path / "ivf")
    assert (tmp_path / "ivf" / "audio.ivf_centroids.npy").is_file()
    again = SongIndex.load(tmp_path / "ivf")
    assert [[h.song_id for h in hits] for hits in again.search(queries, "audio", 10)] == approx
    wide = SongIndex.load(tmp_path / "ivf", nprobe=16)
    assert [[h.song_id for h in hits] for hits in wide.search(queries, "audio", 10)] == exact
    assert SongIndex.load(tmp_path / "ivf", kind="flat").settings.kind == "flat"


def test_distinct_search_lists_each_work_once(tmp_path):
    # Six songs, three works: two renderings each of works a and b (a by work id, b by equal
    # lyrics), and two lyrics-less songs that are two works, not one.
    songs = [
        SongEntry("a1", "line a", "ka", work="A"),
        SongEntry("a2", "line a, live", "kx", work="A"),
        SongEntry("b1", "line b", "kb"),
        SongEntry("b2", "line b", "kb"),
        SongEntry("i1", "", "audio:1", has_lyrics=False),
        SongEntry("i2", "", "audio:2", has_lyrics=False),
    ]
    base = np.eye(6, dtype=np.float32)
    query = np.array([[6, 5, 4, 3, 2, 1]], dtype=np.float32)  # ranks a1 a2 b1 b2 i1 i2
    index = SongIndex(songs, base, base, IndexSettings("flat"))
    plain = [h.song_id for h in index.search(query, "audio", 4)[0]]
    assert plain == ["a1", "a2", "b1", "b2"]
    hits = index.search(query, "audio", 4, distinct=True)[0]
    assert [h.song_id for h in hits] == ["a1", "b1", "i1", "i2"]
    assert [h.rank for h in hits] == [1, 2, 3, 4]
    assert len(index.search(query, "audio", 10, distinct=True)[0]) == 4  # only 4 works exist
    # The lyrics side holds no instrumentals, with or without `distinct`.
    for distinct, expected in ((False, ["a1", "a2", "b1", "b2"]), (True, ["a1", "b1"])):
        hits = index.search(query, "lyrics", 10, distinct=distinct)[0]
        assert [h.song_id for h in hits] == expected
    # work ids and audio paths survive a save/load; an older meta.json without them loads
    index.save(tmp_path / "idx")
    again = SongIndex.load(tmp_path / "idx")
    assert [h.song_id for h in again.search(query, "audio", 4, distinct=True)[0]] == [
        "a1", "b1", "i1", "i2"
    ]  # fmt: skip
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    for song in meta["songs"]:
        del song["work"], song["audio"]
    (tmp_path / "idx" / "meta.json").write_text(json.dumps(meta))
    assert SongIndex.load(tmp_path / "idx").songs[0].work is None


def test_build_records_audio_files_and_work_ids(model_dir, songs_dir, tmp_path):
    rows = [
        {"id": sid, "audio": str(songs_dir / f"{sid}.wav"), "lyrics": lyr, "work_id": f"w-{n // 2}"}
        for n, (sid, _, lyr) in enumerate(SONGS)
    ]
    manifest = tmp_path / "songs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    index, _ = build_index(model_dir, manifest, progress=False)
    assert [s.work for s in index.songs] == [f"w-{n // 2}" for n in range(len(SONGS))]
    assert index.songs[0].audio == str((songs_dir / "river.wav").resolve())
    hits = index.search(index.audio[:1], "audio", len(SONGS), distinct=True)[0]
    assert len(hits) == len(SONGS) // 2


def test_metrics_and_chance_by_hand():
    # Queries 0 and 2 find their key first; query 1 scores its key 0.1, both others 1: third.
    q = np.eye(3, dtype=np.float32)
    keys = np.array([[1, 1, 0], [0, 0.1, 0], [0, 1, 1]], dtype=np.float32)
    m = retrieval_metrics(q, keys, np.array(["a", "b", "c"]))
    assert m["recall@1"] == pytest.approx(2 / 3)
    assert m["recall@5"] == 1.0
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1) / 3)
    chance = chance_metrics(np.array(["a", "b", "c", "d"]))
    assert chance["recall@1"] == pytest.approx(0.25)
    assert chance["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    # Two renderings share lyrics "a": a random order hits one of 2 correct among 3 at once 2/3.
    assert chance_metrics(np.array(["a", "a", "b"]))["recall@1"] == pytest.approx(
        (2 / 3 * 2 + 1 / 3) / 3
    )


def test_index_errors(model_dir, tmp_path, songs_dir):
    with pytest.raises(RecapError, match="not a recap index"):
        SongIndex.load(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RecapError, match="refusing to overwrite"):
        build_index(model_dir, songs_dir, tmp_path, progress=False)
    index, skipped = build_index(model_dir, songs_dir, tmp_path / "idx", progress=False)
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    meta["format_version"] = 99
    (tmp_path / "idx" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RecapError, match="rebuild"):
        SongIndex.load(tmp_path / "idx")


def test_songs_without_lyrics_are_indexed_by_their_audio(model_dir, songs_dir, tmp_path):
    folder = tmp_path / "three"
    folder.mkdir()
    for sid in ("river", "winter", "dance"):
        (folder / f"{sid}.wav").write_bytes((songs_dir / f"{sid}.wav").read_bytes())
    for sid in ("river", "winter"):  # dance is an instrumental here
        (folder / f"{sid}.txt").write_bytes((songs_dir / f"{sid}.txt").read_bytes())
    out = tmp_path / "idx"
    index, skipped = build_index(model_dir, folder, out, progress=False)
    assert len(index) == 3 and len(skipped) == 0
    loaded = SongIndex.load(out)
    dance = next(s for s in loaded.songs if s.song_id == "dance")
    assert not dance.has_lyrics and dance.first_line == ""
    assert len({s.lyrics_key for s in loaded.songs}) == 3  # an instrumental is a work of its own
    # Audio queries look for lyrics: the instrumental has none to offer.
    hits = loaded.search(loaded.audio, "lyrics", k=10)
    assert all(len(h) == 2 and "dance" not in {x.song_id for x in h} for h in hits)
    # Lyrics queries look for audio: the instrumental is there.
    assert "dance" in {x.song_id for x in loaded.search(loaded.lyrics[:1], "audio", k=10)[0]}
    assert loaded.evaluate(None)["songs"] == 2  # nothing to pair for the instrumental
