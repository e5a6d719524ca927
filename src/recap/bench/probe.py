"""`recap bench probe`: is each slot carried by the modality it should be?

Logistic regression on audio features (log-mel statistics, chroma, and spectral-flux
autocorrelation) against logistic regression on lyrics TF-IDF, cross-validated with folds grouped
by work (no work in both the training and the held-out fold). An audio slot should be predictable
from audio and sit at chance from lyrics; a lyrics slot the other way round.

A third probe reads the lyrics as the coupling does (theme and colour from the theme lexicon,
`recap.bench.coupling`, or the language for a build coupled `--couple-by language`): on a build
with `--coupling P` it shows how much of the audio the lyrics determine (chance at P = 0, all of
the coupled slots at P = 1); TF-IDF shows how much of that a bag-of-words learner finds.

For the key and the mode a fourth column reads the score instead of the sound: the notes of the
excerpt the encoder hears (its first `seconds`, at the rendering's transposition and tempo),
named by a logistic regression on their pitch-class profiles and by Krumhansl-Schmuckler, the
estimate the build applies. A build states the key of its first `key_seconds` (15 s by default),
so there Krumhansl-Schmuckler on the same seconds reads 1.0 by construction; on a build keyed by
the whole score (`--key-seconds 0`, the builds before the option) it is a ceiling for any
listener of the excerpt.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from recap.bench.render import Performance, heard_notes
from recap.bench.scoring import read_songs
from recap.bench.slots import AUDIO_SLOTS, INTERPRETIVE_SLOTS, SCORE_ONLY_SLOTS, TONICS
from recap.bench.sources import ScoreError, ScoreSource, estimate_key, load_score
from recap.utils import RecapError, atomic_write_json

FEATURE_RATE = 22050
# Categorical slots probed; first_line and salient_words are copies of the text, not labels.
# Mode and metre are probed too: the probe is why captions leave them out.
PROBED = AUDIO_SLOTS + SCORE_ONLY_SLOTS + ("language", "theme") + INTERPRETIVE_SLOTS
ONSET_LAGS = 64  # spectral-flux autocorrelation lags (frames of 512 samples: ~1.5 s)


def _mel_filterbank(n_fft: int, sr: int, n_mels: int) -> np.ndarray:
    """Triangular filters evenly spaced on the HTK mel scale, shape (n_mels, n_fft // 2 + 1)."""
    mel = np.linspace(0.0, 2595.0 * np.log10(1.0 + (sr / 2) / 700.0), n_mels + 2)
    hz = 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    freqs = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
    lo, mid, hi = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (freqs[None] - lo) / (mid - lo)
    down = (hi - freqs[None]) / (hi - mid)
    return np.maximum(0.0, np.minimum(up, down))


def audio_features(path: str, seconds: float = 15.0) -> np.ndarray:
    """One clip's feature vector (numpy only): log-mel mean and std (64 + 64), chroma mean (12),
    chroma circular autocorrelation (12: interval content, the same in every key, hence mode),
    and the normalised autocorrelation of the spectral flux (ONSET_LAGS: tempo and metre)."""
    import soundfile as sf
    import soxr

    n_fft, hop = 2048, 512
    audio, sr = sf.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)[: int(seconds * sr)]  # (samples,)
    audio = soxr.resample(audio, sr, FEATURE_RATE)
    audio = np.pad(audio, (0, max(0, n_fft - len(audio))))
    frames = np.lib.stride_tricks.sliding_window_view(audio, n_fft)[::hop]  # (frames, n_fft)
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)) ** 2  # (frames, bins)
    logmel = np.log(power @ _mel_filterbank(n_fft, FEATURE_RATE, 64).T + 1e-8)  # (frames, 64)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / FEATURE_RATE)
    band = (freqs > 60) & (freqs < 4000)
    pitch_class = np.round(12 * np.log2(freqs[band] / 440.0)).astype(int) % 12  # A = 0
    chroma = np.bincount(pitch_class, weights=power[:, band].mean(0), minlength=12)  # (12,)
    chroma = chroma / (chroma.sum() + 1e-8)
    chroma_ac = np.array([float(chroma @ np.roll(chroma, k)) for k in range(12)])
    flux = np.maximum(0.0, np.diff(logmel, axis=0)).sum(1)  # (frames - 1,)
    flux = flux - flux.mean()
    ac = np.correlate(flux, flux, mode="full")[len(flux) - 1 : len(flux) - 1 + ONSET_LAGS]
    ac = np.pad(ac / (ac[0] + 1e-8), (0, ONSET_LAGS - len(ac)))
    feats = [logmel.mean(0), logmel.std(0), chroma, chroma_ac, ac]
    return np.concatenate(feats).astype(np.float32)


