"""Captions per second of the `paper`-size captioner on a CPU: plain generate() against ours.

    .venv/bin/python benchmarks/cpu_caption.py --threads 2 --songs 16 --tokens 64

The `paper` preset (bart-base shape + one shared fusion block + projection, 143 M parameters,
plus the reference CNNSA for raw audio) is built from its config with random weights (seed 0):
no download, and speed does not depend on the weights' values. Every caption is forced to the
same length (min = max = `--tokens` new tokens), so both paths do the same decoding work; both
use the model's decoding defaults (beam search, 4 beams, no_repeat_ngram_size 3).

Same run, same inputs (`--songs` 15 s tone excerpts with ~120-word lyrics):

- plain: `RecapModel.generate()` — the fused encoder once, then Hugging Face's `generate()` —
  one song at a time, fp32. (HF already caches the encoder states and the decoder keys/values
  across steps, so "caching the encoder output" is in both paths.)
- ours: `Captioner.caption_waveforms` on batches of `--batch` songs, fp32 and with
  `Captioner(int8=True)` (int8 dynamic quantization of every Linear layer).

Each batch of songs goes through the three paths in turn (rotating the order), after an untimed
warm-up of each path on other songs: on a shared machine, load from other processes then falls
on all three alike (single runs of the same call varied 2-6x here under load).

The thread count is set explicitly (OMP_NUM_THREADS before torch is imported, and
torch.set_num_threads) and is the same for every path. Token agreement: the share of positions
where int8's tokens equal fp32's (batched), and batched fp32's equal plain's (padding in a
batch should change nothing). `--model DIR` also reports int8's agreement on a trained model.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Any


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--songs", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64, help="forced caption length (new tokens)")
    ap.add_argument("--model", default=None, help="a trained model: int8 agreement on it too")
    ap.add_argument("--json", dest="json_out", default=None, help="write the figures here")
    args = ap.parse_args(argv)
    # Before torch is imported: OpenMP reads it once.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.threads)
    results = run(args)
    print(format_table(results))
    if args.json_out:
        from recap.utils import atomic_write_json

        atomic_write_json(args.json_out, results)
    return 0


def make_inputs(n: int, seed: int = 0) -> tuple[list[Any], list[str]]:
    """`n` 15 s, 16 kHz tone excerpts and ~120-word lyrics, distinct per song."""
    import numpy as np

    rng = np.random.default_rng(seed)
    words = (
        "night cold river light heart road home rain fire dream city sea love time "
        "morning dance storm garden mother town snow sky song alone again"
    ).split()
    t = np.arange(240_000, dtype=np.float32) / 16_000
    waves, lyrics = [], []
    for _ in range(n):
        freqs = rng.uniform(110, 1000, size=3)
        wave = sum(np.sin(2 * np.pi * f * t) for f in freqs) / 6
        waves.append(wave.astype(np.float32))
        lines = [" ".join(rng.choice(words, size=8)) for _ in range(15)]
        lyrics.append("\n".join(lines))
    return waves, lyrics


def build(tokens: int) -> tuple[Any, Any, list[str]]:
    """The paper-size RECAP model (random weights, music encoder included) and a tokenizer."""
    import torch

    from recap.models.config import RecapConfig
    from recap.models.model import RecapModel
    from recap.models.tokenizer import train_bpe_tokenizer

    torch.manual_seed(0)
    model = RecapModel(RecapConfig.preset("recap", "paper", with_music_encoder=True)).eval()
    # Forced length: every path decodes exactly `tokens` new tokens per caption.
    model.bart.generation_config.min_new_tokens = tokens
    model.bart.generation_config.max_new_tokens = tokens
    model.config.generation.max_new_tokens = tokens
    _, sample = make_inputs(64, seed=1)
    # A local BPE (ids < 50265): the captions it decodes are noise, their cost is real.
    tokenizer = train_bpe_tokenizer(sample, vocab_size=1000)
    counts = model.param_counts()
    return model, tokenizer, [f"{k} {v / 1e6:.2f} M" for k, v in counts.items()]


class Recorder:
    """Wraps `model.generate` to keep the token ids it returns (the Captioner returns text)."""

    def __init__(self, model: Any) -> None:
        self.outputs: list[Any] = []
        self._generate = model.generate
        model.generate = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self._generate(*args, **kwargs)
        self.outputs.append(out)
        return out

    def ids(self) -> list[list[int]]:
        return [row.tolist() for out in self.outputs for row in out]


def plain(model: Any, tokenizer: Any, waves: list, lyrics: list) -> tuple[float, list]:
    """Seconds and ids of Hugging Face generate() through RecapModel, one song at a time."""
    import numpy as np
    import torch

    from recap.data.songs import prepare_lyrics

    ids = []
    start = time.perf_counter()
    for wave, text in zip(waves, lyrics):
        enc = tokenizer([prepare_lyrics(text)], truncation=True, max_length=512,
                        return_tensors="pt")  # fmt: skip
        with torch.inference_mode():
            out = model.generate(
                enc["input_ids"],
                enc["attention_mask"],
                waveform=torch.from_numpy(np.stack([wave])),  # (1, T)
            )
        ids.append(out[0].tolist())
    return time.perf_counter() - start, ids


def ours(captioner: Any, waves: list, lyrics: list, batch: int) -> tuple[float, list]:
    """Seconds and ids of Captioner.caption_waveforms on batches of `batch` songs."""
    from recap.inference.generate import DecodeSettings

    recorder = Recorder(captioner.model)
    start = time.perf_counter()
    for i in range(0, len(waves), batch):
        captioner.caption_waveforms(waves[i : i + batch], lyrics[i : i + batch], DecodeSettings())
    seconds = time.perf_counter() - start
    del captioner.model.generate  # the instance attribute: back to the class's method
    return seconds, recorder.ids()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Mean per-caption token agreement (positions after the forced BOS/decoder start)."""
    from recap.inference.quantize import token_agreement

    return statistics.mean(token_agreement([x], [y]) for x, y in zip(a, b))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from recap.inference.captioner import Captioner

    model, tokenizer, params = build(args.tokens)
    waves, lyrics = make_inputs(args.songs)
    fp32 = Captioner(model, tokenizer)
    int8 = Captioner(model, tokenizer, int8=True)
    runs = {
        "plain": lambda w, ly: plain(model, tokenizer, w, ly),
        "fp32": lambda w, ly: ours(fp32, w, ly, args.batch),
        "int8": lambda w, ly: ours(int8, w, ly, args.batch),
    }
    # Warm-up on other songs (first-call allocations, kernel selection), not timed.
    warm_w, warm_l = make_inputs(args.batch, seed=3)
    runs["plain"](warm_w[:1], warm_l[:1])
    runs["fp32"](warm_w, warm_l)
    runs["int8"](warm_w, warm_l)
    # Interleaved: each batch of songs goes through the three paths in turn (the order rotates),
    # so load from other processes on a shared machine falls on all three alike.
    seconds = dict.fromkeys(runs, 0.0)
    ids: dict[str, list] = {name: [] for name in runs}
    for r, start in enumerate(range(0, args.songs, args.batch)):
        w, ly = waves[start : start + args.batch], lyrics[start : start + args.batch]
        names = list(runs)[r % 3 :] + list(runs)[: r % 3]
        for name in names:
            t, got = runs[name](w, ly)
            seconds[name] += t
            ids[name] += got
            log(f"songs {start}-{start + len(w) - 1}, {name}: {t:.1f} s")
    t_plain, t_fp32, t_int8 = seconds["plain"], seconds["fp32"], seconds["int8"]
    ids_plain, ids_fp32, ids_int8 = ids["plain"], ids["fp32"], ids["int8"]
    lengths = {len(r) for r in ids_plain + ids_fp32 + ids_int8}
    n = args.songs
    rows = [
        {"path": "plain generate(), 1 song at a time, fp32", "seconds": t_plain},
        {"path": f"ours: Captioner, batch {args.batch}, fp32", "seconds": t_fp32},
        {"path": f"ours: Captioner, batch {args.batch}, int8", "seconds": t_int8},
    ]
    for row in rows:
        row["captions_per_s"] = n / row["seconds"]
        row["speedup"] = t_plain / row["seconds"]
    out: dict[str, Any] = {
        "threads": args.threads,
        "songs": n,
        "new_tokens": args.tokens,
        "output_lengths": sorted(lengths),
        "parameters": params,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "load_average": os.getloadavg()[0],
        "rows": rows,
        "agreement_fp32_batched_vs_plain": agreement(ids_fp32, ids_plain),
        "agreement_int8_vs_fp32": agreement(ids_int8, ids_fp32),
    }
    if args.model:
        out["trained_model"] = trained_agreement(args.model, args.batch)
    return out


