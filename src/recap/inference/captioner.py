"""`Captioner`: interpret songs from their audio and lyrics with a trained RECAP model.

The user-facing side of the project. A `Captioner` wraps a model folder (or a training RUN
folder, whose `best/` is used) with its tokenizer and audio settings:

    cap = Captioner.from_pretrained("runs/demo")
    cap.caption("song.mp3", lyrics)                       # a path ...
    cap.caption(samples, lyrics, sample_rate=44100)       # ... or an array with its rate
    cap.caption_batch([("a.mp3", la), ("b.mp3", lb)])     # batched
    cap.caption("instrumental.wav")                       # no lyrics: an audio-only interpretation

A song is heard in as many windows of 15 s as the model was trained on (`RecapConfig.
music_windows`), or, for a model trained on several, in up to `DEFAULT_WINDOWS` (its first 3
minutes); `windows=` / `audio_config` override it. Fusion attends over all the windows' music
tokens. Without lyrics the lyrics
encoder gets the empty text (<s></s>), as captioners trained with `lyrics_dropout` saw it; the
lyrics-only `bart` method hears no audio and refuses such songs.

`recap caption` runs it over one file, a folder of audio files with `<stem>.txt` lyrics beside
them, or a manifest (CSV / JSONL with `audio` and `lyrics` or `lyrics_path` columns). Bad items
(unreadable audio) are reported per item in the output and in a skip report; the job goes on,
and exits non-zero only when every item failed. Songs without lyrics get an audio-only caption.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recap.data.songs import prepare_lyrics
from recap.inference.generate import (
    DecodeSettings,
    generate_texts,
    load_model_and_tokenizer,
)
from recap.utils import RecapError, SkipReport, is_file

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (
    ".mp3",
    ".wav",
    ".flac",
    ".ogg",
    ".oga",
    ".aiff",
    ".aif",
)  # libsndfile reads these
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json")

AudioInput = str | os.PathLike | np.ndarray
# Whole songs: up to 12 windows of 15 s, the first 3 minutes (the paper hears the first 15 s).
# Heard by default only by a model trained on several windows (`RecapConfig.music_windows`):
# a captioner trained on one window captions worse from more (docs/results.md).
DEFAULT_WINDOWS = 12
# Windows per music-encoder call: bounds the encoder's activation memory whatever the batch.
ENCODER_CHUNK = 32


def no_audio_message(method: str) -> str:
    return (
        f"the {method} model reads lyrics only and hears no audio, so it cannot interpret a song "
        "without lyrics: give the lyrics, or use a model that listens (bart-fusion or recap)"
    )


def default_windows(model_config: Any) -> int:
    """The windows a model hears when the caller does not say: the whole song (up to
    DEFAULT_WINDOWS) for a model trained on several windows, else the count it was trained on
    (1 for the paper's single excerpt and for models saved before windows existed)."""
    trained = int(getattr(model_config, "music_windows", 1) or 1)
    return max(DEFAULT_WINDOWS, trained) if trained > 1 else trained


def listening_config(
    model_config: Any, windows: int | None = None, hop: float | None = None
) -> Any:
    """The `AudioConfig` a model hears songs with: `windows` (default: `default_windows`)
    excerpts of 15 s, `hop` seconds apart (default: back to back)."""
    from recap.data.audio import AudioConfig

    return AudioConfig(
        windows=windows if windows is not None else default_windows(model_config), hop=hop
    )


# ---------------------------------------------------------------------------- inputs
@dataclass
class SongInput:
    """One song to caption or index. `lyrics` None (or empty) means the song has none: its
    interpretation comes from the audio alone."""

    id: str
    audio: AudioInput
    lyrics: str | None
    sample_rate: int | None = None
    split: str | None = None
    work: str | None = None  # renderings of one piece share a work id (the index lists it once)

    @property
    def audio_label(self) -> str:
        return "<array>" if isinstance(self.audio, np.ndarray) else str(self.audio)


@dataclass
class CaptionResult:
    id: str
    audio: str
    caption: str | None = None
    error: str | None = None
    windows: int | None = None  # how many windows of audio the model heard
    # the windows whole-song listening would take (up to DEFAULT_WINDOWS): more than `windows`
    # when the model hears less than the song by default (trained on fewer windows)
    song_windows: int | None = None
    lyrics: bool | None = None  # whether lyrics were given (False: an audio-only interpretation)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def collect_inputs(
    source: str | os.PathLike,
    lyrics: str | os.PathLike | None = None,
    report: SkipReport | None = None,
) -> list[SongInput]:
    """The songs named by `source`: an audio file (lyrics from `lyrics` or `<stem>.txt`), a
    folder of audio files with `<stem>.txt` lyrics beside them, or a CSV/JSONL manifest (its
    unusable rows go to `report`)."""
    source = Path(source)
    if not source.exists():
        raise RecapError(f"{source} does not exist")
    if source.is_dir():
        if lyrics is not None:
            raise RecapError(
                "--lyrics goes with a single audio file; a folder uses <stem>.txt files"
            )
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise RecapError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) in {source}")
        return [SongInput(p.stem, p, _read_lyrics_file(p.with_suffix(".txt"))) for p in files]
    if source.suffix.lower() in MANIFEST_SUFFIXES:
        if lyrics is not None:
            raise RecapError("--lyrics goes with a single audio file; a manifest holds the lyrics")
        return read_manifest(source, report)
    lyrics_path = Path(lyrics) if lyrics is not None else source.with_suffix(".txt")
    if lyrics is not None and not lyrics_path.is_file():
        raise RecapError(
            f"lyrics file {lyrics_path} does not exist (to give the lyrics themselves, use "
            "--lyrics-text)"
        )
    return [SongInput(source.stem, source, _read_lyrics_file(lyrics_path))]


