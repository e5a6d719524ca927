"""`Captioner`: interpret songs from their audio and lyrics with a trained RECAP model.

The user-facing side of the project. A `Captioner` wraps a model folder (or a training RUN
folder, whose `best/` is used) with its tokenizer and audio settings:

    cap = Captioner.from_pretrained("runs/demo")
    cap.caption("song.mp3", lyrics)                       # a path ...
    cap.caption(samples, lyrics, sample_rate=44100)       # ... or an array with its rate
    cap.caption_batch([("a.mp3", la), ("b.mp3", lb)])     # batched

`recap caption` runs it over one file, a folder of audio files with `<stem>.txt` lyrics beside
them, or a manifest (CSV / JSONL with `audio` and `lyrics` or `lyrics_path` columns). Bad items
(unreadable audio, missing lyrics) are reported per item in the output and in a skip report; the
job goes on, and exits non-zero only when every item failed.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
MAX_SEED = 2**64 - 1  # torch.manual_seed's range


# ---------------------------------------------------------------------------- model folders
def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The model folder behind `path`: a model folder itself, a training RUN's `best/`, the
    RECAP model of a `recap demo` folder, or the one best model anywhere below `path`."""
    path = Path(path)
    if not path.exists():
        raise RecapError(f"model folder {path} does not exist")
    # best.old: a kill between the two renames that replace best/ leaves only that copy.
    for candidate in (path, path / "best", path / "best.old"):
        if (candidate / "config.json").is_file():
            return candidate
    found = _best_models_below(path)
    if (path / "demo_config.json").is_file():
        # The demo trains three methods (and the sweep): its captioner is the RECAP model.
        demo = [f for f in found if f.parts[-4:-2] == ("full", "recap")]
        found = demo or found
    if len(found) == 1:
        return found[0]
    listing = "".join(f"\n  {f}" for f in found[:12]) + ("\n  …" if len(found) > 12 else "")
    raise RecapError(
        f"{path} is neither a model folder (config.json + model.safetensors) nor a training run "
        "with a best/ model folder"
        + (f"; it holds {len(found)} trained models, pass one of them:{listing}" if found else "")
    )


def _best_models_below(path: Path, depth: int = 6) -> list[Path]:
    """Every RUN/best model folder at most `depth` levels below `path`, sorted."""
    found = []
    for level in range(1, depth + 1):
        found += [c.parent for c in path.glob("/".join(["*"] * level) + "/config.json")]
    return sorted({f for f in found if f.name == "best" and (f / "model.safetensors").is_file()})


