"""`recap demo`: the whole paper pipeline, small, on CPU, in about a quarter of an hour.

    recap demo --source music21 --out runs/demo            # what `make demo` runs
    recap demo --source ../shared/data/openscore-lieder --out runs/demo-lieder --full

Stages (each reuses what a previous run of the demo left in OUT, so a rerun only fills gaps):
1. build the rendered-songs benchmark from `--source`            → OUT/bench/
   (and the all-test slice of another corpus for stage 6          → OUT/cross/bench/)
2. pretrain a small CNNSA tagger on its audio slots              → OUT/tagger/
3. pretrain the captioners' BART on lyrics by denoising (`recap pretrain-text`; never a val or
   test work of either benchmark), as the paper starts from bart-base → OUT/bart-lyrics/
4. precompute the frozen encoder's music embeddings              → OUT/bench/cache/
5. fine-tune small BART, BART-fusion and RECAP from stage 3's BART (variant full; `--full` adds
   vote > 0 and more sweep points) and evaluate each on the test split → OUT/experiments/
6. evaluate the same captioners on the other corpus (generalisation)  → OUT/cross/
7. print Table 1 (ROUGE, METEOR, attribute accuracy), write the Figure 2 plot, caption one test
   song, and write OUT/results.md with every number and the stage timings.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from recap.utils import RecapError, atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class DemoConfig:
    """The demo's budget. The defaults are `make demo`'s (music21, 2 CPU cores: about 28 min of
    stages on the AMD machine of runs AA and AB, ~3 min less on the Intel one; docs/results.md)."""

    source: str = "music21"
    out: str = "runs/demo"
    full: bool = False
    seed: int = 0  # benchmark, tagger and text pretraining; the captioners' too unless `seeds`
    seeds: tuple[int, ...] = ()  # captioner seeds of Table 1 (e.g. 0, 1, 2); (): just `seed`
    # benchmark
    limit: int | None = None  # scores to render (None: all)
    # Four renderings of each score with two interpretations each (until run AA: two with four):
    # the same 8 captions of each text, the captioners' steps and the tagger's (60 epochs over
    # twice the renderings) unchanged, but twice the heard examples of each audio fact. The
    # captioners learn the train songs' facts by heart (docs/training.md "What the captioners
    # learn from 277 texts"); with more renderings the fusion captioners' audio facts rose from
    # 71-73 to 76-79 % (docs/results.md run AB), for ~3 more minutes (rendering, embeddings,
    # twice the test songs to caption).
    renders_per_song: int = 4
    comments_per_render: int = 2
    workers: int = 2
    coupling: float = 0.0  # share of renderings that follow the lyrics (BuildConfig.coupling)
    couple_by: str = "meaning"  # what they follow (BuildConfig.couple_by)
    # music encoder pretraining: the `demo` front end with chroma tokens on 6 s crops, cosine
    # schedule, 60 epochs over 4 renderings a score (run AB: token probe melody 88 %,
    # accompaniment 100 %, tempo 98 %, key 47 %; the steps, ~4 min, of 120 epochs over 2):
    # without the chroma tokens the probe's key was 6 % and the captioners' 1-13 % (run S);
    # with them the fusion captioners state it for 19-20 % (run T). Rolling the chroma rows of
    # half the crops (tagger_chroma_rotation) lifts the probe's key 46.5 -> 50.6 % and, since
    # the decoders read the mean token (music_memory), the fusion captioners' key 45.9 -> 49-51 %
    # and audio mean 83.0 -> 84.5-84.9 % over three seeds (docs/training.md "Chroma tokens";
    # before the memory it cost the captions' key, run T); run AH, docs/results.md. The `mini`
    # recipe (2 s crops, 30 epochs, run P) hears the melody (98 %) but not the tempo (56 %); 80
    # epochs heard the tempo but lost the melody (run Q); the pitch shift and the chroma target
    # taught the key but cost the melody (docs/training.md "The demo tagger", "Chroma tokens").
    # Since run AK the `demo-key` front end: a chroma from 60 Hz-1 kHz, power^0.25, weighted by
    # loudness over the clip and added after the transformer, which then reads the mel rows
    # alone, so three crops in four can roll their chroma without costing the melody. Tagger
    # sweep on run AI's benchmark (docs/training.md "A chroma the key can be read from"):
    # probe key 66.3 -> 69.8 %, melody 91.9 -> 95.3 %.
    tagger_preset: str = "demo-key"
    tagger_epochs: int = 60  # over 4 renderings a score: the steps of run AA's 120 over 2
    tagger_lr: float = 2e-3
    tagger_schedule: str = "cosine"
    tagger_crop_seconds: float = 6.0
    tagger_pitch_shift: int = 0
    tagger_chroma_weight: float = 0.0
    tagger_chroma_rotation: float = 0.75
    # text pretraining (recap pretrain-text): 500 steps copy 99 % of held-out lines and 91 % of
    # 128-token segments, as 600 did, in ~2.5 min on 2 idle cores (docs/training.md); the
    # ~35 s saved pay for part of the tagger's 6 s crops. 0 steps: start from scratch
    pretrain_steps: int = 500
    pretrain_sources: tuple[str, ...] = ("music21", "openscore-lieder")
    pretrain_texts: tuple[str, ...] = ()  # extra text files (tests use these alone)
    # The BPE also learns the benchmark's training captions (`pretrain-text --bpe-text`):
    # captions of ~70 tokens instead of ~110, a third faster to train, first line 91-92 %, but
    # every captioner's lyrics encoder then collapsed and the salient words fell to 9-15 % F1
    # (run H, docs/results.md). Off until that is understood.
    bpe_captions: bool = False
    # Text-only training rows (`recap bench text-rows`) from the texts of `pretrain_sources`
    # outside the benchmarks: N interpretations of each, heard by no one (0: off). The
    # captioners learn the train texts' lyrics facts by heart (99 % on train, 78 % on test);
    # 1,250 more texts at 2 rows each: first line 88-95 -> 98-100 %, BART-fusion's lyrics facts
    # 78 -> 82 % (seed 0), but twice the captioners' steps (docs/training.md "More texts to
    # read"). With `fusion_from_bart` only BART reads them (its steps double: +3.5 min) and
    # the fusion captioners start from it (docs/results.md run AC).
    text_rows_per_text: int = 2
    # N more rows per text, each of a text recombined from it and another text in its language
    # (and from the benchmark's train texts): new openings, word counts and word orders, which
    # only the rule states (`recap.bench.text_rows.recombine`). One in place of the second row
    # per text, three seeds (docs/training.md "Recombined texts"): salient-word F1 +5 points
    # for every captioner, the theme -3 to -12, the lyrics mean no better. 0: off.
    text_rows_recombined: int = 0
    # "language" or "theme": a recombined text's partner shares its language, or its language and
    # theme (the theme holds better; the lyrics mean no better either: docs/training.md).
    text_rows_recombine_within: str = "language"
    # captioners (TrainConfig fields for every run; ~2–3 min each on 2 cores)
    size: str = "small"
    # 2 epochs left the copy head quoting one or two words of the first line (docs/results.md).
    # With the weight average, 3 epochs against 6 (three seeds, docs/training.md) cost BART-fusion
    # 6 points of audio facts and BART 5 of first lines, keep the lyrics, and halve stage 5: the
    # demo fits the 20 minutes on 2 cores instead of taking 29.
    epochs: int = 3
    # BART-fusion and RECAP train longer than BART (0: `epochs`). Six epochs, three seeds (run
    # W against run V): key 19-20 -> 22-24 %, lyrics facts 77 -> 79-80 %, salient F1 +3-7, no
    # run broken; the audio mean stayed at 73 % with run W's retrained tagger (+2 with run V's).
    # They cost ~4 min of `make demo` (docs/results.md run W).
    fusion_epochs: int = 6
    # BART-fusion and RECAP's decoders also attend to the mean music token (RecapConfig.
    # music_memory, not in the papers): the fused states held the key of 40 % of the test songs
    # and the captions named 25 % (docs/training.md "Where the key is lost"). Three seeds (run AE
    # against run AC): key 25 -> 46 %, audio facts 77.0 -> 83.0-83.1 %, swap A 77 -> 83 %,
    # lyrics facts 1-1.5 points lower (docs/results.md run AE); the same training time.
    music_memory: bool = True
    # BART-fusion and RECAP start from the BART captioner of their seed (its text model and copy
    # head; `recap train --init`; the fusion starts fresh), so what BART learned from the text
    # rows reaches them without their steps doubling. Three seeds (run AC against run AB):
    # lyrics facts BART 77.6 -> 83.0 %, BART-fusion 77.0 -> 81.8, RECAP 79.5 -> 80.3, first line
    # 86-90 -> 94-100 %, audio facts unchanged. Three fusion epochs instead of six from BART
    # lost 3.7 points of audio facts (one seed): the epochs stay.
    fusion_from_bart: bool = True
    max_steps: int = 0
    # A quarter of the training examples without their lyrics, so the demo's captioners also
    # interpret instrumentals from the audio alone (`recap caption song.wav` without lyrics;
    # docs/training.md "Lyrics dropout"). The lyrics-only bart run ignores it.
    lyrics_dropout: float = 0.25
    # ema_decay: validate and keep an exponential average of the weights (decay 0.99, ~100
    # steps). With it, 3 epochs beat run O's 6 without it on three seeds: first line 74-80 ->
    # 81-84 %, lyrics +2-6 points, the fusion models' audio +4-5 (docs/results.md run P).
    train_overrides: dict[str, Any] = field(
        default_factory=lambda: {
            "ema_decay": 0.99,
            # Keep the end of training: choosing among epochs 2, 4 and 6 by the ROUGE of 48
            # greedy captions (differences of 0.01) kept an earlier checkpoint in four of run
            # Z's six fusion runs; their last averaged weights mended the weak one and stated
            # as many facts or more in the others (docs/results.md, "The end of training").
            "val_every_epochs": 0,
            "val_max_examples": 48,
            "val_max_new_tokens": 96,
            "patience": 0,
            "checkpoint_every_steps": 0,
        }
    )
    # generalisation: the captioners evaluated on renderings of a corpus they never saw (the
    # first scores of OpenScore Lieder, all of them test songs); skipped when it is not there
    cross_source: str = "../shared/data/openscore-lieder"
    cross_limit: int = 40
    # evaluation
    beams: int = 4
    # The interpretations are ~65 BPE tokens with a tokenizer trained on them, ~110 with the
    # text-pretrained BART's lyrics tokenizer: 96 cut 97 % of run F's captions short.
    max_new_tokens: int = 160
    # Quotes are the song's own words (recap.inference.quotes): the captioners quote the first
    # line, and a free quote jumps between occurrences of a token (docs/training.md).
    quote_lyrics: bool = True
    # Every word of a caption is one of the training captions' or the song's (recap.inference.
    # words): the small captioners otherwise spell non-words ("frehebt", "orggan") in 10-57 of
    # 86 captions (docs/training.md "Known words").
    known_words: bool = True
    # No trigram blocking (the papers decode with no_repeat_ngram_size 3): the captions state
    # the theme twice by design ("... speak of faith." "... a song of faith."), and blocking the
    # repeated "of faith ." made 66-78 of 86 run R captions name a second, different theme
    # (docs/results.md "Run S").
    no_repeat_ngram: int = 0
    eval_batch_size: int = 32
    meteor15: bool = True
    bootstrap: int = 1000
    # Timed steps of the reference workload before the first stage and after the last
    # (`reference_speed`): what makes two runs' wall times comparable. 0: not measured.
    reference_steps: int = 10

    @property
    def root(self) -> Path:
        return Path(self.out)

    def variants(self) -> tuple[str, ...]:
        return ("full", "positive") if self.full else ("full",)

    def sweep_weights(self) -> tuple[float, ...]:
        # The quick demo plots the two runs Table 1 trains anyway (w = 0: BART-fusion; 0.02:
        # RECAP); --full trains the paper's whole sweep.
        return (0.0, 0.005, 0.01, 0.02, 0.05, 0.1) if self.full else (0.0, 0.02)


class _Stages:
    """Runs named stages, recording the wall and CPU seconds of each (CPU: this process and its
    children that have exited, user + system)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], T]) -> T:
        print(f"\n=== {name} ===", flush=True)
        t0, c0 = time.perf_counter(), _cpu_seconds()
        result = fn()
        self.seconds[name] = round(time.perf_counter() - t0, 1)
        self.cpu[name] = round(_cpu_seconds() - c0, 1)
        print(f"--- {name}: {self.seconds[name]:.0f} s ({self.cpu[name]:.0f} CPU s)", flush=True)
        return result


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def reference_speed(steps: int = 10, threads: int | None = None) -> float:
    """This machine's speed now: samples/s of a fixed captioner step (recap.training.speed),
    `steps` of them timed, on `threads` torch threads (default: the current number). Recorded
    before the first stage and after the last, so that two runs' wall times are compared only
    on a machine that ran equally fast."""
    import torch

    from recap.training.speed import reference_speed as measure

    before = torch.get_num_threads()
    # Only when asked: setting the count, even to the one it already is, changes the last bits
    # of the computations that follow in this process (measured: the demo's BART-fusion loss
    # at step 10 moved from 6.180564 to 6.180653, and its test figures by a few points).
    if threads and threads != before:
        torch.set_num_threads(threads)
    try:
        speed = measure(steps)
        print(f"reference speed: {speed:.1f} samples/s on {torch.get_num_threads()} thread(s)")
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
    return round(speed, 1)