def read_manifest(path: str | os.PathLike, report: SkipReport | None = None) -> list[SongInput]:
    """Rows of a CSV / JSONL / JSON-list manifest. Columns: `audio` (path, relative to the
    manifest's folder), `lyrics` (text) or `lyrics_path`; optional `id` and `split`.

    A row that cannot be used (no audio, lyrics that are not text, a line that is not JSON) is
    logged and recorded in `report` with its line number, and the other rows go on.
    """
    path = Path(path)
    report = report if report is not None else SkipReport("manifest")
    try:
        # utf-8-sig: spreadsheet programs start CSV files with a byte-order mark, which would
        # otherwise become part of the first column's name.
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecapError(f"cannot read manifest {path}: {exc}") from exc
    suffix = path.suffix.lower()
    rows: list[tuple[str, Any]] = []
    try:
        if suffix == ".csv":
            reader = csv.DictReader(io.StringIO(text))
            rows = [(f"{path.name}:{reader.line_num}", row) for row in reader]
        elif suffix == ".json":
            data = json.loads(text)
            if not isinstance(data, list):
                raise RecapError(f"manifest {path} must hold a JSON list of objects, one per song")
            rows = [(f"{path.name}[{i}]", row) for i, row in enumerate(data)]
        else:
            for number, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                where = f"{path.name}:{number}"
                try:
                    rows.append((where, json.loads(line)))
                except json.JSONDecodeError as exc:
                    _skip_row(report, where, f"not valid JSON ({exc.msg}, column {exc.colno})")
                except RecursionError:
                    _skip_row(report, where, "JSON nested too deeply")
    except (json.JSONDecodeError, csv.Error) as exc:
        raise RecapError(f"manifest {path} is not valid {suffix[1:].upper()}: {exc}") from exc
    except RecursionError as exc:
        raise RecapError(f"manifest {path}: JSON nested too deeply") from exc
    items = []
    for where, row in rows:
        try:
            items.append(_manifest_song(row, path.parent))
        except ValueError as exc:
            _skip_row(report, where, str(exc))
    if not items:
        raise RecapError(
            f"manifest {path} has no usable rows"
            + (f" ({report.items[0]['item']}: {report.items[0]['reason']})" if len(report) else "")
        )
    return items