def load_model_and_tokenizer(path: str | os.PathLike, device: Any = None) -> tuple[Any, Any, Path]:
    """Load (model in eval mode on `device`, tokenizer, resolved folder); every failure is a
    RecapError naming the folder, so the CLI and the server report it without a traceback."""
    import torch

    from recap.models.model import RecapModel

    folder = resolve_model_dir(path)
    try:
        model = RecapModel.from_pretrained(folder)
    except RecapError:
        raise
    except Exception as exc:  # a truncated safetensors file, a missing tensor, a bad JSON ...
        raise RecapError(
            f"cannot load the model in {folder}: {type(exc).__name__}: {exc} "
            "(corrupt checkpoint, or written by an incompatible version of recap?)"
        ) from exc
    # NaN weights make every caption an empty string with no error at all: catch them here.
    bad = [
        name
        for name, t in model.state_dict().items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise RecapError(
            f"the model in {folder} has NaN or infinite weights ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}); its captions would be empty: retrain or "
            "re-export it"
        )
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise RecapError(f"{folder} holds no tokenizer files (tokenizer.json); re-save the model")
    if model.music_encoder is None and model.config.use_music:
        raise RecapError(
            f"the model in {folder} has no music encoder, so it cannot read audio; export it "
            "with the music encoder included (RecapConfig.with_music_encoder=True)"
        )
    device = torch.device(device) if device is not None else default_device()
    return model.to(device).eval(), tokenizer, folder


def default_device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def prepare_lyrics(text: str) -> str:
    """Lyrics as the model saw them in training: line breaks become ';' (SPEC §1.2, as
    `recap.data.songs.load_rows` does); the trailing newline of a text file is dropped first."""
    return re.sub(r"\r?\n", ";", text.strip())


# ---------------------------------------------------------------------------- decoding
@dataclass
class DecodeOptions:
    """Decoding settings for one call; None means the model's own generation default."""

    num_beams: int | None = None
    do_sample: bool | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    no_repeat_ngram_size: int | None = None
    seed: int | None = None

    def merged(self, defaults: Any, max_positions: int | None = None) -> dict[str, Any]:
        """generate() keyword arguments: these values over the model's `GenerationSettings`.

        Every value is checked here, before any work starts, so that a bad option is a clear
        RecapError (a 422 from the server) and never a failure deep inside generation.
        `max_positions`: the decoder's position limit, which caps max_new_tokens.
        """
        kwargs: dict[str, Any] = {}
        for name in ("num_beams", "do_sample", "top_p", "max_new_tokens", "no_repeat_ngram_size"):
            value = getattr(self, name)
            kwargs[name] = value if value is not None else getattr(defaults, name)
        for name in ("num_beams", "max_new_tokens", "no_repeat_ngram_size"):
            if isinstance(kwargs[name], bool) or not isinstance(kwargs[name], int):
                raise RecapError(f"{name} must be an integer, got {kwargs[name]!r}")
        if kwargs["num_beams"] < 1:
            raise RecapError("num_beams must be >= 1")
        if isinstance(kwargs["top_p"], bool) or not isinstance(kwargs["top_p"], int | float):
            raise RecapError(f"top_p must be a number, got {kwargs['top_p']!r}")
        if not 0 < kwargs["top_p"] <= 1:
            raise RecapError("top_p must be in (0, 1]")
        if kwargs["max_new_tokens"] < 1:
            raise RecapError("max_new_tokens must be >= 1")
        if max_positions is not None and kwargs["max_new_tokens"] > max_positions:
            raise RecapError(
                f"max_new_tokens must be at most {max_positions}, the model's position limit "
                f"(got {kwargs['max_new_tokens']})"
            )
        if kwargs["no_repeat_ngram_size"] < 0:
            raise RecapError("no_repeat_ngram_size must be >= 0")
        if self.seed is not None and (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int)
            or not 0 <= self.seed <= MAX_SEED
        ):
            raise RecapError(f"seed must be an integer from 0 to {MAX_SEED} (2**64 - 1)")
        if not kwargs["do_sample"]:
            kwargs.pop("top_p")  # only meaningful when sampling; HF warns otherwise
        return kwargs


