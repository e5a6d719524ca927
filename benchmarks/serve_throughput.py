"""Throughput and latency of `recap serve` with 1, 8 and 32 concurrent clients, batching on/off.

    .venv/bin/python benchmarks/serve_throughput.py --threads 2 --batch 8

Builds the `small` captioner with random weights (seed 0; speed does not depend on the values)
and a local tokenizer, saves it to a temporary folder, and starts the real server
(`python -m recap serve`, uvicorn, 127.0.0.1) twice: with `--max-batch-size 1` (batching off:
one request per model call, as before batching existed) and with `--max-batch-size BATCH`. For
each, `--clients` concurrency levels each send a fixed number of POST /caption requests (a 15 s
16 kHz WAV upload + ~120-word lyrics, `--beams`, `--tokens` new tokens) from that many client
threads in this process, after warm-up requests. Reported per level: requests/s over the wall
time, and latency p50/p95 (upload to answer, as the client sees it).
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    ap.add_argument("--batch", type=int, default=8, help="max batch size when batching is on")
    ap.add_argument("--wait-ms", type=float, default=10.0, help="max wait when batching is on")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--requests", type=int, default=4, help="requests per client thread")
    ap.add_argument("--beams", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    clients = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp) / "model")
        upload, lyrics = make_request()
        results: dict[str, Any] = {"threads": args.threads, "load_average": os.getloadavg()[0]}
        for label, batch, wait in (("off", 1, 0.0), ("on", args.batch, args.wait_ms)):
            with Server(model_dir, batch, wait, args.threads) as url:
                rows = []
                for c in clients:
                    rows.append(load(url, c, args.requests * c, upload, lyrics, args))
                results[f"batching_{label}"] = {"max_batch_size": batch, "max_wait_ms": wait,
                                                "rows": rows}  # fmt: skip
    print(format_table(results, args))
    if args.json_out:
        from recap.utils import atomic_write_json

        atomic_write_json(args.json_out, results)
    return 0


def build_model(folder: Path) -> Path:
    import torch

    from recap.models.config import RecapConfig
    from recap.models.model import RecapModel
    from recap.models.tokenizer import train_bpe_tokenizer

    torch.manual_seed(0)
    _, texts = make_lyrics(200)
    tokenizer = train_bpe_tokenizer(texts, vocab_size=2048)
    model = RecapModel(RecapConfig.preset("recap", "small", with_music_encoder=True)).eval()
    model.save_pretrained(folder, tokenizer=tokenizer)
    return folder


def make_lyrics(n: int) -> tuple[Any, list[str]]:
    import numpy as np

    rng = np.random.default_rng(0)
    words = (
        "night cold river light heart road home rain fire dream city sea love time "
        "morning dance storm garden mother town snow sky song alone again"
    ).split()
    return rng, [
        "\n".join(" ".join(rng.choice(words, size=8)) for _ in range(15)) for _ in range(n)
    ]


def make_request() -> tuple[bytes, str]:
    """A 15 s, 16 kHz mono WAV (a chord) and ~120 words of lyrics."""
    import numpy as np
    import soundfile as sf

    t = np.arange(15 * 16_000) / 16_000
    wave = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 330.0, 440.0)) / 6
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), 16_000, format="WAV")
    return buf.getvalue(), make_lyrics(1)[1][0]


class Server:
    """`python -m recap serve` in a subprocess on a free port, stopped on exit."""

    def __init__(self, model: Path, batch: int, wait_ms: float, threads: int) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.args = [sys.executable, "-m", "recap", "serve", "--model", str(model),
                     "--port", str(self.port), "--max-batch-size", str(batch),
                     "--max-wait-ms", str(wait_ms), "--device", "cpu"]  # fmt: skip
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads)}

    def __enter__(self) -> str:
        import httpx

        self.proc = subprocess.Popen(
            self.args, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                time.sleep(0.3)
        raise RuntimeError("the server did not start within 120 s")

    def __exit__(self, *exc: Any) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def load(url: str, clients: int, total: int, upload: bytes, lyrics: str, args) -> dict[str, Any]:
    import httpx

    data = {"lyrics": lyrics, "num_beams": str(args.beams), "max_new_tokens": str(args.tokens)}

    def one(client: httpx.Client) -> float:
        start = time.perf_counter()
        r = client.post(f"{url}/caption", files={"audio": ("song.wav", upload, "audio/wav")},
                        data=data)  # fmt: skip
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text}")
        return time.perf_counter() - start

    def worker(n: int) -> list[float]:
        with httpx.Client(timeout=600) as client:
            return [one(client) for _ in range(n)]

    worker(2)  # warm-up: first-call allocations, kernel selection
    per_client = [total // clients + (i < total % clients) for i in range(clients)]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        latencies = [x for part in pool.map(worker, per_client) for x in part]
    wall = time.perf_counter() - start
    latencies.sort()
    return {
        "clients": clients,
        "requests": total,
        "requests_per_s": total / wall,
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
    }


def format_table(r: dict[str, Any], args) -> str:
    off, on = r["batching_off"], r["batching_on"]
    lines = [
        f"small captioner (random weights), {args.beams} beam(s), {args.tokens} new tokens, "
        f"server threads {r['threads']}, load average at start {r['load_average']:.2f}",
        "",
        f"| clients | batching off: req/s | p50 s | p95 s | batching on (max {on['max_batch_size']}, "
        f"{on['max_wait_ms']:g} ms): req/s | p50 s | p95 s | × req/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a, b in zip(off["rows"], on["rows"]):
        lines.append(
            f"| {a['clients']} | {a['requests_per_s']:.2f} | {a['p50_s']:.2f} | {a['p95_s']:.2f} "
            f"| {b['requests_per_s']:.2f} | {b['p50_s']:.2f} | {b['p95_s']:.2f} "
            f"| {b['requests_per_s'] / a['requests_per_s']:.2f}× |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