def _skip_row(report: SkipReport, where: str, reason: str) -> None:
    log.warning("skipping %s: %s", where, reason)
    report.add(where, reason)


def _manifest_song(row: Any, base: Path) -> SongInput:
    """One manifest row as a SongInput; ValueError says what is wrong with it."""
    if not isinstance(row, dict):
        raise ValueError(f"expected an object with audio and lyrics, got {type(row).__name__}")
    audio = row.get("audio") or row.get("audio_path") or row.get("path")
    if audio is None or (isinstance(audio, str) and not audio.strip()):
        raise ValueError("no audio file named (empty or missing 'audio' column)")
    if not isinstance(audio, str):
        raise ValueError(f"'audio' must be a file name, got {type(audio).__name__}")
    audio_path = Path(audio) if Path(audio).is_absolute() else base / audio
    text_value = row.get("lyrics")
    if text_value is not None and not isinstance(text_value, str):
        raise ValueError(f"'lyrics' must be text, got {type(text_value).__name__}")
    lyrics_path = row.get("lyrics_path")
    if not text_value and lyrics_path:
        if not isinstance(lyrics_path, str):
            raise ValueError(f"'lyrics_path' must be a file name, got {type(lyrics_path).__name__}")
        lp = Path(lyrics_path)
        text_value = _read_lyrics_file(lp if lp.is_absolute() else base / lp)
    song_id = row.get("id") or row.get("song_id") or audio_path.stem
    split = row.get("split")
    work = row.get("work_id")
    return SongInput(
        str(song_id),
        audio_path,
        text_value or None,
        split=str(split) if split else None,
        work=str(work) if work else None,
    )


