"""What the decoding constraints cost: free decoding, `--quote-lyrics`, and `--quote-lyrics
--known-words` (`make demo`'s), side by side in one run.

    .venv/bin/python benchmarks/constrained_decoding.py \
        --model runs/demo/experiments/full/recap/seed0 --data runs/demo/bench --threads 2 --repeats 3

Captions the test split's songs (each song once, its lyrics and its cached music embeddings as
`recap evaluate` reads them) with the evaluation's decoding (4 beams, `--max-new-tokens`) in each
arm, rotating the order over `--repeats` rounds after an untimed warm-up of each; reports the
median seconds of each arm, how many captions differ from free decoding, how many quote (a
`"`-delimited piece of several words) the song's lyrics verbatim, and how many hold a word that
is in neither the model's training captions nor the song's lyrics (a non-word such as
"frehebt"; needs the model's caption_words.json).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a trained RUN or model folder")
    ap.add_argument("--data", required=True, help="the benchmark it was trained on")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch is imported
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from recap.data.songs import load_splits
    from recap.evaluation.evaluate import _music_for, generate_captions, resolve_target
    from recap.inference.generate import DecodeSettings, load_model_and_tokenizer
    from recap.inference.words import WORD

    torch.set_num_threads(args.threads)
    target = resolve_target(args.model)
    model, tokenizer, _ = load_model_and_tokenizer(target.model_dir, "cpu", needs_audio=False)
    rows = load_splits(args.data)["test"]
    songs = list(dict.fromkeys((r.song_id, r.lyrics) for r in rows))  # (song_id, lyrics)
    ids = sorted({s for s, _ in songs})
    music = _music_for(model, target, args.data, ids, None, None)
    arms = {
        name: DecodeSettings(
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            quote_lyrics=quotes,
            known_words=words,
        )
        for name, quotes, words in (
            ("free", False, False),
            ("quotes", True, False),
            ("quotes + known words", True, True),
        )
    }
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    captions: dict[str, list[str]] = {}

    def decode(name: str, items: list) -> list[str]:
        return generate_captions(model, tokenizer, items, music, arms[name], progress=False)

    for name in arms:  # warm-up
        decode(name, songs[:4])
    for round_ in range(args.repeats):
        names = list(arms)
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            start = time.perf_counter()
            captions[name] = decode(name, songs)
            seconds[name].append(time.perf_counter() - start)

    def verbatim(caption: str, text: str) -> bool:
        flat = " ".join(text.split())
        pieces = [q for q in re.findall(r'"([^"]*)"', caption) if " " in q.strip()]
        return bool(pieces) and all(q in flat for q in pieces)

    print(f"{len(songs)} songs, {args.threads} threads, {args.repeats} rounds, model {args.model}")

    def non_word(caption: str, text: str) -> bool:
        known = model.caption_words | {w.lower() for w in WORD.findall(text)}
        return any(w.lower() not in known for w in WORD.findall(caption))

    n = len(songs)
    print(f"{n} songs, {args.threads} threads, {args.repeats} rounds, model {args.model}")
    print(
        "| decoding | median s | captions/s | quotes verbatim | with a non-word | differ from free |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name in arms:
        med = statistics.median(seconds[name])
        pairs = list(zip(captions[name], (lyr for _, lyr in songs)))
        same = sum(verbatim(c, lyr) for c, lyr in pairs)
        bad = sum(non_word(c, lyr) for c, lyr in pairs)
        differ = sum(a != b for a, b in zip(captions[name], captions["free"]))
        print(f"| {name} | {med:.2f} | {n / med:.1f} | {same}/{n} | {bad}/{n} | {differ} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
