"""Generation: the one place a trained model is loaded for decoding and its `generate` is called.

Captioning (`recap caption`, the server), evaluation (`recap evaluate`, the experiments, the demo)
and validation during training all decode through `generate_texts`, with one settings class,
`DecodeSettings`, whose defaults are the evaluation's (SPEC §2): beam search of width 4, no
sampling, no repeated 3-grams, the model's own length limit; with sampling, top-p 0.92 and the
authors' seeds 2022, 2021, 2020.

    model, tokenizer, folder = load_model_and_tokenizer("runs/demo")
    ids = tokenizer(["a line; another line"])["input_ids"]
    generate_texts(model, tokenizer, ids, None, DecodeSettings(num_beams=2))
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recap.utils import RecapError, known_fields

PAPER_SAMPLING_SEEDS = (2022, 2021, 2020)  # the authors' RECAP code (SPEC §2)
MAX_SEED = 2**64 - 1  # torch.manual_seed's range


# ---------------------------------------------------------------------------- settings
@dataclass
class DecodeSettings:
    """How captions are generated, for every command alike.

    `max_new_tokens=None` keeps the model's own limit (`RecapConfig.generation`, 512 at paper
    size, as the papers' max_length). `seeds` matter only when sampling: an evaluation decodes
    once per seed; one captioning call seeds torch with the first. `batch_size`: songs decoded
    together. `quote_lyrics`: what a caption quotes is the song's own lyrics, verbatim
    (`recap.inference.quotes`; off by default: the papers decode freely). `known_words`: every
    word of a caption is a word of the captioner's training captions or of the song's lyrics
    (`recap.inference.words`; off by default). The values are
    checked by `check` (a RecapError naming the setting), so a bad option fails before any work
    starts and reaches the server's client as a 422.
    """

    num_beams: int = 4
    do_sample: bool = False
    top_p: float = 0.92
    no_repeat_ngram_size: int = 3
    max_new_tokens: int | None = None
    seeds: tuple[int, ...] = PAPER_SAMPLING_SEEDS
    batch_size: int = 16
    quote_lyrics: bool = False
    known_words: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.seeds, int) and not isinstance(self.seeds, bool):
            self.seeds = (self.seeds,)
        self.seeds = tuple(self.seeds)

    @classmethod
    def from_options(cls, **options: Any) -> DecodeSettings:
        """Settings from keyword options (the Captioner's and the server's): a single `seed`
        stands for `seeds=(seed,)`, and a None value keeps the default."""
        values = {k: v for k, v in options.items() if v is not None}
        if "seed" in values:
            values["seeds"] = (values.pop("seed"),)
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise RecapError(f"unknown decoding option(s): {', '.join(unknown)}")
        return cls(**values)

    def check(self, max_positions: int | None = None) -> DecodeSettings:
        """Raise RecapError on a value generation cannot use; `max_positions`, the decoder's
        position limit, caps max_new_tokens. Returns self."""
        for name in ("num_beams", "no_repeat_ngram_size", "batch_size"):
            _check_int(name, getattr(self, name))
        if self.max_new_tokens is not None:
            _check_int("max_new_tokens", self.max_new_tokens)
        if self.num_beams < 1 or self.batch_size < 1:
            raise RecapError("num_beams and batch_size must be >= 1")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, int | float):
            raise RecapError(f"top_p must be a number, got {self.top_p!r}")
        if not 0 < self.top_p <= 1:
            raise RecapError("top_p must be in (0, 1]")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise RecapError("max_new_tokens must be >= 1")
        if (
            max_positions is not None
            and self.max_new_tokens is not None
            and self.max_new_tokens > max_positions
        ):
            raise RecapError(
                f"max_new_tokens must be at most {max_positions}, the model's position limit "
                f"(got {self.max_new_tokens})"
            )
        if self.no_repeat_ngram_size < 0:
            raise RecapError("no_repeat_ngram_size must be >= 0")
        for seed in self.seeds:
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
                raise RecapError(f"seed must be an integer from 0 to {MAX_SEED} (2**64 - 1)")
        for name in ("quote_lyrics", "known_words"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise RecapError(f"{name} must be true or false, got {value!r}")
        if self.do_sample and not self.seeds:
            raise RecapError("sampling needs at least one seed")
        return self

    @property
    def seed(self) -> int | None:
        """The seed of a single decode: the first one when sampling; beam search needs none."""
        return self.seeds[0] if self.do_sample and self.seeds else None

    @property
    def run_seeds(self) -> tuple[int | None, ...]:
        """One decode per seed when sampling; beam search is deterministic: one unseeded run."""
        return self.seeds if self.do_sample else (None,)

    def tag(self) -> str:
        """A short folder name for these settings, e.g. `beam4` or `sample-p0.92-beam4`."""
        text = (
            f"sample-p{self.top_p:g}-beam{self.num_beams}"
            if self.do_sample
            else f"beam{self.num_beams}"
        )
        if self.max_new_tokens is not None:
            text += f"-len{self.max_new_tokens}"
        if self.quote_lyrics:
            text += "-quotes"
        if self.known_words:
            text += "-words"
        return text

    def generate_kwargs(self, model_config: Any) -> dict[str, Any]:
        """`generate()` keyword arguments for a RECAP model with config `model_config`."""
        gen = model_config.generation
        kwargs: dict[str, Any] = {
            "num_beams": self.num_beams,
            "do_sample": self.do_sample,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "max_new_tokens": self.max_new_tokens or gen.max_new_tokens,
            "forced_bos_token_id": gen.forced_bos_token_id,
            "forced_eos_token_id": gen.forced_eos_token_id,
        }
        if self.num_beams > 1:
            kwargs["early_stopping"] = True  # as the papers; meaningless (and warned) for 1 beam
        if self.do_sample:
            kwargs["top_p"] = self.top_p  # only meaningful when sampling; HF warns otherwise
        return kwargs

    @classmethod
    def paper_sampled(cls, **overrides: Any) -> DecodeSettings:
        """The authors' RECAP decoding: beams 4, sampling, top_p 0.92, seeds 2022/2021/2020."""
        return cls(**{"num_beams": 4, "do_sample": True, "top_p": 0.92, **overrides})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["seeds"] = list(self.seeds)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DecodeSettings:
        return cls(**known_fields(cls, data, "decoding"))


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecapError(f"{name} must be an integer, got {value!r}")


