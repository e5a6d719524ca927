"""`recap train`: the command line of `recap.training.train`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from recap.cli.flags import add_dataclass_arguments, dataclass_from_args

COMMANDS = {
    "train": "train a captioner (bart | bart-fusion | recap); runs under accelerate launch too"
}


def add_config_arguments(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """`recap train`'s flags: one per TrainConfig field."""
    from recap.training.config import TrainConfig

    add_dataclass_arguments(parser, TrainConfig, skip)


def config_from_args(args: argparse.Namespace) -> Any:
    from recap.training.config import TrainConfig

    return dataclass_from_args(TrainConfig, args)


def _handler(args: argparse.Namespace) -> int:
    from recap.training.config import DONE_NAME
    from recap.training.train import train

    run = train(config_from_args(args))
    done = run / DONE_NAME
    if done.exists():
        result = json.loads(done.read_text())
        print(
            f"{run}: best {result['val_metric']} = {result['best_metric']} "
            f"(epoch {result['best_epoch']})"
        )
    else:
        print(f"{run}: paused at max_steps; continue with --resume")
    return 0


def register(subparsers: Any) -> None:
    from recap.training import train

    parser = subparsers.add_parser(
        "train", help=COMMANDS["train"], description=train.__doc__.split("\n\n")[0]
    )
    add_config_arguments(parser)
    parser.set_defaults(func=_handler)
