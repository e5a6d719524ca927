"""`recap demo`: the command line of `recap.demo`."""

from __future__ import annotations

import argparse
from typing import Any

from recap.cli.flags import csv_list
from recap.utils import RecapError

COMMANDS = {
    "demo": "the whole pipeline, small, on CPU: benchmark → tagger → 3 captioners → Table 1"
}


def _handler(args: argparse.Namespace) -> int:
    from recap.demo import DemoConfig, run_demo

    if args.epochs < 1:
        raise RecapError("--epochs must be at least 1")
    if args.fusion_epochs < 0:
        raise RecapError("--fusion-epochs must be at least 0")
    if args.text_rows_per_text < 0 or args.text_rows_recombined < 0:
        raise RecapError("--text-rows-per-text and --text-rows-recombined must be at least 0")
    cfg = DemoConfig(
        train_overrides=train_overrides(args, DemoConfig()),
        source=args.source,
        out=args.out,
        full=args.full,
        seed=args.seed,
        seeds=csv_list(args.seeds, int),
        limit=args.limit,
        workers=args.workers,
        coupling=args.coupling,
        couple_by=args.couple_by,
        comments_per_render=args.comments_per_render,
        tagger_preset=args.tagger_preset,
        tagger_epochs=args.tagger_epochs,
        tagger_lr=args.tagger_lr,
        tagger_chroma_rotation=args.tagger_chroma_rotation,
        pretrain_steps=args.pretrain_steps,
        text_rows_per_text=args.text_rows_per_text,
        text_rows_recombined=args.text_rows_recombined,
        text_rows_recombine_within=args.text_rows_recombine_within,
        size=args.size,
        epochs=args.epochs,
        fusion_epochs=args.fusion_epochs,
        fusion_from_bart=not args.fusion_from_scratch,
        music_memory=args.music_memory,
        max_steps=args.max_steps,
        lyrics_dropout=args.lyrics_dropout,
        beams=args.beams,
        max_new_tokens=args.max_new_tokens,
        no_repeat_ngram=args.no_repeat_ngram,
        quote_lyrics=not args.free_quotes,
        known_words=not args.free_words,
        meteor15=not args.no_meteor15,
    )
    run_demo(cfg)
    return 0


def train_overrides(args: argparse.Namespace, d: Any) -> dict[str, Any]:
    """The config `d`'s TrainConfig fields for every captioner, with the command line's."""
    if not 0.0 <= args.ema_decay < 1.0:
        # checked here too, so a typo fails before the benchmark is rendered
        raise RecapError(f"--ema-decay must be in [0, 1), got {args.ema_decay}")
    return {**d.train_overrides, "ema_decay": args.ema_decay}


def add_demo_arguments(p: argparse.ArgumentParser, d: Any) -> None:
    """The options every demo command takes (`recap demo`, `recap demo-alignment`), with the
    defaults of its config `d` (a `recap.demo.DemoConfig`)."""
    from recap.bench.coupling import COUPLE_BY

    p.add_argument("--source", default=d.source, help="music21 | openscore-lieder | DIR of scores")
    p.add_argument("--out", default=d.out, help="output folder (reused by a rerun)")
    p.add_argument("--limit", type=int, default=None, help="render only the first N scores")
    p.add_argument("--workers", type=int, default=d.workers, help="render processes")
    p.add_argument(
        "--coupling",
        type=float,
        default=d.coupling,
        metavar="P",
        help="share of renderings whose audio follows the lyrics' theme (recap bench build)",
    )
    p.add_argument(
        "--couple-by",
        choices=COUPLE_BY,
        default=d.couple_by,
        help="what coupled renderings follow: the lyrics' theme and colour (meaning) or their "
        "language (a correspondence a reader of a few hundred texts learns; docs/benchmark.md)",
    )
    p.add_argument("--size", default=d.size, help="captioner size: tiny | small")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs per captioner")
    p.add_argument(
        "--ema-decay",
        type=float,
        default=d.train_overrides.get("ema_decay", 0.0),
        metavar="D",
        help="validate and keep an exponential average of each captioner's weights (0: off)",
    )


