"""How much of the heard key a music-encoder preset's chroma rows hold: a logistic regression
on the mean of the tokens' pitch-class profiles (the chroma's share of the mean token, which a
linear probe reads), fitted on the train split and scored on test, per preset.

    .venv/bin/python benchmarks/chroma_key_ceiling.py --data runs/demo/bench \\
        --preset demo-chroma demo-key

The log-mel rows go through the benchmark's cache (`recap.data.cache.precompute`), as the
tagger's do; docs/training.md "A chroma the key can be read from" reports the figures.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def mean_profiles(data: str, preset: str, ids: list[str]) -> np.ndarray:
    """(songs, 12): the mean over each song's tokens of `_chroma_per_token`."""
    from recap.data.cache import precompute
    from recap.models.music_encoder import MusicEncoder, MusicEncoderConfig

    model = MusicEncoder(MusicEncoderConfig.preset(preset, n_tags=1)).eval()
    store, _ = precompute(data, model, kind="logmel", song_ids=ids, num_workers=2)
    rows = model.config.n_mels
    with torch.inference_mode():
        return np.stack(
            [
                model._chroma_per_token(torch.from_numpy(store[s][rows:][None]))[0].mean(0).numpy()
                for s in ids
            ]
        )


def main(argv: list[str] | None = None) -> None:
    from sklearn.linear_model import LogisticRegression

    from recap.training.tagger import read_songs

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a built benchmark (songs.jsonl, audios/)")
    parser.add_argument("--preset", nargs="+", default=["demo-chroma", "demo-key"])
    args = parser.parse_args(argv)
    songs = read_songs(args.data)
    ids = [s for s, rec in songs.items() if rec["split"] in ("train", "test")]
    y = np.array([songs[s]["truth"]["key"] for s in ids])
    test = np.array([songs[s]["split"] == "test" for s in ids])
    print(f"| preset | key, test ({test.sum()} songs) |\n|---|---:|")
    for preset in args.preset:
        x = mean_profiles(args.data, preset, ids)
        clf = LogisticRegression(C=10.0, max_iter=5000).fit(x[~test], y[~test])
        print(f"| {preset} | {(clf.predict(x[test]) == y[test]).mean():.1%} |")


if __name__ == "__main__":
    main()
