"""What RECAP's alignment can retrieve on the coupled benchmark when what it aligns changes.

Trains RECAP variants on `make demo-alignment`'s benchmark (P = 1) with the demo's recipe (size
small, one epoch, the demo's tagger frozen) and measures audio ↔ lyrics retrieval on the test
split with the demo's functions (`recap.evaluation.aligned_space.evaluate_retrieval`: exact
search, a hit is any rendering of the query's lyrics), plus what a linear map from each run's
pooled lyrics states could align. Then the ceilings no lyrics encoder trained on this split
can pass: a linear map from the lexicon's true theme + colour, from a reader trained on the
train works' true labels, and from the words a text contains.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/alignment_levers.py \\
        --bench runs/demo-alignment/bench --tagger runs/demo/tagger --out runs/align-levers \\
        [--variants paper,infonce,attention-infonce-T0.1] [--seeds 0,1,2]

One training at a time, one thread: about 70 s per variant and seed on an idle core.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

# name → TrainConfig overrides on top of the demo's recipe (RECAP at w = 0.02)
VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {},
    "infonce": {"align_loss": "infonce"},
    "attention": {"align_pool": "attention"},
    "attention-infonce": {"align_loss": "infonce", "align_pool": "attention"},
    "attention-infonce-alr0.03": {
        "align_loss": "infonce", "align_pool": "attention", "align_lr": 0.03
    },
    "attention-infonce-T0.1": {
        "align_loss": "infonce", "align_pool": "attention",
        "model_overrides": {"align_temperature": 0.1},
    },
    "attention-infonce-learnedT": {
        "align_loss": "infonce", "align_pool": "attention",
        "model_overrides": {"align_learn_temperature": True},
    },
    "attention-infonce-layer0": {
        "align_loss": "infonce", "align_pool": "attention", "model_overrides": {"align_layer": 0}
    },
    "attention-infonce-w0.2": {
        "align_loss": "infonce", "align_pool": "attention", "align_weight": 0.2
    },
    "attention-infonce-bart-lyrics": {
        "align_loss": "infonce", "align_pool": "attention", "bart": "runs/demo/bart-lyrics"
    },
    "attention-infonce-4epochs": {
        "align_loss": "infonce", "align_pool": "attention", "epochs": 4
    },
}  # fmt: skip


def train_variant(args: argparse.Namespace, name: str, seed: int) -> Path:
    from recap.demo import DemoConfig
    from recap.training.train import TrainConfig, train

    overrides = {
        **DemoConfig().train_overrides,
        "val_every_epochs": 1,
        "val_max_examples": 16,
        "epochs": 1,
        **VARIANTS[name],
    }
    cfg = TrainConfig(
        data=args.bench,
        out=str(Path(args.out) / name / f"seed{seed}"),
        preset="recap",
        size="small",
        encoder=args.tagger,
        seed=seed,
        progress=False,
        **overrides,
    )
    return Path(train(cfg))


def bag_of_words(train: Any, test: Any) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.feature_extraction.text import CountVectorizer

    from recap.bench.facts import words

    vectorizer = CountVectorizer(analyzer=words, binary=True)
    x_train = vectorizer.fit_transform(train.lyrics).toarray().astype(np.float32)
    return x_train, vectorizer.transform(test.lyrics).toarray().astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", default="runs/demo-alignment/bench")
    parser.add_argument("--tagger", default="runs/demo/tagger")
    parser.add_argument("--out", default="runs/align-levers")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from recap.bench import load_truth
    from recap.data.cache import ensure_embeddings
    from recap.evaluation.aligned_space import (
        SplitSongs,
        audio_vectors_of,
        evaluate_retrieval,
        lexicon_features,
        linear_map_retrieval,
        probe_run,
        theme_reader_features,
    )

    test, train = SplitSongs.load(args.bench), SplitSongs.load(args.bench, "train")
    store = ensure_embeddings(args.bench, args.tagger, sorted(load_truth(args.bench)))
    rows: list[dict[str, Any]] = []
    print("| variant | seed | A→L R@1 | A→L R@5 | A→L R@10 | A→L MRR | L→A R@1 | L→A R@5 | "
          "L→A R@10 | L→A MRR | cos paired / unpaired | cos lyrics–lyrics | "
          "linear map from its pooled states, R@10 A→L / L→A |")  # fmt: skip
    print("|---|---:|" + "---:|" * 8 + "---|---:|---|")
    for name in args.variants.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            run = train_variant(args, name, seed)
            r = evaluate_retrieval(run, test, store)
            probe = probe_run(run, train, test, store)
            a, b, g = r["audio_to_lyrics"], r["lyrics_to_audio"], r["geometry"]
            cells = [f"{side[k]:.3f}" for side in (a, b) for k in
                     ("recall@1", "recall@5", "recall@10", "mrr")]  # fmt: skip
            print(
                f"| {name} | {seed} | " + " | ".join(cells) + f" | {g['paired']:.3f} / "
                f"{g['unpaired']:.3f} | {g['lyrics_lyrics']:.3f} | "
                f"{probe['audio_to_lyrics']['recall@10']:.3f} / "
                f"{probe['lyrics_to_audio']['recall@10']:.3f} |",
                flush=True,
            )
            rows.append({"variant": name, "seed": seed, "run": str(run), "retrieval": r,
                         "state_probe": probe})  # fmt: skip

    # The ceilings: what lyrics features a projection could align at best.
    first = rows[0]["run"] if rows else None
    if first is not None:
        audio_train = audio_vectors_of(first, train, store)
        audio_test = audio_vectors_of(first, test, store)
        reader_train, reader_test, accuracy = theme_reader_features(train, test)
        ceilings = {
            "lexicon's true theme + colour": (lexicon_features(train), lexicon_features(test)),
            "reader trained on the train works' theme + colour": (reader_train, reader_test),
            "the words a text contains (binary bag of words)": bag_of_words(train, test),
        }
        print(f"\nreader's test accuracy: {json.dumps(accuracy)}")
        print("\n| linear map from | A→L R@10 | L→A R@10 |\n|---|---:|---:|")
        for label, (x_train, x_test) in ceilings.items():
            m = linear_map_retrieval(x_train, audio_train, x_test, audio_test, test.groups)
            print(f"| {label} | {m['audio_to_lyrics']['recall@10']:.3f} | "
                  f"{m['lyrics_to_audio']['recall@10']:.3f} |")  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "levers.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
