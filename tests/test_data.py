"""Dataset loaders: every release format, variants and splits, bad rows, the restricted unpickler."""

from __future__ import annotations

import csv
import json
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import recap.cli
from recap.data.songs import Row, audio_path, load_rows, load_splits, random_split_indices
from recap.utils import RecapError, SkipReport

RECORDS = [
    {"music4all_id": "Aa1", "songmeanings_id": 11, "lyrics": "la la\nla", "comment": "about love", "votes": 3, "split": "train"},
    {"music4all_id": "Aa1", "songmeanings_id": 11, "lyrics": "la la\nla", "comment": "about loss", "votes": -1, "split": "train"},
    {"music4all_id": "bB2", "songmeanings_id": 12, "lyrics": "oh oh", "comment": "a war song", "votes": 0, "split": "train"},
    {"music4all_id": "cC3", "songmeanings_id": 13, "lyrics": "hey", "comment": "it is hope", "votes": 5, "split": "val"},
    {"music4all_id": "dD4", "songmeanings_id": 14, "lyrics": "yo", "comment": "it is anger", "votes": -2, "split": "test"},
]  # fmt: skip


@pytest.fixture
def cli_main(monkeypatch: pytest.MonkeyPatch):
    """The real `recap` entry point with only this module's commands registered."""
    monkeypatch.setattr(recap.cli, "COMMAND_MODULES", ("recap.cli.data",))
    return recap.cli.main


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_csv(path: Path, records: list[dict], index: bool = True) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(([""] if index else []) + ["music4all_id", "lyrics", "comment"])
        for i, r in enumerate(records):
            w.writerow(([i] if index else []) + [r["music4all_id"], r["lyrics"], r["comment"]])
    return path


@pytest.fixture
def mymodel():
    """A throwaway `mymodel` module, as the authors had, to write pickles; removed before
    loading so the loader cannot lean on it."""
    module = types.ModuleType("mymodel")

    class LyricsCommentData:
        def __init__(self, **fields):
            self.__dict__.update(fields)

    LyricsCommentData.__module__ = "mymodel"
    LyricsCommentData.__qualname__ = "LyricsCommentData"
    module.LyricsCommentData = LyricsCommentData
    sys.modules["mymodel"] = module
    yield module
    sys.modules.pop("mymodel", None)


