"""Captioning and retrieval throughput on CPU: what `recap caption` / `recap serve` can sustain.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/caption_retrieval.py --threads 1

1. Captions per second for batch 1 and batch 16 with the `small` preset (untrained weights: the
   speed does not depend on them), through `recap.inference.generate.generate_ids` (music
   encoder on the 15 s waveform + fused BART encoder + decoding). Every caption is forced to
   exactly `--tokens` new tokens, so an untrained model's early </s> cannot flatter the figure.
   File decoding is not included (benchmarks/audio_pipeline.py measures it).
2. Retrieval on a synthetic catalogue of `--catalogue` unit vectors (256-d, drawn around 1,000
   random centres, so neighbourhoods exist as they do for real songs): queries per second for
   exact search (IndexFlatIP) and IVF at several nprobe — for a batch of queries and one query
   at a time, as the server sees them — and IVF's recall@10 against exact search.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from recap.inference.captioner import Captioner
from recap.inference.generate import generate_ids
from recap.inference.index import IndexSettings, make_faiss_index, normalize


def make_captioner(size: str, folder: Path) -> Captioner:
    from recap.models.config import RecapConfig
    from recap.models.model import RecapModel
    from recap.models.tokenizer import train_bpe_tokenizer

    config = RecapConfig.preset("recap", size, with_music_encoder=True)
    words = "love night river heart road dance song light rain home fire sea".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 40)) for _ in range(200)]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=config.vocab_size)
    model = RecapModel(config)
    model.save_pretrained(folder, tokenizer=tokenizer)
    return Captioner.from_pretrained(folder, device="cpu")


def bench_captions(captioner: Captioner, batch: int, tokens: int, beams: int, rounds: int) -> float:
    rng = np.random.default_rng(1)
    n = captioner.audio_config.n_samples
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for _ in range(batch)]
    lyrics = ["the river runs to the sea;and carries my heart away " * 6] * batch

    def run() -> None:
        enc = captioner.encode_lyrics(lyrics)
        wave = torch.from_numpy(np.stack(waves))  # (B, 240000)
        generate_ids(
            captioner.model,
            enc["input_ids"],
            enc["attention_mask"],
            waveform=wave,
            num_beams=beams,
            do_sample=False,
            min_new_tokens=tokens,
            max_new_tokens=tokens,
        )

    run()  # warm-up
    start = time.perf_counter()
    for _ in range(rounds):
        run()
    return batch * rounds / (time.perf_counter() - start)


def single_qps(index, q: np.ndarray, n: int = 200) -> float:
    """Queries per second one at a time, as a server sees them."""
    t0 = time.perf_counter()
    for row in q[:n]:
        index.search(row[None], 10)
    return min(n, len(q)) / (time.perf_counter() - t0)


def bench_retrieval(
    n: int, dim: int, queries: int, seed: int = 0
) -> list[tuple[str, float, float, float]]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    catalogue = normalize(
        centres[rng.integers(0, 1000, n)] + 0.8 * rng.standard_normal((n, dim)).astype(np.float32)
    )
    picks = rng.integers(0, n, queries)
    q = normalize(catalogue[picks] + 0.5 * rng.standard_normal((queries, dim)).astype(np.float32))

    rows = []
    t0 = time.perf_counter()
    flat = make_faiss_index(catalogue, IndexSettings("flat"))
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, exact = flat.search(q, 10)
    qps = queries / (time.perf_counter() - t0)
    rows.append(("flat (exact)", build, qps, single_qps(flat, q), 1.0))

    auto = IndexSettings("ivf").resolve(n)
    t0 = time.perf_counter()
    ivf = make_faiss_index(catalogue, IndexSettings("ivf", nlist=auto.nlist, nprobe=1))
    build = time.perf_counter() - t0
    for nprobe in sorted({1, 4, 16, auto.nprobe, 64, 128}):
        ivf.nprobe = nprobe
        t0 = time.perf_counter()
        _, found = ivf.search(q, 10)
        qps = queries / (time.perf_counter() - t0)
        recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(found, exact)])
        label = f"ivf nlist {auto.nlist} nprobe {nprobe}" + (
            " (default)" if nprobe == auto.nprobe else ""
        )
        rows.append((label, build, qps, single_qps(ivf, q), float(recall)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", default="small", choices=("tiny", "small", "paper"))
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per caption")
    ap.add_argument("--beams", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--catalogue", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-captions", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)

    if not args.skip_captions:
        with tempfile.TemporaryDirectory() as tmp:
            captioner = make_captioner(args.size, Path(tmp))
            print(
                f"captioning: preset {args.size}, {args.tokens} tokens, beams {args.beams}, {args.threads} thread(s)"
            )
            for batch in (1, 16):
                rate = bench_captions(captioner, batch, args.tokens, args.beams, args.rounds)
                print(f"  batch {batch:>2}: {rate:6.2f} captions/s")
    print(
        f"retrieval: {args.catalogue} x 256 catalogue, {args.queries} queries, {args.threads} thread(s)"
    )
    print(f"  {'index':34} {'build s':>8} {'q/s batch':>10} {'q/s single':>11} {'recall@10':>10}")
    for label, build, qps, single, recall in bench_retrieval(args.catalogue, 256, args.queries):
        print(f"  {label:34} {build:8.2f} {qps:10.0f} {single:11.0f} {recall:10.3f}")


if __name__ == "__main__":
    main()
