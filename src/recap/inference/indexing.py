"""Indexing songs with a trained model and searching the index with it (`recap index build`,
`recap index search`, the server's /search).

A `Captioner` embeds each song into RECAP's aligned space: its audio (music encoder → mean over
every window's tokens) and its lyrics (the projected pooled encoder state), both unit vectors;
`build_index` stores them in a `recap.inference.index.SongIndex` with the fingerprint of the
model's weights, and a `Searcher` refuses an index built by another model.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recap.inference.captioner import Captioner
from recap.inference.generate import resolve_model_dir
from recap.inference.index import (
    Hit,
    IndexSettings,
    SongEntry,
    SongIndex,
    check_index_out,
    first_line,
    lyrics_key,
    normalize,
)
from recap.inference.inputs import SongInput, collect_inputs, read_manifest
from recap.utils import RecapError, SkipReport, hash_file_into


# ---------------------------------------------------------------------------- embedding
def embed_audio(captioner: Captioner, waveforms: Sequence[np.ndarray]) -> np.ndarray:
    """Unit music vectors (B, D) of prepared audio (each (W, T) windows or one (T,) excerpt):
    encoder → mean over every window's tokens → normalise."""
    import torch

    music = captioner.music(waveforms)  # music_embeds (B, W*119, C) [+ music_mask]
    with torch.inference_mode():
        vectors = captioner.model.embed_music(**music)  # (B, D)
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


def has_lyrics(song: SongInput) -> bool:
    return bool(song.lyrics and song.lyrics.strip())


def _lyrics_side(captioner: Captioner, songs: Sequence[SongInput]) -> np.ndarray:
    """Unit lyrics vectors (B, D); zero rows for songs without lyrics."""
    out = np.zeros((len(songs), captioner.model.config.music_dim), dtype=np.float32)
    rows = [i for i, s in enumerate(songs) if has_lyrics(s)]
    if rows:
        out[rows] = embed_lyrics(captioner, [songs[i].lyrics for i in rows])  # type: ignore
    return out


def embed_songs(
    captioner: Captioner, songs: Sequence[SongInput], batch_size: int = 16, progress: bool = True
) -> tuple[list[SongInput], np.ndarray, np.ndarray, SkipReport]:
    """Embed both sides of every usable song; bad ones go into the returned SkipReport. A song
    without lyrics gets its audio vector and a zero lyrics vector."""
    from tqdm.auto import tqdm

    skipped = SkipReport("index build")
    kept: list[SongInput] = []
    audio_parts: list[np.ndarray] = []
    lyrics_parts: list[np.ndarray] = []
    bar = tqdm(total=len(songs), desc="embed", unit="song", disable=not progress)
    for start in range(0, len(songs), max(1, batch_size)):
        chunk_songs, waves = [], []
        for song in songs[start : start + batch_size]:
            try:
                waves.append(captioner.load_waveform(song.audio, song.sample_rate))
                chunk_songs.append(song)
            except RecapError as exc:
                skipped.add(f"{song.id} ({song.audio_label})", f"unreadable audio: {exc}")
        if chunk_songs:
            try:
                parts = [(embed_audio(captioner, waves),
                          _lyrics_side(captioner, chunk_songs))]  # fmt: skip
                groups = [chunk_songs]
            except Exception:  # noqa: BLE001 - embed one by one to find the item at fault
                parts, groups = [], []
                for song, wave in zip(chunk_songs, waves):
                    try:
                        parts.append((embed_audio(captioner, [wave]),
                                      _lyrics_side(captioner, [song])))  # fmt: skip
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


def catalogue_songs(data: str | os.PathLike, report: SkipReport | None = None) -> list[SongInput]:
    """The songs of a dataset folder (dataset.jsonl + audios/), an audio folder with <stem>.txt
    lyrics, or a CSV/JSONL manifest. A dataset's songs appear once (first row's lyrics); songs
    without lyrics are kept (indexed by their audio)."""
    data = Path(data)
    if data.is_dir() and any((data / n).exists() for n in ("dataset.jsonl", "dataset.json")):
        from recap.data.songs import audio_path, load_rows

        songs: dict[str, SongInput] = {}
        for row in load_rows(data, report, allow_empty_lyrics=True):
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
    return hash_file_into(hashlib.sha256(), weights).hexdigest()[:32]


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
            first_line(s.lyrics) if has_lyrics(s) else "",
            lyrics_key(s.lyrics) if has_lyrics(s) else f"audio:{lyrics_key(s.id)}",
            s.split,
            has_lyrics=has_lyrics(s),
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
