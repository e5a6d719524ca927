"""The `recap` command line: one entry point, one subcommand per job.

The argparse code lives here, apart from the library: each module of `recap.cli` names its
commands in `COMMANDS` (name → one-line help) and adds their parsers in `register(subparsers)`,
setting `func=callable(args) -> int | None`. Those modules import only the standard library at
the top; the library (and with it torch) is imported by `register` and the handlers. Only the
command being run is registered in full, so `recap --help` lists every command without
importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Iterable, Sequence
from types import ModuleType

from recap.utils import RecapError

COMMAND_MODULES = (
    "recap.cli.data",  # data stats
    "recap.cli.precompute",  # precompute
    "recap.cli.bench",  # bench build | probe
    "recap.cli.tagger",  # tagger train
    "recap.cli.train",  # train
    "recap.cli.pretrain_text",  # pretrain-text
    "recap.cli.evaluate",  # evaluate
    "recap.cli.diagnose",  # diagnose
    "recap.cli.score",  # score
    "recap.cli.experiment",  # experiment table1 | sweep
    "recap.cli.demo",  # demo
    "recap.cli.caption",  # caption
    "recap.cli.index",  # index build | eval, search
    "recap.cli.serve",  # serve
)


def _modules() -> list[ModuleType]:
    return [importlib.import_module(name) for name in COMMAND_MODULES]


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The `recap` parser. `commands`: the commands whose arguments are built (their modules'
    `register`); the others are only listed with their help. None: every command in full."""
    wanted = None if commands is None else set(commands)
    parser = argparse.ArgumentParser(
        prog="recap", description="RECAP: interpret songs from their audio and lyrics."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _modules():
        if wanted is None or wanted & set(module.COMMANDS):
            module.register(sub)
        else:
            for name, help_text in module.COMMANDS.items():
                sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The command named in `argv`: its first word that is not an option."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(argv)
    parser = build_parser([command] if command is not None else [])
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