def register(subparsers: Any) -> None:
    from recap import demo
    from recap.demo import DemoConfig

    d = DemoConfig()
    p = subparsers.add_parser(
        "demo",
        help=COMMANDS["demo"],
        description=demo.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_demo_arguments(p, d)
    p.add_argument("--full", action="store_true", help="also variant vote > 0 and the full sweep")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--seeds",
        default="",
        metavar="0,1,2",
        help="captioner seeds for Table 1 with intervals over seeds (default: --seed only)",
    )
    p.add_argument(
        "--comments-per-render",
        type=int,
        default=d.comments_per_render,
        help="interpretations per rendering (more: more training rows, longer)",
    )
    p.add_argument(
        "--tagger-preset",
        default=d.tagger_preset,
        help="tiny | mini | demo | demo-chroma | demo-key | small | reference",
    )
    p.add_argument("--tagger-epochs", type=int, default=d.tagger_epochs)
    p.add_argument("--tagger-lr", type=float, default=d.tagger_lr)
    p.add_argument(
        "--tagger-chroma-rotation",
        type=float,
        default=d.tagger_chroma_rotation,
        metavar="P",
        help="share of the tagger's crops whose chroma rows and key tags roll (recap tagger train "
        "--chroma-rotation)",
    )
    p.add_argument(
        "--pretrain-steps",
        type=int,
        default=d.pretrain_steps,
        help="text pretraining steps of the captioners' BART (0: start from scratch)",
    )
    p.add_argument(
        "--text-rows-per-text",
        type=int,
        default=d.text_rows_per_text,
        help="train the captioners on N text-only interpretations of each text the text "
        "pretraining reads outside the benchmarks too (recap bench text-rows; 0: off)",
    )
    p.add_argument(
        "--text-rows-recombined",
        type=int,
        default=d.text_rows_recombined,
        help="and N rows of texts recombined from each of them and the benchmark's train texts "
        "(recap bench text-rows --recombined)",
    )
    p.add_argument(
        "--text-rows-recombine-within",
        choices=("language", "theme"),
        default=d.text_rows_recombine_within,
        help="a recombined text's partner shares its language, or its language and theme",
    )
    p.add_argument(
        "--fusion-epochs",
        type=int,
        default=d.fusion_epochs,
        help="epochs of BART-fusion and RECAP (0: --epochs)",
    )
    p.add_argument(
        "--fusion-from-scratch",
        action="store_true",
        help="start BART-fusion and RECAP from the pretrained text model, as BART (default: from "
        "the BART captioner of their seed, which reads the text rows for them)",
    )
    p.add_argument(
        "--music-memory",
        action=argparse.BooleanOptionalAction,
        default=d.music_memory,
        help="BART-fusion and RECAP's decoders also attend to the mean music token (not in the "
        "papers; --no-music-memory: the papers' decoder)",
    )
    p.add_argument("--max-steps", type=int, default=0, help="cap optimizer steps per captioner")
    p.add_argument(
        "--lyrics-dropout",
        type=float,
        default=d.lyrics_dropout,
        help="share of training examples without lyrics (audio-only interpretations)",
    )
    p.add_argument("--beams", type=int, default=d.beams, help="beam width for evaluation")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument(
        "--no-repeat-ngram",
        type=int,
        default=d.no_repeat_ngram,
        help="block repeated n-grams when decoding (0, the demo's: off; the papers': 3)",
    )
    p.add_argument(
        "--free-quotes",
        action="store_true",
        help="decode quotes freely (default: a quote continues the song's lyrics verbatim)",
    )
    p.add_argument(
        "--free-words",
        action="store_true",
        help="let captions spell any word (default: the training captions' or the lyrics' words)",
    )
    p.add_argument("--no-meteor15", action="store_true", help="skip the Java METEOR 1.5")
    p.set_defaults(func=_handler)
