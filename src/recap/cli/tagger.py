"""`recap tagger train`: the command line of `recap.training.tagger`."""

from __future__ import annotations

import argparse
from typing import Any

from recap.cli.flags import add_dataclass_arguments, dataclass_from_args

COMMANDS = {"tagger": "music-encoder (CNNSA) pretraining"}


def _handler(args: argparse.Namespace) -> int:
    from recap.training.tagger import TaggerConfig, format_metrics, train_tagger

    cfg = dataclass_from_args(TaggerConfig, args)
    metrics = train_tagger(cfg)
    print(format_metrics(metrics))
    print(f"encoder saved to {cfg.out} (pass --encoder {cfg.out} to recap train)")
    return 0


def register(subparsers: Any) -> None:
    from recap.training.tagger import TaggerConfig

    parser = subparsers.add_parser("tagger", help=COMMANDS["tagger"])
    sub = parser.add_subparsers(dest="tagger_command", required=True, metavar="COMMAND")
    train_parser = sub.add_parser(
        "train", help="train CNNSA on the benchmark's audio slots as tags (ROC-AUC on test)"
    )
    add_dataclass_arguments(train_parser, TaggerConfig)
    # --encoder, as recap precompute/train spell it: the CNNSA size here (an hf: encoder is
    # refused with a pointer to those commands, which use it frozen).
    train_parser.add_argument(
        "--encoder", dest="preset", default=None, help="same as --preset (CNNSA sizes only)"
    )
    train_parser.set_defaults(func=_handler)
