"""The paper's Table 1 from experiment records: one row per (variant, method) with means over
seeds and bootstrap intervals, as Markdown and CSV, with the grounding measures beside it."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recap.data.songs import VARIANTS
from recap.inference.generate import (
    DecodeSettings,
)
from recap.models.config import METHODS
from recap.utils import atomic_write_json, atomic_write_text

METHOD_NAMES = {"bart": "BART", "bart-fusion": "BART-fusion", "recap": "RECAP"}
VARIANT_NAMES = dict(zip(VARIANTS, ("Dataset full", "vote ≥ 0", "vote > 0"), strict=True))

# The paper's Table 1 (SPEC §2), in percent: ROUGE-1/2/L recall and METEOR (NLTK), each method
# trained on the variant and tested on the shared test split. No attribute accuracy exists there.
PAPER_TABLE1: dict[str, dict[str, dict[str, float]]] = {
    "full": {
        "bart": {"ROUGE-1": 44.1, "ROUGE-2": 14.0, "ROUGE-L": 24.5, "METEOR": 22.5},
        "bart-fusion": {"ROUGE-1": 46.1, "ROUGE-2": 15.0, "ROUGE-L": 25.1, "METEOR": 23.0},
        "recap": {"ROUGE-1": 48.4, "ROUGE-2": 15.7, "ROUGE-L": 26.3, "METEOR": 27.5},
    },
    "positive": {
        "bart": {"ROUGE-1": 41.2, "ROUGE-2": 13.0, "ROUGE-L": 22.8, "METEOR": 22.0},
        "bart-fusion": {"ROUGE-1": 44.3, "ROUGE-2": 14.6, "ROUGE-L": 24.7, "METEOR": 22.6},
        "recap": {"ROUGE-1": 51.2, "ROUGE-2": 16.3, "ROUGE-L": 27.6, "METEOR": 27.9},
    },
}

# Table 1's column groups: (metric set, heading, ((column name, key in evaluate()'s summary),
# ...)). The paper set is the one comparable with the paper's numbers (ROUGE is recall, as the
# papers; "METEOR" in the paper is NLTK's); the caption set is the caption literature's.
TABLE_SETS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    (
        "paper",
        "Paper metrics (the papers' evaluation; comparable with the paper's Table 1)",
        (
            ("ROUGE-1", "ROUGE-1 recall"),
            ("ROUGE-2", "ROUGE-2 recall"),
            ("ROUGE-L", "ROUGE-L recall"),
            ("METEOR", "METEOR (NLTK)"),
            ("ROUGE-L F1", "ROUGE-L F1"),
        ),
    ),
    (
        "caption",
        "Caption metrics (pycocoevalcap, multi-reference: comparable with other captioners)",
        (
            ("BLEU-1", "BLEU-1"),
            ("BLEU-2", "BLEU-2"),
            ("BLEU-3", "BLEU-3"),
            ("BLEU-4", "BLEU-4"),
            ("METEOR 1.5", "METEOR 1.5"),
            ("ROUGE-L (COCO)", "ROUGE-L (COCO)"),
            ("CIDEr-D", "CIDEr-D"),
        ),
    ),
    (
        "attributes",
        "Attribute accuracy (rendered-songs benchmark only)",
        (
            ("Attr. audio", "attribute accuracy audio"),
            ("Attr. lyrics", "attribute accuracy lyrics"),
        ),
    ),
    (
        "grounding",
        "Grounding (rendered-songs benchmark: do the captions follow the lyrics and the audio?)",
        (
            ("Distinct", "distinct captions"),
            ("Apart", "distinct captions apart"),
            ("Swap audio", "swap audio"),
            ("Swap lyrics", "swap lyrics"),
            ("No lyrics: audio", "audio only audio"),
            ("No lyrics: states lyrics facts", "audio only states lyrics"),
        ),
    ),
)
TABLE_COLUMNS: tuple[tuple[str, str], ...] = tuple(c for _, _, cols in TABLE_SETS for c in cols)
# Grounding measures that are not percentages (recap.evaluation.diagnose): shown in a table of their own.
GROUNDING_COLUMNS: tuple[tuple[str, str], ...] = (
    ("Lyrics gap (nats/token)", "lyrics gap"),
    ("Audio gap (nats/token)", "audio gap"),
    ("Encoder output / embeddings dependence", "encoder dependence"),
)


def aggregate(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (variant, method): each metric's mean over seeds, the mean of the per-seed
    bootstrap bounds, and the seeds' standard deviation (0 with one seed)."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["variant"], r["method"]), []).append(r)
    rows = []
    for (variant, method), recs in groups.items():
        row: dict[str, Any] = {
            "variant": variant,
            "method": method,
            "seeds": [r["seed"] for r in recs],
            "runs": [r["run"] for r in recs],
            "n_examples": recs[0].get("n_examples"),
        }
        for _, key in TABLE_COLUMNS + GROUNDING_COLUMNS:
            values = [r["summary"][key] for r in recs if key in r["summary"]]
            if not values:
                continue
            lows = [r["summary"].get(f"{key} low") for r in recs]
            highs = [r["summary"].get(f"{key} high") for r in recs]
            row[key] = {
                "mean": float(np.mean(values)),
                "low": float(np.mean(lows)) if None not in lows else None,
                "high": float(np.mean(highs)) if None not in highs else None,
                "seed_std": float(np.std(values)),
                "per_seed": values,
            }
        rows.append(row)
    order = {m: i for i, m in enumerate(METHODS)}
    variants = list(VARIANT_NAMES)
    rows.sort(key=lambda r: (variants.index(r["variant"]), order[r["method"]]))
    return rows


def _cell(stat: Mapping[str, Any] | None, intervals: bool = True) -> str:
    if stat is None:
        return "—"
    text = f"{100 * stat['mean']:.1f}"
    if intervals and stat.get("low") is not None and stat.get("high") is not None:
        text += f" [{100 * stat['low']:.1f}, {100 * stat['high']:.1f}]"
    return text


def render_table1(
    rows: Sequence[Mapping[str, Any]],
    decode: Mapping[str, Any] | None = None,
    protocol: str | None = None,
) -> str:
    """Markdown Table 1, one table per labelled metric set: our numbers (with 95% bootstrap
    intervals) and, in the paper set, the paper's on the line below each, labelled. Percent."""
    lines: list[str] = []
    for name, heading, columns in TABLE_SETS:
        present = [(c, key) for c, key in columns if any(key in r for r in rows)]
        if not present:
            continue
        head = ["Training data", "Method", "Source", *(c for c, _ in present)]
        lines += [
            f"**{heading}**",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "|".join(["---"] * 3 + ["---:"] * len(present)) + "|",
        ]
        for r in rows:
            seeds = ",".join(str(s) for s in r["seeds"])
            ours = [_cell(r.get(key)) for _, key in present]
            variant, method = VARIANT_NAMES[r["variant"]], METHOD_NAMES[r["method"]]
            lines.append(
                f"| {variant} | {method} | ours (seed {seeds}) | " + " | ".join(ours) + " |"
            )
            paper = PAPER_TABLE1.get(r["variant"], {}).get(r["method"]) if name == "paper" else None
            if paper is not None:
                cells = [f"{paper[c]:.1f}" if c in paper else "—" for c, _ in present]
                lines.append(f"| {variant} | {method} | paper | " + " | ".join(cells) + " |")
        lines.append("")
    notes = [
        "Percent. Paper metrics: ROUGE-1/2/L recall (`mid.recall` of rouge_score's bootstrap, no "
        "stemmer), as the papers report, ROUGE-L F1 beside it, and METEOR = NLTK's "
        "`single_meteor_score` (the papers' METEOR); every test row scored against its own "
        "interpretation. Caption metrics: pycocoevalcap's BLEU-1..4, METEOR 1.5 (the Java jar; "
        "about half the NLTK figure), ROUGE-L (LCS F-measure, beta 1.2) and CIDEr-D on "
        "PTB-tokenised text, one caption per song against all of its interpretations. Attr.: "
        "mean attribute accuracy over the benchmark's audio / lyrics slots (the paper has none). "
        "Brackets: 95% bootstrap intervals over test rows (paper) or songs (caption), averaged "
        "over seeds when several. The paper's rows are its Song Interpretation Dataset results, "
        "not comparable in level with a different dataset or model size.",
    ]
    notes[-1] += (
        " Distinct: different captions per different input (songs; distinct lyrics for the "
        "lyrics-only BART); Apart: inputs whose caption no input with other true facts "
        "shares (two verses of one hymn have the same facts, so one caption for both is right). "
        "Swap: captions of (audio of song A, lyrics of song B) for a fixed "
        "pairing, A's audio facts and B's lyrics facts right."
    )
    if protocol:
        notes.append(f"Seeds: {protocol}.")
    if decode is not None:
        notes.append(
            f"Decoding: {DecodeSettings.from_dict(dict(decode)).tag()} ({json.dumps(dict(decode))})."
        )
    return "\n".join(lines + notes + render_grounding(rows)) + "\n"


