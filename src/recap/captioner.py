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

from recap.utils import RecapError, SkipReport, atomic_write_text, is_file

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


# ---------------------------------------------------------------------------- model folders
def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The model folder behind `path`: a model folder itself, or a training RUN's `best/`."""
    path = Path(path)
    if not path.exists():
        raise RecapError(f"model folder {path} does not exist")
    for candidate in (path, path / "best"):
        if (candidate / "config.json").is_file():
            return candidate
    raise RecapError(
        f"{path} is neither a model folder (config.json + model.safetensors) nor a training run "
        "with a best/ model folder"
    )


def load_model_and_tokenizer(path: str | os.PathLike, device: Any = None) -> tuple[Any, Any, Path]:
    """Load (model in eval mode on `device`, tokenizer, resolved folder); every failure is a
    RecapError naming the folder, so the CLI and the server report it without a traceback."""
    import torch

    from recap.model import RecapModel

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
    `recap.data.load_rows` does); the trailing newline of a text file is dropped first."""
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

    def merged(self, defaults: Any) -> dict[str, Any]:
        """generate() keyword arguments: these values over the model's `GenerationSettings`."""
        kwargs: dict[str, Any] = {}
        for name in ("num_beams", "do_sample", "top_p", "max_new_tokens", "no_repeat_ngram_size"):
            value = getattr(self, name)
            kwargs[name] = value if value is not None else getattr(defaults, name)
        if kwargs["num_beams"] < 1:
            raise RecapError("num_beams must be >= 1")
        if not 0 < kwargs["top_p"] <= 1:
            raise RecapError("top_p must be in (0, 1]")
        if kwargs["max_new_tokens"] < 1:
            raise RecapError("max_new_tokens must be >= 1")
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
    source: str | os.PathLike, lyrics: str | os.PathLike | None = None
) -> list[SongInput]:
    """The songs named by `source`: an audio file (lyrics from `lyrics` or `<stem>.txt`), a
    folder of audio files with `<stem>.txt` lyrics beside them, or a CSV/JSONL manifest."""
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
        return read_manifest(source)
    lyrics_path = Path(lyrics) if lyrics is not None else source.with_suffix(".txt")
    if lyrics is not None and not lyrics_path.is_file():
        raise RecapError(f"lyrics file {lyrics_path} does not exist")
    return [SongInput(source.stem, source, _read_lyrics_file(lyrics_path))]