def reference_line(reference: Mapping[str, float]) -> str:
    """The results page's sentence on `reference_speed`'s two measurements."""
    return (
        f"Reference speed of this machine (`recap.training.speed`): {reference['start']:.1f} "
        f"samples/s before the first stage, {reference['end']:.1f} after the last "
        f"({reference['threads']:g} thread(s)); compare wall times only between runs whose "
        "reference speeds agree."
    )


def machine_line(machine: Mapping[str, Any]) -> str:
    """The results page's sentence on what the run ran on (`recap.training.speed.machine`)."""
    # older results.json files have neither the generation nor the kernels
    detail = ", ".join(machine[k] for k in ("generation", "kernels") if machine.get(k))
    cpu = f"{machine['cpu']} ({detail})" if detail else machine["cpu"]
    return (
        f"Machine: {cpu}, {machine['cpus']} CPU(s), torch {machine['torch']}; "
        "expect a rerun of the same commit and seed to print these figures to the digit only "
        "on the same CPU model (docs/results.md, run Z)."
    )


def run_record_lines(
    reference: Mapping[str, float] | None, machine: Mapping[str, Any] | None
) -> list[str]:
    """The lines both demos' results pages end with: the machine's speed and what it was."""
    return [
        *([reference_line(reference), ""] if reference else []),
        *([machine_line(machine), ""] if machine else []),
    ]