def _read_lyrics_file(path: Path) -> str | None:
    """The text of a lyrics file, or None when it does not exist or cannot be read."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return decode_text(data)


def decode_text(data: bytes) -> str:
    """UTF-8 (a byte-order mark is dropped); else Windows-1252, else Latin-1, which decodes any
    bytes: older lyrics files are often in a Western 8-bit encoding, and reading them as
    "missing" would lose the song."""
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


# ---------------------------------------------------------------------------- the captioner
class Captioner:
    """A trained RECAP model with its tokenizer and audio settings, ready to caption songs."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        audio_config: Any = None,
        source: Path | None = None,
        int8: bool = False,
    ):
        """`audio_config`: the windows heard (`recap.data.audio.AudioConfig`); default
        `listening_config(model.config)`: as many as `default_windows` of 15 s, back to back.
        `int8`: quantize the model's Linear layers to int8 (CPU only; a copy, `model` is left
        as it is) — faster decoding on a CPU, slightly different captions (docs/cpu.md)."""
        from recap.models.encoders import audio_config_for

        if int8:
            from recap.inference.quantize import quantize_int8

            model = quantize_int8(model)
        self.model = model
        self.int8 = int8
        self.tokenizer = tokenizer
        if audio_config is None:
            audio_config = listening_config(model.config)
        # audio is decoded at the music encoder's rate (16 kHz CNNSA, 48 kHz CLAP)
        self.audio_config = audio_config_for(getattr(model, "music_encoder", None), audio_config)
        self.source = source

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: Any = None,
        encoder: Any = None,
        windows: int | None = None,
        hop: float | None = None,
        int8: bool = False,
    ) -> Captioner:
        """Load a model folder or a training RUN folder (its `best/`); `encoder`: see
        `load_model_and_tokenizer`; `windows` and `hop`: see `listening_config` (by default a
        model trained on one window hears one, a model trained on several the whole song);
        `int8`: see __init__."""
        if int8 and device is None:
            device = "cpu"  # quantized kernels are CPU kernels
        model, tokenizer, folder = load_model_and_tokenizer(path, device, encoder=encoder)
        audio_config = listening_config(model.config, windows, hop)
        return cls(model, tokenizer, audio_config=audio_config, source=folder, int8=int8)

    @property
    def trained_windows(self) -> int:
        """The windows per song the model was trained on (1: the paper's single excerpt)."""
        return int(getattr(self.model.config, "music_windows", 1) or 1)

    def song_windows(self, source_duration: float) -> int:
        """The windows whole-song listening takes from a song this long (up to
        DEFAULT_WINDOWS, or the configured count if more), with the configured hop."""
        from recap.data.audio import window_starts

        whole = dataclasses.replace(
            self.audio_config, windows=max(DEFAULT_WINDOWS, self.audio_config.windows)
        )
        return len(window_starts(whole, source_duration))

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    # -- inputs -> tensors
    def load_waveform(self, audio: AudioInput, sample_rate: int | None = None) -> np.ndarray:
        """The windows heard of a path or an array: (W, n) float32, 15 s mono at the encoder's
        rate each (240,000 samples at 16 kHz; W from `audio_config` and the song's length)."""
        return self.load_windows(audio, sample_rate).waveforms

    def load_windows(self, audio: AudioInput, sample_rate: int | None = None) -> Any:
        """`recap.data.audio.Windows` of a path or an array: the waveforms and the song's length."""
        from recap.data.audio import AudioError, load_windows, windows_from_array

        if isinstance(audio, np.ndarray):
            if sample_rate is None:
                raise RecapError("an audio array needs its sample_rate")
            try:
                return windows_from_array(audio, sample_rate, self.audio_config)
            except AudioError:
                raise
            except Exception as exc:  # e.g. a 3-D array
                raise RecapError(f"unusable audio array: {exc}") from exc
        path = Path(audio)
        if not is_file(path):
            raise RecapError(f"audio file {path} does not exist")
        return load_windows(path, self.audio_config)

    def music_sequences(self, waveforms: Sequence[np.ndarray]) -> list[Any] | None:
        """One music token sequence (W*M, D) per song (each (T,) or (W, T)): every window's
        tokens one after the other; None for the lyrics-only `bart`."""
        import torch

        if not self.model.config.use_music:
            return None
        songs = [np.asarray(w, dtype=np.float32).reshape(-1, w.shape[-1]) for w in waveforms]
        counts = [w.shape[0] for w in songs]
        flat = np.concatenate(songs)  # (ΣW, T)
        with torch.inference_mode():
            parts = [
                self.model.music_sequence(
                    waveform=torch.from_numpy(flat[i : i + ENCODER_CHUNK]).to(self.device)
                )
                for i in range(0, flat.shape[0], ENCODER_CHUNK)
            ]  # each (chunk, M, D)
            tokens = torch.cat(parts)  # (ΣW, M, D)
            finite = torch.isfinite(tokens).flatten(1).all(dim=1).cpu().numpy()
        bounds = np.cumsum([0, *counts])
        bad = [i for i in range(len(songs)) if not finite[bounds[i] : bounds[i + 1]].all()]
        if bad:
            raise RecapError(
                f"the music encoder gave NaN or infinite values for item(s) {bad} of the batch "
                "(audio far outside [-1, 1], or a broken model)"
            )
        # (W, M, D) -> (W*M, D) per song
        return [tokens[bounds[i] : bounds[i + 1]].flatten(0, 1) for i in range(len(songs))]

    def music(self, waveforms: Sequence[np.ndarray]) -> dict[str, Any]:
        """The music keyword arguments of the model for these songs (each (T,) or (W, T)):
        `music_embeds` (B, M, D) with every window's tokens one after the other (M = W * 119),
        and `music_mask` (B, M) when songs have different window counts; {} for `bart`."""
        from recap.data.batching import music_tensors

        sequences = self.music_sequences(waveforms)
        if sequences is None:
            return {}
        return music_tensors([t.float().cpu().numpy() for t in sequences], self.device)

    def _texts(self, texts: Sequence[str | None]) -> list[str]:
        """Missing or empty lyrics become the empty text (<s></s>), which a model that listens
        interprets from the audio alone; the lyrics-only `bart` method refuses them."""
        out = ["" if t is None or not t.strip() else prepare_lyrics(t) for t in texts]
        if not self.model.config.use_music and not all(out):
            raise RecapError(no_audio_message(self.model.config.method))
        return out

    def lyrics_ids(self, texts: Sequence[str | None]) -> list[list[int]]:
        """Each lyrics' token ids, at most the model's max_source_length of them (missing or
        empty lyrics: <s></s>)."""
        enc = self.tokenizer(
            self._texts(texts), truncation=True, max_length=self.model.config.max_source_length
        )
        return [list(ids) for ids in enc["input_ids"]]

    def encode_lyrics(self, texts: Sequence[str | None]) -> dict[str, Any]:
        """Token ids and mask (B, L), L <= the model's max_source_length (missing or empty
        lyrics: <s></s>)."""
        enc = self.tokenizer(
            self._texts(texts),
            padding=True,
            truncation=True,
            max_length=self.model.config.max_source_length,
            return_tensors="pt",
        )
        return {
            "input_ids": enc["input_ids"].to(self.device),
            "attention_mask": enc["attention_mask"].to(self.device),
        }

    # -- captioning
    def caption(
        self,
        audio: AudioInput,
        lyrics: str | None = None,
        sample_rate: int | None = None,
        **decode: Any,
    ) -> str:
        """The interpretation of one song (without `lyrics`: from its audio alone). `decode`:
        DecodeSettings fields (num_beams, ...; a single `seed` for sampling)."""
        waveform = self.load_waveform(audio, sample_rate)
        return self.caption_waveforms([waveform], [lyrics], self.settings(**decode))[0]

    def caption_batch(
        self, items: Iterable[SongInput | tuple], batch_size: int | None = None, **decode: Any
    ) -> list[str]:
        """Captions of many songs, in order; items are SongInput or (audio, lyrics[, rate]).

        Raises RecapError on the first bad item; `caption_results` reports them per item.
        """
        results = list(self.caption_results(items, batch_size=batch_size, **decode))
        for r in results:
            if r.error is not None:
                raise RecapError(f"{r.id} ({r.audio}): {r.error}")
        return [r.caption for r in results]  # type: ignore[misc]

    def caption_results(
        self,
        items: Iterable[SongInput | tuple],
        batch_size: int | None = None,
        progress: bool = False,
        options: DecodeSettings | None = None,
        **decode: Any,
    ) -> Iterator[CaptionResult]:
        """One CaptionResult per item, in order; a bad item carries its error, the rest go on.

        Decoding: `options`, or DecodeSettings built from the `decode` keywords; `batch_size`
        (songs per batch) defaults to the settings'.
        """
        from tqdm.auto import tqdm

        from recap.data.audio import AudioError

        # A bad option fails here, before any decoding.
        options = options or DecodeSettings.from_options(**decode)
        options.check(self.model.config.max_position_embeddings)
        batch_size = max(1, batch_size or options.batch_size)
        songs = [_as_song(item, n) for n, item in enumerate(items)]
        bar = tqdm(total=len(songs), desc="caption", unit="song", disable=not progress)
        for start in range(0, len(songs), batch_size):
            chunk = songs[start : start + batch_size]
            results = [CaptionResult(s.id, s.audio_label) for s in chunk]
            ready: list[int] = []
            waves: list[np.ndarray] = []
            for i, song in enumerate(chunk):
                results[i].lyrics = bool(song.lyrics and song.lyrics.strip())
                if not results[i].lyrics and not self.model.config.use_music:
                    results[i].error = no_audio_message(self.model.config.method)
                    continue
                try:
                    heard = self.load_windows(song.audio, song.sample_rate)
                    waves.append(heard.waveforms)
                    results[i].windows = heard.count
                    results[i].song_windows = self.song_windows(heard.source_duration)
                    ready.append(i)
                except (AudioError, RecapError) as exc:
                    results[i].error = f"unreadable audio: {exc}"
            if ready:
                try:
                    captions = self.caption_waveforms(
                        waves, [chunk[i].lyrics for i in ready], options
                    )
                except Exception:  # noqa: BLE001 - find the item at fault, caption the rest
                    captions = []
                    for i, wave in zip(ready, waves):
                        try:
                            captions.extend(
                                self.caption_waveforms([wave], [chunk[i].lyrics], options)
                            )
                        except Exception as exc:  # noqa: BLE001 - reported per item
                            captions.append(None)
                            results[i].error = _item_error(exc)
                for i, text in zip(ready, captions):
                    if text is not None:
                        results[i].caption = text
            bar.update(len(chunk))
            yield from results
        bar.close()

    def settings(self, **options: Any) -> DecodeSettings:
        """DecodeSettings from keyword options, checked against this model (RecapError)."""
        return DecodeSettings.from_options(**options).check(
            self.model.config.max_position_embeddings
        )

    def caption_waveforms(
        self,
        waveforms: Sequence[np.ndarray],
        lyrics: Sequence[str | None],
        options: DecodeSettings | None = None,
    ) -> list[str]:
        """Generate for prepared audio: waveforms (each (W, 240000) windows, or one (240000,)
        excerpt) and their lyrics (None or "": none)."""
        options = options or DecodeSettings()
        options.check(self.model.config.max_position_embeddings)
        ids = self.lyrics_ids(lyrics)
        return generate_texts(
            self.model,
            self.tokenizer,
            ids,
            self.music_sequences(waveforms),  # None for the lyrics-only method
            dataclasses.replace(options, batch_size=max(1, len(ids))),
            seed=options.seed,
        )


