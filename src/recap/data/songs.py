"""The Song Interpretation Dataset in every released form, behind one interface.

`load_rows(path)` reads any of:
- a dataset folder (`dataset.jsonl`, as `recap bench build` writes it; else `dataset.json`, else
  the authors' CSVs; else the one JSON/JSONL/pickle file in it);
- the JSON release: a list of row objects, a `{"data": [...]}` wrapper, or a pandas `to_json`
  frame (orient columns / split / index);
- line-delimited JSON (one row object per line);
- the authors' CSVs `df_{full|not_negative|positive}_{train|val}.csv` and `df_test.csv` (columns
  music4all_id, lyrics, comment; a leading unnamed pandas index column is ignored);
- old pickles of `mymodel.LyricsCommentData` through a restricted unpickler (`_SafeUnpickler`).

Row fields: `music4all_id` (or `song_id`) is the song id (the audio's file name); `lyrics`;
`comment`; the vote is read from the first present of VOTE_FIELDS; `split` is train/val/test
(`valid`, `validation`, `dev` map to val). Anything else (songmeanings_id, slots, work_id, ...) is
kept in `Row.extra`.

A record without lyrics (the public `dataset_full_256_clean.json` holds only `music4all_id` and
`comment`) takes them from Music4All's own lyrics file, `<data folder>/lyrics/{music4all_id}.txt`.
A folder holding one JSON/JSONL/pickle release without test rows plus the authors' `df_test.csv`
takes its test split from that CSV (the JSON release is the paper's train + valid only).

Rows that cannot be used (missing id, empty lyrics or comment, wrong types, non-UTF-8 bytes, a
repeated (song, comment) pair) are skipped and recorded in a `SkipReport` with their position.
Empty lyrics are a broken record of a lyrics-and-interpretation dataset, so training and
evaluation keep skipping them (`load_splits`; lyrics dropout in training makes the audio-only
examples instead); `load_rows(allow_empty_lyrics=True)` keeps them with `lyrics=""` for jobs that
take instrumentals (`recap index build` on a dataset folder).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recap.utils import RecapError, SkipReport

logger = logging.getLogger(__name__)

VARIANTS = ("full", "not_negative", "positive")
SPLITS = ("train", "val", "test")
ID_FIELDS = ("music4all_id", "song_id")
# Optional row field: the comment with only what the audio tells (the rendered-songs benchmark
# writes it); a training example whose lyrics are dropped learns this instead (kept in Row.extra).
COMMENT_WITHOUT_LYRICS = "comment_without_lyrics"
VOTE_FIELDS = ("votes", "vote", "rating", "score", "comment_votes", "comment_rating", "upvotes")
_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val",
                  "dev": "val", "test": "test"}  # fmt: skip
_CSV_NAME = re.compile(r"^df_(?:(full|not_negative|positive)_(train|val)|(test))\.csv$")
_DATASET_SUFFIXES = (".jsonl", ".json", ".csv", ".pkl", ".pickle")


@dataclass(frozen=True)
class Row:
    """One interpretation of one song."""

    song_id: str  # music4all_id: the audio is audios/{song_id}.mp3
    lyrics: str
    comment: str
    votes: int | None = None
    split: str | None = None  # "train" | "val" | "test" | None when the source has no split
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def audio_path(data_dir: str | os.PathLike, song_id: str) -> Path:
    """`data_dir/audios/{song_id}.mp3`, or the first existing .wav/.flac/.ogg sibling.

    When none exists the .mp3 path is returned, so the caller's error names the expected file.
    """
    from recap.data.audio import AUDIO_EXTENSIONS

    base = Path(data_dir) / "audios"
    for ext in AUDIO_EXTENSIONS:
        candidate = base / f"{song_id}{ext}"
        try:
            if candidate.is_file():
                return candidate
        except OSError:  # "File name too long": no such file can exist, so it is missing
            break
    return base / f"{song_id}.mp3"


def in_variant(row: Row, variant: str) -> bool:
    """full: every row; not_negative: votes >= 0; positive: votes > 0 (SPEC §3)."""
    if variant == "full":
        return True
    if variant not in VARIANTS:
        raise RecapError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if row.votes is None:
        raise RecapError(
            f"variant {variant!r} needs votes, but song {row.song_id} has none "
            "(this release carries no vote field; use variant 'full' or the variant's CSVs)"
        )
    return row.votes >= 0 if variant == "not_negative" else row.votes > 0


# --------------------------------------------------------------------------- row validation


def _has_surrogates(text: str) -> bool:
    # Undecodable bytes arrive as lone surrogates (surrogateescape, or "\udcxx" JSON escapes).
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def _text(value: Any, name: str) -> str:
    if isinstance(value, bytes):  # Python 2 pickles hold byte strings
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"non-UTF-8 bytes in {name}") from err
    if not isinstance(value, str):
        raise ValueError(f"{name} has type {type(value).__name__}, expected text")
    if _has_surrogates(value):
        raise ValueError(f"non-UTF-8 bytes in {name}")
    if not value.strip():
        raise ValueError(f"empty {name}")
    return value


def _song_id(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise ValueError("missing song id")
    if isinstance(value, bool) or not isinstance(value, str | int | bytes):
        raise ValueError(f"song id has type {type(value).__name__}")
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    text = text.strip()
    if not text:
        raise ValueError("missing song id")
    if "/" in text or "\\" in text or text in (".", "..") or _has_surrogates(text):
        raise ValueError(f"song id {text!r} is not a valid file name")
    return text


def _votes(value: Any) -> int | None:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()  # numpy scalar from an old pickle
    if isinstance(value, bool):
        raise ValueError("votes is a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"votes {value!r} is not an integer")


def _split(value: Any, default: str | None) -> str | None:
    if value is None or value == "":
        return default
    if not isinstance(value, str) or value.strip().lower() not in _SPLIT_ALIASES:
        raise ValueError(f"unknown split {value!r}")
    return _SPLIT_ALIASES[value.strip().lower()]


class LyricsFiles:
    """Music4All's lyrics files, `folder/{music4all_id}.txt`, read once per song (UTF-8)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._cache: dict[str, str | None] = {}

    def get(self, song_id: str) -> str | None:
        if song_id not in self._cache:
            path = self.folder / f"{song_id}.txt"
            try:
                self._cache[song_id] = path.read_bytes().decode("utf-8")
            except FileNotFoundError:
                self._cache[song_id] = None
            except (OSError, UnicodeDecodeError) as err:
                raise ValueError(f"cannot read {path}: {err}") from err
        return self._cache[song_id]


