"""A FAISS index of songs in RECAP's aligned audio/lyrics space: search one modality by the other.

The alignment loss (SPEC §1.4) pulls a song's mean-pooled music vector and its projected lyrics
vector together, so after L2 normalisation an inner product is a cosine similarity across
modalities. An index folder holds both sides of every song:

    INDEX/
      meta.json     format version, model path + fingerprint, kind, and per song: id, first line
                    of the lyrics, a hash of the lyrics (songs sharing lyrics are one "work"), split,
                    the work id when the catalogue names one, and the audio file it was built from
      audio.npy     (N, D) float32 unit vectors of the audio
      lyrics.npy    (N, D) float32 unit vectors of the lyrics
      *.ivf_centroids.npy  IVF only: the trained list centroids (k-means over 1e5 songs takes
                    ~25 s on one core), so loading only assigns the vectors to their lists

An exact index is rebuilt from the vectors on load (instant); an IVF index whose kind or nlist is
overridden (or whose centroid files are missing) is trained again. Nothing in the folder is
unpickled or parsed by FAISS: it is JSON and .npy arrays, checked on load. Search is exact (`IndexFlatIP`) up to `IVF_THRESHOLD` songs and approximate
(`IndexIVFFlat`, inner product) above it, unless the kind is given. An audio query searches the lyrics side ("which lyrics fit this music?"); a lyrics
query searches the audio side ("which songs sound like these words?").
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recap.inference.captioner import (
    Captioner,
    SongInput,
    collect_inputs,
    prepare_lyrics,
    read_manifest,
    resolve_model_dir,
)
from recap.utils import RecapError, SkipReport, atomic_write_json, make_temp_dir

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
IVF_THRESHOLD = 50_000  # below this many songs exact search is fast enough (~ms per query)
KINDS = ("auto", "flat", "ivf")


# ---------------------------------------------------------------------------- settings
@dataclass
class IndexSettings:
    """Which FAISS structure to use. None values are chosen from the catalogue size."""

    kind: str = "auto"
    nlist: int | None = None
    nprobe: int | None = None
    ivf_threshold: int = IVF_THRESHOLD

    def resolve(self, n: int) -> IndexSettings:
        """Concrete settings for a catalogue of `n` songs."""
        if self.kind not in KINDS:
            raise RecapError(f"index kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        kind = self.kind
        if kind == "auto":
            kind = "ivf" if n >= self.ivf_threshold else "flat"
        if kind == "flat":
            return IndexSettings("flat", None, None, self.ivf_threshold)
        # FAISS's rule of thumb: ~4·sqrt(N) lists, and >= 39 training points per list.
        nlist = self.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
        if nlist > n:
            raise RecapError(f"nlist {nlist} exceeds the catalogue size {n}")
        nprobe = self.nprobe or max(1, nlist // 32)  # ~0.94 recall@10 on the benchmark
        return IndexSettings("ivf", nlist, min(nprobe, nlist), self.ivf_threshold)


def make_faiss_index(
    vectors: np.ndarray, settings: IndexSettings, centroids: np.ndarray | None = None
) -> Any:
    """A FAISS inner-product index over unit `vectors` (N, D), exact or IVF as resolved. An IVF
    index takes its list centroids from `centroids` when given (saved at build time), which
    skips k-means: assigning the vectors to the lists is all that loading costs."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    s = settings.resolve(n)
    if s.kind == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, s.nlist, faiss.METRIC_INNER_PRODUCT)
        if centroids is not None:
            quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
            index.is_trained = True
        else:
            index.cp.seed = 1234  # k-means initialisation: the same vectors give the same lists
            index.train(vectors)
        index.nprobe = s.nprobe
    index.add(vectors)
    return index


