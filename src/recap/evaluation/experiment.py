"""The paper's experiments: Table 1 (three methods × training variants) and Figure 2 (the
alignment-weight sweep), trained with `recap.training.train` and scored with `recap.evaluation.evaluate`.

    recap experiment table1 --data DIR [--size small] [--encoder PATH] [--variants full,positive]
    recap experiment sweep  --data DIR --weights 0,0.005,0.01,0.02,0.05,0.1

Runs live under one root (`--out`, default runs/experiments):
    <root>/<variant>/<method>/seed<S>/        one training RUN (reused when finished)
    <root>/<variant>/recap-w<W>/seed<S>/      a sweep point (w = 0 and the preset's w reuse the
                                             bart-fusion and recap runs of Table 1)
    <root>/table1.{md,json,csv}, <root>/sweep.{png,json}
Each RUN's evaluation is in RUN/eval/test-<decode tag>/ and is reused when present, so running a
command again only fills what is missing. Seeds are recorded in every output.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recap.data.songs import VARIANTS
from recap.evaluation.evaluate import METRICS_NAME
from recap.inference.generate import (
    PAPER_SAMPLING_SEEDS,
    DecodeSettings,
)
from recap.models.config import METHODS
from recap.utils import RecapError, atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

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
            ("Swap audio", "swap audio"),
            ("Swap lyrics", "swap lyrics"),
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


@dataclass
class ExperimentConfig:
    """Settings shared by the Table 1 runs and the sweep.

    `train_overrides`: extra `recap.training.train.TrainConfig` fields for every run (epochs, max_steps,
    batch_size, val_every_epochs, ...); they are part of each RUN's saved config.
    """

    data: str
    out: str = "runs/experiments"
    size: str = "small"
    encoder: str | None = None
    bart: str | None = None
    variants: tuple[str, ...] = ("full", "positive")
    methods: tuple[str, ...] = METHODS
    # Training seeds; None: 0, or with sampling the authors' 2022, 2021, 2020.
    seeds: tuple[int, ...] | None = None
    train_overrides: dict[str, Any] = field(default_factory=dict)
    decode: DecodeSettings = field(default_factory=DecodeSettings)
    # With sampling: True samples each trained model once with its own training seed (the
    # authors' protocol); False samples every model with each of `decode.seeds`.
    paired_sampling: bool = True
    meteor15: bool = True
    bootstrap: int = 1000
    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.variants = tuple(self.variants)
        self.methods = tuple(self.methods)
        if self.seeds is None:
            self.seeds = PAPER_SAMPLING_SEEDS if self.decode.do_sample else (0,)
        self.seeds = tuple(int(s) for s in self.seeds)
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise RecapError(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}")
        bad = [v for v in self.variants if v not in VARIANT_NAMES]
        if bad:
            raise RecapError(f"unknown variant(s) {bad}; choose from {', '.join(VARIANT_NAMES)}")
        if not self.seeds:
            raise RecapError("at least one seed is needed")

    def run_dir(self, variant: str, name: str, seed: int) -> Path:
        return Path(self.out) / variant / name / f"seed{seed}"

    def decode_for(self, seed: int) -> DecodeSettings:
        """The decoding of the model trained with `seed`: under paired sampling it is sampled
        once, with that same seed (the authors' code); otherwise `decode` as given."""
        if self.decode.do_sample and self.paired_sampling:
            return dataclasses.replace(self.decode, seeds=(seed,))
        return self.decode

    def protocol(self) -> str:
        """One line saying how the seeds were used, for the table's notes."""
        seeds = ", ".join(str(s) for s in self.seeds)
        if not self.decode.do_sample:
            return (
                f"deterministic beam search (the default): one trained model per training seed "
                f"({seeds}), one caption per song"
            )
        if self.paired_sampling:
            return (
                f"the authors' protocol: one trained model per seed ({seeds}), each sampled "
                "once with its own seed; a fresh caption for every test row"
            )
        samples = ", ".join(str(s) for s in self.decode.seeds)
        return (
            f"sampling: models trained with seeds {seeds}, each sampled with seeds {samples} "
            "(metrics averaged over them); a fresh caption for every test row"
        )


# ------------------------------------------------------------------------------ one run


def train_and_evaluate(
    cfg: ExperimentConfig,
    method: str,
    variant: str,
    seed: int,
    align_weight: float | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Train one RUN (reusing a finished one) and evaluate it on the test split (reusing an
    evaluation with the same decoding). Returns a record: method, variant, seed, w, run, summary."""
    from recap.evaluation.evaluate import default_out_dir, evaluate, resolve_target
    from recap.training.train import TrainConfig, train

    run = cfg.run_dir(variant, name or method, seed)
    tc = TrainConfig(
        data=str(cfg.data),
        out=str(run),
        preset=method,
        size=cfg.size,
        variant=variant,
        encoder=cfg.encoder if method != "bart" else None,
        bart=cfg.bart,
        seed=seed,
        align_weight=align_weight,
        progress=cfg.progress,
        **cfg.train_overrides,
    )
    logger.info("train %s (%s, seed %d, w %s) → %s", method, variant, seed, align_weight, run)
    run = Path(train(tc))
    decode = cfg.decode_for(seed)
    out = default_out_dir(resolve_target(run), "test", decode)
    cached = _cached_metrics(out / METRICS_NAME, cfg, run, decode)
    if cached is not None:
        result = cached
    else:
        result = evaluate(
            run,
            cfg.data,
            split="test",
            decode=decode,
            out_dir=out,
            meteor15=cfg.meteor15,
            encoder=cfg.encoder if method != "bart" else None,
            bootstrap=cfg.bootstrap,
            device=cfg.device,
            progress=cfg.progress,
        )
    saved = json.loads((run / "train_config.json").read_text(encoding="utf-8"))
    return {
        "method": method,
        "variant": variant,
        "seed": seed,
        "align_weight": _effective_weight(method, cfg.size, align_weight),
        "run": str(run),
        "metrics": str(out / METRICS_NAME),
        "summary": {k: v for k, v in result["summary"].items() if k != "per_seed"},
        "decode": result["decode"],
        "n_examples": result["n_examples"],
        "train_config": saved,
    }


def _cached_metrics(
    path: Path, cfg: ExperimentConfig, run: Path, decode: DecodeSettings | None = None
) -> dict[str, Any] | None:
    """A finished evaluation of this run's current model, with the same metric definitions,
    decoding (`decode`, default the config's), bootstrap and the METEOR 1.5 this config asks
    for; None when it must be (re)computed."""
    from recap.evaluation.metrics import METRICS_VERSION

    decode = decode or cfg.decode
    if not path.is_file():
        return None
    done = run / "done.json"
    if done.is_file() and done.stat().st_mtime > path.stat().st_mtime:
        return None  # the run was retrained after this evaluation
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if result.get("metrics_version") != METRICS_VERSION:
        return None  # scored with older metric definitions
    if result.get("decode") != decode.to_dict():
        return None
    if cfg.meteor15 and "METEOR 1.5" not in result.get("summary", {}):
        return None
    if result.get("bootstrap") != cfg.bootstrap:
        return None
    return result


def _effective_weight(method: str, size: str, align_weight: float | None) -> float:
    if align_weight is not None:
        return float(align_weight)
    from recap.models.config import RecapConfig

    return float(RecapConfig.preset(method, size).align_weight)


# ------------------------------------------------------------------------------ Table 1


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
        "lyrics-only BART). Swap: captions of (audio of song A, lyrics of song B) for a fixed "
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


def run_table1(cfg: ExperimentConfig) -> dict[str, Any]:
    """Train and evaluate every (variant, method, seed); write and return Table 1."""
    records = [
        train_and_evaluate(cfg, method, variant, seed)
        for variant in cfg.variants
        for method in cfg.methods
        for seed in cfg.seeds
    ]
    rows = aggregate(records)
    paths = write_table1(rows, cfg.out, cfg.decode.to_dict(), records, cfg.protocol())
    return {
        "rows": rows,
        "records": records,
        "paths": {k: str(v) for k, v in paths.items()},
        "markdown": render_table1(rows, cfg.decode.to_dict(), cfg.protocol()),
    }


# ------------------------------------------------------------------------------ Figure 2


def sweep_run_name(weight: float, size: str) -> tuple[str, float | None, str]:
    """(method, align_weight to pass, folder name) of a sweep point. w = 0 is BART-fusion and
    the recap preset's own w is RECAP: those points are the Table 1 runs, not new trainings."""
    if weight == 0:
        return "bart-fusion", None, "bart-fusion"
    if math.isclose(weight, _effective_weight("recap", size, None)):
        return "recap", None, "recap"
    return "recap", float(weight), f"recap-w{weight:g}"


def run_sweep(
    cfg: ExperimentConfig, weights: Sequence[float], variant: str = "full"
) -> dict[str, Any]:
    """Train and evaluate RECAP at each alignment weight w; write sweep.json and sweep.png."""
    records = []
    for w in weights:
        method, align_weight, name = sweep_run_name(float(w), cfg.size)
        for seed in cfg.seeds:
            rec = train_and_evaluate(
                cfg, method, variant, seed, align_weight=align_weight, name=name
            )
            rec["align_weight"] = float(w)
            records.append(rec)
    out = Path(cfg.out)
    points = sweep_points(records)
    atomic_write_json(
        out / "sweep.json",
        {"variant": variant, "points": points, "runs": records, "decode": cfg.decode.to_dict()},
    )
    png = plot_sweep(
        points,
        out / "sweep.png",
        title=f"RECAP: ROUGE-L vs alignment weight ({VARIANT_NAMES[variant]})",
    )
    return {"points": points, "records": records, "png": str(png)}


def sweep_points(
    records: Sequence[Mapping[str, Any]], key: str = "ROUGE-L recall"
) -> list[dict[str, Any]]:
    """Per weight: the metric's mean over seeds, mean bootstrap bounds, each seed's value."""
    by_w: dict[float, list[Mapping[str, Any]]] = {}
    for r in records:
        by_w.setdefault(float(r["align_weight"]), []).append(r)
    points = []
    for w in sorted(by_w):
        recs = by_w[w]
        values = [r["summary"][key] for r in recs]
        points.append(
            {
                "align_weight": w,
                "metric": key,
                "mean": float(np.mean(values)),
                "low": float(np.mean([r["summary"][f"{key} low"] for r in recs])),
                "high": float(np.mean([r["summary"][f"{key} high"] for r in recs])),
                "seeds": [r["seed"] for r in recs],
                "per_seed": values,
            }
        )
    return points


def plot_sweep(
    points: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    title: str = "ROUGE-L vs alignment weight",
) -> Path:
    """Figure 2: the metric (percent) against w, with the bootstrap interval as error bars and
    each seed as a dot. The weights are evenly spaced and labelled (they span 0 to 0.1 unevenly)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    if not points:
        raise RecapError("no sweep points to plot")
    x = np.arange(len(points))
    mean = np.array([100 * p["mean"] for p in points])
    low = np.array([100 * p["low"] for p in points])
    high = np.array([100 * p["high"] for p in points])
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    ax.errorbar(
        x,
        mean,
        yerr=[mean - low, high - mean],
        fmt="o-",
        capsize=4,
        label="mean over seeds, 95% bootstrap CI",
    )
    for xi, p in zip(x, points):
        if len(p["per_seed"]) > 1:
            ax.scatter(
                [xi] * len(p["per_seed"]),
                [100 * v for v in p["per_seed"]],
                s=10,
                color="grey",
                zorder=3,
            )
    ax.set_xticks(x, [f"{p['align_weight']:g}" for p in points])
    ax.set_xlabel("alignment weight w")
    ax.set_ylabel(f"{points[0]['metric']} (%)")
    seeds = sorted({s for p in points for s in p["seeds"]})
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, title=f"seeds: {', '.join(map(str, seeds))}", title_fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