def _item_error(exc: BaseException) -> str:
    if isinstance(exc, RecapError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _as_song(item: SongInput | tuple, n: int) -> SongInput:
    if isinstance(item, SongInput):
        return item
    if isinstance(item, tuple) and len(item) in (2, 3):
        audio, lyrics = item[0], item[1]
        rate = item[2] if len(item) == 3 else None
        song_id = Path(audio).stem if not isinstance(audio, np.ndarray) else f"item{n}"
        return SongInput(song_id, audio, lyrics, sample_rate=rate)
    raise RecapError(f"item {n}: expected SongInput or (audio, lyrics[, sample_rate])")


# ---------------------------------------------------------------------------- output
_FIELDS = ["id", "audio", "caption", "error", "windows", "song_windows", "lyrics"]


def _format_one(r: CaptionResult, fmt: str) -> str:
    if fmt == "text":
        return f"{r.caption}\n" if r.error is None else f"[{r.id}] error: {r.error}\n"
    if fmt == "jsonl":
        return json.dumps(r.to_dict(), ensure_ascii=False) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        csv.DictWriter(buf, fieldnames=_FIELDS).writerow(r.to_dict())
        return buf.getvalue()
    raise RecapError(f"unknown format {fmt!r}")


def _header(fmt: str) -> str:
    return ",".join(_FIELDS) + "\r\n" if fmt == "csv" else ""


def format_results(results: Sequence[CaptionResult], fmt: str) -> str:
    if fmt not in ("text", "jsonl", "csv"):
        raise RecapError(f"unknown format {fmt!r}")
    return _header(fmt) + "".join(_format_one(r, fmt) for r in results)


def check_output_path(out: str | os.PathLike) -> Path:
    """Refuse an output file that cannot be written, before any work is done."""
    out = Path(out)
    if out.is_dir():
        raise RecapError(
            f"--out {out} is a folder; give a file name such as {out / 'captions.jsonl'}"
        )
    parent = out.parent
    existing = parent
    while not existing.exists():  # the nearest folder that exists must let us create the rest
        existing = existing.parent
    if not existing.is_dir():
        raise RecapError(f"cannot write {out}: {existing} is not a folder")
    if not os.access(out if out.exists() else existing, os.W_OK):
        raise RecapError(f"cannot write {out}: permission denied")
    return out


def caption_files(
    source: str | os.PathLike,
    model: str | os.PathLike | Captioner,
    lyrics: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    fmt: str | None = None,
    batch_size: int | None = None,
    device: Any = None,
    decode: DecodeSettings | None = None,
    progress: bool = True,
    encoder: Any = None,
    windows: int | None = None,
    hop: float | None = None,
    lyrics_text: str | None = None,
    int8: bool = False,
) -> tuple[list[CaptionResult], SkipReport]:
    """The job behind `recap caption`: caption `source`, write the results, report failures.

    `model`: a model or RUN folder (loaded with `device`, `encoder`, `windows`, `hop`; see
    `Captioner.from_pretrained`), or a ready Captioner.

    Writes to `out` (format from `fmt` or the suffix) or to stdout, one result at a time as it
    is made, so a killed job keeps every caption made so far. Failed items stay in the output
    with their error and go into `<out>.skipped.json`, with the manifest rows that could not be
    read. `lyrics_text`: the lyrics of a single audio file as text (instead of a `lyrics` file).
    """
    if out is not None:
        check_output_path(out)
    if lyrics_text is not None and lyrics is not None:
        raise RecapError(
            "give the lyrics as a file (--lyrics) or as text (--lyrics-text), not both"
        )
    skipped = SkipReport("caption")
    songs = collect_inputs(source, lyrics, skipped)
    if lyrics_text is not None:
        if len(songs) != 1 or Path(source).is_dir():
            raise RecapError("--lyrics-text goes with a single audio file")
        songs[0].lyrics = lyrics_text
    captioner = (
        model
        if isinstance(model, Captioner)
        else Captioner.from_pretrained(
            model, device=device, encoder=encoder, windows=windows, hop=hop, int8=int8
        )
    )
    decode = decode or DecodeSettings()
    decode.check(captioner.model.config.max_position_embeddings)  # refused before any work
    if fmt is None:
        suffix = Path(out).suffix.lower() if out else ""
        fmt = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "text"}.get(
            suffix, "text" if len(songs) == 1 else "jsonl"
        )
    if fmt not in ("text", "jsonl", "csv"):
        raise RecapError(f"unknown format {fmt!r}")
    results: list[CaptionResult] = []
    stream = open(out, "w", encoding="utf-8", newline="") if out else sys.stdout  # noqa: SIM115
    try:
        stream.write(_header(fmt))
        for r in captioner.caption_results(
            songs, batch_size=batch_size, progress=progress, options=decode
        ):
            results.append(r)
            stream.write(_format_one(r, fmt))
            stream.flush()
            if r.error is not None:
                skipped.add(f"{r.id} ({r.audio})", r.error)
    finally:
        if out:
            stream.close()
            if len(skipped):
                skipped.write(Path(out).with_suffix(".skipped.json"))
    return results, skipped


