"""`Captioner`: interpret songs from their audio and lyrics with a trained RECAP model.

The user-facing side of the project. A `Captioner` wraps a model folder (or a training RUN
folder, whose `best/` is used) with its tokenizer and audio settings:

    cap = Captioner.from_pretrained("runs/demo")
    cap.caption("song.mp3", lyrics)                       # a path ...
    cap.caption(samples, lyrics, sample_rate=44100)       # ... or an array with its rate
    cap.caption_batch([("a.mp3", la), ("b.mp3", lb)])     # batched
    cap.caption("instrumental.wav")                       # no lyrics: an audio-only interpretation

A song is heard in the windows `recap.inference.inputs.listening_config` gives (those the model
was trained on, or the whole song for a model trained on several); `windows=` / `audio_config`
override it. Fusion attends over all the windows' music tokens. Without lyrics the lyrics
encoder gets the empty text (<s></s>), as captioners trained with `lyrics_dropout` saw it; the
lyrics-only `bart` method hears no audio and refuses such songs.

`recap caption` (files, folders, manifests, written as they are made) is
`recap.inference.caption_job.caption_files`.
"""

from __future__ import annotations

import dataclasses
import os
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
from recap.inference.inputs import (
    DEFAULT_WINDOWS,
    AudioInput,
    SongInput,
    listening_config,
    no_audio_message,
)
from recap.utils import RecapError, is_file

# Windows per music-encoder call: bounds the encoder's activation memory whatever the batch.
ENCODER_CHUNK = 32


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
