"""`recap caption`: the command line of `recap.inference.captioner`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from recap.cli.flags import add_decode_arguments, decode_from_args
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
    p.add_argument("--lyrics", help="lyrics text file (single audio file only)")
    p.add_argument("--out", help="output file (default: stdout)")
    p.add_argument(
        "--format",
        choices=("text", "jsonl", "csv"),
        help="default: from --out, else text for one song, jsonl for many",
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument(
        "--encoder",
        default=None,
        help="the music encoder (e.g. hf:<hub name or folder>) of a model saved without one",
    )
    add_decode_arguments(p, seed_aliases=("--seed",))
    p.set_defaults(func=_cmd_caption)


def _cmd_caption(args: argparse.Namespace) -> int:
    from recap.inference.captioner import caption_files

    results, skipped = caption_files(
        args.source,
        args.model,
        lyrics=args.lyrics,
        out=args.out,
        fmt=args.format,
        device=args.device,
        decode=decode_from_args(args),
        encoder=args.encoder,
    )
    failed = sum(r.error is not None for r in results)  # the report also holds manifest rows
    print(
        f"captioned {len(results) - failed}/{len(results)} song(s); {skipped.summary()}",
        file=sys.stderr,
    )
    if failed == len(results):
        raise RecapError(f"every item failed; first error: {results[0].error}")
    return 0