def _cv_accuracy(x, y: np.ndarray, groups: np.ndarray, folds: int, scale: bool) -> float:
    """Held-out accuracy over folds grouped by work (a fold whose training part has one class
    predicts that class)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    hits = 0
    for train, test in GroupKFold(n_splits=folds).split(y, y, groups):
        if len(set(y[train])) < 2:
            hits += int(np.sum(y[test] == y[train][0]))
            continue
        clf = LogisticRegression(max_iter=2000, C=1.0)
        model = make_pipeline(StandardScaler(), clf) if scale else clf
        model.fit(x[train], y[train])
        hits += int(np.sum(model.predict(x[test]) == y[test]))
    return hits / len(y)


def _chance(y: np.ndarray, groups: np.ndarray, folds: int) -> float:
    """Accuracy of always answering the training folds' most frequent class."""
    from sklearn.model_selection import GroupKFold

    hits = 0
    for train, test in GroupKFold(n_splits=folds).split(y, y, groups):
        values, counts = np.unique(y[train], return_counts=True)
        hits += int(np.sum(y[test] == values[np.argmax(counts)]))
    return hits / len(y)


def meaning_features(lyrics: list[str], couple_by: str = "meaning") -> np.ndarray:
    """What the coupling reads from each text, from the text alone: one-hot theme and one-hot
    colour (songs, 2 x themes), or, coupled by language, the one-hot language (songs, languages)
    and, by language and tone, the one-hot tone after it."""
    from recap.bench.coupling import reading, reading_features, theme_and_colour, tone
    from recap.bench.facts import detect_language, words

    readings = []
    for text in lyrics:
        language = detect_language(words(text))
        theme, colour = theme_and_colour(text, language)
        facts = {"language": language, "theme": theme, "colour": colour, "tone": tone(text)}
        readings.append(reading(facts, couple_by))
    return reading_features(readings, couple_by)


NOTE_SLOTS = ("key", "mode")  # what the excerpt's notes are read for


def excerpt_notes(song: dict, seconds: float, scores: dict) -> np.ndarray:
    """The notes sounding in the first `seconds` of one rendering, (n, 3): onset s, duration s,
    MIDI pitch as played. `scores` caches parsed scores by path. ScoreError when the score
    cannot be read here (moved, or unparsable)."""
    from dataclasses import fields

    path = str(song["source"])
    if path not in scores:
        if not Path(path).is_file():
            raise ScoreError(f"score not found: {path}")
        scores[path] = load_score(ScoreSource(path=path, work_id=str(song["work_id"])))
    score = scores[path]
    render = song["render"]
    perf = Performance(**{f.name: render[f.name] for f in fields(Performance)})
    notes = heard_notes(score.melody, score.accompaniment, perf, score.bar_quarters, seconds)
    if not len(notes):
        raise ScoreError("no notes in the excerpt")
    return notes


def note_features(notes: np.ndarray) -> np.ndarray:
    """Duration-weighted pitch-class profile of all notes and of the bass (the lowest note
    starting at each onset), each summing to 1: (24,)."""
    pcs = notes[:, 2].astype(int) % 12
    profile = np.bincount(pcs, weights=notes[:, 1], minlength=12)
    bass = np.zeros(12)
    for onset in np.unique(notes[:, 0]):
        at = notes[notes[:, 0] == onset]
        low = at[np.argmin(at[:, 2])]
        bass[int(low[2]) % 12] += low[1]
    return np.concatenate([profile / max(profile.sum(), 1e-9), bass / max(bass.sum(), 1e-9)])


def _note_reading(songs: list[dict], seconds: float) -> tuple[np.ndarray, list, list[dict]]:
    """Per song the excerpt's note features and its Krumhansl-Schmuckler (tonic, mode); songs
    whose score cannot be read are left out and listed with the reason."""
    from tqdm import tqdm

    scores: dict = {}
    feats, ks, skipped = [], [], []
    for song in tqdm(songs, desc="excerpt notes", unit="song"):
        try:
            notes = excerpt_notes(song, seconds, scores)
        except (ScoreError, KeyError, TypeError) as err:
            skipped.append({"song_id": song["song_id"], "reason": str(err)[:200]})
            feats.append(None)
            ks.append(None)
            continue
        tonic, mode = estimate_key(notes)  # columns as the build's events
        feats.append(note_features(notes))
        ks.append({"key": TONICS[tonic], "mode": mode})
    return np.array(feats, dtype=object), ks, skipped