def _has_text(value: Any) -> bool:
    return isinstance(value, str | bytes) and bool(value.strip())


def prepare_lyrics(text: str) -> str:
    """Lyrics as the model reads them, in training and at inference alike: surrounding blank
    space (a text file's last newline) dropped, then each line break a ';' (SPEC §1.2)."""
    return re.sub(r"\r?\n", ";", text.strip())


def _make_row(
    record: Any,
    newline_to_semicolon: bool,
    split_default: str | None = None,
    lyrics_files: LyricsFiles | None = None,
    allow_empty_lyrics: bool = False,
) -> Row:
    """A raw mapping → Row; raises ValueError with the reason when the row is unusable."""
    if not isinstance(record, dict):
        raise ValueError(f"row is a {type(record).__name__}, expected an object")
    id_key = next((k for k in ID_FIELDS if k in record), None)
    song_id = _song_id(record.get(id_key) if id_key else None)
    lyrics_value = record.get("lyrics")
    if not _has_text(lyrics_value) and lyrics_files is not None:
        # Releases without lyrics rely on Music4All's lyrics/{id}.txt.
        lyrics_value = lyrics_files.get(song_id)
        if lyrics_value is None and not allow_empty_lyrics:
            raise ValueError(
                f"no lyrics in the record and no {lyrics_files.folder.name}/{song_id}.txt"
            )
    if allow_empty_lyrics and (lyrics_value is None or isinstance(lyrics_value, str | bytes)):
        # An instrumental is kept with lyrics ""; text of another type is still an error.
        lyrics = _text(lyrics_value, "lyrics") if _has_text(lyrics_value) else ""
    else:
        lyrics = _text(lyrics_value, "lyrics")
    comment = _text(record.get("comment"), "comment")
    vote_key = next((k for k in VOTE_FIELDS if k in record), None)
    votes = _votes(record[vote_key]) if vote_key else None
    split = _split(record.get("split"), split_default)
    if newline_to_semicolon:
        lyrics = prepare_lyrics(lyrics)
    used = {id_key, vote_key, "lyrics", "comment", "split"}
    extra = {k: v for k, v in record.items() if k not in used}
    return Row(song_id, lyrics, comment, votes, split, extra)