def read_manifest(path: str | os.PathLike) -> list[SongInput]:
    """Rows of a CSV / JSONL / JSON-list manifest. Columns: `audio` (path, relative to the
    manifest's folder), `lyrics` (text) or `lyrics_path`; optional `id` and `split`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecapError(f"cannot read manifest {path}: {exc}") from exc
    rows: list[dict[str, Any]]
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            rows = list(csv.DictReader(io.StringIO(text)))
        elif suffix == ".json":
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (json.JSONDecodeError, csv.Error) as exc:
        raise RecapError(f"manifest {path} is not valid {suffix[1:].upper()}: {exc}") from exc
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise RecapError(f"manifest {path} must hold one object per song")
    items = []
    for n, row in enumerate(rows, start=1):
        audio = row.get("audio") or row.get("audio_path") or row.get("path")
        if not audio:
            raise RecapError(f"manifest {path}, row {n}: no 'audio' column")
        audio_path = Path(audio) if Path(audio).is_absolute() else path.parent / audio
        text_value = row.get("lyrics")
        if not text_value and row.get("lyrics_path"):
            lp = Path(row["lyrics_path"])
            text_value = _read_lyrics_file(lp if lp.is_absolute() else path.parent / lp)
        song_id = str(row.get("id") or row.get("song_id") or audio_path.stem)
        items.append(SongInput(song_id, audio_path, text_value or None, split=row.get("split")))
    if not items:
        raise RecapError(f"manifest {path} has no rows")
    return items


def _read_lyrics_file(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


# ---------------------------------------------------------------------------- the captioner
class Captioner:
    """A trained RECAP model with its tokenizer and audio settings, ready to caption songs."""

    def __init__(
        self, model: Any, tokenizer: Any, audio_config: Any = None, source: Path | None = None
    ):
        from recap.audio import AudioConfig

        self.model = model
        self.tokenizer = tokenizer
        self.audio_config = audio_config or AudioConfig()
        self.source = source

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: Any = None) -> Captioner:
        """Load a model folder or a training RUN folder (its `best/`)."""
        model, tokenizer, folder = load_model_and_tokenizer(path, device)
        return cls(model, tokenizer, source=folder)

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    # -- inputs -> tensors
    def load_waveform(self, audio: AudioInput, sample_rate: int | None = None) -> np.ndarray:
        """A 15 s, 16 kHz mono excerpt (240,000 float32 samples) of a path or an array."""
        from recap.audio import AudioError, excerpt_from_array, load_excerpt

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

        from recap.audio import AudioError

        options = DecodeOptions(**decode)
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
                captions = self.caption_waveforms(waves, [chunk[i].lyrics for i in ready], options)
                for i, text in zip(ready, captions):
                    results[i].caption = text
            bar.update(len(chunk))
            yield from results
        bar.close()

    def caption_waveforms(
        self, waveforms: Sequence[np.ndarray], lyrics: Sequence[str], options: DecodeOptions
    ) -> list[str]:
        """Generate for prepared excerpts: waveforms (each (240000,)) and their lyrics."""
        import torch

        kwargs = options.merged(self.model.config.generation)
        batch = self.encode_lyrics(lyrics)
        # (B, T): every excerpt has the same length, so stacking needs no padding.
        wave = torch.from_numpy(np.stack(waveforms).astype(np.float32)).to(self.device)
        if options.seed is not None:
            torch.manual_seed(options.seed)  # sampling draws from torch's global generator
        with torch.inference_mode():
            out = self.model.generate(
                batch["input_ids"], batch["attention_mask"], waveform=wave, **kwargs
            )
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


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
def format_results(results: Sequence[CaptionResult], fmt: str) -> str:
    if fmt == "text":
        return "".join(
            (f"{r.caption}\n" if r.error is None else f"[{r.id}] error: {r.error}\n")
            for r in results
        )
    if fmt == "jsonl":
        return "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in results)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["id", "audio", "caption", "error"])
        writer.writeheader()
        for r in results:
            writer.writerow(r.to_dict())
        return buf.getvalue()
    raise RecapError(f"unknown format {fmt!r}")


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
) -> tuple[list[CaptionResult], SkipReport]:
    """The job behind `recap caption`: caption `source`, write the results, report failures.

    Writes to `out` (atomically; format from `fmt` or the suffix) or prints to stdout. Failed
    items stay in the output with their error and go into `<out>.skipped.json`.
    """
    songs = collect_inputs(source, lyrics)
    captioner = Captioner.from_pretrained(model, device=device)
    decode = decode or DecodeOptions()
    results = list(
        captioner.caption_results(
            songs, batch_size=batch_size, progress=progress, **dataclasses.asdict(decode)
        )
    )
    if fmt is None:
        suffix = Path(out).suffix.lower() if out else ""
        fmt = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "text"}.get(
            suffix, "text" if len(songs) == 1 else "jsonl"
        )
    skipped = SkipReport("caption")
    for r in results:
        if r.error is not None:
            skipped.add(f"{r.id} ({r.audio})", r.error)
    text = format_results(results, fmt)
    if out:
        atomic_write_text(out, text)
        if len(skipped):
            skipped.write(Path(out).with_suffix(".skipped.json"))
    else:
        sys.stdout.write(text)
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
    p.add_argument("--out", help="output file (default: stdout)")
    p.add_argument(
        "--format",
        choices=("text", "jsonl", "csv"),
        help="default: from --out, else text for one song, jsonl for many",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
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
    )
    failed = len(skipped)
    print(
        f"captioned {len(results) - failed}/{len(results)} song(s); {skipped.summary()}",
        file=sys.stderr,
    )
    if failed == len(results):
        raise RecapError(f"every item failed; first error: {results[0].error}")
    return 0