def run_probe(
    data_dir: str | Path,
    out: str | Path | None = None,
    folds: int = 5,
    seconds: float = 15.0,
    workers: int = 2,
    audio: bool = True,
    notes: bool = True,
) -> dict:
    """Probe every categorical slot from audio (unless `audio` is false) and from the lyrics
    (TF-IDF, and the meaning the coupling reads), the key and mode also from the excerpt's
    notes (unless `notes` is false); write and return the report."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from tqdm import tqdm

    data_dir = Path(data_dir)
    songs = list(read_songs(data_dir).values())
    rows = [json.loads(line) for line in (data_dir / "dataset.jsonl").open(encoding="utf-8")]
    lyrics = {r["music4all_id"]: r["lyrics"] for r in rows}
    paths = [str(data_dir / "audios" / f"{s['song_id']}.mp3") for s in songs]
    groups = np.array([s["work_id"] for s in songs])
    n_works = len(set(groups))
    if n_works < folds:
        raise RecapError(f"{n_works} works: too few for {folds} folds grouped by work")
    x_audio = None
    if audio:
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
    texts = [lyrics[s["song_id"]] for s in songs]
    x_text = TfidfVectorizer(sublinear_tf=True, min_df=2).fit_transform(texts)  # sparse
    build = data_dir / "build.json"
    built = json.loads(build.read_text("utf-8")) if build.is_file() else None
    couple_by = (built or {}).get("couple_by", "meaning")
    x_meaning = meaning_features(texts, couple_by)  # (songs, 2 x themes | languages)
    note_feats, note_ks, note_skipped = _note_reading(songs, seconds) if notes else (None, [], [])
    table = {}
    for slot in PROBED + ("colour",):
        if not all(slot in s["truth"] for s in songs):
            continue  # colour: only coupled builds state it
        y = np.array([str(s["truth"][slot]) for s in songs])
        if len(set(y)) < 2:
            continue
        table[slot] = {
            "classes": len(set(y)),
            "chance": _chance(y, groups, folds),
            "audio": None if x_audio is None else _cv_accuracy(x_audio, y, groups, folds, True),
            "lyrics": _cv_accuracy(x_text, y, groups, folds, scale=False),
            "meaning": _cv_accuracy(x_meaning, y, groups, folds, scale=False),
            "modality": "lyrics" if slot in ("language", "theme", "colour") else "audio",
        }
        if note_feats is not None and slot in NOTE_SLOTS:
            table[slot].update(_note_columns(slot, y, groups, note_feats, note_ks, folds))
    coupling = None if built is None else built.get("coupling", 0.0)
    coupled = sum(bool(s["truth"].get("coupled")) for s in songs)
    report = {"data_dir": str(data_dir), "songs": len(songs), "works": n_works,
              "coupling": coupling, "couple_by": couple_by, "coupled_songs": coupled,
              "folds": folds, "seconds": seconds, "slots": table,
              "notes_skipped": note_skipped}  # fmt: skip
    atomic_write_json(Path(out) if out else data_dir / "probe.json", report)
    return report


def _note_columns(
    slot: str, y: np.ndarray, groups: np.ndarray, feats: np.ndarray, ks: list, folds: int
) -> dict:
    """The slot read from the excerpt's notes: cross-validated logistic regression on their
    profiles (`notes`) and Krumhansl-Schmuckler (`notes_ks`), over the songs whose score read."""
    ok = np.array([f is not None for f in feats])
    if ok.sum() < folds or len(set(y[ok])) < 2 or len(set(groups[ok])) < folds:
        return {"notes": None, "notes_ks": None}
    x = np.stack(list(feats[ok]))  # (songs read, 24)
    kept = [k for k in ks if k is not None]
    return {
        "notes": _cv_accuracy(x, y[ok], groups[ok], folds, scale=True),
        "notes_ks": float(np.mean([k[slot] == t for k, t in zip(kept, y[ok])])),
        "notes_songs": int(ok.sum()),
    }


def format_table(report: dict) -> str:
    def cell(v: float | None) -> str:
        return f"{'—':>8}" if v is None else f"{v:>8.2f}"

    coupling = report.get("coupling")
    lines = [
        f"probe: {report['songs']} renderings of {report['works']} works, "
        f"{report['folds']}-fold CV grouped by work; coupling "
        f"{'unknown' if coupling is None else f'{coupling:g}'}"
        + (f" by {report['couple_by']}" if coupling and report.get("couple_by") else "")
        + f" ({report.get('coupled_songs', 0)} renderings coupled)",
        f"{'slot':<14}{'expected':>9}{'classes':>8}{'chance':>8}{'audio':>8}{'lyrics':>8}"
        f"{'meaning':>8}{'notes':>8}{'KS':>8}",
    ]
    for slot, r in report["slots"].items():
        lines.append(
            f"{slot:<14}{r['modality']:>9}{r['classes']:>8}{cell(r['chance'])}{cell(r['audio'])}"
            f"{cell(r['lyrics'])}{cell(r.get('meaning'))}{cell(r.get('notes'))}"
            f"{cell(r.get('notes_ks'))}"
        )
    if any(r.get("notes") is not None for r in report["slots"].values()):
        lines.append(
            "notes / KS: the heard excerpt's own notes, named by a logistic regression on their "
            "pitch-class profiles / by Krumhansl-Schmuckler"
        )
    if report.get("notes_skipped"):
        lines.append(
            f"  {len(report['notes_skipped'])} songs left out of notes / KS: score not readable here"
        )
    return "\n".join(lines)