def dump_pickle(path: Path, obj: object, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    sys.modules.pop("mymodel", None)
    return path


# ---------------------------------------------------------------- formats


def test_jsonl_folder_keeps_extra_fields(tmp_path: Path) -> None:
    recs = [dict(r, slots={"key": "C major"}, work_id="w1") for r in RECORDS]
    write_jsonl(tmp_path / "dataset.jsonl", recs)
    rows = load_rows(tmp_path)
    assert len(rows) == 5
    assert rows[0] == Row("Aa1", "la la;la", "about love", 3, "train")
    assert rows[0].extra == {"songmeanings_id": 11, "slots": {"key": "C major"}, "work_id": "w1"}
    assert load_rows(tmp_path, newline_to_semicolon=False)[0].lyrics == "la la\nla"


@pytest.mark.parametrize("layout", ["records", "wrapped", "pandas_columns", "pandas_split"])
def test_json_release_layouts(tmp_path: Path, layout: str) -> None:
    cols = list(RECORDS[0])
    obj = {
        "records": RECORDS,
        "wrapped": {"data": RECORDS},
        "pandas_columns": {c: {str(i): r[c] for i, r in enumerate(RECORDS)} for c in cols},
        "pandas_split": {"columns": cols, "index": [0, 1, 2, 3, 4], "data": [[r[c] for c in cols] for r in RECORDS]},
    }[layout]  # fmt: skip
    path = tmp_path / "dataset_full_256_clean.json"
    path.write_text(json.dumps(obj))
    rows = load_rows(path)
    assert [(r.song_id, r.votes, r.split) for r in rows] == [
        (r["music4all_id"], r["votes"], r["split"]) for r in RECORDS
    ]


@pytest.mark.parametrize("vote_field", ["votes", "vote", "rating", "score"])
def test_vote_field_names(tmp_path: Path, vote_field: str) -> None:
    recs = [{k if k != "votes" else vote_field: v for k, v in r.items()} for r in RECORDS]
    rows = load_rows(write_jsonl(tmp_path / "d.jsonl", recs))
    assert [r.votes for r in rows] == [3, -1, 0, 5, -2]


def _csv_release(folder: Path) -> None:
    train = [r for r in RECORDS if r["split"] == "train"]
    write_csv(folder / "df_full_train.csv", train)
    write_csv(folder / "df_not_negative_train.csv", [r for r in train if r["votes"] >= 0])
    write_csv(folder / "df_positive_train.csv", [r for r in train if r["votes"] > 0])
    for v in ("full", "not_negative", "positive"):
        write_csv(folder / f"df_{v}_val.csv", [RECORDS[3]], index=False)
    write_csv(folder / "df_test.csv", [RECORDS[4]])


def test_authors_csvs(tmp_path: Path) -> None:
    _csv_release(tmp_path)
    rows = load_rows(tmp_path)
    assert [(r.song_id, r.split, r.votes) for r in rows] == [
        ("Aa1", "train", None), ("Aa1", "train", None), ("bB2", "train", None),
        ("cC3", "val", None), ("dD4", "test", None),
    ]  # fmt: skip
    assert rows[0].lyrics == "la la;la"
    positive = load_splits(tmp_path, "positive")
    assert [r.comment for r in positive["train"]] == ["about love"]
    assert [r.song_id for r in positive["val"]] == ["cC3"]
    assert [r.song_id for r in positive["test"]] == ["dD4"]
    one = load_rows(tmp_path / "df_positive_train.csv")
    assert len(one) == 1 and one[0].split == "train"


def _full_256_clean(folder: Path) -> Path:
    """A file of exactly the public `dataset_full_256_clean.json`'s shape: a JSON list of
    records with `music4all_id` and `comment` only (no lyrics, no split, no vote field), and
    Music4All's `lyrics/{id}.txt` beside it. Song "gone" has no lyrics file."""
    folder.mkdir(parents=True, exist_ok=True)
    records = [
        {"music4all_id": "0009fFIM1eYThaPg", "comment": "A song about leaving home. " * 12},
        {"music4all_id": "0009fFIM1eYThaPg", "comment": "It is really about a lost friend. " * 9},
        {"music4all_id": "0010xmHR6UICBOYT", "comment": "The singer regrets the war years. " * 9},
        {"music4all_id": "gone", "comment": "This one has no lyrics anywhere at all. " * 8},
    ]
    (folder / "dataset_full_256_clean.json").write_text(json.dumps(records))
    (folder / "lyrics").mkdir()
    (folder / "lyrics" / "0009fFIM1eYThaPg.txt").write_text("I left my home\nin the rain\n")
    (folder / "lyrics" / "0010xmHR6UICBOYT.txt").write_text("war and years\ngone by\n")
    return folder


def test_full_256_clean_json_takes_lyrics_from_music4all_files(tmp_path, caplog, capsys, cli_main):
    folder = _full_256_clean(tmp_path / "data")
    report = SkipReport("t")
    rows = load_rows(folder, report)
    assert [(r.song_id, r.split, r.votes) for r in rows] == [
        ("0009fFIM1eYThaPg", None, None),
        ("0009fFIM1eYThaPg", None, None),
        ("0010xmHR6UICBOYT", None, None),
    ]
    # '\n' → ';' as for any release, after the file's last newline is dropped (prepare_lyrics)
    assert rows[0].lyrics == "I left my home;in the rain"
    assert report.items == [
        {"item": "dataset_full_256_clean.json[3] (song gone)",
         "reason": "no lyrics in the record and no lyrics/gone.txt"},
    ]  # fmt: skip
    # No split: everything is train (val: the 90/10 random split), the test split is empty,
    # and that is said, with where the paper's test split comes from.
    splits = load_splits(folder)
    assert len(splits["train"]) + len(splits["val"]) == 3 and splits["test"] == []
    assert "no split field" in caplog.text and "df_test.csv" in caplog.text
    with pytest.raises(RecapError, match="no vote"):
        load_splits(folder, "positive")
    assert cli_main(["data", "stats", str(folder), "--no-audio"]) == 0
    printed = capsys.readouterr().out
    assert "splits: none 3" in printed and "warning:" in printed and "df_test.csv" in printed
    # The authors' df_test.csv beside the JSON is its test split.
    write_csv(folder / "df_test.csv", [RECORDS[4]])
    caplog.clear()
    splits = load_splits(folder)
    assert [(r.song_id, r.split) for r in splits["test"]] == [("dD4", "test")]
    assert len(splits["train"]) + len(splits["val"]) == 3 and "no test rows" not in caplog.text


def test_pickle_formats(tmp_path: Path, mymodel: types.ModuleType) -> None:
    cls = mymodel.LyricsCommentData
    fields = ("music4all_id", "songmeanings_id", "lyrics", "comment")
    per_row = [cls(**{k: r[k] for k in fields}) for r in RECORDS[:3]]
    rows = load_rows(dump_pickle(tmp_path / "rows.pkl", per_row))
    assert [(r.song_id, r.comment, r.votes) for r in rows] == [
        (r["music4all_id"], r["comment"], None) for r in RECORDS[:3]
    ]
    sys.modules["mymodel"] = mymodel
    columnar = cls(**{k: [r[k] for r in RECORDS] for k in fields})
    rows = load_rows(dump_pickle(tmp_path / "columns.pkl", columnar, protocol=2))
    assert [r.song_id for r in rows] == [r["music4all_id"] for r in RECORDS]
    # the older class: one object per song, `comments` = [(text, rating), ...]
    sys.modules["mymodel"] = mymodel
    older = [
        cls(music4all_id="Aa1", songmeanings_id=1, lyrics="la", comments=[("love", 4), ("loss", np.int64(-1))]),
        cls(music4all_id="bB2", songmeanings_id=2, lyrics="oh", comments=[("war", 0)]),
    ]  # fmt: skip
    rows = load_rows(dump_pickle(tmp_path / "older.pkl", older, protocol=0))
    assert [(r.song_id, r.comment, r.votes) for r in rows] == [
        ("Aa1", "love", 4), ("Aa1", "loss", -1), ("bB2", "war", 0),
    ]  # fmt: skip


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, cli_main
) -> None:
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([evil]))
    with pytest.raises(RecapError, match=r"refused to unpickle.*system"):
        load_rows(path)
    assert not marker.exists()
    # the CLI exits non-zero with the reason, no traceback
    assert cli_main(["data", "stats", str(path)]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "Traceback" not in err
    assert not marker.exists()


def test_pickle_naming_builtins_eval_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "eval.pkl"
    # protocol-0 text: GLOBAL builtins.eval, then REDUCE with one string argument
    path.write_bytes(b"cbuiltins\neval\n(V__import__('os').getcwd()\ntR.")
    with pytest.raises(RecapError, match="builtins.eval"):
        load_rows(path)


# ---------------------------------------------------------------- variants and splits


def test_variants_share_the_test_split_and_filter_by_votes(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "dataset.jsonl", RECORDS)
    full = load_splits(tmp_path, "full")
    nn = load_splits(tmp_path, "not_negative")
    pos = load_splits(tmp_path, "positive")
    assert [r.votes for r in full["train"]] == [3, -1, 0]
    assert [r.votes for r in nn["train"]] == [3, 0]
    assert [r.votes for r in pos["train"]] == [3]
    assert full["test"] == nn["test"] == pos["test"] and full["test"][0].votes == -2
    assert [r.song_id for r in pos["val"]] == ["cC3"]


def test_val_split_matches_torch_random_split(tmp_path: Path) -> None:
    recs = [
        {"music4all_id": f"s{i}", "lyrics": f"words {i}", "comment": f"meaning {i}", "votes": i % 3}
        for i in range(53)
    ]
    write_jsonl(tmp_path / "dataset.jsonl", recs)
    splits = load_splits(tmp_path, "full")
    n = 53
    n_train = int(0.9 * n)
    ref_train, ref_val = torch.utils.data.random_split(
        range(n), [n_train, n - n_train], generator=torch.Generator().manual_seed(42)
    )
    assert [r.song_id for r in splits["train"]] == [f"s{i}" for i in ref_train]
    assert [r.song_id for r in splits["val"]] == [f"s{i}" for i in ref_val]
    assert random_split_indices(n, 0.1, 42) == (list(ref_train), list(ref_val))
    assert splits["test"] == []


def test_variant_without_votes_is_a_clear_error(tmp_path: Path) -> None:
    recs = [{k: v for k, v in r.items() if k != "votes"} for r in RECORDS]
    write_jsonl(tmp_path / "dataset.jsonl", recs)
    with pytest.raises(RecapError, match="needs votes"):
        load_splits(tmp_path, "positive")


# ---------------------------------------------------------------- bad rows


def test_every_bad_row_is_reported_with_its_reason(tmp_path: Path) -> None:
    good = RECORDS[0]
    lines = [
        json.dumps(good).encode(),
        json.dumps(dict(good, lyrics="   ")).encode(),  # empty lyrics
        json.dumps(dict(good, comment="")).encode(),  # empty comment
        json.dumps(dict(good, music4all_id=None)).encode(),  # missing id
        json.dumps({k: v for k, v in good.items() if k != "music4all_id"}).encode(),
        json.dumps(dict(good, lyrics=["not", "text"])).encode(),  # wrong type
        json.dumps(dict(good, votes="many")).encode(),  # wrong type
        b'{"music4all_id": "x", "lyrics": "caf\xe9", "comment": "c"}',  # latin-1 byte
        json.dumps(dict(good, comment="a\udc80b")).encode(),  # escaped lone surrogate
        json.dumps(good).encode(),  # duplicate (song, comment)
        b"{not json",
        b"[1, 2]",
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = SkipReport("test")
    rows = load_rows(path, report)
    assert len(rows) == 1
    reasons = {item["item"].split(" ")[0]: item["reason"] for item in report.items}
    assert len(report) == len(lines) - 1
    expected = {
        2: "empty lyrics", 3: "empty comment", 4: "missing song id", 5: "missing song id",
        6: "lyrics has type list", 7: "not an integer", 8: "non-UTF-8", 9: "non-UTF-8",
        10: "duplicate of bad.jsonl:1", 11: "invalid JSON", 12: "expected an object",
    }  # fmt: skip
    for line, reason in expected.items():
        assert reason in reasons[f"bad.jsonl:{line}"], (line, reasons)


def test_bad_bytes_in_a_csv_only_skip_that_row(tmp_path: Path) -> None:
    path = tmp_path / "df_test.csv"
    path.write_bytes(
        b"music4all_id,lyrics,comment\n"
        b'a1,"line one\nline two",fine\n'
        b"a2,caf\xe9,broken\n"
        b"a3,,no lyrics\n"
    )
    report = SkipReport("test")
    rows = load_rows(path, report)
    assert [r.song_id for r in rows] == ["a1"] and rows[0].lyrics == "line one;line two"
    assert [i["reason"] for i in report.items] == ["non-UTF-8 bytes in lyrics", "empty lyrics"]


# ---------------------------------------------------------------- audio paths and stats


def test_audio_path_extensions(tmp_path: Path) -> None:
    (tmp_path / "audios").mkdir()
    assert audio_path(tmp_path, "x") == tmp_path / "audios" / "x.mp3"
    sf.write(tmp_path / "audios" / "y.flac", np.zeros(100, np.float32), 16000)
    assert audio_path(tmp_path, "y") == tmp_path / "audios" / "y.flac"


def test_stats_command(tmp_path: Path, capsys: pytest.CaptureFixture, cli_main) -> None:
    write_jsonl(tmp_path / "dataset.jsonl", RECORDS + [dict(RECORDS[0], comment="")])
    audios = tmp_path / "audios"
    audios.mkdir()
    t = np.arange(44100) / 44100
    sf.write(audios / "Aa1.mp3", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 44100)
    sf.write(audios / "bB2.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 44100)
    (audios / "cC3.mp3").write_bytes(b"not audio at all" * 100)
    report = tmp_path / "skipped.json"
    assert cli_main(["data", "stats", str(tmp_path), "--json", "--report", str(report)]) == 0
    out = capsys.readouterr().out
    stats = json.loads(out[: out.index("\n}\n") + 2])
    assert stats["songs"] == 4 and stats["interpretations"] == 5
    assert stats["variants"] == {"full": 5, "not_negative": 3, "positive": 2}
    assert stats["splits"] == {"train": 3, "val": 1, "test": 1}
    assert stats["lyrics_tokens"]["p100"] == 3 and stats["comment_tokens"]["p50"] == 3
    audio = stats["audio"]
    assert (audio["found"], audio["missing"], audio["unreadable"]) == (2, 1, 1)
    assert "cC3" in audio["unreadable_files"]
    assert json.loads(report.read_text())["skipped"] == 1
    assert "skipped 1 item" in out
    # human-readable form
    assert cli_main(["data", "stats", str(tmp_path / "dataset.jsonl"), "--no-audio"]) == 0
    assert "interpretations: 5" in capsys.readouterr().out


def test_rows_without_lyrics_are_skipped_unless_allowed(tmp_path):
    from recap.data.songs import load_rows, load_splits

    rows = [
        {"music4all_id": "a", "lyrics": "words here", "comment": "an interpretation"},
        {"music4all_id": "b", "lyrics": "  ", "comment": "an instrumental"},
        {"music4all_id": "c", "comment": "no lyrics field at all"},
        {"music4all_id": "d", "lyrics": 5, "comment": "lyrics of the wrong type"},
    ]
    (tmp_path / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = SkipReport("t")
    assert [r.song_id for r in load_rows(tmp_path, report)] == ["a"]  # training data as before
    assert len(report) == 3
    kept = load_rows(tmp_path, SkipReport("t"), allow_empty_lyrics=True)
    assert [(r.song_id, r.lyrics) for r in kept] == [("a", "words here"), ("b", ""), ("c", "")]
    splits = load_splits(tmp_path)  # what training and evaluation read: lyrics required
    assert sorted(r.song_id for rows in splits.values() for r in rows) == ["a"]


def test_training_rows_and_the_captioner_prepare_lyrics_alike(tmp_path: Path) -> None:
    from recap.data.songs import prepare_lyrics
    from recap.inference import captioner

    raw = "first line\r\nsecond line\n\n"  # a text file's lyrics, with its last newline
    recs = [{"music4all_id": "a", "lyrics": raw, "comment": "c", "split": "train"}]
    write_jsonl(tmp_path / "dataset.jsonl", recs)
    (row,) = load_rows(tmp_path)
    assert row.lyrics == prepare_lyrics(raw) == "first line;second line"
    assert captioner.prepare_lyrics is prepare_lyrics  # the one rule, used by the captioner
