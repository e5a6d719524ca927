"""`recap serve`: the command line of `recap.inference.serve`."""

from __future__ import annotations

import argparse
from typing import Any

from recap.cli.flags import add_int8_argument

COMMANDS = {"serve": "HTTP API + web page for captioning and search"}


def register(subparsers: Any) -> None:
    from recap.inference.serve import ServeSettings

    p = subparsers.add_parser("serve", help=COMMANDS["serve"])
    p.add_argument("--model", required=True, help="model folder or training RUN folder")
    p.add_argument("--index", default=None, help="index folder from `recap index build`")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    defaults = ServeSettings()
    p.add_argument("--max-upload-mb", type=float, default=defaults.max_upload_mb)
    p.add_argument("--max-duration-s", type=float, default=defaults.max_duration_s)
    p.add_argument("--max-lyrics-chars", type=int, default=defaults.max_lyrics_chars)
    p.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size,
                   help="caption requests per model call (1: no batching)")  # fmt: skip
    p.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms,
                   help="how long the first queued request waits for others")  # fmt: skip
    p.add_argument("--max-queue", type=int, default=defaults.max_queue,
                   help="caption requests waiting beyond this get 503 busy")  # fmt: skip
    p.add_argument("--device", default=None)
    add_int8_argument(p)
    p.add_argument(
        "--windows",
        type=int,
        default=None,
        help="hear up to N windows of 15 s per song (default: 1 for a model trained on one "
        "window, the whole song up to 12 for a model trained on several)",
    )
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from recap.inference.serve import ServeSettings, load_app

    settings = ServeSettings(
        max_upload_mb=args.max_upload_mb,
        max_duration_s=args.max_duration_s,
        max_lyrics_chars=args.max_lyrics_chars,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
    )
    app = load_app(
        args.model, args.index, settings, args.device, windows=args.windows, int8=args.int8
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
