"""`recap demo-alignment`: the command line of `recap.evaluation.alignment`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from recap.cli.demo import add_demo_arguments, train_overrides
from recap.cli.flags import csv_list
from recap.utils import RecapError

COMMANDS = {
    "demo-alignment": "RECAP's alignment on a coupled benchmark: Table 1, the w sweep, retrieval"
}


def _arm(text: str | None) -> dict[str, Any]:
    """`--arm JSON`: a JSON object of TrainConfig fields ({} drops the arm); None: the default."""
    from recap.evaluation.alignment import ARM

    if text is None:
        return dict(ARM)
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise RecapError(f"--arm must be a JSON object of TrainConfig fields: {exc}") from exc
    if not isinstance(value, dict):
        raise RecapError(f"--arm must be a JSON object of TrainConfig fields, got {text!r}")
    return value


def _handler(args: argparse.Namespace) -> int:
    from recap.evaluation.alignment import AlignmentDemoConfig, run_alignment_demo

    if args.epochs < 1:
        raise RecapError("--epochs must be at least 1")
    cfg = AlignmentDemoConfig(
        train_overrides=train_overrides(args, AlignmentDemoConfig()),
        source=args.source,
        out=args.out,
        limit=args.limit,
        workers=args.workers,
        coupling=args.coupling,
        couple_by=args.couple_by,
        seeds=csv_list(args.seeds, int),
        weights=csv_list(args.weights, float),
        tagger=args.tagger,
        size=args.size,
        epochs=args.epochs,
        align_loss=args.align_loss,
        arm=_arm(args.arm),
        jobs=args.jobs,
        threads=args.threads,
        pretrain_steps=args.pretrain_steps,
    )
    run_alignment_demo(cfg)
    return 0


def register(subparsers: Any) -> None:
    from recap.evaluation import alignment
    from recap.evaluation.alignment import AlignmentDemoConfig

    d = AlignmentDemoConfig()
    p = subparsers.add_parser(
        "demo-alignment",
        help=COMMANDS["demo-alignment"],
        description=alignment.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_demo_arguments(p, d)
    p.add_argument("--seeds", default=",".join(map(str, d.seeds)), help="training seeds")
    p.add_argument(
        "--weights", default=",".join(f"{w:g}" for w in d.weights), help="alignment weights w"
    )
    p.add_argument("--tagger", default=None, help="reuse this trained tagger folder")
    p.add_argument(
        "--align-loss",
        choices=("cosine", "infonce"),
        default=None,
        help="alignment loss (default: the preset's, cosine as the paper's eq. 1)",
    )
    p.add_argument(
        "--arm",
        default=None,
        metavar="JSON",
        help="the arm beyond the paper trained beside RECAP: TrainConfig fields as a JSON "
        f"object ('{{}}': none; default {json.dumps(d.arm)})",
    )
    p.add_argument(
        "--pretrain-steps",
        type=int,
        default=d.pretrain_steps,
        help="text pretraining steps before the captioners, all of which start from it (0: from "
        "scratch, as measured; the val/test works of the coupled build are never read)",
    )
    p.add_argument("--jobs", type=int, default=d.jobs, help="captioners trained at once")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads per training")
    p.set_defaults(func=_handler)