def ivf_centroids(index: Any) -> np.ndarray | None:
    """The (nlist, D) list centroids of an IVF index, None for an exact one."""
    quantizer = getattr(index, "quantizer", None)
    if quantizer is None:
        return None
    return quantizer.reconstruct_n(0, quantizer.ntotal)


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, so inner product = cosine (a zero row stays zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


# ---------------------------------------------------------------------------- catalogue
@dataclass
class SongEntry:
    song_id: str
    first_line: str
    lyrics_key: str  # hash of the normalised lyrics: songs with equal lyrics are one work
    split: str | None = None
    work: str | None = None  # the catalogue's work id (renderings of one piece share it)
    audio: str | None = None  # absolute path of the audio file the entry was built from

    @property
    def work_key(self) -> str:
        """What makes two entries one work: the catalogue's work id, else equal lyrics; a song
        without lyrics is a work of its own (empty lyrics would otherwise all be one)."""
        if self.work:
            return f"work:{self.work}"
        return f"lyrics:{self.lyrics_key}" if self.first_line else f"song:{self.song_id}"


def lyrics_key(text: str) -> str:
    return hashlib.sha1(prepare_lyrics(text).lower().encode("utf-8")).hexdigest()[:16]


def first_line(text: str) -> str:
    for line in text.replace(";", "\n").splitlines():
        if line.strip():
            return line.strip()[:120]
    return ""


@dataclass
class Hit:
    rank: int
    song_id: str
    score: float
    first_line: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SongIndex:
    """Both sides of a catalogue in the aligned space, with FAISS searchers over each."""

    songs: list[SongEntry]
    audio: np.ndarray  # (N, D) unit vectors
    lyrics: np.ndarray  # (N, D) unit vectors
    settings: IndexSettings
    model_path: str = ""
    model_fingerprint: str = ""
    # (audio, lyrics) IVF list centroids read from disk; None = train them (k-means).
    centroids: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for side in ("audio", "lyrics"):
            array = getattr(self, side)
            if (
                array.ndim != 2
                or array.shape[1] == 0
                or not np.issubdtype(array.dtype, np.floating)
            ):
                raise RecapError(
                    f"the index's {side} vectors must be a 2-D float array, got "
                    f"{array.dtype} of shape {array.shape}"
                )
            bad = ~np.isfinite(array).all(axis=1)
            if bad.any():
                # A NaN vector matches nothing, so searches would quietly return no hits.
                ids = [
                    self.songs[i].song_id for i in np.flatnonzero(bad)[:5] if i < len(self.songs)
                ]
                raise RecapError(
                    f"{int(bad.sum())} {side} vector(s) of the index are NaN or infinite "
                    f"(songs {', '.join(ids)}); rebuild the index"
                )
        self.audio = np.ascontiguousarray(self.audio, dtype=np.float32)
        self.lyrics = np.ascontiguousarray(self.lyrics, dtype=np.float32)
        if self.audio.shape != self.lyrics.shape or self.audio.shape[0] != len(self.songs):
            raise RecapError(
                f"index sides disagree: audio {self.audio.shape}, lyrics {self.lyrics.shape}, "
                f"{len(self.songs)} songs"
            )
        if not self.songs:
            raise RecapError("an index needs at least one song")
        self.settings = self.settings.resolve(len(self.songs))
        audio_c, lyrics_c = self.centroids if self.centroids is not None else (None, None)
        self._audio_index = make_faiss_index(self.audio, self.settings, audio_c)
        self._lyrics_index = make_faiss_index(self.lyrics, self.settings, lyrics_c)
        self.centroids = None

    def __len__(self) -> int:
        return len(self.songs)

    @property
    def dim(self) -> int:
        return int(self.audio.shape[1])

    # -- search
    def search(
        self, queries: np.ndarray, side: str, k: int = 10, distinct: bool = False
    ) -> list[list[Hit]]:
        """Top-k songs per query row; `side` is the side searched: "lyrics" (for audio queries)
        or "audio" (for lyrics queries). `distinct`: k different works (`SongEntry.work_key`),
        each at its best-scoring song, so two renderings of one piece are listed once."""
        if side not in ("audio", "lyrics"):
            raise RecapError(f"side must be 'audio' or 'lyrics', not {side!r}")
        queries = normalize(np.atleast_2d(queries))  # (Q, D)
        if not np.isfinite(queries).all():
            raise RecapError("the query vector is NaN or infinite (a broken model or input)")
        if queries.shape[1] != self.dim:
            raise RecapError(
                f"query vectors have {queries.shape[1]} dimensions, the index {self.dim}: "
                "was it built with another model?"
            )
        index = self._lyrics_index if side == "lyrics" else self._audio_index
        n = len(self.songs)
        k = max(1, min(int(k), n))
        fetch = min(n, 4 * k) if distinct else k
        while True:
            scores, ids = index.search(queries, fetch)  # (Q, fetch); id -1 = none found (IVF)
            rows = [self._hits(s, i, k, distinct) for s, i in zip(scores, ids)]
            # Too few distinct works among the first `fetch` songs: look further down.
            if not distinct or fetch == n or all(len(r) == k for r in rows):
                return rows
            fetch = min(n, 4 * fetch)

    def _hits(self, scores: np.ndarray, ids: np.ndarray, k: int, distinct: bool) -> list[Hit]:
        hits: list[Hit] = []
        seen: set[str] = set()
        for score, i in zip(scores, ids):
            if i < 0:
                continue
            entry = self.songs[i]
            if distinct:
                if entry.work_key in seen:
                    continue
                seen.add(entry.work_key)
            hits.append(Hit(len(hits) + 1, entry.song_id, float(score), entry.first_line))
            if len(hits) == k:
                break
        return hits

    # -- evaluation
    def evaluate(self, split: str | None = "test") -> dict[str, Any]:
        """Recall@1/5/10 and MRR in both directions over the songs of `split` (None = all).

        Exact search within the split's songs (the candidates are that split only, as in the
        retrieval literature), so the figures measure the model, not the approximate index.
        A retrieved song counts as correct when its lyrics equal the query's (renderings of one
        work share lyrics); the chance figures account for that.
        """
        if split in (None, "all"):
            rows = np.arange(len(self.songs))
        else:
            if all(s.split is None for s in self.songs):
                raise RecapError("the index has no split information; evaluate with split 'all'")
            rows = np.array([i for i, s in enumerate(self.songs) if s.split == split], dtype=int)
            if rows.size == 0:
                splits = sorted({s.split for s in self.songs if s.split})
                raise RecapError(f"no songs in split {split!r} (splits: {', '.join(splits)})")
        groups = np.array([self.songs[i].lyrics_key for i in rows])
        audio, lyrics = self.audio[rows], self.lyrics[rows]
        a2l = retrieval_metrics(audio, lyrics, groups)
        l2a = retrieval_metrics(lyrics, audio, groups)
        return {
            "split": split or "all",
            "songs": int(rows.size),
            "works": int(len(set(groups.tolist()))),
            "audio_to_lyrics": a2l,
            "lyrics_to_audio": l2a,
            "chance": chance_metrics(groups),
        }

    # -- persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the index folder; an existing index there is replaced in one rename."""
        path = Path(path)
        check_index_out(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(path.parent, f".{path.name}.")
        try:
            np.save(tmp / "audio.npy", self.audio, allow_pickle=False)
            np.save(tmp / "lyrics.npy", self.lyrics, allow_pickle=False)
            if self.settings.kind == "ivf":  # k-means is slow: keep the trained lists
                # As plain arrays, not FAISS's own serialisation: loading parses no binary
                # format beyond .npy, and the lists are rebuilt from them without k-means.
                for side, index in (("audio", self._audio_index), ("lyrics", self._lyrics_index)):
                    np.save(tmp / f"{side}{CENTROIDS_SUFFIX}", ivf_centroids(index),
                            allow_pickle=False)  # fmt: skip
            atomic_write_json(tmp / "meta.json", self._meta())
            if path.exists():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return path

    def _meta(self) -> dict[str, Any]:
        return {
            "format": "recap-index",
            "format_version": FORMAT_VERSION,
            "dim": self.dim,
            "count": len(self.songs),
            "settings": asdict(self.settings),
            "model_path": self.model_path,
            "model_fingerprint": self.model_fingerprint,
            "songs": [asdict(s) for s in self.songs],
        }

    @classmethod
    def load(cls, path: str | os.PathLike, **overrides: Any) -> SongIndex:
        """Read an index folder; `overrides` (kind, nlist, nprobe) change the search structure."""
        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise RecapError(f"{path} is not a recap index (no meta.json)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise RecapError(f"cannot read {meta_path} (corrupt index?): {exc}") from exc
        if not isinstance(meta, dict):
            raise RecapError(f"corrupt index {path}: meta.json is not an object")
        if meta.get("format") != "recap-index" or meta.get("format_version") != FORMAT_VERSION:
            raise RecapError(
                f"{path} holds index format {meta.get('format')!r} version "
                f"{meta.get('format_version')!r}; this recap reads recap-index version "
                f"{FORMAT_VERSION} (rebuild it with `recap index build`)"
            )
        try:
            audio = np.load(path / "audio.npy", allow_pickle=False)
            lyrics = np.load(path / "lyrics.npy", allow_pickle=False)
            songs = [SongEntry(**s) for s in meta["songs"]]
            for s in songs:
                if not isinstance(s.song_id, str) or not isinstance(s.first_line, str):
                    raise TypeError(f"song entry {s} has non-text fields")
                if not all(isinstance(v, str | None) for v in (s.work, s.audio)):
                    raise TypeError(f"song entry {s.song_id}: work and audio must be text")
            stored = IndexSettings(**meta["settings"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RecapError(f"corrupt index {path}: {type(exc).__name__}: {exc}") from exc
        settings = dataclasses.replace(stored)
        for key, value in overrides.items():
            if value is not None:
                setattr(settings, key, value)
        if overrides.get("kind") and overrides["kind"] != stored.kind:
            settings.nlist = overrides.get("nlist")  # the stored nlist belongs to the old kind
            settings.nprobe = overrides.get("nprobe")
        centroids = None
        if stored.kind == "ivf" and settings.kind == stored.kind and settings.nlist == stored.nlist:
            centroids = _load_centroids(path, stored.nlist, audio.shape[-1])
        try:
            return cls(
                songs,
                audio,
                lyrics,
                settings,
                str(meta.get("model_path", "")),
                str(meta.get("model_fingerprint", "")),
                centroids=centroids,
            )
        except RecapError as exc:
            raise RecapError(f"corrupt index {path}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - FAISS refusing crafted settings or arrays
            raise RecapError(f"corrupt index {path}: {type(exc).__name__}: {exc}") from exc


CENTROIDS_SUFFIX = ".ivf_centroids.npy"


def _load_centroids(
    path: Path, nlist: int | None, dim: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """The saved IVF centroids of both sides, or None (with a note) when they are missing or
    do not fit, in which case the lists are trained again."""
    out = []
    for side in ("audio", "lyrics"):
        file = path / f"{side}{CENTROIDS_SUFFIX}"
        try:
            c = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            log.warning(
                "%s: cannot use %s (%s); training the IVF lists again", path, file.name, exc
            )
            return None
        if c.ndim != 2 or c.shape != (nlist, dim) or not np.isfinite(c).all():
            log.warning(
                "%s: %s does not fit the index; training the IVF lists again", path, file.name
            )
            return None
        out.append(c.astype(np.float32))
    return out[0], out[1]


# ---------------------------------------------------------------------------- metrics
def retrieval_metrics(
    queries: np.ndarray, keys: np.ndarray, groups: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@k and MRR of exact search: query i's correct keys are those with groups[i]."""
    n = queries.shape[0]
    ranks = np.empty(n, dtype=np.int64)
    for start in range(0, n, 1024):
        sim = queries[start : start + 1024] @ keys.T  # (q, N) cosine similarities
        correct = groups[start : start + 1024, None] == groups[None, :]  # (q, N)
        best = np.where(correct, sim, -np.inf).max(axis=1)  # best-scoring correct key
        # Rank of the first correct key: 1 + wrong keys scoring strictly higher (ties favour it).
        ranks[start : start + 1024] = 1 + ((sim > best[:, None]) & ~correct).sum(axis=1)
    out = {f"recall@{k}": float((ranks <= k).mean()) for k in ks}
    out["mrr"] = float((1.0 / ranks).mean())
    out["median_rank"] = float(np.median(ranks))
    return out


def chance_metrics(groups: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Expected recall@k and MRR of a random ranking, per query with g correct keys among N."""
    n = len(groups)
    _, sizes = np.unique(groups, return_counts=True)
    # Each group of size g contributes g queries, each with g correct keys.
    weights = sizes / n
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = float(sum(w * _p_hit_within(n, g, k) for g, w in zip(sizes, weights)))
    out["mrr"] = float(sum(w * _expected_rr(n, g) for g, w in zip(sizes, weights)))
    return out


def _p_hit_within(n: int, g: int, k: int) -> float:
    """P(at least one of g correct items in the first k of a random order of n)."""
    if k >= n - g + 1:
        return 1.0
    t = np.arange(k)
    return 1.0 - float(np.prod((n - g - t) / (n - t)))


def _expected_rr(n: int, g: int) -> float:
    """E[1 / rank of the first correct item] for g correct among n in random order."""
    r = np.arange(1, n - g + 2)  # possible first-hit ranks
    # P(first r-1 all wrong) = prod_{t<r-1} (n-g-t)/(n-t); then P(hit at r) = g/(n-r+1).
    miss = np.concatenate([[1.0], np.cumprod((n - g - np.arange(n - g)) / (n - np.arange(n - g)))])
    p = miss[: r.size] * g / (n - r + 1)
    return float((p / r).sum())


# ---------------------------------------------------------------------------- embedding
def embed_audio(captioner: Captioner, waveforms: Sequence[np.ndarray]) -> np.ndarray:
    """Unit music vectors (B, D) of prepared excerpts: encoder → mean-pool → normalise."""
    import torch

    wave = torch.from_numpy(np.stack(waveforms).astype(np.float32)).to(captioner.device)  # (B, T)
    with torch.inference_mode():
        tokens = captioner.model.music_encoder(wave)  # (B, 119, C)
        vectors = captioner.model.embed_music(tokens)  # (B, D)
    return normalize(vectors.float().cpu().numpy())


def embed_lyrics(captioner: Captioner, texts: Sequence[str]) -> np.ndarray:
    """Unit projected lyrics vectors (B, D)."""
    import torch

    batch = captioner.encode_lyrics(texts)
    with torch.inference_mode():
        vectors = captioner.model.embed_lyrics(
            batch["input_ids"], batch["attention_mask"]
        )  # (B, D)
    return normalize(vectors.float().cpu().numpy())


def embed_songs(
    captioner: Captioner, songs: Sequence[SongInput], batch_size: int = 16, progress: bool = True
) -> tuple[list[SongInput], np.ndarray, np.ndarray, SkipReport]:
    """Embed both sides of every usable song; bad ones go into the returned SkipReport."""
    from tqdm.auto import tqdm

    skipped = SkipReport("index build")
    kept: list[SongInput] = []
    audio_parts: list[np.ndarray] = []
    lyrics_parts: list[np.ndarray] = []
    bar = tqdm(total=len(songs), desc="embed", unit="song", disable=not progress)
    for start in range(0, len(songs), max(1, batch_size)):
        chunk_songs, waves = [], []
        for song in songs[start : start + batch_size]:
            if song.lyrics is None or not song.lyrics.strip():
                skipped.add(f"{song.id} ({song.audio_label})", "missing or empty lyrics")
                continue
            try:
                waves.append(captioner.load_waveform(song.audio, song.sample_rate))
                chunk_songs.append(song)
            except RecapError as exc:
                skipped.add(f"{song.id} ({song.audio_label})", f"unreadable audio: {exc}")
        if chunk_songs:
            try:
                parts = [(embed_audio(captioner, waves),
                          embed_lyrics(captioner, [s.lyrics for s in chunk_songs]))]  # fmt: skip
                groups = [chunk_songs]
            except Exception:  # noqa: BLE001 - embed one by one to find the item at fault
                parts, groups = [], []
                for song, wave in zip(chunk_songs, waves):
                    try:
                        parts.append((embed_audio(captioner, [wave]),
                                      embed_lyrics(captioner, [song.lyrics])))  # fmt: skip
                        groups.append([song])
                    except Exception as exc:  # noqa: BLE001 - reported per song
                        skipped.add(f"{song.id} ({song.audio_label})", f"cannot embed: {exc}")
            for group, (a, lyr) in zip(groups, parts):
                # NaN vectors would sit in the index matching nothing: refuse them per song.
                ok = np.isfinite(a).all(axis=1) & np.isfinite(lyr).all(axis=1)
                for song in (g for g, good in zip(group, ok) if not good):
                    skipped.add(
                        f"{song.id} ({song.audio_label})", "the model gave NaN or infinite vectors"
                    )
                audio_parts.append(a[ok])
                lyrics_parts.append(lyr[ok])
                kept.extend(g for g, good in zip(group, ok) if good)
        bar.update(min(batch_size, len(songs) - start))
    bar.close()
    if not kept:
        raise RecapError(f"no usable song among {len(songs)}; {skipped.items[:3]}")
    return kept, np.concatenate(audio_parts), np.concatenate(lyrics_parts), skipped


def check_index_out(out: str | os.PathLike) -> None:
    """Refuse an index destination that `SongIndex.save` would refuse, before any work."""
    out = Path(out)
    if out.exists() and not (
        out.is_dir() and ((out / "meta.json").is_file() or not any(out.iterdir()))
    ):
        raise RecapError(
            f"{out} exists and is not a recap index; refusing to overwrite it (choose a new folder)"
        )


def catalogue_songs(data: str | os.PathLike, report: SkipReport | None = None) -> list[SongInput]:
    """The songs of a dataset folder (dataset.jsonl + audios/), an audio folder with <stem>.txt
    lyrics, or a CSV/JSONL manifest. A dataset's songs appear once (first row's lyrics)."""
    data = Path(data)
    if data.is_dir() and any((data / n).exists() for n in ("dataset.jsonl", "dataset.json")):
        from recap.data.songs import audio_path, load_rows

        songs: dict[str, SongInput] = {}
        for row in load_rows(data, report):
            if row.song_id not in songs:
                work = row.extra.get("work_id")
                songs[row.song_id] = SongInput(
                    str(row.song_id),
                    audio_path(data, row.song_id),
                    row.lyrics,
                    split=row.split,
                    work=str(work) if work else None,
                )
        if not songs:
            raise RecapError(f"no rows in {data}")
        return list(songs.values())
    if data.is_file():
        return read_manifest(data, report)
    return collect_inputs(data, report=report)


def model_fingerprint(model_dir: Path) -> str:
    """sha256 of the weights file: an index only makes sense with the model that built it."""
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        return ""
    h = hashlib.sha256()
    with weights.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:32]


def build_index(
    model: str | os.PathLike | Captioner,
    data: str | os.PathLike,
    out: str | os.PathLike | None = None,
    settings: IndexSettings | None = None,
    batch_size: int = 16,
    device: Any = None,
    progress: bool = True,
) -> tuple[SongIndex, SkipReport]:
    """Embed a catalogue and (if `out`) save the index; skipped songs go to `out/skipped.json`."""
    if out is not None:
        check_index_out(out)  # before hours of embedding, not after
    captioner = model if isinstance(model, Captioner) else Captioner.from_pretrained(model, device)
    rows = SkipReport("index build")
    songs = catalogue_songs(data, rows)
    kept, audio, lyrics, skipped = embed_songs(captioner, songs, batch_size, progress)
    skipped.items[:0] = rows.items
    source = captioner.source
    entries = [
        SongEntry(
            s.id,
            first_line(s.lyrics or ""),
            lyrics_key(s.lyrics or ""),
            s.split,
            work=s.work,
            audio=None if isinstance(s.audio, np.ndarray) else str(Path(s.audio).resolve()),
        )
        for s in kept
    ]
    index = SongIndex(
        entries,
        audio,
        lyrics,
        settings or IndexSettings(),
        model_path=str(source.resolve()) if source else "",
        model_fingerprint=model_fingerprint(source) if source else "",
    )
    if out is not None:
        index.save(out)
        if len(skipped):
            skipped.write(Path(out) / "skipped.json")
    return index, skipped


# ---------------------------------------------------------------------------- searching
class Searcher:
    """An index plus the model that embeds queries for it."""

    def __init__(self, index: SongIndex, captioner: Captioner):
        fp = model_fingerprint(captioner.source) if captioner.source else ""
        if index.model_fingerprint and fp and fp != index.model_fingerprint:
            raise RecapError(
                f"the index was built with another model ({index.model_path}); searching it "
                f"with {captioner.source} would compare unrelated vectors — rebuild the index"
            )
        self.index = index
        self.captioner = captioner

    @classmethod
    def load(
        cls,
        index: str | os.PathLike,
        model: str | os.PathLike | None = None,
        device: Any = None,
        nprobe: int | None = None,
    ) -> Searcher:
        """Load an index and its model (the one recorded in the index unless `model` is given)."""
        idx = SongIndex.load(index, nprobe=nprobe)
        model = model or idx.model_path
        if not model:
            raise RecapError("the index records no model path; pass --model")
        return cls(idx, Captioner.from_pretrained(resolve_model_dir(model), device))

    def search_audio(self, audio: Any, sample_rate: int | None = None, k: int = 10) -> list[Hit]:
        """Lyrics whose vectors lie nearest this audio's."""
        wave = self.captioner.load_waveform(audio, sample_rate)
        return self.index.search(embed_audio(self.captioner, [wave]), "lyrics", k)[0]

    def search_lyrics(self, text: str, k: int = 10) -> list[Hit]:
        """Songs whose audio vectors lie nearest these lyrics'."""
        return self.index.search(embed_lyrics(self.captioner, [text]), "audio", k)[0]


# ---------------------------------------------------------------------------- CLI
def register(subparsers: Any) -> None:
    p = subparsers.add_parser("index", help="build or evaluate an audio/lyrics search index")
    sub = p.add_subparsers(dest="index_command", required=True, metavar="ACTION")

    b = sub.add_parser("build", help="embed a catalogue into a FAISS index")
    b.add_argument("--model", required=True, help="model folder or training RUN folder")
    b.add_argument("--data", required=True, help="dataset folder, audio folder, or manifest")
    b.add_argument("--out", required=True, help="index folder to write")
    _add_index_settings(b)
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--device", default=None)
    b.set_defaults(func=_cmd_build)

    e = sub.add_parser("eval", help="recall@1/5/10 and MRR both ways on a split")
    e.add_argument("--index", required=True)
    e.add_argument("--split", default="test", help="split to evaluate, or 'all' (default: test)")
    e.add_argument("--json", dest="json_out", help="also write the metrics here")
    e.set_defaults(func=_cmd_eval)

    s = subparsers.add_parser("search", help="top-K lyrics for an audio file, or songs for lyrics")
    s.add_argument("--index", required=True)
    s.add_argument("--model", default=None, help="default: the model recorded in the index")
    q = s.add_mutually_exclusive_group(required=True)
    q.add_argument("--audio", help="audio file: find the lyrics that fit it")
    q.add_argument("--lyrics", help="lyrics text: find the songs that sound like it")
    q.add_argument("--lyrics-file", help="lyrics from a file")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.add_argument("--nprobe", type=int, default=None, help="IVF lists to visit")
    s.add_argument("--device", default=None)
    s.set_defaults(func=_cmd_search)


def _add_index_settings(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kind", choices=KINDS, default="auto", help=f"auto: ivf from {IVF_THRESHOLD} songs"
    )
    p.add_argument("--nlist", type=int, default=None, help="IVF lists (default ~4·sqrt(N))")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists visited per query")


def _cmd_build(args: argparse.Namespace) -> int:
    settings = IndexSettings(args.kind, args.nlist, args.nprobe)
    index, skipped = build_index(
        args.model, args.data, args.out, settings, args.batch_size, args.device
    )
    s = index.settings
    kind = s.kind if s.kind == "flat" else f"ivf (nlist {s.nlist}, nprobe {s.nprobe})"
    print(f"indexed {len(index)} song(s), {index.dim}-d, {kind} → {args.out}", file=sys.stderr)
    print(skipped.summary(), file=sys.stderr)
    return 0


def format_metrics(m: dict[str, Any]) -> str:
    lines = [f"split {m['split']}: {m['songs']} songs, {m['works']} distinct lyrics"]
    names = ["recall@1", "recall@5", "recall@10", "mrr"]
    lines.append(f"{'':18}" + "".join(f"{n:>11}" for n in names))
    for label, key in (
        ("audio → lyrics", "audio_to_lyrics"),
        ("lyrics → audio", "lyrics_to_audio"),
        ("random chance", "chance"),
    ):
        lines.append(f"{label:18}" + "".join(f"{m[key][n]:>11.3f}" for n in names))
    return "\n".join(lines)


def _cmd_eval(args: argparse.Namespace) -> int:
    metrics = SongIndex.load(args.index).evaluate(None if args.split == "all" else args.split)
    print(format_metrics(metrics))
    if args.json_out:
        atomic_write_json(args.json_out, metrics)
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    searcher = Searcher.load(args.index, args.model, args.device, nprobe=args.nprobe)
    if args.audio:
        hits, what = searcher.search_audio(args.audio, k=args.k), "lyrics"
    else:
        text = args.lyrics
        if args.lyrics_file:
            try:
                text = Path(args.lyrics_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise RecapError(f"cannot read lyrics file {args.lyrics_file}: {exc}") from exc
        if not text or not text.strip():
            raise RecapError("the lyrics query is empty")
        hits, what = searcher.search_lyrics(text, k=args.k), "songs"
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], ensure_ascii=False, indent=2))
    else:
        print(f"top {len(hits)} {what}:")
        for h in hits:
            print(f"{h.rank:>3}  {h.score:+.3f}  {h.song_id}  {h.first_line}")
    return 0