def trained_agreement(path: str, batch: int) -> dict[str, Any]:
    """int8 against fp32 on a trained model (its own decoding defaults), on the same inputs."""
    from recap.inference.captioner import Captioner

    fp32 = Captioner.from_pretrained(path, device="cpu")
    int8 = Captioner(fp32.model, fp32.tokenizer, int8=True)
    waves, lyrics = make_inputs(16, seed=2)
    _, a = ours(fp32, waves, lyrics, batch)
    _, b = ours(int8, waves, lyrics, batch)
    return {
        "model": str(fp32.source),
        "songs": len(waves),
        "agreement_int8_vs_fp32": agreement(b, a),
    }


def format_table(r: dict[str, Any]) -> str:
    lines = [
        f"{r['songs']} songs, {r['new_tokens']} new tokens each (lengths {r['output_lengths']}), "
        f"{r['threads']} threads, torch {r['torch']}, load average {r['load_average']:.2f}",
        "",
        "| path | seconds | captions/s | × plain |",
        "|---|---:|---:|---:|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['path']} | {row['seconds']:.1f} | {row['captions_per_s']:.3f} | "
            f"{row['speedup']:.2f}× |"
        )
    lines.append("")
    lines.append(
        f"token agreement: batched fp32 vs plain {100 * r['agreement_fp32_batched_vs_plain']:.1f} %, "
        f"int8 vs fp32 {100 * r['agreement_int8_vs_fp32']:.1f} %"
    )
    if "trained_model" in r:
        t = r["trained_model"]
        lines.append(
            f"trained model {t['model']}: int8 vs fp32 token agreement "
            f"{100 * t['agreement_int8_vs_fp32']:.1f} % over {t['songs']} songs"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
