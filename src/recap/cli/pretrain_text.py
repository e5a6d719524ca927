"""`recap pretrain-text`: the command line of `recap.training.pretrain_text`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from recap.cli.flags import add_dataclass_arguments, dataclass_from_args

COMMANDS = {
    "pretrain-text": "pretrain BART on lyrics by denoising (span infilling, sentence "
    "permutation, copies)"
}
# Fields given as several values: `--source music21 DIR` or `--source music21 --source DIR`.
LIST_FIELDS = {"source": str, "text": str, "exclude_splits_of": str, "curriculum": int}


def _handler(args: argparse.Namespace) -> int:
    from recap.training.pretrain_text import (
        METRICS_NAME,
        PretrainConfig,
        format_metrics,
        pretrain_text,
    )

    cfg = dataclass_from_args(PretrainConfig, args)
    out = pretrain_text(cfg)
    metrics = json.loads((out / METRICS_NAME).read_text("utf-8"))
    print(f"{out}: BART pretrained on lyrics ({metrics['steps']} steps)")
    print(format_metrics(metrics))
    return 0


def register(subparsers: Any) -> None:
    from recap.training import pretrain_text
    from recap.training.config import PretrainConfig

    parser = subparsers.add_parser(
        "pretrain-text",
        help=COMMANDS["pretrain-text"],
        description=pretrain_text.__doc__.split("\n\n")[0],
    )
    add_dataclass_arguments(parser, PretrainConfig, skip=tuple(LIST_FIELDS))
    defaults = PretrainConfig()
    for name, kind in LIST_FIELDS.items():
        help_text = PretrainConfig.__dataclass_fields__[name].metadata["help"]
        parser.add_argument(
            "--" + name.replace("_", "-"), dest=name, type=kind, nargs="+", action="extend",
            default=None, help=f"{help_text} (default: {getattr(defaults, name)})",
        )  # fmt: skip
    parser.set_defaults(func=_handler)
