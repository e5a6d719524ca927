"""Feature caches: waveform excerpts, log-mels and music-encoder embeddings, one file per song.

Training reads only these caches, so no audio is decoded per step (the frozen encoder runs once,
in eval mode; SPEC §1.1).

Layout: `DATA_DIR/cache/<kind>-<key>/` holds `meta.json` (the settings), one `<song>.npy` per song
(float16) and `skipped.json` (the songs the last run could not use, with reasons). `<key>` hashes
every setting that changes the stored numbers:
- waveform:   the audio config's fingerprint (rate, duration, offset, resampler, pipeline version,
              and the window count and hop when a song is heard in several windows);
- logmel:     that + the mel front end (its config fields and its window/filterbank buffers);
- embeddings: that + the encoder's `fingerprint()` (recap.models.encoders: its settings and the
  bytes of its whole state dict, whatever the kind of encoder; CNNSA's mel front end too).
Change any of them and a new folder fills; old ones stay valid for their settings.

With `AudioConfig.windows > 1` (whole songs, `recap.data.audio.load_windows`) a song's file holds
its W windows: waveform (W, n_samples), logmel (W, n_mels, frames), embeddings (W*M, D) — the
windows' tokens one after the other, as fusion reads them. W varies with the song's length.

Why one .npy per song rather than shards + an index: each file is written to a temporary name and
renamed (atomic), so an interrupted run leaves only complete files, "is it cached?" is one stat,
resuming needs no index to repair, and readers can memory-map single songs. 27,834 songs make
27,834 files of ~61 kB (embeddings), which any file system handles. File names are the song id,
percent-escaped, plus 8 hex digits of its SHA-1, so ids that differ only in case (Music4All ids
are case-sensitive) never collide on case-insensitive file systems. An id whose escaped form is
too long for a file name (long or non-ASCII ids) keeps a 96-character readable prefix plus its
SHA-256, and its full id goes into a `.id` file beside the array.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import numpy as np

from recap.data.audio import AudioConfig, AudioError, Excerpt, Windows, load_excerpt, load_windows
from recap.data.songs import audio_path, load_rows
from recap.utils import (
    RecapError,
    SkipReport,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    is_file,
)

if TYPE_CHECKING:
    from recap.models.encoders import MusicEncoderProtocol

logger = logging.getLogger(__name__)

KINDS = ("embeddings", "logmel", "waveform")
CACHE_VERSION = 1
STORE_DTYPE = np.float16  # halves the disk; fp16 keeps ~3 significant digits (≈66 dB for audio)


# --------------------------------------------------------------------------- keys


def cache_settings(
    kind: str, audio_config: AudioConfig, encoder: MusicEncoderProtocol | None = None
) -> dict[str, Any]:
    """Every setting that changes the cached numbers of `kind` (hashed into the folder name).

    An encoder with a mel front end (CNNSA) adds its `mel_fingerprint()`: the log-mel cache's
    key, and part of the embeddings' key too (so CNNSA caches keep the keys they had before
    the encoder seam). Embeddings add the encoder's `fingerprint()`.
    """
    if kind not in KINDS:
        raise RecapError(f"unknown cache kind {kind!r}; choose one of {', '.join(KINDS)}")
    settings: dict[str, Any] = {
        "cache_version": CACHE_VERSION,
        "kind": kind,
        "audio": audio_config.fingerprint(),
    }
    if kind != "waveform":
        if encoder is None:
            raise RecapError(f"the {kind} cache needs a music encoder")
        if encoder.sample_rate != audio_config.sample_rate:
            raise RecapError(
                f"the encoder expects {encoder.sample_rate} Hz audio but the audio config gives "
                f"{audio_config.sample_rate} Hz"
            )
        mel_fingerprint = getattr(encoder, "mel_fingerprint", None)
        if mel_fingerprint is not None:
            settings["mel"] = mel_fingerprint()
        elif kind == "logmel":
            raise RecapError(
                f"the logmel cache holds CNNSA's mel front end; a {encoder.kind} encoder has none"
            )
    if kind == "embeddings":
        settings["encoder"] = encoder.fingerprint()  # type: ignore[union-attr]
    return settings


def cache_key(
    kind: str, audio_config: AudioConfig, encoder: MusicEncoderProtocol | None = None
) -> str:
    blob = json.dumps(cache_settings(kind, audio_config, encoder), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------- store


# File names stay well under the 255-byte limit of common file systems whatever the id: a
# percent-escaped non-ASCII character takes 9 bytes, so a 30-character id can already overflow.
_MAX_READABLE = 96


def _file_name(song_id: str) -> str:
    """`<escaped id>~<8 hex of SHA-1>.npy`; an id whose escaped form is longer than
    _MAX_READABLE keeps a readable prefix and gets the full SHA-256 instead (the prefix alone
    no longer tells songs apart), with the id itself in a `.id` file beside it."""
    escaped = quote(song_id, safe="")
    if len(escaped) <= _MAX_READABLE:
        return f"{escaped}~{hashlib.sha1(song_id.encode()).hexdigest()[:8]}.npy"
    cut = escaped[:_MAX_READABLE]
    if "%" in cut[-2:]:  # never split a %XX escape
        cut = cut[: cut.rindex("%")]
    return f"{cut}~{hashlib.sha256(song_id.encode()).hexdigest()[:32]}.npy"


def _song_id_of(path: Path) -> str | None:
    """The song id of a store file, or None for a file this scheme did not write."""
    prefix, _, digest = path.name[: -len(".npy")].rpartition("~")
    candidate = unquote(prefix)
    if len(digest) == 8 and hashlib.sha1(candidate.encode()).hexdigest()[:8] == digest:
        return candidate
    try:
        return path.with_suffix(".id").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


class FeatureStore(Mapping[str, np.ndarray]):
    """A read/write mapping song_id → float16 array, backed by one .npy per song."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise RecapError(f"{self.root} is not a feature cache (no meta.json)")
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
            self.kind: str = self.meta["kind"]
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            raise RecapError(f"{meta_path} is corrupt: {exc!r}") from exc

    @classmethod
    def create(cls, root: str | os.PathLike, meta: dict[str, Any]) -> FeatureStore:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "meta.json").is_file():
            atomic_write_json(root / "meta.json", meta)
        return cls(root)

    @classmethod
    def open(cls, path: str | os.PathLike, kind: str = "embeddings") -> FeatureStore:
        """A store folder, or a data/cache folder holding exactly one store of `kind`."""
        path = Path(path)
        if (path / "meta.json").is_file():
            return cls(path)
        for base in (path / "cache", path):
            stores = sorted(p.parent for p in base.glob(f"{kind}-*/meta.json"))
            if len(stores) == 1:
                return cls(stores[0])
            if len(stores) > 1:
                raise RecapError(
                    f"{base} holds several {kind} caches ({', '.join(p.name for p in stores)}); "
                    "open one of them by path"
                )
        raise RecapError(f"no {kind} cache under {path}; run `recap precompute` first")

    def path_for(self, song_id: str) -> Path:
        return self.root / _file_name(song_id)

    def __contains__(self, song_id: object) -> bool:
        return isinstance(song_id, str) and is_file(self.path_for(song_id))

    def __getitem__(self, song_id: str) -> np.ndarray:
        path = self.path_for(song_id)
        if not path.is_file():
            raise KeyError(song_id)
        return np.load(path, allow_pickle=False)

    def __iter__(self) -> Iterator[str]:
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if entry.name.endswith(".npy") and not entry.name.startswith("."):
                song_id = _song_id_of(Path(entry.path))
                if song_id is not None:
                    yield song_id

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def put(self, song_id: str, array: np.ndarray) -> None:
        """Write one song atomically (temp file + rename): a killed run never leaves half a file."""
        path = self.path_for(song_id)
        if not path.name.startswith(quote(song_id, safe="")):  # a shortened name: keep the id
            atomic_write_bytes(path.with_suffix(".id"), song_id.encode("utf-8"))
        with atomic_path(path, suffix=".npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(array, dtype=STORE_DTYPE), allow_pickle=False)

    def missing(self, song_ids: Iterable[str]) -> list[str]:
        return [sid for sid in song_ids if sid not in self]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, kind={self.kind!r})"


