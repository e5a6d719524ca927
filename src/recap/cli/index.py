"""`recap index`: the command line of `recap.inference.index` and `recap.inference.indexing`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from recap.utils import RecapError

COMMANDS = {
    "index": "build or evaluate an audio/lyrics search index",
    "search": "top-K lyrics for an audio file, or songs for lyrics",
}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("index", help=COMMANDS["index"])
    sub = p.add_subparsers(dest="index_command", required=True, metavar="ACTION")

    b = sub.add_parser("build", help="embed a catalogue into a FAISS index")
    b.add_argument("--model", required=True, help="model folder or training RUN folder")
    b.add_argument("--data", required=True, help="dataset folder, audio folder, or manifest")
    b.add_argument("--out", required=True, help="index folder to write")
    _add_index_settings(b)
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--device", default=None)
    b.set_defaults(func=_cmd_build)

    e = sub.add_parser("eval", help="recall@1/5/10 and MRR both ways on a split")
    e.add_argument("--index", required=True)
    e.add_argument("--split", default="test", help="split to evaluate, or 'all' (default: test)")
    e.add_argument("--json", dest="json_out", help="also write the metrics here")
    e.set_defaults(func=_cmd_eval)

    s = subparsers.add_parser("search", help=COMMANDS["search"])
    s.add_argument("--index", required=True)
    s.add_argument("--model", default=None, help="default: the model recorded in the index")
    q = s.add_mutually_exclusive_group(required=True)
    q.add_argument("--audio", help="audio file: find the lyrics that fit it")
    q.add_argument("--lyrics", help="lyrics text: find the songs that sound like it")
    q.add_argument("--lyrics-file", help="lyrics from a file")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.add_argument("--nprobe", type=int, default=None, help="IVF lists to visit")
    s.add_argument("--device", default=None)
    s.set_defaults(func=_cmd_search)


def _add_index_settings(p: argparse.ArgumentParser) -> None:
    from recap.inference.index import IVF_THRESHOLD, KINDS

    p.add_argument(
        "--kind", choices=KINDS, default="auto", help=f"auto: ivf from {IVF_THRESHOLD} songs"
    )
    p.add_argument("--nlist", type=int, default=None, help="IVF lists (default ~4·sqrt(N))")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists visited per query")


def _cmd_build(args: argparse.Namespace) -> int:
    from recap.inference.index import IndexSettings
    from recap.inference.indexing import build_index

    settings = IndexSettings(args.kind, args.nlist, args.nprobe)
    index, skipped = build_index(
        args.model, args.data, args.out, settings, args.batch_size, args.device
    )
    s = index.settings
    kind = s.kind if s.kind == "flat" else f"ivf (nlist {s.nlist}, nprobe {s.nprobe})"
    print(f"indexed {len(index)} song(s), {index.dim}-d, {kind} → {args.out}", file=sys.stderr)
    print(skipped.summary(), file=sys.stderr)
    return 0


def format_metrics(m: dict[str, Any]) -> str:
    lines = [f"split {m['split']}: {m['songs']} songs, {m['works']} distinct lyrics"]
    names = ["recall@1", "recall@5", "recall@10", "mrr"]
    lines.append(f"{'':18}" + "".join(f"{n:>11}" for n in names))
    for label, key in (
        ("audio → lyrics", "audio_to_lyrics"),
        ("lyrics → audio", "lyrics_to_audio"),
        ("random chance", "chance"),
    ):
        lines.append(f"{label:18}" + "".join(f"{m[key][n]:>11.3f}" for n in names))
    return "\n".join(lines)


def _cmd_eval(args: argparse.Namespace) -> int:
    from recap.inference.index import SongIndex
    from recap.utils import atomic_write_json

    metrics = SongIndex.load(args.index).evaluate(None if args.split == "all" else args.split)
    print(format_metrics(metrics))
    if args.json_out:
        atomic_write_json(args.json_out, metrics)
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from recap.inference.indexing import Searcher

    searcher = Searcher.load(args.index, args.model, args.device, nprobe=args.nprobe)
    if args.audio:
        hits, what = searcher.search_audio(args.audio, k=args.k), "lyrics"
    else:
        text = args.lyrics
        if args.lyrics_file:
            try:
                text = Path(args.lyrics_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise RecapError(f"cannot read lyrics file {args.lyrics_file}: {exc}") from exc
        if not text or not text.strip():
            raise RecapError("the lyrics query is empty")
        hits, what = searcher.search_lyrics(text, k=args.k), "songs"
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], ensure_ascii=False, indent=2))
    else:
        print(f"top {len(hits)} {what}:")
        for h in hits:
            print(f"{h.rank:>3}  {h.score:+.3f}  {h.song_id}  {h.first_line}")
    return 0