def heard_summary(results: Sequence[CaptionResult], trained: int, explicit: bool = False) -> str:
    """What the model listened to, for the job's last line: ', heard in 2 windows of 15 s', or,
    when the songs hold more than was heard, ', heard 1 of 12 windows of 15 s (the model was
    trained on 1; --windows 12 to hear the whole song)'. `explicit`: the caller chose the
    window count (no hint then)."""
    done = [r for r in results if r.error is None and r.windows is not None]
    if not done:
        return ""

    def span(values: Sequence[int]) -> str:
        return f"{min(values)}" if min(values) == max(values) else f"{min(values)}-{max(values)}"

    heard = [r.windows for r in done]  # type: ignore[misc]
    whole = [r.song_windows or r.windows for r in done]  # type: ignore[misc]
    no_lyrics = sum(not r.lyrics for r in done)
    lyrics = ""
    if no_lyrics:
        lyrics = ", audio only (no lyrics)" if len(done) == 1 else f", {no_lyrics} without lyrics"
    if all(h >= w for h, w in zip(heard, whole)) or explicit:
        plural = "s" if max(heard) > 1 else ""
        return f", heard in {span(heard)} window{plural} of 15 s{lyrics}"
    return (
        f", heard {span(heard)} of {span(whole)} windows of 15 s{lyrics} (the model was trained "
        f"on {trained}; --windows {max(whole)} to hear the whole song)"
    )