# The trainer's name for it: a store of (M, D) float16 embeddings per song ((119, 256): CNNSA).
EmbeddingStore = FeatureStore


# --------------------------------------------------------------------------- decoding


def _decode(path: str, config: AudioConfig) -> Excerpt | Windows | str:
    """Worker body: an excerpt (the song's windows when config.windows > 1), or the reason it
    failed (exceptions stay in the worker)."""
    try:
        return load_windows(path, config) if config.windows > 1 else load_excerpt(path, config)
    except AudioError as err:
        return str(err)


def _excerpts(
    jobs: list[tuple[str, Path]], config: AudioConfig, workers: int, window: int
) -> Iterator[tuple[str, Excerpt | Windows | str]]:
    """Decoded excerpts in job order. With workers > 1 a process pool decodes ahead, at most
    `window` files in flight so memory stays bounded when the encoder is the slower side."""
    if workers <= 1:
        for sid, path in jobs:
            yield sid, _decode(str(path), config)
        return
    # spawn: workers import only numpy/soundfile/soxr, never inherit torch's thread pools
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    pending: deque[tuple[str, Future]] = deque()
    it = iter(jobs)
    try:
        for sid, path in it:
            pending.append((sid, pool.submit(_decode, str(path), config)))
            if len(pending) >= window:
                break
        while pending:
            sid, fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt[0], pool.submit(_decode, str(nxt[1]), config)))
            try:
                result = fut.result()
            except BrokenProcessPool as err:
                # spawn re-imports the caller's __main__; code typed into stdin has no file
                raise RecapError(
                    f"the decoding workers died ({err}); run from a script file or module, "
                    "or use num_workers=0 (--workers 0)"
                ) from err
            yield sid, result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _dataset_song_ids(data_dir: Path) -> list[str]:
    """Song ids of the dataset in `data_dir` (first appearance order); else the audio files."""
    try:
        rows = load_rows(data_dir, SkipReport("precompute rows"))
        return list(dict.fromkeys(r.song_id for r in rows))
    except RecapError:
        audios = data_dir / "audios"
        if not audios.is_dir():
            raise RecapError(f"{data_dir}: no dataset file and no audios/ folder") from None
        return sorted({p.stem for p in audios.iterdir() if p.is_file()})