# ---------------------------------------------------------------------------- inputs
@dataclass
class SongInput:
    """One song to caption or index. `lyrics` None means "missing" (reported, not guessed)."""

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
        """`int8`: quantize the model's Linear layers to int8 (CPU only; a copy, `model` is
        left as it is) — faster decoding on a CPU, slightly different captions (docs/cpu.md)."""
        from recap.data.audio import AudioConfig

        if int8:
            from recap.inference.quantize import quantize_int8

            model = quantize_int8(model)
        self.model = model
        self.int8 = int8
        self.tokenizer = tokenizer
        self.audio_config = audio_config or AudioConfig()
        self.source = source

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, device: Any = None, int8: bool = False
    ) -> Captioner:
        """Load a model folder or a training RUN folder (its `best/`); `int8`: see __init__."""
        if int8 and device is None:
            device = "cpu"  # quantized kernels are CPU kernels
        model, tokenizer, folder = load_model_and_tokenizer(path, device)
        return cls(model, tokenizer, source=folder, int8=int8)

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    # -- inputs -> tensors
    def load_waveform(self, audio: AudioInput, sample_rate: int | None = None) -> np.ndarray:
        """A 15 s, 16 kHz mono excerpt (240,000 float32 samples) of a path or an array."""
        from recap.data.audio import AudioError, excerpt_from_array, load_excerpt

        if isinstance(audio, np.ndarray):
            if sample_rate is None:
                raise RecapError("an audio array needs its sample_rate")
            try:
                return excerpt_from_array(audio, sample_rate, self.audio_config).waveform
            except AudioError:
                raise
            except Exception as exc:  # e.g. a 3-D array
                raise RecapError(f"unusable audio array: {exc}") from exc
        path = Path(audio)
        if not is_file(path):
            raise RecapError(f"audio file {path} does not exist")
        return load_excerpt(path, self.audio_config).waveform

    def encode_lyrics(self, texts: Sequence[str]) -> dict[str, Any]:
        """Token ids and mask (B, L), L <= the model's max_source_length."""
        for text in texts:
            if not text or not text.strip():
                raise RecapError("lyrics are empty")
        enc = self.tokenizer(
            [prepare_lyrics(t) for t in texts],
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
        self, audio: AudioInput, lyrics: str, sample_rate: int | None = None, **decode: Any
    ) -> str:
        """The interpretation of one song. `decode`: DecodeOptions fields (num_beams, ...)."""
        waveform = self.load_waveform(audio, sample_rate)
        return self.caption_waveforms([waveform], [lyrics], DecodeOptions(**decode))[0]

    def caption_batch(
        self, items: Iterable[SongInput | tuple], batch_size: int = 16, **decode: Any
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
        batch_size: int = 16,
        progress: bool = False,
        **decode: Any,
    ) -> Iterator[CaptionResult]:
        """One CaptionResult per item, in order; a bad item carries its error, the rest go on."""
        from tqdm.auto import tqdm

        from recap.data.audio import AudioError

        options = DecodeOptions(**decode)
        self.decode_kwargs(options)  # a bad option fails here, before any song is decoded
        songs = [_as_song(item, n) for n, item in enumerate(items)]
        bar = tqdm(total=len(songs), desc="caption", unit="song", disable=not progress)
        for start in range(0, len(songs), max(1, batch_size)):
            chunk = songs[start : start + batch_size]
            results = [CaptionResult(s.id, s.audio_label) for s in chunk]
            ready: list[int] = []
            waves: list[np.ndarray] = []
            for i, song in enumerate(chunk):
                if song.lyrics is None or not song.lyrics.strip():
                    results[i].error = "missing or empty lyrics"
                    continue
                try:
                    waves.append(self.load_waveform(song.audio, song.sample_rate))
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

    def decode_kwargs(self, options: DecodeOptions) -> dict[str, Any]:
        """generate() arguments for `options`, checked against this model (RecapError)."""
        return options.merged(
            self.model.config.generation, max_positions=self.model.config.max_position_embeddings
        )

    def caption_waveforms(
        self, waveforms: Sequence[np.ndarray], lyrics: Sequence[str], options: DecodeOptions
    ) -> list[str]:
        """Generate for prepared excerpts: waveforms (each (240000,)) and their lyrics."""
        import torch

        kwargs = self.decode_kwargs(options)
        batch = self.encode_lyrics(lyrics)
        # (B, T): every excerpt has the same length, so stacking needs no padding.
        wave = torch.from_numpy(np.stack(waveforms).astype(np.float32)).to(self.device)
        with torch.inference_mode():
            music = self.model.music_sequence(waveform=wave)  # None for the lyrics-only method
            if music is not None:
                finite = torch.isfinite(music).flatten(1).all(dim=1)
                if not bool(finite.all()):
                    rows = [int(i) for i in torch.nonzero(~finite).flatten()]
                    raise RecapError(
                        f"the music encoder gave NaN or infinite values for item(s) {rows} of "
                        "the batch (audio far outside [-1, 1], or a broken model)"
                    )
            if options.seed is not None:
                torch.manual_seed(options.seed)  # sampling draws from torch's global generator
            out = self.model.generate(
                batch["input_ids"], batch["attention_mask"], music_embeds=music, **kwargs
            )
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


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
_FIELDS = ["id", "audio", "caption", "error"]


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
    model: str | os.PathLike,
    lyrics: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    fmt: str | None = None,
    batch_size: int = 16,
    device: Any = None,
    decode: DecodeOptions | None = None,
    progress: bool = True,
    lyrics_text: str | None = None,
    int8: bool = False,
) -> tuple[list[CaptionResult], SkipReport]:
    """The job behind `recap caption`: caption `source`, write the results, report failures.

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
    captioner = Captioner.from_pretrained(model, device=device, int8=int8)
    decode = decode or DecodeOptions()
    captioner.decode_kwargs(decode)  # a bad option is refused before any captioning
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
            songs, batch_size=batch_size, progress=progress, **dataclasses.asdict(decode)
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


# ---------------------------------------------------------------------------- CLI
def add_decode_arguments(parser: argparse.ArgumentParser) -> None:
    """Decoding flags shared with the server's form fields (defaults: the model's own)."""
    g = parser.add_argument_group("decoding (defaults: the model's generation settings)")
    g.add_argument("--beams", type=int, default=None, help="beam width")
    g.add_argument("--sample", action="store_true", default=None, help="sample instead of search")
    g.add_argument(
        "--top-p", type=float, default=None, help="nucleus sampling mass (with --sample)"
    )
    g.add_argument("--seed", type=int, default=None, help="random seed for --sample")
    g.add_argument("--max-new-tokens", type=int, default=None, help="caption length limit")
    g.add_argument("--no-repeat-ngram", type=int, default=None, help="no_repeat_ngram_size")


def decode_from_args(args: argparse.Namespace) -> DecodeOptions:
    return DecodeOptions(
        num_beams=args.beams,
        do_sample=args.sample,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        no_repeat_ngram_size=args.no_repeat_ngram,
        seed=args.seed,
    )


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "caption",
        help="interpret songs from audio + lyrics",
        description="Caption an audio file (with --lyrics or <stem>.txt), a folder of audio "
        "files with <stem>.txt lyrics, or a CSV/JSONL manifest (audio, lyrics|lyrics_path, id). "
        "Bad items are reported per item; the exit code is non-zero only if every item failed.",
    )
    p.add_argument("source", help="audio file, folder or manifest")
    p.add_argument("--model", required=True, help="model folder or training RUN folder")
    p.add_argument("--lyrics", help="lyrics text file (single audio file only)")
    p.add_argument("--lyrics-text", help="the lyrics themselves, as text (single audio file only)")
    p.add_argument("--out", help="output file (default: stdout)")
    p.add_argument(
        "--format",
        choices=("text", "jsonl", "csv"),
        help="default: from --out, else text for one song, jsonl for many",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--int8", action="store_true",
                   help="int8 Linear layers (CPU only): faster, captions differ a little")  # fmt: skip
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar on stderr")  # fmt: skip
    add_decode_arguments(p)
    p.set_defaults(func=_cmd_caption)


def _cmd_caption(args: argparse.Namespace) -> int:
    results, skipped = caption_files(
        args.source,
        args.model,
        lyrics=args.lyrics,
        out=args.out,
        fmt=args.format,
        batch_size=args.batch_size,
        device=args.device,
        decode=decode_from_args(args),
        progress=args.progress,
        lyrics_text=args.lyrics_text,
        int8=args.int8,
    )
    failed = sum(r.error is not None for r in results)  # the report also holds manifest rows
    print(
        f"captioned {len(results) - failed}/{len(results)} song(s); {skipped.summary()}",
        file=sys.stderr,
    )
    if failed == len(results):
        raise RecapError(f"every item failed; first error: {results[0].error}")
    return 0