def _collect(
    records: Iterable[tuple[str, Any]],
    report: SkipReport,
    newline_to_semicolon: bool,
    split_default: str | None = None,
    seen: dict[tuple[str, str], str] | None = None,
    lyrics_files: LyricsFiles | None = None,
    allow_empty_lyrics: bool = False,
) -> list[Row]:
    """Validate (position, record) pairs; bad ones and repeated (song, comment) pairs → report."""
    rows: list[Row] = []
    seen = {} if seen is None else seen
    for where, record in records:
        if isinstance(record, _BadRecord):
            report.add(where, record.reason)
            continue
        try:
            row = _make_row(
                record, newline_to_semicolon, split_default, lyrics_files, allow_empty_lyrics
            )
        except ValueError as err:
            rid = (
                record.get("music4all_id", record.get("song_id"))
                if isinstance(record, dict)
                else None
            )
            report.add(f"{where} (song {rid})" if rid is not None else where, str(err))
            continue
        key = (row.song_id, row.comment.strip())
        if key in seen:
            report.add(f"{where} (song {row.song_id})", f"duplicate of {seen[key]}")
            continue
        seen[key] = where
        rows.append(row)
    return rows


@dataclass
class _BadRecord:
    reason: str


# --------------------------------------------------------------------------- file formats


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as f:
        for i, raw in enumerate(f, start=1):
            where = f"{path.name}:{i}"
            if not raw.strip():
                continue
            try:
                # utf-8-sig: a byte-order mark at the start of the file is not data
                yield where, json.loads(raw.decode("utf-8-sig"))
            except UnicodeDecodeError:
                yield where, _BadRecord("non-UTF-8 bytes in the line")
            except json.JSONDecodeError as err:
                yield where, _BadRecord(f"invalid JSON ({err.msg})")
            except RecursionError:
                yield where, _BadRecord("JSON nested too deeply")


def _json_records(obj: Any, path: Path) -> list[Any]:
    """The row objects of a JSON release, whatever frame layout wrote it."""
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict):
        if set(obj) >= {"columns", "data"} and isinstance(obj["data"], list):  # pandas split
            return [dict(zip(obj["columns"], values)) for values in obj["data"]]
        lists = [v for v in obj.values() if isinstance(v, list)]
        if len(obj) == 1 and lists:  # {"data": [...]}
            return lists[0]
        if obj and all(isinstance(v, dict) for v in obj.values()):
            if "lyrics" in obj and "comment" in obj:  # pandas columns: {col: {index: value}}
                index = list(obj["lyrics"].keys())
                return [{col: obj[col].get(i) for col in obj} for i in index]
            return list(obj.values())  # pandas index: {index: row}
    raise RecapError(f"{path}: not a recognised dataset JSON (expected a list of row objects)")


def _read_json(path: Path) -> list[tuple[str, Any]]:
    # surrogateescape keeps undecodable bytes as markers that the row check reports per row,
    # instead of failing the whole file.
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise RecapError(f"{path}: invalid JSON ({err})") from err
    except RecursionError as err:
        raise RecapError(f"{path}: JSON nested too deeply to be a dataset") from err
    return [(f"{path.name}[{i}]", rec) for i, rec in enumerate(_json_records(obj, path))]