def render_grounding(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines: the loss gaps and encoder input dependence (`recap diagnose`), mean and
    standard deviation over seeds; empty when no run measured them."""
    columns = [(c, k) for c, k in GROUNDING_COLUMNS if any(k in r for r in rows)]
    if not columns:
        return []
    lines = [
        "",
        "| Training data | Method | " + " | ".join(c for c, _ in columns) + " |",
        "|---|---|" + "---:|" * len(columns),
    ]
    for r in rows:
        cells = []
        for _, key in columns:
            stat = r.get(key)
            cells.append("—" if stat is None else f"{stat['mean']:+.3f} ± {stat['seed_std']:.3f}")
        variant, method = VARIANT_NAMES[r["variant"]], METHOD_NAMES[r["method"]]
        lines.append(f"| {variant} | {method} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Gaps: the teacher-forced caption loss on test references with another song's lyrics "
        "(or music) minus with the song's own; ≈ 0 means the model ignores that input. "
        "Dependence: how far two songs' encoder outputs are apart, as a share of how far their "
        "embeddings are (a collapsed encoder gives ≈ 0). ± is the spread over seeds.",
    ]
    return lines


def table1_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line per (variant, method, source) with mean/low/high per metric; percent."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    header = ["variant", "method", "source", "seeds"]
    for _, key in TABLE_COLUMNS:
        header += [key, f"{key} low", f"{key} high"]
    writer.writerow(header)
    for r in rows:
        line = [r["variant"], r["method"], "ours", " ".join(str(s) for s in r["seeds"])]
        for _, key in TABLE_COLUMNS:
            stat = r.get(key)
            line += (
                ["", "", ""]
                if stat is None
                else [_pct(stat["mean"]), _pct(stat.get("low")), _pct(stat.get("high"))]
            )
        writer.writerow(line)
        paper = PAPER_TABLE1.get(r["variant"], {}).get(r["method"])
        if paper is not None:
            line = [r["variant"], r["method"], "paper", ""]
            for col, _ in TABLE_COLUMNS:
                line += [f"{paper[col]:.1f}" if col in paper else "", "", ""]
            writer.writerow(line)
    return buf.getvalue()


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def write_table1(
    rows: Sequence[Mapping[str, Any]],
    out: str | os.PathLike,
    decode: Mapping[str, Any] | None,
    records: Sequence[Mapping[str, Any]] = (),
    protocol: str | None = None,
) -> dict[str, Path]:
    """table1.md, table1.json (rows, the metric sets, the paper's numbers, every run record)
    and table1.csv."""
    out = Path(out)
    paths = {"md": out / "table1.md", "json": out / "table1.json", "csv": out / "table1.csv"}
    atomic_write_text(paths["md"], render_table1(rows, decode, protocol))
    sets = {name: [key for _, key in cols] for name, _, cols in TABLE_SETS}
    atomic_write_json(
        paths["json"],
        {
            "rows": list(rows),
            "metric_sets": sets,
            "paper": PAPER_TABLE1,
            "decode": decode,
            "seed_protocol": protocol,
            "runs": list(records),
        },
    )
    atomic_write_text(paths["csv"], table1_csv(rows))
    return paths
