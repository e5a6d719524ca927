"""`recap score`: score any captioner's captions of a split with both labelled metric sets.

    recap score PREDICTIONS --data DIR [--split test] [--out scores.json]

PREDICTIONS is a CSV (header row) or JSONL (one object per line) file with a song id column
(`song_id` or `music4all_id`) and a caption column (`prediction` or `caption`); a `.json` file
may hold a list of such objects. One line per song is enough. A file with a `reference` column
as well (like `recap evaluate`'s predictions.csv) is matched per row: each (song, interpretation)
row of the split takes the line with its song id and reference, so per-row captions (sampling)
score as generated.

The split's rows come from DIR exactly as `recap evaluate` reads them (`recap.data.songs.load_splits`).
Scores: the **paper** set (rouge_score ROUGE recall and F1, NLTK METEOR, per row) and the
**caption** set (pycocoevalcap BLEU-1..4, METEOR 1.5, ROUGE-L, CIDEr-D, one caption per song
against all of its interpretations), each with bootstrap intervals (`recap.evaluation.metrics`); on a
rendered-songs benchmark folder (one with songs.jsonl) also attribute accuracy. Every song of the
split needs a caption, unless `--allow-missing` (then the songs without one are left out and
counted).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recap.utils import RecapError, atomic_write_json

logger = logging.getLogger(__name__)

ID_COLUMNS = ("song_id", "music4all_id")
CAPTION_COLUMNS = ("prediction", "caption")
REFERENCE_COLUMN = "reference"


@dataclass(frozen=True)
class Prediction:
    """One line of a predictions file."""

    song_id: str
    caption: str
    reference: str | None  # the interpretation it was generated for, when the file says so
    where: str  # file:line, for error messages


def _pick(columns: Sequence[str], wanted: Sequence[str], what: str, path: Path) -> str:
    found = next((c for c in wanted if c in columns), None)
    if found is None:
        raise RecapError(
            f"{path}: no {what} column (expected one of {', '.join(wanted)}; "
            f"found {', '.join(map(str, columns)) or 'none'})"
        )
    return found


def _records(path: Path) -> list[tuple[str, Mapping[str, Any]]]:
    """(where, object) for each line of a CSV / JSONL file or item of a JSON list."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
        with path.open(encoding="utf-8", newline="") as f:
            return [(f"{path.name}:{i}", rec) for i, rec in enumerate(csv.DictReader(f), start=2)]
    if suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        if suffix == ".json":
            try:
                items = json.loads(text)
            except json.JSONDecodeError as err:
                raise RecapError(f"{path}: invalid JSON ({err})") from err
            if not isinstance(items, list):
                raise RecapError(f"{path}: expected a JSON list of objects")
            numbered = [(f"{path.name}[{i}]", item) for i, item in enumerate(items)]
        else:
            numbered = []
            for i, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    numbered.append((f"{path.name}:{i}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise RecapError(f"{path.name}:{i}: invalid JSON ({err.msg})") from err
        for where, item in numbered:
            if not isinstance(item, dict):
                raise RecapError(f"{where}: expected an object, got {type(item).__name__}")
        return numbered
    raise RecapError(f"{path}: predictions must be .csv, .jsonl or .json, not {suffix!r}")


def read_predictions(path: str | os.PathLike) -> list[Prediction]:
    """Every line of a predictions file; raises RecapError naming the file and line on a bad one."""
    path = Path(path)
    if not path.is_file():
        raise RecapError(f"{path}: no such predictions file")
    records = _records(path)
    if not records:
        raise RecapError(f"{path}: no predictions")
    columns = list(dict.fromkeys(k for _, rec in records for k in rec))
    id_col = _pick(columns, ID_COLUMNS, "song id", path)
    cap_col = _pick(columns, CAPTION_COLUMNS, "caption", path)
    has_ref = REFERENCE_COLUMN in columns
    out = []
    for where, rec in records:
        sid, caption = rec.get(id_col), rec.get(cap_col)
        if sid is None or str(sid).strip() == "":
            raise RecapError(f"{where}: no {id_col}")
        if caption is None or not isinstance(caption, str):
            raise RecapError(f"{where} (song {sid}): {cap_col} is missing or not text")
        ref = rec.get(REFERENCE_COLUMN) if has_ref else None
        out.append(Prediction(str(sid).strip(), caption.strip(), ref, where))
    return out


@dataclass
class Matched:
    """The split's rows paired with captions, and what could not be paired."""

    rows: list[Any]
    predictions: list[str]
    per_row: int  # rows matched by (song, reference)
    missing_songs: list[str]  # split songs without any caption
    unknown_songs: list[str]  # predicted songs that are not in the split
    songs_with_several_captions: int


def match_predictions(rows: Sequence[Any], predictions: Sequence[Prediction]) -> Matched:
    """Pair every split row with a caption: the line with its (song id, reference) when the file
    has references, else the song's first line."""
    by_row: dict[tuple[str, str], str] = {}
    by_song: dict[str, str] = {}
    distinct: dict[str, set[str]] = {}
    for p in predictions:
        by_song.setdefault(p.song_id, p.caption)
        distinct.setdefault(p.song_id, set()).add(p.caption)
        if p.reference is not None:
            by_row.setdefault((p.song_id, p.reference.strip()), p.caption)
    kept, texts, per_row = [], [], 0
    missing: dict[str, None] = {}
    for r in rows:
        key = (r.song_id, r.comment.strip())
        if key in by_row:
            kept.append(r)
            texts.append(by_row[key])
            per_row += 1
        elif r.song_id in by_song:
            kept.append(r)
            texts.append(by_song[r.song_id])
        else:
            missing[r.song_id] = None
    split_songs = {r.song_id for r in rows}
    return Matched(
        rows=kept,
        predictions=texts,
        per_row=per_row,
        missing_songs=list(missing),
        unknown_songs=sorted(set(by_song) - split_songs),
        songs_with_several_captions=sum(len(c) > 1 for c in distinct.values()),
    )


def score_predictions(
    predictions: str | os.PathLike,
    data_dir: str | os.PathLike,
    split: str = "test",
    variant: str = "full",
    val_fraction: float = 0.1,
    seed: int = 42,
    meteor15: bool = True,
    bootstrap: int = 1000,
    allow_missing: bool = False,
    out: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Score a predictions file against the split of `data_dir`; returns (and with `out`
    writes) a result shaped like `recap evaluate`'s metrics.json."""
    from recap.data.songs import load_splits
    from recap.evaluation.evaluate import _attribute_accuracy, attribute_summary
    from recap.evaluation.metrics import (
        METRIC_SETS,
        METRICS_VERSION,
        metric_sets,
        strip_per_example,
    )
    from recap.utils import SkipReport

    data_dir = Path(data_dir)
    preds = read_predictions(predictions)
    splits = load_splits(
        data_dir, variant=variant, val_fraction=val_fraction, seed=seed, report=SkipReport("score")
    )
    if split not in splits:
        raise RecapError(f"unknown split {split!r}; choose train, val or test")
    if not splits[split]:
        raise RecapError(f"{data_dir} has no {split} rows to score against")
    m = match_predictions(splits[split], preds)
    if m.missing_songs and not allow_missing:
        raise RecapError(
            f"{len(m.missing_songs)} song(s) of the {split} split have no caption in "
            f"{predictions}, e.g. {', '.join(m.missing_songs[:3])} (pass --allow-missing to "
            "score the others)"
        )
    if not m.rows:
        raise RecapError(f"no caption in {predictions} belongs to a song of the {split} split")
    if m.missing_songs:
        logger.warning(
            "%d song(s) without a caption are left out, e.g. %s",
            len(m.missing_songs),
            ", ".join(m.missing_songs[:3]),
        )
    if m.unknown_songs:
        logger.warning(
            "%d predicted song(s) are not in the %s split and are ignored, e.g. %s",
            len(m.unknown_songs),
            split,
            ", ".join(m.unknown_songs[:3]),
        )
    song_ids = [r.song_id for r in m.rows]
    scores = metric_sets(
        song_ids, [r.comment for r in m.rows], m.predictions, meteor15=meteor15, bootstrap=bootstrap
    )
    result: dict[str, Any] = {
        "predictions": str(predictions),
        "data": str(data_dir),
        "split": split,
        "variant": variant,
        "n_examples": len(m.rows),
        "n_songs": len(set(song_ids)),
        "matching": {
            "rows_matched_by_reference": m.per_row,
            "rows_matched_by_song": len(m.rows) - m.per_row,
            "songs_without_caption": m.missing_songs,
            "predicted_songs_not_in_split": m.unknown_songs,
            "songs_with_several_captions": m.songs_with_several_captions,
        },
        "metrics_version": METRICS_VERSION,
        "metric_sets": {
            name: {
                "description": spec["description"],
                "references": spec["references"],
                "keys": scores["metric_sets"][name],
            }
            for name, spec in METRIC_SETS.items()
        },
        "bootstrap": bootstrap,
        **strip_per_example({k: scores[k] for k in ("paper", "caption")}),
        "summary": dict(scores["summary"]),
    }
    accuracy = _attribute_accuracy(data_dir, song_ids, m.predictions)
    if accuracy is not None:
        result["attribute_accuracy"] = accuracy
        result["summary"].update(attribute_summary(accuracy))
    # A grounding measure that needs no model: how many different captions for how many songs
    # (the loss gaps and the swap test need the model: `recap evaluate`, `recap diagnose`).
    first: dict[str, str] = {}
    for sid, text in zip(song_ids, m.predictions):
        first.setdefault(sid, text)
    result["distinct"] = {"captions": len(set(first.values())), "songs": len(first)}
    if out is not None:
        atomic_write_json(Path(out), result)
        result["out"] = str(out)
    return result


def format_scores(result: Mapping[str, Any]) -> str:
    """The headline numbers, in percent with intervals, one block per metric set."""
    from recap.evaluation.evaluate import format_metric_blocks

    lines = [
        f"{result['predictions']} on {result['split']} of {result['data']} "
        f"({result['n_examples']} examples, {result['n_songs']} songs)"
    ]
    lines += format_metric_blocks(result["summary"], result["metric_sets"])
    if "out" in result:
        lines.append(f"written to {result['out']}")
    return "\n".join(lines)