# ------------------------------------------------------------------------------ stages


def refuse_other_keys(out: Path, built: Mapping[str, Any] | None) -> None:
    """A benchmark whose truth reads the key another way (the whole score's, before
    `BuildConfig.key_seconds`) is another benchmark, and the tagger and captioners trained on it
    would be reused: refused. `built`: its `read_build_record` (None: no record)."""
    from recap.bench.build import BuildConfig

    if built is None:
        return
    was, now = built["key_seconds"], BuildConfig().key_seconds
    if was != now:
        read = f"the first {was:g} s" if was else "the whole score"
        raise RecapError(
            f"{out} states the key of {read}, this recap the key of the first {now:g} s "
            f"heard: use another --out, or delete {out.parent}"
        )


def build_bench(cfg: DemoConfig) -> Path:
    from recap.bench.build import OMITTED_AT, build_benchmark, read_build_record

    out = cfg.root / "bench"
    record = read_build_record(out)
    refuse_other_keys(out, record)
    if (out / "songs.jsonl").is_file() and (out / "dataset.jsonl").is_file():
        built = record or OMITTED_AT
        # A benchmark with another coupling is another experiment, not a gap to fill.
        was = (built["coupling"], built["couple_by"])
        if was != (cfg.coupling, cfg.couple_by):
            raise RecapError(
                f"{out} was built with coupling {was[0]} by {was[1]}, not {cfg.coupling} by "
                f"{cfg.couple_by}: use another --out"
            )
        shape = (built.get("renders_per_song"), built.get("comments_per_render"))
        if shape == (cfg.renders_per_song, cfg.comments_per_render):
            print(f"reusing the benchmark in {out}")
            return out
        # another recipe's (make demo's until run AA: 2 x 4): the build keeps the renderings it
        # has and renders the rest, then writes the interpretations anew
        print(f"rebuilding {out}: {shape[0]} renderings x {shape[1]} interpretations before")
    result = build_benchmark(
        bench_config(
            cfg, cfg.source, out, cfg.limit, coupling=cfg.coupling, couple_by=cfg.couple_by
        )
    )
    print(
        f"{result.songs} songs ({result.works} works), {result.rows} interpretations, "
        f"{result.renders_per_second:.1f} renders/s; {result.skipped.summary()}"
    )
    return out


