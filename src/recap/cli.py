"""The `recap` command line: one entry point, one subcommand per job.

Each command module exposes `register(subparsers)`, which adds its parser(s) and sets
`func=callable(args) -> int | None` as the parser default.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from recap.utils import RecapError

COMMAND_MODULES = (
    "recap.data.songs",  # data stats
    "recap.data.cache",  # precompute
    "recap.bench.cli",  # bench build | probe
    "recap.training.tagger",  # tagger train
    "recap.training.train",  # train
    "recap.training.pretrain_text",  # pretrain-text
    "recap.evaluation.evaluate",  # evaluate
    "recap.evaluation.diagnose",  # diagnose
    "recap.evaluation.score",  # score
    "recap.evaluation.experiment",  # experiment table1 | sweep
    "recap.demo",  # demo
    "recap.evaluation.alignment",  # demo-alignment
    "recap.inference.captioner",  # caption
    "recap.inference.index",  # index build | eval, search
    "recap.inference.serve",  # serve
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recap", description="RECAP: interpret songs from their audio and lyrics."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Libraries that narrate their own loading at INFO drown the command's output.
    for noisy in ("faiss", "numba", "matplotlib", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        rc = args.func(args)
    except RecapError as err:
        print(f"recap {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
