"""Where a fusion captioner loses an audio fact: what the frozen music tokens, the fused encoder
output and the decoder each hold about melody, accompaniment, tempo and key (test split).

    .venv/bin/python benchmarks/audio_fact_probes.py --data runs/demo/bench \
        --encoder runs/demo/tagger runs/demo/experiments/full/bart-fusion/seed0 ...

For each trained RUN, three read-outs of every audio slot, each the share of test songs right:
- `music`: logistic regression (train songs → test songs) on the mean music token, which is what
  the tagger's own probe reads (`recap tagger train` prints it);
- `fused`: the same on the mean of the fused encoder's output over the lyrics positions, and on
  its first position alone (`fused@0`: what one cross-attention read can find);
- `decoder`: teacher-forced, for the key only: a test reference caption cut after "in the key of"
  and each of the benchmark's key names appended; the name whose tokens the decoder gives the
  highest summed log-probability (one reference per song, a correct one that states the key).
If `fused` holds a fact the captions miss, the fusion passed it on and the decoder does not read it.
"""

from __future__ import annotations

import argparse
import os
import re


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="trained fusion RUN folders")
    ap.add_argument("--data", required=True, help="the benchmark they were trained on")
    ap.add_argument("--encoder", required=True, help="the tagger whose tokens they read")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch is imported
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from recap.bench import load_truth
    from recap.bench.slots import AUDIO_SLOTS
    from recap.data.cache import ensure_embeddings
    from recap.data.songs import load_splits
    from recap.evaluation.aligned_space import SplitSongs
    from recap.inference.generate import load_model_and_tokenizer

    torch.set_num_threads(args.threads)
    train, test = SplitSongs.load(args.data, "train"), SplitSongs.load(args.data, "test")
    truth = load_truth(args.data)
    store = ensure_embeddings(args.data, args.encoder, sorted(truth), progress=False)
    keys = sorted({t["key"] for t in truth.values()})
    references = key_references(load_splits(args.data)["test"], truth)

    def accuracy(x_train: np.ndarray, x_test: np.ndarray, slot: str) -> float:
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.1))
        probe.fit(x_train, [t[slot] for t in train.truths])
        return float(np.mean(probe.predict(x_test) == np.array([t[slot] for t in test.truths])))

    print(f"test split: {len(test.ids)} songs; key references: {len(references)}")
    print("| run | slot | music | fused | fused@0 | decoder |\n|---|---|---:|---:|---:|---:|")
    for run in args.runs:
        model, tokenizer, _ = load_model_and_tokenizer(run, device="cpu", needs_audio=False)
        model.eval()
        if not model.config.use_music:
            print(f"| {run} | (no music: BART) | | | | |")
            continue
        feats = {name: encoder_features(model, tokenizer, songs, store)
                 for name, songs in (("train", train), ("test", test))}  # fmt: skip
        decoder = teacher_forced_key(model, tokenizer, references, keys, store)
        for slot in AUDIO_SLOTS:
            cells = [accuracy(feats["train"][k], feats["test"][k], slot) for k in range(3)]
            cells.append(decoder if slot == "key" else None)
            shown = " | ".join("" if c is None else f"{100 * c:.0f}" for c in cells)
            print(f"| {run} | {slot} | {shown} |")
    return 0


def encoder_features(model, tokenizer, songs, store):
    """(mean music token, mean fused output, fused output at position 0), each (N, dim)."""
    import numpy as np
    import torch

    music, fused, first = [], [], []
    for i in range(0, len(songs.ids), 32):
        batch = tokenizer(
            songs.lyrics[i : i + 32], return_tensors="pt", padding=True, truncation=True,
            max_length=model.config.max_source_length,
        )  # fmt: skip
        embeds = torch.from_numpy(np.stack([store[s] for s in songs.ids[i : i + 32]])).float()
        with torch.inference_mode():
            out = model.encode(batch["input_ids"], batch["attention_mask"], music_embeds=embeds)
        mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, L, 1)
        states = out.last_hidden_state  # (B, L, d)
        fused.append(((states * mask).sum(1) / mask.sum(1)).numpy())
        first.append(states[:, 0].numpy())
        music.append(out.music_vector.numpy())
    return [np.concatenate(x) for x in (music, fused, first)]


def key_references(rows, truth):
    """{song_id: (lyrics, the caption up to "in the key of", the key)} from one up-voted test
    reference per song that states its true key."""
    found = {}
    for row in rows:
        key = truth[row.song_id]["key"]
        match = re.search(r"in the key of " + re.escape(key) + r"\b", row.comment)
        if match and row.song_id not in found and (row.votes or 0) > 0:
            found[row.song_id] = (row.lyrics, row.comment[: match.end() - len(key) - 1], key)
    return found


def teacher_forced_key(model, tokenizer, references, keys, store) -> float:
    """Share of references whose true key the decoder scores highest among `keys`."""
    import numpy as np
    import torch

    right = 0
    for song_id, (lyrics, prefix, key) in references.items():
        source = tokenizer(
            lyrics, return_tensors="pt", truncation=True, max_length=model.config.max_source_length
        )
        stem = tokenizer(prefix)["input_ids"][:-1]  # without </s>
        names = [tokenizer(f"{prefix} {k}")["input_ids"][:-1] for k in keys]
        if any(ids[: len(stem)] != stem for ids in names):
            raise SystemExit(f"{song_id}: the key name does not tokenize after the prefix")
        labels = torch.full((len(keys), max(map(len, names))), tokenizer.pad_token_id)
        for i, ids in enumerate(names):
            labels[i, : len(ids)] = torch.tensor(ids)
        embeds = torch.from_numpy(np.stack([store[song_id]] * len(keys))).float()
        with torch.inference_mode():
            out = model(
                source["input_ids"].repeat(len(keys), 1),
                source["attention_mask"].repeat(len(keys), 1),
                labels=labels,
                music_embeds=embeds,
            )
        logp = torch.log_softmax(out.logits.float(), dim=-1)  # (K, T, V)
        scores = [
            sum(logp[i, t, labels[i, t]].item() for t in range(len(stem), len(ids)))
            for i, ids in enumerate(names)
        ]
        right += keys[int(np.argmax(scores))] == key
    return right / max(1, len(references))


if __name__ == "__main__":
    raise SystemExit(main())
