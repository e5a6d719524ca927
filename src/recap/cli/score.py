"""`recap score`: the command line of `recap.evaluation.score`."""

from __future__ import annotations

import argparse
from typing import Any

from recap.cli.flags import add_bootstrap_argument

COMMANDS = {"score": "score any captioner's captions of a split (paper and caption metric sets)"}


def _handler(args: argparse.Namespace) -> int:
    from recap.evaluation.score import format_scores, score_predictions

    result = score_predictions(
        args.predictions,
        args.data,
        split=args.split,
        variant=args.variant,
        meteor15=not args.no_meteor15,
        bootstrap=args.bootstrap,
        allow_missing=args.allow_missing,
        out=args.out,
    )
    print(format_scores(result))
    return 0


def register(subparsers: Any) -> None:
    from recap.evaluation import score

    p = subparsers.add_parser(
        "score",
        help=COMMANDS["score"],
        description=score.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("predictions", help="CSV or JSONL: song_id (or music4all_id) + prediction")
    p.add_argument("--data", required=True, help="dataset folder (as for recap evaluate)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--variant", default="full", help="for --split train/val (test is shared)")
    p.add_argument("--no-meteor15", action="store_true", help="skip the Java METEOR 1.5")
    add_bootstrap_argument(p)
    p.add_argument(
        "--allow-missing", action="store_true", help="score the songs that have a caption"
    )
    p.add_argument("--out", default=None, help="write the scores here (JSON)")
    p.set_defaults(func=_handler)