def _resolve_encoder(encoder: Any, device: str) -> MusicEncoderProtocol | None:
    if encoder is None:
        return None
    from recap.models.encoders import build_music_encoder

    return build_music_encoder(encoder, device=device)


def precompute(
    data_dir: str | os.PathLike,
    encoder: MusicEncoderProtocol | str | os.PathLike | None,
    audio_config: AudioConfig = AudioConfig(),
    batch_size: int = 16,
    num_workers: int | None = None,
    device: str = "cpu",
    song_ids: Iterable[str] | None = None,
    kind: str = "embeddings",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[FeatureStore, SkipReport]:
    """Fill the `kind` cache for `song_ids` (default: every song of the dataset in `data_dir`).

    Only songs not yet cached are computed, so a second run is a no-op and an interrupted run
    resumes. Audio is decoded by a process pool (`num_workers`, default all cores; 0 or 1 decodes
    in this process); the encoder runs in eval mode under `torch.inference_mode`, `batch_size`
    songs at a time, on `device`. Songs that cannot be used go to the SkipReport (also written to
    `<store>/skipped.json`) and are tried again on the next run.
    """
    from tqdm.auto import tqdm

    from recap.models.encoders import audio_config_for

    data_dir = Path(data_dir)
    model = _resolve_encoder(encoder, device) if kind != "waveform" else None
    # Decode at the encoder's rate (48 kHz for CLAP): each file is resampled once, from its own.
    audio_config = audio_config_for(model, audio_config)
    settings = cache_settings(kind, audio_config, model)
    key = cache_key(kind, audio_config, model)
    root = Path(cache_dir) if cache_dir is not None else data_dir / "cache"
    meta = {
        **settings,
        "audio_config": audio_config.to_dict(),
        "encoder_kind": model.kind if model is not None else None,
        "encoder_config": model.config.to_dict() if model is not None else None,
        "dtype": np.dtype(STORE_DTYPE).name,
        "layout": "one <song>.npy per song",
    }
    store = FeatureStore.create(root / f"{kind}-{key}", meta)
    report = SkipReport(f"precompute {kind}")
    ids = list(dict.fromkeys(song_ids)) if song_ids is not None else _dataset_song_ids(data_dir)
    todo = store.missing(ids)
    if not todo:
        logger.info("%s: all %d songs already cached", store.root, len(ids))
        return store, report

    jobs = []
    for sid in todo:
        path = audio_path(data_dir, sid)
        if is_file(path):
            jobs.append((sid, path))
        else:
            report.add(sid, f"missing audio: {path}")
    workers = (os.cpu_count() or 1) if num_workers is None else num_workers
    bar = tqdm(total=len(todo), desc=f"precompute {kind}", unit="song", disable=not progress)
    bar.update(len(todo) - len(jobs))
    batch: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        if not batch:
            return
        try:
            arrays = _run_batch(model, kind, batch, device)
        except Exception:  # noqa: BLE001 - run the songs one by one to find the one at fault
            arrays = []
            for item in batch:
                try:
                    arrays.extend(_run_batch(model, kind, [item], device))
                except Exception as exc:  # noqa: BLE001 - reported per song
                    report.add(item[0], f"the encoder failed: {type(exc).__name__}: {exc}")
                    arrays.append(None)
        for sid, array in zip([s for s, _ in batch], arrays):
            if array is None:
                continue
            if np.isfinite(array).all():
                store.put(sid, array)
            else:  # e.g. values beyond float16's range
                report.add(sid, "non-finite values in the computed features")
        bar.update(len(batch))
        batch.clear()

    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()  # BatchNorm running stats, no dropout: the frozen encoder of SPEC §1.1
    try:
        window = max(2 * batch_size, 4 * max(workers, 1))
        for sid, result in _excerpts(jobs, audio_config, workers, window):
            if isinstance(result, str):
                report.add(sid, result)
                bar.update(1)
                continue
            waves = result.waveforms if isinstance(result, Windows) else result.waveform
            batch.append((sid, waves))  # (n_samples,), or (W, n_samples) for windows
            if len(batch) >= batch_size:
                flush()
        flush()
    finally:
        bar.close()
        if model is not None:
            model.train(was_training)
        report.write(store.root / "skipped.json")
    return store, report


def _run_batch(
    model: Any, kind: str, batch: list[tuple[str, np.ndarray]], device: str
) -> list[np.ndarray]:
    if kind == "waveform":
        return [w for _, w in batch]
    import torch

    # Windowed songs: every window of the batch through the encoder at once, then regrouped.
    counts = [1 if w.ndim == 1 else w.shape[0] for _, w in batch]
    waves = np.concatenate([w.reshape(-1, w.shape[-1]) for _, w in batch])  # (ΣW, n_samples)
    with torch.inference_mode():
        x = torch.from_numpy(waves).to(device)
        # logmel: (ΣW, n_mels, frames) dB before the BatchNorm; embeddings: (ΣW, 119, hidden)
        out = model.log_mel(x) if kind == "logmel" else model(x)
        out = out.float().cpu().numpy()
    arrays, at = [], 0
    for (_, w), n in zip(batch, counts):
        part = out[at : at + n]
        at += n
        if w.ndim == 1:
            arrays.append(part[0])
        elif kind == "embeddings":
            arrays.append(part.reshape(-1, part.shape[-1]))  # (W, M, D) -> (W*M, D)
        else:
            arrays.append(part)  # (W, n_mels, frames)
    return arrays


def ensure_embeddings(
    data_dir: str | os.PathLike,
    encoder_spec: MusicEncoderProtocol | str | os.PathLike,
    song_ids: Iterable[str],
    audio_config: AudioConfig = AudioConfig(),
    device: str = "cpu",
    batch_size: int = 16,
    num_workers: int | None = None,
    progress: bool = True,
) -> EmbeddingStore:
    """The embedding store for these songs, computing only the missing ones (for the trainer).

    Songs whose audio cannot be used are absent from the store (check `song_id in store`); the
    reasons are in `<store>/skipped.json` and a warning gives their count.
    """
    store, report = precompute(
        data_dir,
        encoder_spec,
        audio_config=audio_config,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        song_ids=song_ids,
        kind="embeddings",
        progress=progress,
    )
    if len(report):
        logger.warning(
            "%d song(s) have no embedding; reasons in %s", len(report), store.root / "skipped.json"
        )
    return store
