"""Music-encoder pretraining: `recap tagger train` teaches CNNSA the benchmark's audio facts.

No PyTorch music tagger can be downloaded here (SPEC §4), so the captioner's frozen encoder is
trained the way CNNSA was built to be trained: multi-label tagging with binary cross-entropy on
logits. The tags are the rendered-songs benchmark's audio slots ("melody=flute", "tempo=slow",
"key=E-flat", ...; `recap.bench.audio_tags`). Users with a public CNNSA checkpoint skip this and
pass `--encoder best_model.pth` to `recap train`.

Speed: the dB log-mels are computed once into the cache (`recap.data.cache`, kind "logmel"); training
runs the encoder from the log-mel (`MusicEncoder.embed_log_mel`) on random crops, which is both the
augmentation and most of the speed-up (a quarter of the frames: a quarter of the CNN work).
Evaluation uses the whole 15 s excerpt, as the captioner will.

Output folder: the encoder (`save_pretrained`: config.json with the tag names, model.safetensors),
`tagger_config.json`, `tagger_metrics.json` (per-tag ROC-AUC and accuracy, per-slot accuracy of
the arg-max tag, on the test split) and `log.jsonl`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from recap.utils import RecapError, atomic_write_json, differing_settings, flag_field, read_json

logger = logging.getLogger(__name__)

METRICS_NAME = "tagger_metrics.json"
CONFIG_NAME = "tagger_config.json"


_opt = flag_field


@dataclass
class TaggerConfig:
    """Every setting of a tagger run; each is a `recap tagger train --flag`."""

    data: str = _opt("", "benchmark folder (songs.jsonl, audios/)")
    out: str = _opt("", "output folder: the trained encoder")
    preset: str = _opt("small", "encoder size: tiny | mini | demo | small | reference")
    epochs: int = _opt(12, "training epochs (the best by validation mean ROC-AUC is kept)")
    batch_size: int = _opt(32, "clips per step")
    lr: float = _opt(1e-3, "AdamW learning rate")
    weight_decay: float = _opt(1e-4, "AdamW weight decay")
    schedule: str = _opt(
        "constant",
        "learning-rate schedule: constant, or cosine (linear warm-up over the first epoch, then "
        "cosine decay to 0 at the last step)",
    )
    crop_seconds: float = _opt(3.0, "random training crop (0: the whole excerpt)")
    dropout: float | None = _opt(
        None,
        "encoder hidden/attention/head dropout while training (None: the preset's; the "
        "reference's 0.4/0.5 hold a few hundred songs back)",
    )
    token_loss_weight: float = _opt(
        0.0,
        "weight of an auxiliary BCE on a linear probe of the mean encoder token (0: off); it "
        "makes the token sequence the captioner reads learn the tags directly instead of only "
        "through the slow fixed-CLS path; the probe is reported and selects the epoch, not saved",
    )
    pitch_shift: int = _opt(
        0,
        "transpose each training crop by a random k in -N..N semitones (0: off): the crop's "
        "power spectrum is read through the mel filterbank with its band edges scaled by "
        "2^(-k/12), which moves every partial k semitones without changing the tempo, and the "
        "key tags rotate by k; trains from the waveform cache instead of the log-mel cache",
    )
    chroma_loss_weight: float = _opt(
        0.0,
        "weight of an auxiliary target (0: off): a linear head on the mean encoder token "
        "predicts the excerpt's pitch-class profile (chroma, 60 Hz-2 kHz; rotated with the "
        "pitch shift) by soft cross-entropy, so that the tokens carry the pitch classes the "
        "key is read from; training-only, not saved; trains from the waveform cache",
    )
    chroma_rotation: float = _opt(
        0.0,
        "with chroma_tokens: the share of training crops (0-1) whose 12 chroma rows roll by a "
        "random k in 1..11, their key tags rotating by k and their mel rows left as they are, "
        "so every song teaches the key in other transpositions and the key is read from the "
        "pitch classes; trains from the log-mel cache",
    )
    seed: int = _opt(0, "seed of the weights, crops, shifts and batch order")
    workers: int | None = _opt(None, "audio-decoding processes for the log-mel cache (None: all)")
    device: str = _opt("cpu", "torch device")
    progress: bool = _opt(True, "progress bars")
    overwrite: bool = _opt(False, "retrain even when OUT holds a finished tagger")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ============================================================================ data


@dataclass
class TagData:
    """Log-mels, tag matrices and song ids of one split."""

    song_ids: list[str]
    log_mels: np.ndarray  # (N, n_mels, frames) float16 dB, before the encoder's BatchNorm
    targets: np.ndarray  # (N, n_tags) float32 in {0, 1}
    waveforms: np.ndarray | None = None  # (N, samples) float16, for pitch-shifted crops


def read_songs(data_dir: str | Path) -> dict[str, dict[str, Any]]:
    """songs.jsonl → {song_id: {"split", "truth"}} (the benchmark's per-song record)."""
    from recap.bench.scoring import read_songs as read_benchmark

    songs = read_benchmark(data_dir, need_truth=True)
    return {
        sid: {"split": song.get("split") or "train", "truth": song["truth"]}
        for sid, song in songs.items()
    }


def tag_matrix(truths: Sequence[Mapping[str, Any]], tags: Sequence[str]) -> np.ndarray:
    """(N, n_tags) 0/1 targets: tag j is on for song i when it is one of its audio tags."""
    from recap.bench import audio_tags

    index = {t: j for j, t in enumerate(tags)}
    y = np.zeros((len(truths), len(tags)), dtype=np.float32)
    for i, truth in enumerate(truths):
        for tag in audio_tags(truth):
            y[i, index[tag]] = 1.0
    return y


def random_crops(log_mels: np.ndarray, frames: int, rng: np.random.Generator) -> np.ndarray:
    """One random window of `frames` frames per clip: (B, n_mels, T) → (B, n_mels, frames)."""
    total = log_mels.shape[-1]
    if frames <= 0 or frames >= total:
        return log_mels
    starts = rng.integers(0, total - frames + 1, size=len(log_mels))
    return np.stack([m[:, s : s + frames] for m, s in zip(log_mels, starts)])


def key_rotations(tags: Sequence[str], max_shift: int) -> dict[int, np.ndarray]:
    """Per shift k, the column permutation that transposes a tag matrix by k semitones:
    `y[:, perm]` moves "key=C" to "key=D" for k = 2; every other tag stays in place."""
    from recap.bench.slots import TONICS

    index = {t: j for j, t in enumerate(tags)}
    rotations = {}
    for k in range(-max_shift, max_shift + 1):
        perm = np.arange(len(tags))
        for i, tonic in enumerate(TONICS):
            src, dst = f"key={tonic}", f"key={TONICS[(i + k) % 12]}"
            if src in index and dst in index:
                perm[index[dst]] = index[src]
        rotations[k] = perm
    return rotations


class PitchShifter:
    """Log-mels of waveform crops transposed by whole semitones, in the mel front end.

    A partial at f Hz, moved k semitones, falls into the mel band that covers f * 2^(k/12); the
    same weight is read by the band whose edges are divided by 2^(k/12), applied to the
    unshifted power spectrum. So a shift costs one filterbank per k (built once) and no
    resampling, and the time axis (tempo) is untouched.
    """

    def __init__(self, model: Any, max_shift: int) -> None:
        from recap.models.mel import htk_mel_filterbank

        c = model.config
        self.spectrogram = model.spec.spectrogram
        self.chroma_db = model.chroma_db if c.chroma_tokens else None
        self.max_shift = max_shift
        self.filterbanks = {
            k: htk_mel_filterbank(
                c.n_freqs, c.f_min, c.f_max, c.n_mels, c.sample_rate, freq_scale=2 ** (-k / 12)
            )
            for k in range(-max_shift, max_shift + 1)
        }  # fmt: skip

    def __call__(self, waveforms: torch.Tensor, shifts: Sequence[int]) -> torch.Tensor:
        """(B, samples) float, B shifts → dB log-mels (B, rows, frames), as `log_mel`."""
        power = self.spectrogram(waveforms.float())  # (B, n_freqs, frames)
        fb = torch.stack([self.filterbanks[int(k)] for k in shifts]).to(power)  # (B, F, M)
        mel = torch.bmm(power.transpose(1, 2), fb).transpose(1, 2)  # (B, M, frames)
        db = 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
        if self.chroma_db is None:
            return db
        chroma = self.chroma_db(power)  # (B, 12, frames): a k-semitone shift rolls it by k
        chroma = torch.stack([c.roll(int(k), dims=0) for c, k in zip(chroma, shifts)])
        return torch.cat([db, chroma], dim=1)  # (B, M + 12, frames)


def rotate_chroma_rows(crops: np.ndarray, shifts: Sequence[int], n_mels: int) -> np.ndarray:
    """(B, n_mels + 12, frames) log-mel crops with each crop's chroma rows (the last 12)
    rolled by its k: pitch class p moves to p + k, as a k-semitone transposition would move
    it. The mel rows stay."""
    out = crops.copy()
    for b, k in enumerate(shifts):
        out[b, n_mels:] = np.roll(crops[b, n_mels:], int(k), axis=0)
    return out


def pitch_class_profile(waveforms: np.ndarray, sample_rate: int, n_fft: int = 4096) -> np.ndarray:
    """(N, samples) → (N, 12) chroma summing to 1 (index 0 = C): the square-rooted STFT
    magnitude of the bins between 60 Hz and 2 kHz, each given to its nearest pitch class,
    averaged over time."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    band = (freqs > 60.0) & (freqs < 2000.0)
    pcs = np.round(12 * np.log2(freqs[band] / 440.0) + 69).astype(int) % 12
    to_pc = torch.zeros(int(band.sum()), 12)
    to_pc[torch.arange(len(pcs)), torch.from_numpy(pcs)] = 1.0
    window = torch.hann_window(n_fft)
    out = []
    for wave in waveforms:
        spec = torch.stft(
            torch.from_numpy(np.asarray(wave, np.float32)),
            n_fft,
            n_fft // 4,
            window=window,
            return_complex=True,
        ).abs()  # (F, frames)
        out.append((spec[torch.from_numpy(band)].sqrt().T @ to_pc).mean(0))
    chroma = torch.stack(out).numpy() if out else np.zeros((0, 12), np.float32)
    return chroma / np.maximum(chroma.sum(axis=1, keepdims=True), 1e-12)


def random_wave_crops(waves: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    """One random window of `samples` samples per clip: (B, T) → (B, samples)."""
    total = waves.shape[-1]
    if samples <= 0 or samples >= total:
        return waves
    starts = rng.integers(0, total - samples + 1, size=len(waves))
    return np.stack([w[s : s + samples] for w, s in zip(waves, starts)])


# ============================================================================ metrics


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC as the Mann-Whitney statistic: the chance that a positive outscores a negative,
    ties counting half (average ranks), which is sklearn's `roc_auc_score`. Computed for every
    tag twice at every epoch's validation: 3 ms against sklearn's 37 (its argument checks) for
    the demo's 28 tags, ~8 s of the demo's 120 epochs (benchmarks/tagger_step.py)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)  # average ranks of tied scores
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def tag_metrics(probs: np.ndarray, targets: np.ndarray, tags: Sequence[str]) -> dict[str, Any]:
    """Per-tag ROC-AUC and accuracy (threshold 0.5), and per slot the accuracy of the arg-max
    tag among that slot's tags (e.g. which of the 8 melody instruments), with its chance level.

    A tag whose test column is all 0 or all 1 has no ROC-AUC (None), and is left out of the mean.
    """
    per_tag: dict[str, dict[str, Any]] = {}
    aucs = []
    for j, tag in enumerate(tags):
        y, p = targets[:, j], probs[:, j]
        auc = roc_auc(y >= 0.5, p) if 0 < y.sum() < len(y) else None
        if auc is not None:
            aucs.append(auc)
        per_tag[tag] = {
            "roc_auc": auc,
            "accuracy": float(((p >= 0.5) == (y >= 0.5)).mean()) if len(y) else None,
            "positives": int(y.sum()),
        }
    per_slot: dict[str, dict[str, Any]] = {}
    slots = dict.fromkeys(t.split("=", 1)[0] for t in tags)
    for slot in slots:
        cols = [j for j, t in enumerate(tags) if t.split("=", 1)[0] == slot]
        labelled = targets[:, cols].sum(axis=1) > 0  # songs whose truth states this slot
        if not labelled.any():
            continue
        pred = probs[labelled][:, cols].argmax(axis=1)
        true = targets[labelled][:, cols].argmax(axis=1)
        per_slot[slot] = {
            "accuracy": float((pred == true).mean()),
            "chance": float(np.bincount(true, minlength=len(cols)).max() / len(true)),
            "n": int(labelled.sum()),
        }
    return {
        "mean_roc_auc": float(np.mean(aucs)) if aucs else None,
        "mean_accuracy": float(np.mean([v["accuracy"] for v in per_tag.values()])),
        "per_slot": per_slot,
        "per_tag": per_tag,
    }


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """A plain-text table: which split and how many songs, then per slot, then per tag."""
    lines = []
    n = metrics.get("n_songs")
    if n is not None:
        # With few songs each accuracy moves in steps of 1/n: say so beside the numbers.
        coarse = f" (few songs: accuracies move in steps of {1 / n:.2f})" if 0 < n < 30 else ""
        lines.append(f"tagger on the {metrics.get('split', 'test')} split, n = {n} songs{coarse}")
    lines.append(f"{'slot':<16}{'accuracy':>10}{'chance':>10}{'n':>6}")
    for slot, m in metrics["per_slot"].items():
        lines.append(f"{slot:<16}{m['accuracy']:>10.3f}{m['chance']:>10.3f}{m['n']:>6}")
    lines.append("")
    lines.append(f"{'tag':<24}{'ROC-AUC':>10}{'accuracy':>10}{'pos':>6}")
    for tag, m in metrics["per_tag"].items():
        auc = "-" if m["roc_auc"] is None else f"{m['roc_auc']:.3f}"
        lines.append(f"{tag:<24}{auc:>10}{m['accuracy']:>10.3f}{m['positives']:>6}")
    mean_auc = metrics["mean_roc_auc"]
    lines.append(
        f"mean ROC-AUC {'-' if mean_auc is None else f'{mean_auc:.3f}'}, "
        f"mean accuracy {metrics['mean_accuracy']:.3f}"
    )
    if "token_probe" in metrics:  # what the captioner can read from the token sequence
        probe = metrics["token_probe"]
        slots = ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in probe["per_slot"].items())
        lines.append(f"mean-token probe: mean ROC-AUC {probe['mean_roc_auc'] or 0:.3f}; {slots}")
    return "\n".join(lines)


# ============================================================================ training


@torch.no_grad()
def predict(
    model: Any,
    log_mels: np.ndarray,
    batch_size: int,
    device: torch.device,
    probe: torch.nn.Module | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Tag probabilities (N, n_tags) from whole log-mels, in eval mode: the tagging head's, and
    the mean-token probe's when one is given (else None)."""
    model.eval()
    head, tokens = [], []
    for i in range(0, len(log_mels), batch_size):
        x = torch.from_numpy(log_mels[i : i + batch_size]).to(device).float()
        sequence = model.embed_log_mel(x)  # (B, 1 + T', hidden)
        head.append(torch.sigmoid(model.tag_logits_from_sequence(sequence)).cpu())
        if probe is not None:
            tokens.append(torch.sigmoid(probe(sequence[:, 1:].mean(dim=1))).cpu())
    empty = np.zeros((0, model.config.n_tags), np.float32)
    head_probs = torch.cat(head).numpy() if head else empty
    if probe is None:
        return head_probs, None
    return head_probs, torch.cat(tokens).numpy() if tokens else empty


def _check_trainable(encoder: str) -> None:
    """The tagger trains a CNNSA from scratch; another kind of encoder is refused clearly."""
    from recap.models.encoders import parse_encoder_spec

    kind, _ = parse_encoder_spec(encoder)
    if kind != "cnnsa":
        raise RecapError(
            f"recap tagger train trains a CNNSA music encoder from scratch; {encoder} is a "
            f"pretrained {kind} encoder, which RECAP uses frozen: pass it straight to "
            f"`recap precompute --encoder {encoder}` or `recap train --encoder {encoder}`"
        )


# Settings that do not change what is trained: a finished tagger is reused when only these differ.
_REUSE_MUTABLE = frozenset({"data", "out", "workers", "device", "progress", "overwrite"})


def changed_settings(out: str | Path, config: TaggerConfig) -> list[str]:
    """The settings a finished tagger in `out` was trained with other values of than `config`
    ([] when `out` holds none); a setting an older tagger did not record counts at its default."""
    path = Path(out) / CONFIG_NAME
    if not path.is_file():
        return []
    saved = read_json(path, "tagger settings")
    return differing_settings(saved, config.to_dict(), TaggerConfig().to_dict(), _REUSE_MUTABLE)


def check_settings(cfg: TaggerConfig) -> None:
    """The settings that cannot train, refused before any data is read."""
    from recap.models.music_encoder import MusicEncoderConfig

    _check_trainable(cfg.preset)
    if not 0.0 <= cfg.chroma_rotation <= 1.0:
        raise RecapError(
            f"chroma_rotation is a share of the crops (0-1), not {cfg.chroma_rotation}"
        )
    if cfg.chroma_rotation and not MusicEncoderConfig.preset(cfg.preset).chroma_tokens:
        raise RecapError(
            f"chroma_rotation {cfg.chroma_rotation} rolls chroma rows that the {cfg.preset!r} "
            "encoder does not have: use one with chroma_tokens (demo-chroma) or set it to 0 "
            "(recap tagger train --chroma-rotation 0, recap demo --tagger-chroma-rotation 0)"
        )
    if cfg.chroma_rotation and cfg.pitch_shift:
        raise RecapError("chroma_rotation and pitch_shift both transpose: choose one")


def train_tagger(config: TaggerConfig) -> dict[str, Any]:
    """Train the encoder on the audio tags of `config.data`; returns the test metrics (also
    written to OUT/tagger_metrics.json). A finished OUT is reused unless `overwrite`."""
    from tqdm.auto import tqdm

    from recap.bench import audio_tag_vocabulary
    from recap.data.cache import precompute
    from recap.models.music_encoder import MusicEncoder, MusicEncoderConfig

    cfg = config
    out = Path(cfg.out)
    if not cfg.data or not cfg.out:
        raise RecapError("the tagger needs --data (a benchmark folder) and --out")
    check_settings(cfg)
    if (out / METRICS_NAME).is_file() and not cfg.overwrite:
        changed = changed_settings(out, cfg)
        if changed:
            raise RecapError(
                f"{out} holds a tagger trained with other settings ({', '.join(changed)}); "
                "pass --overwrite to train it again, or use another --out"
            )
        logger.info("%s holds a trained tagger; reusing it (--overwrite to retrain)", out)
        saved = json.loads((out / METRICS_NAME).read_text())
        metrics = saved["test"]
        metrics.setdefault("split", "test")
        metrics.setdefault("n_songs", (saved.get("n_songs") or {}).get("test"))
        return metrics
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = torch.device(cfg.device)

    songs = read_songs(cfg.data)
    tags = audio_tag_vocabulary(s["truth"] for s in songs.values())
    dropouts = (
        {}
        if cfg.dropout is None
        else dict.fromkeys(("hidden_dropout", "attention_dropout", "head_dropout"), cfg.dropout)
    )
    encoder_cfg = MusicEncoderConfig.preset(
        cfg.preset, n_tags=len(tags), tag_names=list(tags), **dropouts
    )
    # channels_last: oneDNN's convolutions run ~15 % faster in it on CPU (the demo's stage);
    # the saved weights go back to the default layout
    model = MusicEncoder(encoder_cfg).to(device, memory_format=torch.channels_last)

    # Log-mels once, in the cache (they depend only on the mel front end, not on the weights);
    # with pitch shifts, the waveforms, whose crops are transposed at every step.
    from_waves = bool(cfg.pitch_shift or cfg.chroma_loss_weight)
    kind = "waveform" if from_waves else "logmel"
    store, report = precompute(
        cfg.data, None if from_waves else model, kind=kind, song_ids=list(songs),
        num_workers=cfg.workers, device=str(device), progress=cfg.progress,
    )  # fmt: skip
    if len(report):
        logger.warning("%s (reasons in %s)", report.summary(), store.root / "skipped.json")

    @torch.no_grad()
    def log_mels_of(waves: np.ndarray) -> np.ndarray:
        out = [
            model.log_mel(torch.from_numpy(waves[i : i + 32]).float()).cpu().numpy()
            for i in range(0, len(waves), 32)
        ]
        return np.concatenate(out).astype(np.float16)

    def split(name: str) -> TagData:
        ids = [s for s, rec in songs.items() if rec["split"] == name and s in store]
        arrays = np.stack([store[s] for s in ids]) if ids else None
        waves = arrays if from_waves else None
        if arrays is None:
            mels = np.zeros((0, encoder_cfg.log_mel_rows, 1), np.float16)
        else:
            mels = log_mels_of(arrays) if from_waves else arrays
        targets = tag_matrix([songs[s]["truth"] for s in ids], tags)
        return TagData(ids, mels, targets, waves)

    train, val, test = split("train"), split("val"), split("test")
    if not len(train.song_ids):
        raise RecapError(f"{cfg.data}: no training songs with audio")
    if not len(test.song_ids):
        raise RecapError(f"{cfg.data}: no test songs to report on")
    frames = int(round(cfg.crop_seconds * encoder_cfg.sample_rate / encoder_cfg.hop_length))
    shifter = PitchShifter(model, cfg.pitch_shift) if cfg.pitch_shift else None
    chroma = (
        pitch_class_profile(train.waveforms, encoder_cfg.sample_rate)
        if cfg.chroma_loss_weight and train.waveforms is not None
        else None
    )  # (N, 12)
    chroma_head = (
        torch.nn.Linear(encoder_cfg.hidden_size, 12).to(device) if chroma is not None else None
    )
    # {0: identity} without shifts; every k of a whole octave with chroma rotation
    rotations = key_rotations(tags, 11 if cfg.chroma_rotation else cfg.pitch_shift)

    # Training-only linear probe on the mean token (B, hidden) → (B, n_tags); not saved.
    # Made only when used, so that the default run draws the same random numbers as before.
    probe = (
        torch.nn.Linear(encoder_cfg.hidden_size, len(tags)).to(device)
        if cfg.token_loss_weight
        else None
    )
    params = list(model.parameters())
    for head in (probe, chroma_head):
        params += list(head.parameters()) if head is not None else []
    # foreach: one kernel per operation over all ~100 tensors instead of a Python loop over
    # them (torch's default off CUDA); the same update
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "log.jsonl"
    log_path.unlink(missing_ok=True)
    best_auc, best_state, best_probe, best_epoch = -1.0, None, None, -1
    n = len(train.song_ids)
    steps = cfg.epochs * -(-n // cfg.batch_size)
    if cfg.schedule not in ("constant", "cosine"):
        raise RecapError(f"unknown schedule {cfg.schedule!r}: constant or cosine")
    warmup = -(-n // cfg.batch_size)

    def lr_factor(step: int) -> float:
        if cfg.schedule == "constant":
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + np.cos(np.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    bar = tqdm(total=steps, desc="tagger", disable=not cfg.progress, dynamic_ncols=True)
    started = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        order = rng.permutation(n)
        total = torch.zeros((), device=device)
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on one clip
                continue
            if shifter is not None:
                samples = (frames - 1) * encoder_cfg.hop_length  # `frames` frames (center=True)
                waves = torch.from_numpy(random_wave_crops(train.waveforms[idx], samples, rng))
                shifts = rng.integers(-cfg.pitch_shift, cfg.pitch_shift + 1, size=len(idx))
                x = shifter(waves.to(device), shifts)  # (B, n_mels, frames) dB
                targets = np.stack(
                    [t[rotations[int(k)]] for t, k in zip(train.targets[idx], shifts)]
                )
            else:
                crops = random_crops(train.log_mels[idx], frames, rng)
                targets = train.targets[idx]
                shifts = np.zeros(len(idx), dtype=int)
                if cfg.chroma_rotation:
                    rolled = rng.random(len(idx)) < cfg.chroma_rotation
                    shifts = np.where(rolled, rng.integers(1, 12, size=len(idx)), 0)
                    crops = rotate_chroma_rows(crops, shifts, encoder_cfg.n_mels)
                    targets = np.stack([t[rotations[int(k)]] for t, k in zip(targets, shifts)])
                x = torch.from_numpy(crops).to(device).float()
            y = torch.from_numpy(targets).to(device)
            sequence = model.embed_log_mel(x)  # (B, 1 + T', hidden)
            logits = model.tag_logits_from_sequence(sequence)  # (B, n_tags)
            loss = F.binary_cross_entropy_with_logits(logits, y)
            mean_token = sequence[:, 1:].mean(dim=1)  # (B, hidden), CLS left out
            if probe is not None:
                loss = loss + cfg.token_loss_weight * F.binary_cross_entropy_with_logits(
                    probe(mean_token), y
                )
            if chroma_head is not None:  # the profile moves with the shift: roll by k
                pcp = np.stack([np.roll(chroma[j], int(k)) for j, k in zip(idx, shifts)])
                log_p = F.log_softmax(chroma_head(mean_token), dim=-1)  # (B, 12)
                soft_ce = -(torch.from_numpy(pcp).to(device).float() * log_p).sum(dim=-1)
                loss = loss + cfg.chroma_loss_weight * soft_ce.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.detach() * len(idx)
            bar.update(1)
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": total.item() / n}
        # Select the epoch on the validation songs (the test split only reports): by the token
        # probe when there is one, since the captioner reads the tokens, not the tagging head.
        held = val if len(val.song_ids) else train
        head_probs, token_probs = predict(model, held.log_mels, cfg.batch_size, device, probe)
        auc = tag_metrics(head_probs, held.targets, tags)["mean_roc_auc"]
        record["val_mean_roc_auc"] = auc
        if token_probs is not None:
            auc = tag_metrics(token_probs, held.targets, tags)["mean_roc_auc"]
            record["val_token_roc_auc"] = auc
        if auc is not None and auc > best_auc:
            best_auc, best_epoch = auc, epoch + 1
            best_state = copy.deepcopy(model.state_dict())
            best_probe = copy.deepcopy(probe.state_dict()) if probe is not None else None
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_auc=f"{auc or 0:.3f}")
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
        if probe is not None and best_probe is not None:
            probe.load_state_dict(best_probe)
    model.eval()
    head_probs, token_probs = predict(model, test.log_mels, cfg.batch_size, device, probe)
    metrics = tag_metrics(head_probs, test.targets, tags)
    metrics["split"], metrics["n_songs"] = "test", len(test.song_ids)
    if token_probs is not None:
        probe_metrics = tag_metrics(token_probs, test.targets, tags)
        metrics["token_probe"] = {k: probe_metrics[k] for k in ("mean_roc_auc", "per_slot")}
    model.to("cpu", memory_format=torch.contiguous_format).save_pretrained(out)
    atomic_write_json(out / CONFIG_NAME, cfg.to_dict())
    atomic_write_json(
        out / METRICS_NAME,
        {
            "test": metrics,
            "best_epoch": best_epoch,
            "val_mean_roc_auc": best_auc,  # of the output named by selected_by
            "selected_by": "token_probe" if probe is not None else "tagging_head",
            "n_songs": {"train": n, "val": len(val.song_ids), "test": len(test.song_ids)},
            "train_seconds": time.perf_counter() - started,
            "skipped": len(report),
        },
    )
    return metrics


__all__ = ["TaggerConfig", "format_metrics", "tag_metrics", "train_tagger"]