# ---------------------------------------------------------------------------- models
def default_device() -> Any:
    """The GPU when there is one, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


def load_model_and_tokenizer(
    path: str | os.PathLike, device: Any = None, needs_audio: bool = True, encoder: Any = None
) -> tuple[Any, Any, Path]:
    """Load (model in eval mode on `device`, tokenizer, resolved folder); every failure is a
    RecapError naming the folder, so the CLI and the server report it without a traceback.

    `needs_audio`: the model will read audio files, so a listening model must hold its music
    encoder (an evaluation on precomputed embeddings does not need one). `encoder` (a spec such
    as `hf:DIR`, or an encoder) gives a model saved without one the encoder its embeddings came
    from (`RecapModel.use_music_encoder`).
    """
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
    if encoder is not None and model.config.use_music:
        model.use_music_encoder(encoder)
    if needs_audio and model.music_encoder is None and model.config.use_music:
        raise RecapError(
            f"the model in {folder} has no music encoder, so it cannot read audio; pass the "
            "one it was trained with (--encoder), or export it with the music encoder included "
            "(RecapConfig.with_music_encoder=True)"
        )
    device = torch.device(device) if device is not None else default_device()
    return model.to(device).eval(), tokenizer, folder


# ---------------------------------------------------------------------------- decoding
def generate_ids(
    model: Any,
    input_ids: Any,
    attention_mask: Any,
    music_embeds: Any = None,
    music_mask: Any = None,
    **kwargs: Any,
) -> Any:
    """The model's `generate` — the one call of it in recap. Token ids (B, T'); `music_embeds`
    (B, M, D) for a RECAP model that listens, nothing for a lyrics-only or plain BART model;
    `music_mask` (B, M) when songs heard in different numbers of windows were padded."""
    import torch

    extra = {"music_embeds": music_embeds} if music_embeds is not None else {}
    if music_mask is not None:
        extra["music_mask"] = music_mask
    with torch.inference_mode():
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, **extra, **kwargs)


class _Constraints:
    """The decoding constraints `settings` asks for, with their vocabulary tables built once per
    call of `generate_texts` (not per batch)."""

    def __init__(self, model: Any, tokenizer: Any, settings: DecodeSettings) -> None:
        self.rows_per_song = settings.num_beams
        self.quotes = self.words = None
        self.caption_words: frozenset[str] = frozenset()
        if settings.quote_lyrics:
            from recap.inference.quotes import QuoteVocabulary

            self.quotes = QuoteVocabulary(tokenizer)
        if settings.known_words:
            from recap.inference.words import CAPTION_WORDS_NAME, WordVocabulary

            if getattr(model, "caption_words", None) is None:
                raise RecapError(
                    f"known_words needs the words of the captioner's training captions "
                    f"({CAPTION_WORDS_NAME} in its model folder, written by `recap train`); "
                    "this model has none"
                )
            self.caption_words = model.caption_words
            self.words = WordVocabulary(tokenizer)

    def __bool__(self) -> bool:
        return self.quotes is not None or self.words is not None

    def for_songs(self, songs: Sequence[str]) -> Any:
        """The logits processors of one batch (`songs`: its lyrics, in row order)."""
        from transformers import LogitsProcessorList

        from recap.inference.quotes import QuoteFromLyrics
        from recap.inference.words import KnownWords

        processors: list[Any] = []
        if self.quotes is not None:
            processors.append(QuoteFromLyrics(self.quotes, songs, self.rows_per_song))
        if self.words is not None:
            processors.append(KnownWords(self.words, self.caption_words, songs, self.rows_per_song))
        return LogitsProcessorList(processors)


def generate_texts(
    model: Any,
    tokenizer: Any,
    lyrics_ids: Sequence[Sequence[int]],
    music: Sequence[Any] | None,
    settings: DecodeSettings,
    seed: int | None = None,
    progress: bool = False,
    desc: str = "generate",
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> list[str]:
    """One caption per tokenised lyrics, in input order; every item is decoded (the last batch
    may be smaller than `settings.batch_size`).

    `music`: one (M, D) sequence (array or tensor) per item, or None for a lyrics-only model;
    songs heard in different numbers of windows (M = W * 119) are zero-padded in a batch, with
    a `music_mask`.
    Items are decoded in order of lyrics length (less padding per batch). With sampling, torch's
    generator is seeded once with `seed` before the first batch (as the authors' loop did), so
    the captions depend on the seed and the batch size. `autocast`: a context for mixed
    precision (training's validation).
    """
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    if not lyrics_ids:
        return []
    settings.check(model.config.max_position_embeddings)
    kwargs = settings.generate_kwargs(model.config)
    device = next(model.parameters()).device
    pad = model.config.pad_token_id
    constraints = _Constraints(model, tokenizer, settings)
    order = sorted(range(len(lyrics_ids)), key=lambda i: len(lyrics_ids[i]))
    if seed is not None:
        torch.manual_seed(seed)  # sampling draws from torch's global generator
    out: list[str] = [""] * len(lyrics_ids)
    bar = tqdm(total=len(order), desc=desc, unit="song", disable=not progress)
    for start in range(0, len(order), settings.batch_size):
        chunk = order[start : start + settings.batch_size]
        longest = max(len(lyrics_ids[i]) for i in chunk)
        input_ids = torch.full((len(chunk), longest), pad, dtype=torch.long)  # (B, S)
        for row, i in enumerate(chunk):
            input_ids[row, : len(lyrics_ids[i])] = torch.as_tensor(lyrics_ids[i])
        attention_mask = (input_ids != pad).long()
        music_t: dict[str, Any] = {}
        if music is not None:
            rows = [music[i] for i in chunk]
            if len({r.shape[0] for r in rows}) == 1:
                stacked = (
                    torch.stack(rows)
                    if isinstance(rows[0], torch.Tensor)
                    else torch.from_numpy(np.stack([np.asarray(m) for m in rows]))
                )
                # (B, M, D)
                music_t["music_embeds"] = stacked.to(device=device, dtype=torch.float32)
            else:
                from recap.data.batching import music_tensors

                music_t = music_tensors(  # (B, M, D) and music_mask (B, M)
                    [r.float().cpu().numpy() if isinstance(r, torch.Tensor) else r for r in rows],
                    device,
                )
        if constraints:
            songs = tokenizer.batch_decode([lyrics_ids[i] for i in chunk], skip_special_tokens=True)
            kwargs["logits_processor"] = constraints.for_songs(songs)
        with autocast() if autocast is not None else contextlib.nullcontext():
            generated = generate_ids(
                model, input_ids.to(device), attention_mask.to(device), **music_t, **kwargs
            )
        texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
        for i, text in zip(chunk, texts):
            out[i] = text.strip()
        bar.update(len(chunk))
    bar.close()
    return out