def _read_csv(path: Path) -> list[tuple[str, Any]]:
    csv.field_size_limit(sys.maxsize if sys.maxsize < 2**63 else 2**31 - 1)
    # utf-8-sig: spreadsheet programs write a byte-order mark, which would otherwise turn the
    # first column "music4all_id" into "\ufeffmusic4all_id" and refuse the whole file.
    with path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            return []
        # pandas' to_csv writes its index as a first column with an empty name
        keep = [n for n in reader.fieldnames if n and not n.startswith("Unnamed")]
        missing = {"lyrics", "comment"} - set(keep)
        if missing or not set(ID_FIELDS) & set(keep):
            raise RecapError(
                f"{path}: CSV needs columns music4all_id, lyrics, comment; has {reader.fieldnames}"
            )
        out = []
        for i, rec in enumerate(reader, start=2):  # line 1 is the header
            out.append((f"{path.name}:{i}", {k: rec[k] for k in keep if rec.get(k) is not None}))
        return out


def _csv_files(folder: Path) -> dict[tuple[str, str], Path]:
    """(variant, split) → CSV path for the authors' file names; test is ("*", "test")."""
    found = {}
    for p in sorted(folder.glob("df_*.csv")):
        m = _CSV_NAME.match(p.name)
        if m:
            found[("*", "test") if m.group(3) else (m.group(1), m.group(2))] = p
    return found


def _dataset_file(folder: Path) -> Path | None:
    for name in ("dataset.jsonl", "dataset.json"):
        if (folder / name).is_file():
            return folder / name
    csvs = _csv_files(folder)
    if any(split != "test" for _, split in csvs):
        return None  # the CSV set is read as a whole
    # df_test.csv alone is the test split beside a JSON/pickle release, not a dataset of its own.
    candidates = [
        p
        for p in sorted(folder.iterdir())
        if p.suffix in _DATASET_SUFFIXES and p not in csvs.values()
    ]
    if not candidates and csvs:
        return None
    if len(candidates) == 1:
        return candidates[0]
    raise RecapError(
        f"{folder}: no dataset.jsonl, dataset.json or df_*.csv files"
        + (f"; several candidates: {[p.name for p in candidates]}" if candidates else "")
    )