def bench_config(cfg: DemoConfig, source: str, out: Path, limit: int | None, **kw: Any) -> Any:
    """The demo's benchmark settings for `source` (a `recap.bench.build.BuildConfig`)."""
    from recap.bench.build import BuildConfig

    return BuildConfig(
        source=source,
        out=str(out),
        renders_per_song=cfg.renders_per_song,
        comments_per_render=cfg.comments_per_render,
        limit=limit,
        seed=cfg.seed,
        workers=cfg.workers,
        **kw,
    )


def tagger_settings(cfg: DemoConfig, data: Path) -> Any:
    """The tagger the demo trains on the benchmark in `data` (a `TaggerConfig`; OUT/tagger)."""
    from recap.training.tagger import TaggerConfig

    return TaggerConfig(
        data=str(data),
        out=str(cfg.root / "tagger"),
        preset=cfg.tagger_preset,
        epochs=cfg.tagger_epochs,
        batch_size=16,
        lr=cfg.tagger_lr,
        schedule=cfg.tagger_schedule,
        crop_seconds=cfg.tagger_crop_seconds,
        dropout=0.0,
        token_loss_weight=1.0,
        pitch_shift=cfg.tagger_pitch_shift,
        chroma_loss_weight=cfg.tagger_chroma_weight,
        chroma_rotation=cfg.tagger_chroma_rotation,
        seed=cfg.seed,
        workers=cfg.workers,
    )


def check_tagger_settings(cfg: DemoConfig) -> None:
    """Before the benchmark's minutes of rendering: the tagger's own checks (the chroma
    rotation, on by default, rolls rows only a `chroma_tokens` front end has)."""
    from recap.training.tagger import check_settings

    check_settings(tagger_settings(cfg, cfg.root / "bench"))


def pretrain_tagger(cfg: DemoConfig, data: Path) -> Path:
    """A small CNNSA trained to tag the benchmark's audio slots; the captioners load it frozen.
    A finished tagger in OUT/tagger is reused while its settings are these ones."""
    from recap.training import tagger

    settings = tagger_settings(cfg, data)
    out = Path(settings.out)
    # the demo owns its folder: a tagger trained with other settings (an older commit) is replaced
    stale = bool(tagger.changed_settings(out, settings))
    metrics = tagger.train_tagger(dataclasses.replace(settings, overwrite=stale))
    print(tagger.format_metrics(metrics))
    return out


def pretrain_settings(cfg: DemoConfig, benches: list[Path]) -> Any:
    """The demo's text pretraining (a `PretrainConfig`): what it reads and how it trains."""
    from recap.models.config import RecapConfig
    from recap.training.pretrain_text import PretrainConfig

    # The curriculum's length caps must fit the size's position table (<s> … </s>: 2 more).
    positions = RecapConfig.preset("bart", cfg.size).max_position_embeddings
    curriculum = [c for c in PretrainConfig().curriculum if c + 2 <= positions]
    return PretrainConfig(
        out=str(cfg.root / "bart-lyrics"),
        source=list(cfg.pretrain_sources),
        text=list(cfg.pretrain_texts),
        exclude_splits_of=[str(b) for b in benches],
        # the first benchmark's training captions' wording: what the captioners will write
        bpe_text=[str(benches[0] / "dataset.jsonl")] if benches and cfg.bpe_captions else [],
        corpus_cache=str(cfg.root / "pretrain-corpus.jsonl"),
        size=cfg.size,
        max_steps=cfg.pretrain_steps,
        curriculum=curriculum,
        seed=cfg.seed,
        workers=cfg.workers,
    )


