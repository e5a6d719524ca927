"""`recap precompute`: the command line of `recap.data.cache`."""

from __future__ import annotations

import argparse
from typing import Any

from recap.utils import RecapError

COMMANDS = {"precompute": "fill the waveform / log-mel / embedding cache of a dataset"}


def _precompute_command(args: argparse.Namespace) -> int:
    if args.kind != "waveform" and not args.encoder:
        raise RecapError(f"--encoder is required for --kind {args.kind}")
    from recap.data.audio import AudioConfig
    from recap.data.cache import precompute

    offset: float | str = args.offset if args.offset == "centre" else float(args.offset)
    config = AudioConfig(duration=args.duration, offset=offset, windows=args.windows, hop=args.hop)
    store, report = precompute(
        args.data,
        args.encoder,
        audio_config=config,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        kind=args.kind,
        cache_dir=args.cache_dir,
    )
    print(f"cache: {store.root} ({len(store)} songs)")
    print(f"skipped: {len(report)} (report: {store.root / 'skipped.json'})")
    for item in report.items[:10]:
        print(f"  {item['item']}: {item['reason']}")
    return 0


def register(subparsers: Any) -> None:
    from recap.data.cache import KINDS

    parser = subparsers.add_parser("precompute", help=COMMANDS["precompute"])
    parser.add_argument("--data", required=True, help="dataset folder (with audios/)")
    parser.add_argument(
        "--encoder",
        default=None,
        help="music encoder: a CNNSA folder, checkpoint or preset, or hf:<hub name or folder> "
        "(a CLAP audio tower)",
    )
    parser.add_argument("--kind", choices=KINDS, default="embeddings")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (all cores)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--duration", type=float, default=15.0, help="excerpt seconds")
    parser.add_argument("--offset", default="0", help="excerpt start in seconds, or 'centre'")
    parser.add_argument(
        "--windows", type=int, default=1, help="hear each song in up to N excerpts (whole songs)"
    )
    parser.add_argument(
        "--hop", type=float, default=None, help="seconds between window starts (default: duration)"
    )
    parser.add_argument("--cache-dir", default=None, help="default: DATA/cache")
    parser.set_defaults(func=_precompute_command)