def _read_file(path: Path) -> tuple[list[tuple[str, Any]], str | None]:
    """(records, default split) for one file of any format."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return list(_iter_jsonl(path)), None
    if suffix == ".json":
        return _read_json(path), None
    if suffix == ".csv":
        m = _CSV_NAME.match(path.name)
        return _read_csv(path), (m.group(2) or m.group(3)) if m else None
    if suffix in (".pkl", ".pickle"):
        from recap.data.pickle_release import read_pickle

        return read_pickle(path), None
    raise RecapError(f"{path}: unknown dataset format {suffix!r} (jsonl, json, csv, pkl)")


def load_rows(
    path: str | os.PathLike,
    report: SkipReport | None = None,
    newline_to_semicolon: bool = True,
    lyrics_dir: str | os.PathLike | None = None,
    allow_empty_lyrics: bool = False,
) -> list[Row]:
    """Every usable row of a dataset folder or file; skipped rows go to `report` with reasons.

    For a folder of the authors' CSVs the rows are df_full_train + df_full_val + df_test (the
    full variant holds the others); use `load_splits` for a variant. A JSON/JSONL/pickle release
    without test rows and a `df_test.csv` beside it get that CSV's rows as test. Records without
    lyrics read `lyrics_dir/{id}.txt` (default: the data folder's `lyrics/`, Music4All's layout).
    `allow_empty_lyrics`: keep rows without lyrics (lyrics "") instead of skipping them.
    """
    path = Path(path)
    report = report if report is not None else SkipReport("load_rows")
    if not path.exists():
        raise RecapError(f"{path}: no such file or folder")
    folder = path if path.is_dir() else path.parent
    lyrics_path = Path(lyrics_dir) if lyrics_dir is not None else folder / "lyrics"
    lyrics_files = LyricsFiles(lyrics_path) if lyrics_path.is_dir() else None
    seen: dict[tuple[str, str], str] = {}
    csvs = _csv_files(folder)
    if path.is_dir():
        file = _dataset_file(path)
        if file is None:
            rows: list[Row] = []
            for key in (("full", "train"), ("full", "val"), ("*", "test")):
                if key in csvs:
                    rows += _collect(
                        _read_csv(csvs[key]),
                        report,
                        newline_to_semicolon,
                        key[1],
                        seen,
                        lyrics_files,
                        allow_empty_lyrics,
                    )
            return rows
        path = file
    records, split_default = _read_file(path)
    rows = _collect(
        records, report, newline_to_semicolon, split_default, seen, lyrics_files, allow_empty_lyrics
    )
    test_csv = csvs.get(("*", "test"))
    beside = test_csv is not None and path not in csvs.values()
    if beside and not any(r.split == "test" for r in rows):
        rows += _collect(
            _read_csv(test_csv),
            report,
            newline_to_semicolon,
            "test",
            seen,
            lyrics_files,
            allow_empty_lyrics,
        )
    return rows


def random_split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """The indices `torch.utils.data.random_split(range(n), [n - n_val, n_val],
    generator=torch.Generator().manual_seed(seed))` gives, n_val = n - int((1 - f) * n),
    as the BART-fusion code computes its 90/10 split."""
    import torch

    n_train = int((1 - val_fraction) * n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return perm[:n_train], perm[n_train:]


def load_splits(
    path: str | os.PathLike,
    variant: str = "full",
    val_fraction: float = 0.1,
    seed: int = 42,
    report: SkipReport | None = None,
    newline_to_semicolon: bool = True,
) -> dict[str, list[Row]]:
    """{"train", "val", "test"} rows for one variant (SPEC §2, §3).

    train and val are filtered by the variant; test is shared by all variants and never filtered.
    val is the given split when the source has one, else a 90/10 random split of train with
    `torch.Generator().manual_seed(seed)` (over rows, as the reference does: a song may appear
    in both). Rows without a split count as train; a source without test rows gives test = []
    and a warning.
    """
    if variant not in VARIANTS:
        raise RecapError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    path = Path(path)
    report = report if report is not None else SkipReport("load_splits")
    has_split = True
    if path.is_dir() and (csvs := _csv_files(path)) and _dataset_file(path) is None:
        lyrics_files = LyricsFiles(path / "lyrics") if (path / "lyrics").is_dir() else None

        def read(csv_path: Path | None, split: str) -> list[Row]:
            if csv_path is None:
                return []
            records = _read_csv(csv_path)
            return _collect(records, report, newline_to_semicolon, split, None, lyrics_files)

        train_path = csvs.get((variant, "train"))
        if train_path is None:
            raise RecapError(f"{path}: no df_{variant}_train.csv")
        out = {
            "train": read(train_path, "train"),
            "val": read(csvs.get((variant, "val")), "val"),
            "test": read(csvs.get(("*", "test")), "test"),
        }
    else:
        rows = load_rows(path, report, newline_to_semicolon)
        has_split = any(r.split is not None for r in rows)
        by_split: dict[str, list[Row]] = {s: [] for s in SPLITS}
        for row in rows:
            by_split[row.split or "train"].append(row)
        out = {
            "train": [r for r in by_split["train"] if in_variant(r, variant)],
            "val": [r for r in by_split["val"] if in_variant(r, variant)],
            "test": by_split["test"],
        }
    if not out["val"]:
        train_idx, val_idx = random_split_indices(len(out["train"]), val_fraction, seed)
        out["train"], out["val"] = (
            [out["train"][i] for i in train_idx],
            [out["train"][i] for i in val_idx],
        )
    if not out["test"]:
        logger.warning(no_test_warning(path, has_split))
    return out


def no_test_warning(path: Path, has_split: bool) -> str:
    why = "its rows carry no split field" if not has_split else "no row is marked test"
    return (
        f"{path} has no test rows ({why}): the test split is empty, so `recap evaluate` and "
        "`recap experiment` have nothing to score. The paper's test split is the authors' "
        "df_test.csv (columns music4all_id, lyrics, comment): put it in the data folder beside "
        "the release, or give the rows a split field (docs/reproducing.md)"
    )
