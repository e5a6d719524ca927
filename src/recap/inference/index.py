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

Songs without lyrics (instrumentals) are indexed by their audio alone: their lyrics row is zero,
`has_lyrics` is false in meta.json, and the lyrics side's searcher holds only songs with lyrics,
so an audio query never returns a song as "lyrics that fit". Each is a work of its own.

This module is the index alone (vectors, FAISS, the folder); building one from a model and
searching it with one is recap.inference.indexing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recap.data.songs import prepare_lyrics
from recap.evaluation.retrieval import chance_metrics, retrieval_metrics
from recap.utils import RecapError, atomic_write_json, make_temp_dir, read_json

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
    has_lyrics: bool = True  # False: an instrumental, indexed by its audio only
    work: str | None = None  # the catalogue's work id (renderings of one piece share it)
    audio: str | None = None  # absolute path of the audio file the entry was built from

    @property
    def work_key(self) -> str:
        """What makes two entries one work: the catalogue's work id, else equal lyrics; a song
        without lyrics is a work of its own (empty lyrics would otherwise all be one)."""
        if self.work:
            return f"work:{self.work}"
        return f"lyrics:{self.lyrics_key}" if self.has_lyrics else f"song:{self.song_id}"


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
        # The lyrics side searches only songs that have lyrics; its ids are rows of this list.
        self._lyrics_rows = np.array([i for i, s in enumerate(self.songs) if s.has_lyrics], int)
        self._lyrics_index = (
            make_faiss_index(self.lyrics[self._lyrics_rows], self.settings, lyrics_c)
            if self._lyrics_rows.size
            else None
        )
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
        if side == "lyrics":
            if self._lyrics_index is None:
                raise RecapError("no song of this index has lyrics: search it with lyrics instead")
            index, rows = self._lyrics_index, self._lyrics_rows
        else:
            index, rows = self._audio_index, np.arange(len(self.songs))
        n = int(rows.size)  # the songs this side holds (instrumentals have no lyrics side)
        k = max(1, min(int(k), n))
        fetch = min(n, 4 * k) if distinct else k
        while True:
            scores, ids = index.search(queries, fetch)  # (Q, fetch); id -1 = none found (IVF)
            songs = np.where(ids >= 0, rows[np.maximum(ids, 0)], -1)  # (Q, fetch) rows of songs
            hits = [self._hits(s, i, k, distinct) for s, i in zip(scores, songs)]
            # Too few distinct works among the first `fetch` songs: look further down.
            if not distinct or fetch == n or all(len(h) == k for h in hits):
                return hits
            fetch = min(n, 4 * fetch)

    def _hits(self, scores: np.ndarray, songs: np.ndarray, k: int, distinct: bool) -> list[Hit]:
        """Hits for one query: `songs` are rows of `self.songs` (-1: none found), best first."""
        hits: list[Hit] = []
        seen: set[str] = set()
        for score, i in zip(scores, songs):
            if i < 0:
                continue
            entry = self.songs[int(i)]
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
        work share lyrics); the chance figures account for that. Songs without lyrics have no
        pair to find and are left out.
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
        rows = np.array([i for i in rows if self.songs[i].has_lyrics], dtype=int)
        if rows.size == 0:
            raise RecapError(f"no song with lyrics in split {split or 'all'!r}: nothing to pair")
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
                    if index is not None:
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
        meta = read_json(meta_path, "index metadata")
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


def check_index_out(out: str | os.PathLike) -> None:
    """Refuse an index destination that `SongIndex.save` would refuse, before any work."""
    out = Path(out)
    if out.exists() and not (
        out.is_dir() and ((out / "meta.json").is_file() or not any(out.iterdir()))
    ):
        raise RecapError(
            f"{out} exists and is not a recap index; refusing to overwrite it (choose a new folder)"
        )


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
