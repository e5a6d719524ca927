"""`recap bench probe`: is each slot carried by the modality it should be?

Logistic regression on audio features (log-mel statistics, chroma, and onset-envelope
autocorrelation) against logistic regression on lyrics TF-IDF, cross-validated with folds grouped
by work (no work in both the training and the held-out fold). An audio slot should be predictable
from audio and sit at chance from lyrics; a lyrics slot the other way round.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from recap.bench.slots import AUDIO_SLOTS, INTERPRETIVE_SLOTS
from recap.utils import RecapError, atomic_write_json

FEATURE_RATE = 22050
# Categorical slots probed; first_line and salient_words are copies of the text, not labels.
PROBED = AUDIO_SLOTS + ("language", "theme") + INTERPRETIVE_SLOTS
ONSET_LAGS = 64  # onset-envelope autocorrelation lags (frames of 512 samples, ~1.5 s)


def audio_features(path: str, seconds: float = 15.0) -> np.ndarray:
    """One clip's feature vector: log-mel mean and std (64 + 64), chroma mean (12), chroma
    circular autocorrelation (12: interval content, the same in every key, hence mode), and the
    normalised onset-envelope autocorrelation (ONSET_LAGS: tempo and metre)."""
    import librosa
    import soundfile as sf
    import soxr

    audio, sr = sf.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)[: int(seconds * sr)]  # (samples,)
    audio = soxr.resample(audio, sr, FEATURE_RATE)
    power = np.abs(librosa.stft(audio, n_fft=2048, hop_length=512)) ** 2  # (1025, frames)
    mel = librosa.feature.melspectrogram(S=power, sr=FEATURE_RATE, n_mels=64)  # (64, frames)
    logmel = np.log(mel + 1e-8)
    chroma = librosa.feature.chroma_stft(S=power, sr=FEATURE_RATE).mean(axis=1)  # (12,)
    chroma = chroma / (chroma.sum() + 1e-8)
    chroma_ac = np.array([float(chroma @ np.roll(chroma, k)) for k in range(12)])
    onset = librosa.onset.onset_strength(S=librosa.power_to_db(mel), sr=FEATURE_RATE)
    onset = onset - onset.mean()
    ac = np.correlate(onset, onset, mode="full")[len(onset) - 1 : len(onset) - 1 + ONSET_LAGS]
    ac = ac / (ac[0] + 1e-8)
    return np.concatenate([logmel.mean(1), logmel.std(1), chroma, chroma_ac, ac]).astype(np.float32)


def _cv_accuracy(x, y: np.ndarray, groups: np.ndarray, folds: int, scale: bool) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = LogisticRegression(max_iter=2000, C=1.0)
    model = make_pipeline(StandardScaler(), clf) if scale else clf
    pred = cross_val_predict(model, x, y, groups=groups, cv=GroupKFold(n_splits=folds))
    return float(np.mean(pred == y))


def _chance(y: np.ndarray, groups: np.ndarray, folds: int) -> float:
    """Accuracy of always answering the training folds' most frequent class."""
    from sklearn.model_selection import GroupKFold

    hits = 0
    for train, test in GroupKFold(n_splits=folds).split(y, y, groups):
        values, counts = np.unique(y[train], return_counts=True)
        hits += int(np.sum(y[test] == values[np.argmax(counts)]))
    return hits / len(y)


def run_probe(
    data_dir: str | Path,
    out: str | Path | None = None,
    folds: int = 5,
    seconds: float = 15.0,
    workers: int = 2,
) -> dict:
    """Probe every categorical slot from audio and from lyrics; write and return the report."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from tqdm import tqdm

    data_dir = Path(data_dir)
    songs_path = data_dir / "songs.jsonl"
    if not songs_path.is_file():
        raise RecapError(f"{songs_path} not found: build the benchmark first")
    songs = [json.loads(line) for line in songs_path.read_text("utf-8").splitlines() if line]
    rows = [json.loads(line) for line in (data_dir / "dataset.jsonl").open(encoding="utf-8")]
    lyrics = {r["music4all_id"]: r["lyrics"] for r in rows}
    paths = [str(data_dir / "audios" / f"{s['song_id']}.mp3") for s in songs]
    groups = np.array([s["work_id"] for s in songs])
    n_works = len(set(groups))
    if n_works < folds:
        raise RecapError(f"{n_works} works: too few for {folds} folds grouped by work")
    with ProcessPoolExecutor(max(1, workers)) as pool:
        feats = list(
            tqdm(
                pool.map(audio_features, paths, [seconds] * len(paths), chunksize=4),
                total=len(paths),
                desc="audio features",
                unit="clip",
            )  # fmt: skip
        )
    x_audio = np.stack(feats)  # (songs, features)
    x_text = TfidfVectorizer(sublinear_tf=True, min_df=2).fit_transform(
        [lyrics[s["song_id"]] for s in songs]
    )  # (songs, vocabulary), sparse
    table = {}
    for slot in PROBED:
        y = np.array([str(s["truth"][slot]) for s in songs])
        if len(set(y)) < 2:
            continue
        table[slot] = {
            "classes": len(set(y)),
            "chance": _chance(y, groups, folds),
            "audio": _cv_accuracy(x_audio, y, groups, folds, scale=True),
            "lyrics": _cv_accuracy(x_text, y, groups, folds, scale=False),
            "modality": "audio" if slot in AUDIO_SLOTS + INTERPRETIVE_SLOTS else "lyrics",
        }
    report = {"data_dir": str(data_dir), "songs": len(songs), "works": n_works,
              "folds": folds, "seconds": seconds, "slots": table}  # fmt: skip
    atomic_write_json(Path(out) if out else data_dir / "probe.json", report)
    return report


def format_table(report: dict) -> str:
    lines = [
        f"probe: {report['songs']} renderings of {report['works']} works, "
        f"{report['folds']}-fold CV grouped by work",
        f"{'slot':<14}{'expected':>9}{'classes':>8}{'chance':>8}{'audio':>8}{'lyrics':>8}",
    ]
    for slot, r in report["slots"].items():
        lines.append(
            f"{slot:<14}{r['modality']:>9}{r['classes']:>8}{r['chance']:>8.2f}"
            f"{r['audio']:>8.2f}{r['lyrics']:>8.2f}"
        )
    return "\n".join(lines)
