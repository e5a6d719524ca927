"""Evaluation: caption a split with a trained model and score it as the papers did (SPEC §2).

    recap evaluate --model RUN --data DIR --split test                     # beam 4, deterministic
    recap evaluate --model RUN --data DIR --sample --seeds 2022            # sampled, as the authors
                                          # (they sampled each trained model once, with its seed)

Two labelled metric sets (`recap.evaluation.metrics`): **paper** — the authors' evaluation, every
(song, interpretation) row of the split one example scored against that one interpretation
(rouge_score ROUGE recall and F1, NLTK METEOR; comparable with the paper's Table 1) — and
**caption** — the caption literature's pycocoevalcap metrics (BLEU-1..4, METEOR 1.5, ROUGE-L,
CIDEr-D), one caption per song against all of the song's interpretations. Both with bootstrap
intervals. Unlike the authors' loop, which dropped the last partial batch, every row is evaluated.

Captions. With beam search the caption depends only on (song, lyrics): it is generated once per
song and shared by the song's rows (identical scores, rows/song times less work). With sampling
(`--sample`) every row draws its own caption, as the authors' loop did, so a song's rows differ.
Attribute accuracy (rendered-songs benchmark only) is per song: the song's (first) caption
against its true facts.

Outputs, in RUN/eval/<split>-<decode tag>/ (or --out): `predictions.csv` (song_id, lyrics,
reference, prediction; `predictions_seed<S>.csv` per seed when sampling) and `metrics.json`.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recap.inference.generate import (
    PAPER_SAMPLING_SEEDS,
    DecodeSettings,
    generate_texts,
    load_model_and_tokenizer,
    resolve_model_dir,
)
from recap.utils import RecapError, SkipReport, atomic_path, atomic_write_json, read_json

__all__ = ["PAPER_SAMPLING_SEEDS", "DecodeSettings", "evaluate", "resolve_target"]

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.json"
REFERENCE_POLICY = (
    "paper set: one example per (song, interpretation) row, scored against that row's "
    "interpretation; caption set: one caption per song against all of the song's "
    "interpretations. Beam search generates one caption per (song, lyrics), shared by its rows; "
    "sampling draws one per row"
)


@dataclass
class EvalTarget:
    """What a --model path points at: the model folder, its run folder (if any) and the run's
    training settings (used for defaults: encoder, variant, validation split seed)."""

    model_dir: Path
    run_dir: Path | None
    train_config: dict[str, Any] = field(default_factory=dict)


def resolve_target(path: str | os.PathLike) -> EvalTarget:
    """A RUN folder (its `best/` model) or a model folder (inside a RUN or not)."""
    model_dir = resolve_model_dir(path)
    run_dir = None
    for candidate in (Path(path), model_dir.parent):
        if (candidate / "train_config.json").is_file():
            run_dir = candidate
            break
    train_config: dict[str, Any] = {}
    if run_dir is not None:
        train_config = read_json(run_dir / "train_config.json", "training settings")
    return EvalTarget(model_dir, run_dir, train_config)


def default_out_dir(target: EvalTarget, split: str, decode: DecodeSettings) -> Path:
    base = target.run_dir if target.run_dir is not None else target.model_dir
    return base / "eval" / f"{split}-{decode.tag()}"


# ------------------------------------------------------------------------------ generation


def _music_for(
    model: Any,
    target: EvalTarget,
    data_dir: Path,
    song_ids: Sequence[str],
    encoder: str | None,
    embeddings: Mapping[str, np.ndarray] | None,
    audio_config: Any = None,
) -> Mapping[str, np.ndarray] | None:
    """song id → (M, D) music sequence for a model that listens; None for a lyrics-only one.

    The encoder is, in order: `encoder` (the caller's), the one the run trained with (its
    train_config.json), the frozen encoder saved inside the model. The excerpts: `audio_config`,
    else the windows the model was trained on (its run's settings, else its config's
    `music_windows`).
    """
    if not model.config.use_music:
        return None
    if embeddings is not None:
        return embeddings
    from recap.data.cache import ensure_embeddings

    spec: Any = encoder or target.train_config.get("encoder")
    if spec is None and getattr(model, "music_encoder", None) is not None:
        spec = model.music_encoder
    if spec is None:
        # A preset name would be a fresh random encoder: its embeddings would not be the ones
        # the model was trained on.
        raise RecapError(
            "cannot tell which music encoder made this model's embeddings (no encoder in the "
            "run's train_config.json or in the model folder): pass --encoder"
        )
    if audio_config is None:
        from recap.data.audio import AudioConfig

        tc = target.train_config
        windows = tc.get("windows") or getattr(model.config, "music_windows", 1)
        audio_config = AudioConfig(windows=windows, hop=tc.get("window_hop"))
    return ensure_embeddings(data_dir, spec, song_ids, audio_config=audio_config)


def generate_captions(
    model: Any,
    tokenizer: Any,
    songs: Sequence[tuple[str, str]],
    music: Mapping[str, np.ndarray] | None,
    decode: DecodeSettings,
    seed: int | None = None,
    progress: bool = True,
    desc: str = "generate",
) -> list[str]:
    """One caption per (song_id, lyrics), in order (`recap.inference.generate.generate_texts`)."""
    if not songs:
        return []
    max_len = model.config.max_source_length
    ids = tokenizer([lyr for _, lyr in songs], truncation=True, max_length=max_len)["input_ids"]
    rows = [music[sid] for sid, _ in songs] if music is not None else None
    return generate_texts(
        model, tokenizer, ids, rows, decode, seed=seed, progress=progress, desc=desc
    )


# ------------------------------------------------------------------------------ evaluation


def _write_predictions(path: Path, rows: Sequence[Any], predictions: Sequence[str]) -> None:
    """One line per row: song_id, lyrics, reference, prediction (`recap score` reads it back)."""
    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["song_id", "lyrics", "reference", "prediction"])
            for r, pred in zip(rows, predictions):
                writer.writerow([r.song_id, r.lyrics, r.comment, pred])


def row_captions(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Any],
    music: Mapping[str, np.ndarray] | None,
    decode: DecodeSettings,
    seed: int | None = None,
    progress: bool = True,
    desc: str = "generate",
) -> list[str]:
    """One caption per row. Beam search: generated once per (song, lyrics) and shared by the
    song's rows. Sampling: drawn afresh for every row, as the authors' evaluation loop did."""
    if decode.do_sample:
        units = [(r.song_id, r.lyrics) for r in rows]
        return generate_captions(
            model, tokenizer, units, music, decode, seed=seed, progress=progress, desc=desc
        )
    songs = list(dict.fromkeys((r.song_id, r.lyrics) for r in rows))
    texts = generate_captions(
        model, tokenizer, songs, music, decode, seed=seed, progress=progress, desc=desc
    )
    captions = dict(zip(songs, texts))
    return [captions[(r.song_id, r.lyrics)] for r in rows]


def run_status(run_dir: Path | None) -> dict[str, Any]:
    """Whether a training RUN finished (its done.json exists); a model folder has no run."""
    if run_dir is None:
        return {"finished": None, "note": "a model folder, not a training run"}
    if (run_dir / "done.json").is_file():
        return {"finished": True}
    return {
        "finished": False,
        "note": f"{run_dir} has no done.json: training did not finish (still running, killed or "
        "stopped by --max-steps); its best/ is the best checkpoint validated so far",
    }


def _attribute_accuracy(
    data_dir: Path, song_ids: Sequence[str], predictions: Sequence[str]
) -> dict[str, Any] | None:
    """Per-slot accuracy on a rendered-songs benchmark folder (one with songs.jsonl): each
    song's first caption against its true facts."""
    if not (data_dir / "songs.jsonl").is_file():
        return None
    from recap import bench

    truths = bench.load_truth(data_dir)
    per_song: dict[str, str] = {}
    for sid, text in zip(song_ids, predictions):
        per_song.setdefault(sid, text)
    missing = sorted(set(per_song) - set(truths))
    if missing:
        raise RecapError(f"{len(missing)} song(s) have no truth in songs.jsonl, e.g. {missing[0]}")
    ids = sorted(per_song)
    return bench.score_captions([per_song[s] for s in ids], [truths[s] for s in ids])