def pretrain_bart(cfg: DemoConfig, benches: list[Path]) -> Path | None:
    """A small BART denoising-pretrained on lyrics; the val/test works of `benches` are never
    read. Cached: a rerun with the same settings reuses OUT/bart-lyrics."""
    if cfg.pretrain_steps <= 0:
        print("skipped: pretrain_steps is 0 (the captioners start from scratch)")
        return None
    from recap.training.pretrain_text import (
        METRICS_NAME,
        format_metrics,
        is_finished,
        pretrain_text,
    )

    settings = pretrain_settings(cfg, benches)
    folder = Path(settings.out)
    # the demo owns its folder: one pretrained with other settings (an older commit) is replaced
    stale = folder.exists() and not is_finished(folder, settings.resolved())
    out = pretrain_text(dataclasses.replace(settings, overwrite=stale))
    print(format_metrics(json.loads((out / METRICS_NAME).read_text("utf-8"))))
    return out


def build_text_rows(cfg: DemoConfig, benches: list[Path]) -> Path | None:
    """OUT/text-rows.jsonl (`recap bench text-rows`) from the texts the text pretraining read,
    outside `benches`; None when `text_rows_per_text` is 0. Rebuilt each run: seconds."""
    if cfg.text_rows_per_text <= 0:
        print("skipped: text_rows_per_text is 0")
        return None
    from recap.bench.text_rows import RECOMBINE_WITHIN
    from recap.bench.text_rows import build_text_rows as write_rows
    from recap.training.text_corpus import read_corpus

    if cfg.text_rows_recombine_within not in RECOMBINE_WITHIN:  # a setting, not a data problem
        raise RecapError(
            f"text_rows_recombine_within must be one of {RECOMBINE_WITHIN}, "
            f"not {cfg.text_rows_recombine_within!r}"
        )
    # what the text pretraining reads, as it reads it: its corpus cache is reused
    settings = pretrain_settings(cfg, benches)
    docs = read_corpus(dataclasses.replace(settings, source=settings.read_sources()))
    out = cfg.root / "text-rows.jsonl"
    try:
        n, report = write_rows(
            out,
            benches,
            docs,
            cfg.text_rows_per_text,
            cfg.seed,
            cfg.text_rows_recombined,
            cfg.text_rows_recombine_within,
        )
    except ValueError as exc:
        print(f"no text rows: {exc}")
        return None
    mixed = f" + {cfg.text_rows_recombined} recombined" if cfg.text_rows_recombined else ""
    print(f"{n} text rows ({cfg.text_rows_per_text}{mixed} a text); {report.summary()}")
    return out


def precompute_embeddings(cfg: DemoConfig, data: Path, encoder: Path) -> int:
    from recap.bench import load_truth
    from recap.data.cache import ensure_embeddings

    songs = sorted(load_truth(data))
    store = ensure_embeddings(data, str(encoder), songs)
    have = sum(1 for s in songs if s in store)
    print(f"{have}/{len(songs)} songs embedded in {store.root}")
    return have


def experiment_config(
    cfg: DemoConfig,
    data: Path,
    encoder: Path,
    bart: Path | None = None,
    text_rows: Path | None = None,
) -> Any:
    from recap.evaluation.experiment import ExperimentConfig
    from recap.inference.generate import DecodeSettings

    overrides = dict(cfg.train_overrides)
    overrides["epochs"] = cfg.epochs
    fusion = ("bart-fusion", "recap")
    longer = {m: {"epochs": cfg.fusion_epochs} for m in fusion} if cfg.fusion_epochs else {}
    overrides["lyrics_dropout"] = cfg.lyrics_dropout
    if cfg.max_steps:
        overrides["max_steps"] = cfg.max_steps
    if cfg.music_memory:
        for method in fusion:
            longer.setdefault(method, {})["model_overrides"] = {
                **overrides.get("model_overrides", {}),
                "music_memory": True,
            }
    if text_rows is not None and cfg.fusion_from_bart:
        # BART reads them; the fusion captioners start from its weights (its reading) and
        # spend their steps on the benchmark's songs, whose audio they must learn to hear.
        longer["bart"] = {"text_rows": str(text_rows)}
    elif text_rows is not None:
        overrides["text_rows"] = str(text_rows)
    return ExperimentConfig(
        data=str(data),
        out=str(cfg.root / "experiments"),
        size=cfg.size,
        encoder=str(encoder),
        bart=str(bart) if bart is not None else None,
        variants=cfg.variants(),
        seeds=tuple(cfg.seeds) or (cfg.seed,),
        train_overrides=overrides,
        method_overrides=longer,
        decode=DecodeSettings(
            num_beams=cfg.beams,
            max_new_tokens=cfg.max_new_tokens,
            no_repeat_ngram_size=cfg.no_repeat_ngram,
            batch_size=cfg.eval_batch_size,
            quote_lyrics=cfg.quote_lyrics,
            known_words=cfg.known_words,
        ),
        meteor15=cfg.meteor15,
        fusion_from_bart=cfg.fusion_from_bart,
        bootstrap=cfg.bootstrap,
        retrain_stale=True,  # the demo owns its folder: a rerun at a newer commit retrains
    )


def build_cross_bench(cfg: DemoConfig) -> Path | None:
    """The all-test benchmark of the first `cross_limit` scores of `cfg.cross_source` (built
    before text pretraining, which must not read its works); None when the source is missing."""
    from recap.bench.build import build_benchmark, read_build_record

    if not Path(cfg.cross_source).is_dir():
        print(f"no other corpus: {cfg.cross_source} not found")
        return None
    out = cfg.root / "cross" / "bench"
    refuse_other_keys(out, read_build_record(out))
    if not (out / "songs.jsonl").is_file():
        split = (0.0, 0.0, 1.0)  # every work is a test work
        build_benchmark(
            bench_config(cfg, cfg.cross_source, out, cfg.cross_limit, split_fractions=split)
        )
    return out


