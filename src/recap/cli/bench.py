"""`recap bench build`, `recap bench text-rows` and `recap bench probe`."""

from __future__ import annotations

import argparse
from typing import Any

from recap.utils import RecapError

COMMANDS = {"bench": "the rendered-songs benchmark (build, text-rows, probe)"}


def register(subparsers: Any) -> None:
    from recap.bench.coupling import COUPLE_BY

    bench = subparsers.add_parser("bench", help=COMMANDS["bench"])
    sub = bench.add_subparsers(dest="bench_command", required=True, metavar="SUBCOMMAND")

    b = sub.add_parser("build", help="render scores with lyrics into a Song Interpretation dataset")
    b.add_argument("--source", default="music21", help="music21 | openscore-lieder | DIR of scores")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--renders-per-song", type=int, default=2, help="renderings of each score")
    b.add_argument("--comments-per-render", type=int, default=4, help="interpretations each")
    b.add_argument("--limit", type=int, default=None, help="use only the first N scores")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--soundfont", default=None, help="General MIDI .sf2 (default: FluidR3_GM)")
    b.add_argument("--workers", type=int, default=2, help="worker processes")
    b.add_argument("--seconds", type=float, default=30.0, help="clip length")
    b.add_argument("--polyphony", type=int, default=32, help="FluidSynth voices at once")
    b.add_argument(
        "--parser",
        choices=("auto", "fast", "music21"),
        default="auto",
        help="score reader: auto = MusicXML by recap's reader, other formats by music21",
    )
    b.add_argument(
        "--coupling",
        type=float,
        default=0.0,
        metavar="P",
        help="share of renderings whose instruments, tempo and key follow the lyrics' theme "
        "(0: independent, as before; docs/benchmark.md)",
    )
    b.add_argument(
        "--couple-by",
        choices=COUPLE_BY,
        default="meaning",
        help="what coupled renderings follow: the lyrics' theme and colour (meaning) or their "
        "language (a correspondence a reader of a few hundred texts learns; docs/benchmark.md)",
    )
    b.add_argument(
        "--key-seconds",
        type=float,
        default=15.0,
        metavar="S",
        help="the key and mode stated are those of the notes in the first S seconds, what a "
        "15 s music encoder hears (0: the whole score's key, as builds before this option)",
    )
    b.set_defaults(func=_build)

    t = sub.add_parser(
        "text-rows",
        help="interpretations of texts without audio: more lyrics to learn reading from "
        "(recap train --text-rows)",
    )
    t.add_argument("--out", required=True, help="output JSONL file")
    t.add_argument(
        "--exclude", nargs="+", required=True, metavar="BENCH",
        help="benchmarks trained or evaluated on: their val/test texts and rendered works are "
        "never used",
    )  # fmt: skip
    t.add_argument("--source", nargs="*", default=[], help="music21 | openscore-lieder | DIR")
    t.add_argument(
        "--text", nargs="*", default=[], help="text files (one text per blank-line block)"
    )
    t.add_argument("--per-text", type=int, default=2, help="interpretations of each text")
    t.add_argument(
        "--recombined", type=int, default=0, metavar="N",
        help="and N texts recombined from each text and each train text of the --exclude "
        "benchmarks (its sentences shuffled with another text's of its language), one "
        "interpretation each",
    )  # fmt: skip
    t.add_argument(
        "--recombine-within", choices=("language", "theme"), default="language",
        help="draw a text's partner among the texts of its language, or of its language and "
        "theme (keeps the theme a recombined text states)",
    )  # fmt: skip
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--workers", type=int, default=2, help="worker processes reading scores")
    t.set_defaults(func=_text_rows)

    p = sub.add_parser("probe", help="check each slot is carried by the modality it should be")
    p.add_argument("data_dir", help="a folder written by `recap bench build`")
    p.add_argument("--out", default=None, help="JSON report (default: DATA_DIR/probe.json)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=15.0, help="audio read per clip")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--lyrics-only", action="store_true", help="skip the audio features (the slow part)"
    )
    p.add_argument(
        "--no-notes", action="store_true",
        help="skip reading the key and mode from the excerpts' notes (needs the scores)",
    )  # fmt: skip
    p.set_defaults(func=_probe)


def _build(args: argparse.Namespace) -> int:
    from recap.bench.build import BuildConfig, build_benchmark

    if args.renders_per_song < 1 or args.comments_per_render < 1:
        raise RecapError("--renders-per-song and --comments-per-render must be at least 1")
    cfg = BuildConfig(
        source=args.source,
        out=args.out,
        renders_per_song=args.renders_per_song,
        comments_per_render=args.comments_per_render,
        limit=args.limit,
        seed=args.seed,
        soundfont=args.soundfont,
        workers=args.workers,
        seconds=args.seconds,
        parser=args.parser,
        polyphony=args.polyphony,
        coupling=args.coupling,
        couple_by=args.couple_by,
        key_seconds=args.key_seconds,
    )
    res = build_benchmark(cfg)
    coupled = f", coupling {cfg.coupling:g} by {cfg.couple_by}" if cfg.coupling else ""
    print(
        f"wrote {res.rows} interpretations of {res.songs} renderings ({res.works} works) to "
        f"{res.out} in {res.seconds:.1f} s ({res.renders_per_second:.1f} renderings/s){coupled}"
    )
    for item in res.skipped.items:
        print(f"  skipped {item['item']}: {item['reason']}")
    print(res.skipped.summary() + f" ({res.out / 'skipped.json'})")
    return 0


def _text_rows(args: argparse.Namespace) -> int:
    from recap.bench.text_rows import build_text_rows, read_texts

    if not args.source and not args.text:
        raise RecapError("give --source and/or --text: where the texts come from")
    if args.per_text < 1 or args.recombined < 0:
        raise RecapError("--per-text must be at least 1 and --recombined at least 0")
    docs = read_texts(args.source, args.text, args.workers)
    try:
        n, report = build_text_rows(
            args.out, args.exclude, docs, args.per_text, args.seed, args.recombined,
            args.recombine_within,
        )  # fmt: skip
    except ValueError as exc:
        raise RecapError(str(exc)) from exc
    print(f"wrote {n} text rows to {args.out}; {report.summary()}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    from recap.bench.probe import format_table, run_probe

    report = run_probe(args.data_dir, out=args.out, folds=args.folds, seconds=args.seconds,
                       workers=args.workers, audio=not args.lyrics_only,
                       notes=not args.no_notes)  # fmt: skip
    print(format_table(report))
    return 0