def _grounding(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Any],
    captions: Mapping[tuple[str, str], str],
    music: Mapping[str, np.ndarray] | None,
    data_dir: Path,
    decode: DecodeSettings,
    seed: int | None,
    progress: bool,
) -> dict[str, Any]:
    from recap import bench
    from recap.evaluation.diagnose import grounding

    truths = bench.load_truth(data_dir) if (data_dir / "songs.jsonl").is_file() else None

    def generate(pairs: Sequence[tuple[str, str]]) -> list[str]:
        return generate_captions(
            model, tokenizer, pairs, music, decode, seed=seed, progress=progress, desc="swap test"
        )

    return grounding(model, tokenizer, rows, captions, music, truths, generate)


def _mean_over_seeds(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Headline numbers averaged over seeds, with each seed's value and the range. A measure
    only some seeds have (the grounding measures: the first seed's) is averaged over those."""
    keys = list(dict.fromkeys(k for r in runs for k in r["summary"]))
    out: dict[str, Any] = {}
    for key in keys:
        values = [r["summary"][key] for r in runs if key in r["summary"]]
        out[key] = float(np.mean(values))
    out["per_seed"] = {str(r["seed"]): r["summary"] for r in runs}
    return out


def evaluate(
    model_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    split: str = "test",
    decode: DecodeSettings | None = None,
    variant: str | None = None,
    out_dir: str | os.PathLike | None = None,
    meteor15: bool = True,
    encoder: str | None = None,
    embeddings: Mapping[str, np.ndarray] | None = None,
    bootstrap: int = 1000,
    device: Any = None,
    limit: int = 0,
    progress: bool = True,
    grounding: bool = True,
    audio_config: Any = None,
    without_lyrics: bool = False,
) -> dict[str, Any]:
    """Caption every row of `split`, score it, write predictions CSV + metrics JSON; return the
    metrics (also at `result["out_dir"]/metrics.json`).

    `audio_config`: the excerpts heard (`recap.data.audio.AudioConfig`; default: the windows
    the run trained with). `without_lyrics`: caption every song from its audio alone (empty
    lyrics), to measure what the audio carries; the references are unchanged.

    `model_dir`: a RUN folder or a model folder. `variant` only matters for `val` (the test
    split is shared; default: the run's variant). `embeddings`: song id → music sequence, to
    bypass the cache (tests, custom encoders). `limit`: first N rows only (0: all).
    `grounding`: add `recap.evaluation.diagnose.grounding` on the first seed's captions (distinct captions,
    input dependence, lyrics / audio gaps, and the swap test on a benchmark with truth).
    """
    from recap.data.songs import load_splits
    from recap.evaluation.metrics import (
        METRIC_SETS,
        METRICS_VERSION,
        metric_sets,
        strip_per_example,
    )

    decode = (decode or DecodeSettings()).check()
    data_dir = Path(data_dir)
    target = resolve_target(model_dir)
    status = run_status(target.run_dir)
    if status["finished"] is False:
        logger.warning("evaluating an unfinished run: %s", status["note"])
    tc = target.train_config
    variant = variant or tc.get("variant", "full")
    report = SkipReport(f"evaluate {split}")
    splits = load_splits(
        data_dir,
        variant=variant,
        val_fraction=tc.get("val_fraction", 0.1),
        seed=tc.get("seed", 42),
        report=report,
    )
    if split not in splits:
        raise RecapError(f"unknown split {split!r}; choose train, val or test")
    rows = splits[split][:limit] if limit else splits[split]
    if not rows:
        raise RecapError(f"{data_dir} has no {split} rows")

    model, tokenizer, _ = load_model_and_tokenizer(target.model_dir, device, needs_audio=False)

    if without_lyrics:
        from recap.inference.inputs import no_audio_message

        grounding = False  # the swap test needs lyrics to swap

        if not model.config.use_music:
            raise RecapError(no_audio_message(model.config.method))
        rows = [dataclasses.replace(r, lyrics="") for r in rows]
    songs = list(dict.fromkeys((r.song_id, r.lyrics) for r in rows))  # unique, in order
    music = _music_for(
        model, target, data_dir, sorted({s for s, _ in songs}), encoder, embeddings, audio_config
    )
    if music is not None:
        lost = {s for s, _ in songs if s not in music}
        for sid in sorted(lost):
            report.add(sid, "no music embedding (audio unusable; see the cache's skipped.json)")
        if lost:
            logger.warning("%d song(s) without music embeddings are not evaluated", len(lost))
            songs = [s for s in songs if s[0] not in lost]
            rows = [r for r in rows if r.song_id not in lost]
        if not rows:
            raise RecapError("no evaluable rows: every song lacks a music embedding")

    out = Path(out_dir) if out_dir is not None else default_out_dir(target, split, decode)
    if out_dir is None and (without_lyrics or audio_config is not None):
        windows = f"-w{audio_config.windows}" if audio_config is not None else ""
        out = out.with_name(out.name + ("-nolyrics" if without_lyrics else "") + windows)
    out.mkdir(parents=True, exist_ok=True)
    references = [r.comment for r in rows]
    song_ids = [r.song_id for r in rows]
    runs: list[dict[str, Any]] = []
    for seed in decode.run_seeds:
        t0 = time.perf_counter()
        label = f"generate (seed {seed})" if seed is not None else "generate"
        predictions = row_captions(
            model, tokenizer, rows, music, decode, seed=seed, progress=progress, desc=label
        )
        gen_s = time.perf_counter() - t0
        n_generated = len(rows) if decode.do_sample else len(songs)
        name = "predictions.csv" if seed is None else f"predictions_seed{seed}.csv"
        _write_predictions(out / name, rows, predictions)
        scores = metric_sets(
            song_ids, references, predictions, meteor15=meteor15, bootstrap=bootstrap
        )
        run: dict[str, Any] = {
            "seed": seed,
            "predictions": name,
            "captions_generated": n_generated,
            "generation_seconds": round(gen_s, 3),
            "captions_per_second": round(n_generated / gen_s, 3) if gen_s > 0 else None,
            **strip_per_example(scores),
        }
        accuracy = _attribute_accuracy(data_dir, song_ids, predictions)
        if accuracy is not None:
            run["attribute_accuracy"] = accuracy
        if grounding and not runs:
            # One caption per song (each song's first row's, when sampling draws per row).
            captions: dict[tuple[str, str], str] = {}
            for r, text in zip(rows, predictions):
                captions.setdefault((r.song_id, r.lyrics), text)
            run["grounding"] = _grounding(
                model, tokenizer, rows, captions, music, data_dir, decode, seed, progress
            )
        runs.append(run)

    result: dict[str, Any] = {
        "model": str(target.model_dir),
        "run": str(target.run_dir) if target.run_dir else None,
        "method": model.config.method,
        "data": str(data_dir),
        "split": split,
        "variant": variant,
        "decode": decode.to_dict(),
        "n_examples": len(rows),
        "n_songs": len(songs),
        "reference_policy": REFERENCE_POLICY,
        "metrics_version": METRICS_VERSION,
        "metric_sets": {
            name: {
                "description": spec["description"],
                "references": spec["references"],
                "keys": runs[0]["metric_sets"][name],
            }
            for name, spec in METRIC_SETS.items()
        },
        "run_status": status,
        "skipped": len(report),
        "bootstrap": bootstrap,
        "runs": runs,
        "summary": _mean_over_seeds(
            [{"seed": r["seed"], "summary": _run_summary(r)} for r in runs]
        ),
        "out_dir": str(out),
        "train_config": tc,
    }
    if len(report):
        report.write(out / "skipped.json")
        logger.warning(report.summary())
    atomic_write_json(out / METRICS_NAME, result)
    return result


def attribute_summary(acc: Mapping[str, Any]) -> dict[str, float]:
    """The headline figures of a `recap.bench.score_captions` report: the mean slot accuracy
    over the audio slots and over the lyrics slots, and the share of captions that give a slot
    two values (each such slot already counted wrong)."""
    out = {
        "attribute accuracy audio": float(acc["audio_mean"]),
        "attribute accuracy lyrics": float(acc["lyrics_mean"]),
    }
    if acc.get("n") and "contradicting_captions" in acc:
        out["contradicting captions"] = acc["contradicting_captions"] / acc["n"]
    return out


def _run_summary(run: Mapping[str, Any]) -> dict[str, float]:
    """One run's headline numbers: caption metrics, plus the benchmark's slot-group accuracies."""
    summary = dict(run["summary"])
    acc = run.get("attribute_accuracy")
    if isinstance(acc, Mapping):
        summary.update(attribute_summary(acc))
    ground = run.get("grounding")
    if isinstance(ground, Mapping):
        summary["distinct captions"] = float(ground["distinct"]["rate"])
        if "apart" in ground["distinct"]:
            summary["distinct captions apart"] = float(ground["distinct"]["apart"])
        diag = ground.get("diagnosis")
        if isinstance(diag, Mapping):
            summary["encoder dependence"] = float(diag["dependence_ratio"])
            summary["lyrics gap"] = float(diag["lyrics_gap"])
            if "audio_gap" in diag:
                summary["audio gap"] = float(diag["audio_gap"])
        swap = ground.get("swap")
        if isinstance(swap, Mapping):
            summary["swap audio"] = float(swap["audio_mean"])
            summary["swap lyrics"] = float(swap["lyrics_mean"])
        alone = ground.get("audio_only")
        if isinstance(alone, Mapping):
            summary["audio only audio"] = float(alone["audio_mean"])
            summary["audio only states lyrics"] = float(alone["states_lyrics_facts"])
    return summary


# ------------------------------------------------------------------------------ CLI


def format_metric_blocks(
    summary: Mapping[str, Any], metric_sets: Mapping[str, Any] | None
) -> list[str]:
    """Lines of headline numbers in percent with their intervals, one block per labelled
    metric set, then any other numbers (attribute accuracy)."""

    def line(key: str) -> str:
        low, high = summary.get(f"{key} low"), summary.get(f"{key} high")
        band = (
            f"  [{100 * low:.1f}, {100 * high:.1f}]" if low is not None and high is not None else ""
        )
        return f"    {key:<26} {100 * summary[key]:6.2f}{band}"

    lines: list[str] = []
    shown: set[str] = set()
    for name, spec in (metric_sets or {}).items():
        keys = [k for k in spec["keys"] if k in summary]
        if keys:
            lines.append(f"  {name} metrics ({spec['references']})")
            lines += [line(k) for k in keys]
            shown.update(keys)
    rest = [
        k
        for k in summary
        if k != "per_seed" and k not in shown and not k.endswith((" low", " high"))
    ]
    if rest:
        lines.append("  other")
        lines += [line(k) for k in rest]
    return lines


def format_summary(result: Mapping[str, Any]) -> str:
    """Human-readable headline numbers, in percent, with the bootstrap interval, one block per
    labelled metric set (and the benchmark's attribute accuracy)."""
    lines = [
        f"{result['method']} on {result['split']} ({result['n_examples']} examples, "
        f"{result['n_songs']} songs; decode {DecodeSettings.from_dict(result['decode']).tag()})"
    ]
    status = result.get("run_status") or {}
    if status.get("finished") is False:
        lines.append(f"  WARNING: {status['note']}")
    lines += format_metric_blocks(result["summary"], result.get("metric_sets"))
    if len(result["runs"]) > 1:
        lines.append(f"  (means over seeds {', '.join(str(r['seed']) for r in result['runs'])})")
    lines.append(f"written to {result['out_dir']}")
    return "\n".join(lines)
