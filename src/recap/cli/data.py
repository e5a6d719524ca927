"""`recap data`: the command line of `recap.data.songs`."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

COMMANDS = {"data": "inspect Song Interpretation datasets"}


def format_stats(stats: dict[str, Any]) -> str:
    out = io.StringIO()
    print(f"dataset: {stats['path']}", file=out)
    print(f"songs: {stats['songs']}   interpretations: {stats['interpretations']}", file=out)
    print("splits: " + ", ".join(f"{k} {v}" for k, v in sorted(stats["splits"].items())), file=out)
    print("variants: " + ", ".join(f"{k} {v}" for k, v in stats["variants"].items()), file=out)
    for key in ("lyrics_tokens", "comment_tokens"):
        pct = " ".join(f"{k}={v}" for k, v in stats[key].items())
        print(f"{key.replace('_', ' ')} (whitespace tokens): {pct}", file=out)
    if "audio" in stats:
        a = stats["audio"]
        print(
            f"audio: found {a['found']}, missing {a['missing']}, unreadable {a['unreadable']}",
            file=out,
        )
        for sid, why in a["unreadable_files"].items():
            print(f"  unreadable {sid}: {why}", file=out)
    print(f"skipped rows: {stats['skipped_rows']}", file=out)
    if not stats["splits"].get("test"):
        has_split = set(stats["splits"]) != {"none"}
        from recap.data.songs import no_test_warning

        print(f"warning: {no_test_warning(Path(stats['path']), has_split)}", file=out)
    return out.getvalue()


def _stats_command(args: argparse.Namespace) -> int:
    from recap.data.stats import dataset_stats

    stats, report = dataset_stats(args.path, check_audio=not args.no_audio, workers=args.workers)
    if args.json:
        print(json.dumps(stats, indent=2, ensure_ascii=False))
    else:
        print(format_stats(stats), end="")
    for item in report.items[:10]:
        print(f"  skipped {item['item']}: {item['reason']}")
    if args.report:
        report.write(args.report)
        print(f"skip report: {args.report}")
    print(report.summary())
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("data", help=COMMANDS["data"])
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    stats = sub.add_parser(
        "stats", help="songs, interpretations, variants, lengths and audio of a dataset"
    )
    stats.add_argument("path", help="dataset folder, or one JSON/JSONL/CSV/pickle file")
    stats.add_argument("--no-audio", action="store_true", help="skip the audio check")
    stats.add_argument("--workers", type=int, default=None, help="audio check threads")
    stats.add_argument("--json", action="store_true", help="print the stats as JSON")
    stats.add_argument("--report", default=None, help="write the skipped rows here (JSON)")
    stats.set_defaults(func=_stats_command)
