"""`recap diagnose`: the command line of `recap.evaluation.diagnose`."""

from __future__ import annotations

import argparse
import json
from typing import Any

COMMANDS = {
    "diagnose": "does a captioner read its lyrics and hear its audio? (input dependence, loss gaps)"
}


def _handler(args: argparse.Namespace) -> int:
    from recap.evaluation.diagnose import diagnose, format_diagnosis

    result = diagnose(args.model, args.data, args.split, args.limit, args.encoder, args.seed)
    print(format_diagnosis(result))
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def register(subparsers: Any) -> None:
    from recap.evaluation import diagnose

    p = subparsers.add_parser(
        "diagnose",
        help=COMMANDS["diagnose"],
        description=diagnose.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="a RUN folder or a model folder")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--limit", type=int, default=128, help="songs to use (0: all)")
    p.add_argument("--encoder", default=None, help="music encoder (default: the run's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the song pairing")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    p.set_defaults(func=_handler)