def cross_corpus(
    cfg: DemoConfig, out: Path | None, encoder: Path, records: list[dict[str, Any]]
) -> dict | None:
    """Evaluate every Table 1 captioner on the other corpus's benchmark `out` with the same
    encoder and decoding; None without one."""
    from recap.bench import load_truth
    from recap.data.cache import ensure_embeddings
    from recap.evaluation.evaluate import evaluate

    if out is None:
        print(f"skipped: {cfg.cross_source} not found")
        return None
    ensure_embeddings(out, str(encoder), sorted(load_truth(out)))
    exp = experiment_config(cfg, out, encoder)
    runs = []
    for r in records:
        result = evaluate(
            r["run"],
            out,
            split="test",
            decode=exp.decode,
            out_dir=cfg.root / "cross" / "eval" / f"{r['method']}-seed{r['seed']}",
            meteor15=False,
            encoder=str(encoder) if r["method"] != "bart" else None,
            bootstrap=cfg.bootstrap,
        )
        runs.append({**r, "metrics": str(Path(result["out_dir"]) / "metrics.json")})
    slots = slot_table(runs)
    return {"source": cfg.cross_source, "limit": cfg.cross_limit, "slots": slots}


def example_caption(metrics_path: str | Path) -> dict[str, str]:
    """The first test song of an evaluation: its lyrics' first line, reference and caption."""
    result = json.loads(Path(metrics_path).read_text(encoding="utf-8"))
    predictions = Path(result["out_dir"]) / result["runs"][0]["predictions"]
    with open(predictions, encoding="utf-8", newline="") as f:
        row = next(csv.DictReader(f))
    first_line = row["lyrics"].split(";")[0].strip()
    return {
        "song_id": row["song_id"],
        "first_line": first_line,
        "reference": row["reference"],
        "prediction": row["prediction"],
        "model": result["model"],
    }


def code_version() -> str | None:
    """The git commit the demo ran at ("+dirty" with uncommitted changes), None outside git."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def slot_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (method, seed): each slot's accuracy and the swap test, from the runs' metrics.json."""
    out = []
    for r in records:
        run = json.loads(Path(r["metrics"]).read_text(encoding="utf-8"))["runs"][0]
        acc = run.get("attribute_accuracy") or {}
        ground = run.get("grounding") or {}
        out.append(
            {
                "variant": r["variant"],
                "method": r["method"],
                "seed": r["seed"],
                "n": acc.get("n"),
                "accuracy": acc.get("accuracy", {}),
                "salient_words_f1": (acc.get("salient_words") or {}).get("f1"),
                "first_line_misses": acc.get("first_line_misses"),
                "salient_word_misses": acc.get("salient_word_misses"),
                "contradicting_captions": acc.get("contradicting_captions"),
                "audio_mean": acc.get("audio_mean"),
                "lyrics_mean": acc.get("lyrics_mean"),
                "distinct": ground.get("distinct"),
                "diagnosis": ground.get("diagnosis"),
                "swap": ground.get("swap"),
                "audio_only": ground.get("audio_only"),
            }
        )
    return out


def slot_markdown(slots: list[dict[str, Any]]) -> list[str]:
    from recap.bench.slots import AUDIO_SLOTS, LYRICS_SLOTS

    names = [s for s in AUDIO_SLOTS + LYRICS_SLOTS if s != "salient_words"]
    lines = [
        "| method | seed | " + " | ".join(n.replace("_", " ") for n in names)
        + " | salient words F1 | contradicting | distinct | swap: A's audio | swap: B's lyrics"
        + " | no lyrics: audio | no lyrics: states lyrics facts | dependence |",
        "|---|---:|" + "---:|" * (len(names) + 8),
    ]  # fmt: skip
    for s in slots:
        cells = [f"{100 * s['accuracy'].get(n, 0.0):.0f}" for n in names]
        misses = s.get("first_line_misses")
        if misses:
            # Why the quotes fail: their length (ran on / stopped short) or their words.
            cells[names.index("first_line")] += (
                f" ({misses['too_long']} / {misses['too_short']} / "
                f"{misses['not_stated'] + misses['other_words']})"
            )
        f1 = s["salient_words_f1"]
        cells.append("—" if f1 is None else f"{100 * f1:.0f}")
        wrong = s.get("salient_word_misses")
        if wrong and f1 is not None:
            # Why the word lists fail: unreadable (words run together), a word named twice,
            # or missing / other words.
            cells[-1] += (
                f" ({wrong['unreadable']} / {wrong['repeated']} / "
                f"{wrong['not_stated'] + wrong['other_words']})"
            )
        # captions giving a slot two values (counted wrong for that slot)
        torn = s.get("contradicting_captions")
        cells.append("—" if torn is None else str(torn))
        d = s["distinct"]
        cells.append("—" if not d else f"{d['captions']}/{d['inputs']}")
        if d and "apart" in d:
            cells[-1] += f" ({100 * d['apart']:.0f})"
        swap = s["swap"] or {}
        for key in ("audio_mean", "lyrics_mean"):
            cells.append(f"{100 * swap[key]:.0f}" if key in swap else "—")
        alone = s.get("audio_only") or {}
        for key in ("audio_mean", "states_lyrics_facts"):
            cells.append(f"{100 * alone[key]:.0f}" if key in alone else "—")
        ratio = (s.get("diagnosis") or {}).get("dependence_ratio")
        cells.append("—" if ratio is None else f"{ratio:.2f}")
        lines.append(f"| {s['method']} | {s['seed']} | " + " | ".join(cells) + " |")
    return lines


