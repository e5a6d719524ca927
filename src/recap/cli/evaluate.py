"""`recap evaluate`: the command line of `recap.evaluation.evaluate`."""

from __future__ import annotations

import argparse
from typing import Any

from recap.cli.flags import add_bootstrap_argument, add_decode_arguments, decode_from_args

COMMANDS = {
    "evaluate": "caption a split and score it (paper and caption metric sets, attribute accuracy)"
}


def _handler(args: argparse.Namespace) -> int:
    from recap.data.audio import AudioConfig
    from recap.evaluation.evaluate import evaluate, format_summary

    result = evaluate(
        args.model,
        args.data,
        split=args.split,
        decode=decode_from_args(args),
        variant=args.variant,
        out_dir=args.out,
        meteor15=not args.no_meteor15,
        encoder=args.encoder,
        bootstrap=args.bootstrap,
        device=args.device,
        limit=args.limit,
        audio_config=None if args.windows is None else AudioConfig(windows=args.windows),
        without_lyrics=args.without_lyrics,
        grounding=not args.without_lyrics,
    )
    print(format_summary(result))
    return 0


def register(subparsers: Any) -> None:
    from recap.evaluation import evaluate

    p = subparsers.add_parser(
        "evaluate",
        help=COMMANDS["evaluate"],
        description=evaluate.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="a training RUN folder or a model folder")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--variant", default=None, help="for --split val (default: the run's)")
    add_decode_arguments(p, seed_aliases=("--seeds",))
    p.add_argument("--no-meteor15", action="store_true", help="skip the Java METEOR 1.5")
    p.add_argument("--encoder", default=None, help="music encoder (default: the run's)")
    add_bootstrap_argument(p)
    p.add_argument("--out", default=None, help="output folder (default RUN/eval/<split>-<tag>)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--limit", type=int, default=0, help="first N rows only (0: all)")
    p.add_argument(
        "--windows",
        type=int,
        default=None,
        help="hear N windows of 15 s per song (default: the count the model was trained on)",
    )
    p.add_argument(
        "--without-lyrics",
        action="store_true",
        help="caption from the audio alone (empty lyrics): what the audio carries",
    )
    p.set_defaults(func=_handler)
