"""`recap experiment`: the command line of `recap.evaluation.experiment`."""

from __future__ import annotations

import argparse
from typing import Any

from recap.cli.flags import (
    add_bootstrap_argument,
    add_decode_arguments,
    csv_list,
    decode_from_args,
    parse_key_value,
)

COMMANDS = {"experiment": "the paper's Table 1 and Figure 2"}


def config_from_args(args: argparse.Namespace) -> Any:
    """The ExperimentConfig of parsed `recap experiment` flags."""
    from recap.evaluation.experiment import ExperimentConfig
    from recap.inference.generate import PAPER_SAMPLING_SEEDS

    # Without --sample-seeds, sampling pairs each model with its own training seed (the authors').
    paired = args.sample_seeds is None
    if paired:  # decode.seeds is then only a placeholder: each run gets its own seed
        paper_seeds = ",".join(str(s) for s in PAPER_SAMPLING_SEEDS)
        args = argparse.Namespace(**{**vars(args), "sample_seeds": paper_seeds})
    decode = decode_from_args(args)
    return ExperimentConfig(
        data=args.data,
        out=args.out,
        size=args.size,
        encoder=args.encoder,
        bart=args.bart,
        variants=csv_list(args.variants) if hasattr(args, "variants") else (args.variant,),
        seeds=csv_list(args.seeds, int) if args.seeds else None,
        train_overrides=dict(args.train),
        decode=decode,
        paired_sampling=paired,
        meteor15=not args.no_meteor15,
        fusion_from_bart=args.fusion_from_bart,
        bootstrap=args.bootstrap,
        device=args.device,
    )


def _table1_handler(args: argparse.Namespace) -> int:
    from recap.evaluation.experiment import run_table1

    cfg = config_from_args(args)
    result = run_table1(cfg)
    print(result["markdown"])
    print(f"written: {', '.join(result['paths'].values())}")
    return 0


def _sweep_handler(args: argparse.Namespace) -> int:
    from recap.evaluation.experiment import run_sweep

    cfg = config_from_args(args)
    weights = csv_list(args.weights, float)
    result = run_sweep(cfg, weights, variant=args.variant)
    for p in result["points"]:
        print(
            f"w={p['align_weight']:<6g} {p['metric']} {100 * p['mean']:.2f} "
            f"[{100 * p['low']:.2f}, {100 * p['high']:.2f}] seeds {p['seeds']}"
        )
    print(f"written: {result['png']}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--out", default="runs/experiments", help="root of the runs and outputs")
    p.add_argument("--size", default="small", help="model size: tiny | small | paper")
    p.add_argument(
        "--encoder", default=None, help="music encoder (tagger folder or CNNSA checkpoint)"
    )
    p.add_argument("--bart", default=None, help="pretrained BART (e.g. facebook/bart-base)")
    p.add_argument(
        "--fusion-from-bart",
        action="store_true",
        help="start BART-fusion and RECAP from the BART captioner of their seed (recap train "
        "--init): its text model and copy head; the fusion starts fresh",
    )
    p.add_argument(
        "--seeds",
        default=None,
        help="training seeds, comma-separated (default 0; with --sample the authors' "
        "2022,2021,2020, each model sampled once with its own seed)",
    )
    p.add_argument(
        "--train",
        action="append",
        type=parse_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="TrainConfig override (repeatable), e.g. epochs=5",
    )
    add_decode_arguments(
        p,
        seeds_help="with --sample: sample EVERY model with each of these seeds (metrics averaged) "
        "instead of the authors' protocol (each model once, with its own training seed)",
    )
    # None = paired: each model sampled with its own training seed; a list overrides that.
    p.set_defaults(sample_seeds=None)
    p.add_argument("--no-meteor15", action="store_true", help="skip the Java METEOR 1.5")
    add_bootstrap_argument(p)
    p.add_argument("--device", default=None, help="evaluation device (default: cuda if available)")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("experiment", help=COMMANDS["experiment"])
    sub = p.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    t = sub.add_parser("table1", help="train + evaluate BART, BART-fusion, RECAP; print Table 1")
    _common(t)
    t.add_argument("--variants", default="full,positive", help="training variants")
    t.set_defaults(func=_table1_handler)
    s = sub.add_parser("sweep", help="Figure 2: ROUGE-L against the alignment weight w")
    _common(s)
    s.add_argument("--weights", default="0,0.005,0.01,0.02,0.05,0.1", help="values of w")
    s.add_argument("--variant", default="full", help="training variant")
    s.set_defaults(func=_sweep_handler)