# DemoConfig fields `recap demo` takes as `--flag VALUE` (the field's name with dashes), in the
# order the recorded command lists them when they differ from `make demo`.
_VALUE_FLAGS = (
    "epochs", "fusion_epochs", "seed", "limit", "comments_per_render", "tagger_preset",
    "tagger_epochs", "tagger_lr", "tagger_chroma_rotation", "pretrain_steps", "text_rows_per_text",
    "text_rows_recombined", "text_rows_recombine_within", "size", "max_steps",
    "lyrics_dropout", "beams", "max_new_tokens", "no_repeat_ngram",
)  # fmt: skip
# Fields that change where or how fast the demo runs, not what it measures.
_NOT_RESULTS = frozenset({"workers", "eval_batch_size", "reference_steps"})
# Fields recorded otherwise: in the command's head, by a switch, or (train_overrides) entry by
# entry.
_RECORDED_OTHERWISE = frozenset({
    "source", "out", "full", "coupling", "couple_by", "seeds", "quote_lyrics", "known_words",
    "meteor15", "fusion_from_bart", "music_memory", "train_overrides",
})  # fmt: skip


def demo_command(cfg: DemoConfig) -> str:
    """The command line that reproduces this demo (the options that differ from `make demo`);
    settings with no flag that differ are named after it as a `DemoConfig(...)` from Python."""
    default = DemoConfig()
    parts = [f"recap demo --source {cfg.source} --out {cfg.out}"]
    if cfg.full:
        parts.append("--full")
    if cfg.coupling:
        parts.append(f"--coupling {cfg.coupling:g}")
    if cfg.couple_by != default.couple_by:
        parts.append(f"--couple-by {cfg.couple_by}")
    if cfg.seeds:
        parts.append("--seeds " + ",".join(str(s) for s in cfg.seeds))
    for name in _VALUE_FLAGS:
        value = getattr(cfg, name)
        if value != getattr(default, name):
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            parts.append(f"--{name.replace('_', '-')} {shown}")
    ema = cfg.train_overrides.get("ema_decay", 0.0)
    if ema != default.train_overrides["ema_decay"]:
        parts.append(f"--ema-decay {ema:g}")
    if not cfg.quote_lyrics:
        parts.append("--free-quotes")
    if not cfg.known_words:
        parts.append("--free-words")
    if not cfg.meteor15:
        parts.append("--no-meteor15")
    if not cfg.fusion_from_bart:
        parts.append("--fusion-from-scratch")
    if cfg.music_memory != default.music_memory:
        parts.append("--music-memory" if cfg.music_memory else "--no-music-memory")
    flagged = set(_VALUE_FLAGS) | _NOT_RESULTS | _RECORDED_OTHERWISE
    others = [
        f"{f.name}={getattr(cfg, f.name)!r}"
        for f in dataclasses.fields(DemoConfig)
        if f.name not in flagged and getattr(cfg, f.name) != getattr(default, f.name)
    ]
    others += [
        f"train_overrides[{k!r}]={v!r}"
        for k, v in cfg.train_overrides.items()
        if k != "ema_decay" and default.train_overrides.get(k) != v
    ]
    if others:
        parts.append("with DemoConfig(" + ", ".join(others) + ") from Python")
    return " ".join(parts)


