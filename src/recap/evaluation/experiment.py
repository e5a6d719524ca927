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

import dataclasses
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recap.evaluation.evaluate import METRICS_NAME
from recap.evaluation.table1 import (
    VARIANT_NAMES,
    aggregate,
    render_table1,
    write_table1,
)
from recap.inference.generate import (
    PAPER_SAMPLING_SEEDS,
    DecodeSettings,
)
from recap.models.config import METHODS
from recap.utils import RecapError, atomic_write_json

logger = logging.getLogger(__name__)


@dataclass
class ExperimentConfig:
    """Settings shared by the Table 1 runs and the sweep.

    `train_overrides`: extra `recap.training.train.TrainConfig` fields for every run (epochs, max_steps,
    batch_size, val_every_epochs, ...); they are part of each RUN's saved config.
    `method_overrides`: fields for one method's runs only, over `train_overrides` (the demo gives
    the fusion models more epochs than BART: `{"recap": {"epochs": 6}, ...}`).
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
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    decode: DecodeSettings = field(default_factory=DecodeSettings)
    # With sampling: True samples each trained model once with its own training seed (the
    # authors' protocol); False samples every model with each of `decode.seeds`.
    paired_sampling: bool = True
    meteor15: bool = True
    # BART-fusion and RECAP start from the BART captioner of their variant and seed (trained
    # first): its text model and copy head; the fusion starts fresh (`recap train --init`).
    fusion_from_bart: bool = False
    bootstrap: int = 1000
    device: str | None = None
    progress: bool = True
    # A finished run trained from other settings or another starting point (a retrained
    # --bart/--encoder folder, a preset the code changed) is trained again instead of refused:
    # for commands that own their runs folder, like `recap demo`.
    retrain_stale: bool = False

    def __post_init__(self) -> None:
        self.variants = tuple(self.variants)
        self.methods = tuple(self.methods)
        if self.seeds is None:
            self.seeds = PAPER_SAMPLING_SEEDS if self.decode.do_sample else (0,)
        self.seeds = tuple(int(s) for s in self.seeds)
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise RecapError(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}")
        bad = [m for m in self.method_overrides if m not in METHODS]
        if bad:
            raise RecapError(f"method_overrides for unknown method(s) {bad}")
        bad = [v for v in self.variants if v not in VARIANT_NAMES]
        if bad:
            raise RecapError(f"unknown variant(s) {bad}; choose from {', '.join(VARIANT_NAMES)}")
        if not self.seeds:
            raise RecapError("at least one seed is needed")
        if self.fusion_from_bart:
            if "bart" not in self.methods:
                raise RecapError(
                    "fusion_from_bart needs the bart method: its runs start the others"
                )
            self.methods = ("bart",) + tuple(m for m in self.methods if m != "bart")

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
    from recap.training.config import StaleRunError
    from recap.training.train import TrainConfig, train

    run = cfg.run_dir(variant, name or method, seed)
    overrides = {**cfg.train_overrides, **cfg.method_overrides.get(method, {})}
    if cfg.fusion_from_bart and method != "bart":
        overrides["init"] = str(cfg.run_dir(variant, "bart", seed))
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
        **overrides,
    )
    logger.info("train %s (%s, seed %d, w %s) → %s", method, variant, seed, align_weight, run)
    try:
        run = Path(train(tc))
    except StaleRunError as err:
        if not cfg.retrain_stale:
            raise
        logger.warning("%s; training it again", err)
        run = Path(train(dataclasses.replace(tc, overwrite=True)))
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
