"""`recap caption`: the command line of `recap.inference.caption_job`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from recap.cli.flags import add_decode_arguments, add_int8_argument, decode_from_args
from recap.utils import RecapError

COMMANDS = {"caption": "interpret songs from audio + lyrics"}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "caption",
        help=COMMANDS["caption"],
        description="Caption an audio file (with --lyrics or <stem>.txt), a folder of audio "
        "files with <stem>.txt lyrics, or a CSV/JSONL manifest (audio, lyrics|lyrics_path, id). "
        "Bad items are reported per item; the exit code is non-zero only if every item failed.",
    )
    p.add_argument("source", help="audio file, folder or manifest")
    p.add_argument("--model", required=True, help="model folder or training RUN folder")
    p.add_argument(
        "--lyrics", help="lyrics text file (single audio file only); none: audio-only caption"
    )
    p.add_argument("--lyrics-text", help="the lyrics themselves, as text (single audio file only)")
    p.add_argument("--out", help="output file (default: stdout)")
    p.add_argument(
        "--format",
        choices=("text", "jsonl", "csv"),
        help="default: from --out, else text for one song, jsonl for many",
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    add_int8_argument(p)
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar on stderr"
    )
    p.add_argument(
        "--encoder",
        default=None,
        help="the music encoder (e.g. hf:<hub name or folder>) of a model saved without one",
    )
    g = p.add_argument_group("listening")
    g.add_argument(
        "--windows",
        type=int,
        default=None,
        help="hear up to N windows of 15 s per song (default: the whole song, up to 12 windows "
        "= 3 minutes, for a model trained on several windows; else the count it was trained "
        "on, 1 for the paper's first 15 s)",
    )
    g.add_argument(
        "--hop", type=float, default=None, help="seconds between window starts (default 15)"
    )
    add_decode_arguments(p, seed_aliases=("--seed",))
    p.set_defaults(func=_cmd_caption)


def _cmd_caption(args: argparse.Namespace) -> int:
    from recap.inference.caption_job import caption_files, heard_summary
    from recap.inference.captioner import Captioner

    if args.windows is not None and args.windows < 1:
        raise RecapError("--windows must be at least 1")
    captioner = Captioner.from_pretrained(
        args.model,
        device=args.device,
        encoder=args.encoder,
        windows=args.windows,
        hop=args.hop,
        int8=args.int8,
    )
    results, skipped = caption_files(
        args.source,
        captioner,
        lyrics=args.lyrics,
        out=args.out,
        fmt=args.format,
        decode=decode_from_args(args),
        progress=args.progress,
        lyrics_text=args.lyrics_text,
    )
    failed = sum(r.error is not None for r in results)  # the report also holds manifest rows
    heard = heard_summary(results, captioner.trained_windows, explicit=args.windows is not None)
    print(
        f"captioned {len(results) - failed}/{len(results)} song(s){heard}; {skipped.summary()}",
        file=sys.stderr,
    )
    if failed == len(results):
        raise RecapError(f"every item failed; first error: {results[0].error}")
    return 0