def results_markdown(
    cfg: DemoConfig,
    table_md: str,
    sweep: dict[str, Any],
    example: dict[str, str],
    stages: dict[str, float],
    slots: list[dict[str, Any]] | None = None,
    commit: str | None = None,
    cross: dict[str, Any] | None = None,
    reference: dict[str, float] | None = None,
    machine: Mapping[str, Any] | None = None,
) -> str:
    lines = [
        "# Demo results",
        "",
        f"`{demo_command(cfg)}` "
        f"(size {cfg.size}, {cfg.epochs} epochs for BART, {cfg.fusion_epochs or cfg.epochs} "
        f"for BART-fusion and RECAP, seed {cfg.seed}), at commit "
        f"`{commit or 'unknown'}`.",
        "",
        "## Table 1 on the rendered-songs benchmark (test split)",
        "",
        table_md.rstrip(),
        "",
        "## Each fact, and whether the captioners read and hear (test split, percent)",
        "",
        *slot_markdown(slots or []),
        "",
        "First line (a / b / c): of the wrong ones, a quote that ran on past the line, one "
        "that stopped short, and one missing or of other words. Salient words F1 (a / b / c): "
        "of the wrong word lists, one the parser cannot read (most often two words run "
        "together), one naming a word twice, and one missing or of other words. "
        "Dependence: how far two songs' "
        "lyrics-encoder outputs are apart as a share of their embeddings (≈ 0: collapsed). "
        "Distinct: different captions / different inputs (in brackets, apart: the percentage "
        "of inputs whose caption no input with other true facts shares). Swap: captions of "
        "(audio of song A, lyrics of song B), A's audio facts and B's lyrics facts right. "
        "No lyrics: captions of each song's audio alone, its audio facts right, and the share "
        "that still state a lyrics fact (language, first line, salient words or theme: none "
        "can be known).",
        "",
        *(
            [
                f"## On a corpus the captioners never saw ({cross['source']}, first "
                f"{cross['limit']} scores, every one a test song)",
                "",
                *slot_markdown(cross["slots"]),
                "",
            ]
            if cross
            else []
        ),
        "## Figure 2: ROUGE-L recall against the alignment weight w",
        "",
        f"![sweep]({Path(sweep['png']).name}) — `{sweep['png']}`",
        "",
        "| w | ROUGE-L recall (%) | 95% CI | seeds |",
        "|---:|---:|---|---|",
    ]
    for p in sweep["points"]:
        lines.append(
            f"| {p['align_weight']:g} | {100 * p['mean']:.1f} | "
            f"[{100 * p['low']:.1f}, {100 * p['high']:.1f}] | {p['seeds']} |"
        )
    lines += [
        "",
        "## One test song",
        "",
        f"- song: `{example['song_id']}`; first line of the lyrics: *{example['first_line']}*",
        f"- reference: {example['reference']}",
        f"- RECAP: {example['prediction']}",
        "",
        "## Time per stage (seconds)",
        "",
        "| stage | s |",
        "|---|---:|",
        *[f"| {k} | {v:.0f} |" for k, v in stages.items()],
        f"| total | {sum(stages.values()):.0f} |",
        "",
        *run_record_lines(reference, machine),
    ]
    return "\n".join(lines)


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Every stage; returns the table rows, the sweep, the example caption and the timings."""
    import torch

    from recap.evaluation.experiment import run_sweep, run_table1
    from recap.training.speed import machine

    check_tagger_settings(cfg)
    stages = _Stages()
    cfg.root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg.root / "demo_config.json", asdict(cfg))
    reference: dict[str, float] | None = None
    if cfg.reference_steps > 0:
        threads = torch.get_num_threads()
        reference = {"threads": threads, "start": reference_speed(cfg.reference_steps)}
    data = stages.run("1. benchmark", lambda: build_bench(cfg))
    cross_bench = stages.run("1b. another corpus's benchmark", lambda: build_cross_bench(cfg))
    encoder = stages.run("2. music-encoder pretraining", lambda: pretrain_tagger(cfg, data))
    benches = [b for b in (data, cross_bench) if b is not None]
    bart = stages.run("3. text pretraining", lambda: pretrain_bart(cfg, benches))
    text_rows = None
    if cfg.text_rows_per_text:
        text_rows = stages.run("3b. text rows", lambda: build_text_rows(cfg, benches))
    stages.run("4. music embeddings", lambda: precompute_embeddings(cfg, data, encoder))
    exp = experiment_config(cfg, data, encoder, bart, text_rows)
    table = stages.run("5. train + evaluate BART, BART-fusion, RECAP", lambda: run_table1(exp))
    sweep = stages.run("5b. alignment-weight sweep", lambda: run_sweep(exp, cfg.sweep_weights()))
    cross = stages.run(
        "6. another corpus (generalisation)",
        lambda: cross_corpus(cfg, cross_bench, encoder, table["records"]),
    )
    if reference:
        reference["end"] = reference_speed(cfg.reference_steps)
    recap_record = next(
        r for r in table["records"] if r["method"] == "recap" and r["variant"] == "full"
    )
    example = example_caption(recap_record["metrics"])

    print("\n=== Table 1 (rendered-songs benchmark, test split; percent) ===\n")
    print(table["markdown"])
    print(f"Figure 2 (ROUGE-L vs w): {sweep['png']}")
    print("\n=== One test song ===")
    print(f"first line of the lyrics: {example['first_line']}")
    print(f"reference:                {example['reference']}")
    print(f"RECAP's interpretation:   {example['prediction']}")
    # The plot sits beside results.md so the markdown's image link works.
    png = Path(sweep["png"])
    local_png = cfg.root / png.name
    if png.resolve() != local_png.resolve():
        local_png.write_bytes(png.read_bytes())
    slots = slot_table(table["records"])
    commit = code_version()
    ran_on = machine()
    md = results_markdown(
        cfg,
        table["markdown"],
        sweep,
        example,
        stages.seconds,
        slots,
        commit,
        cross,
        reference,
        ran_on,
    )
    atomic_write_text(cfg.root / "results.md", md)
    atomic_write_json(
        cfg.root / "results.json",
        {
            "commit": commit,
            "command": demo_command(cfg),
            "demo_config": asdict(cfg),
            "table1": table["rows"],
            "slots": slots,
            "sweep": sweep["points"],
            "cross_corpus": cross,
            "example": example,
            "seconds": stages.seconds,
            "total_minutes": round(sum(stages.seconds.values()) / 60, 2),
            "reference_samples_per_s": reference,
            "machine": ran_on,
        },
    )
    total = sum(stages.seconds.values())
    print(f"\nresults: {cfg.root / 'results.md'}  (total {total / 60:.1f} min)")
    return {
        "table": table["rows"],
        "sweep": sweep["points"],
        "example": example,
        "seconds": stages.seconds,
        "results": str(cfg.root / "results.md"),
    }
