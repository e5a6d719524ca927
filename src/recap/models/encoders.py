"""The music-encoder seam: what RECAP needs from an audio tower, and a name → builder registry.

A music encoder turns a mono waveform at its own sample rate into a token sequence:

    waveform (B, T) at `encoder.sample_rate`  →  tokens (B, M, encoder.hidden_size)

The captioner never looks inside: fusion attends to the tokens (its key/value Linears project
them from `hidden_size` to BART's width), alignment compares their mean with the pooled lyrics,
and the embeddings cache stores them under `encoder.fingerprint()`. Audio reaches an encoder at
its rate because every caller decodes with `audio_config_for(encoder)`: the file is resampled
once, from its own rate straight to the encoder's (soxr, `recap.data.audio`).

Two encoders are registered (open_clip's factory, in miniature):

| spec                         | kind    | encoder                                            |
|------------------------------|---------|----------------------------------------------------|
| folder / `.pth` / preset name | `cnnsa` | `MusicEncoder` (recap.models.music_encoder)       |
| `hf:<hub name or folder>`    | `hf`    | a transformers audio tower, e.g. CLAP (hf_audio)  |

`build_music_encoder(spec)` loads one; `RecapConfig.music_kind` records the kind so a saved
captioner rebuilds its encoder from config.json (`music_encoder_from_config`) and loads the
weights from its own model.safetensors. To add an encoder: implement `MusicEncoderProtocol` in
an `nn.Module`, give it a config with `to_dict()`, and `register_music_encoder(kind, ...)`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from recap.utils import RecapError

if TYPE_CHECKING:
    import torch

    from recap.data.audio import AudioConfig

DEFAULT_KIND = "cnnsa"


@runtime_checkable
class MusicEncoderProtocol(Protocol):
    """What RECAP uses of a music encoder (an `nn.Module`: `.to`, `.eval`, `state_dict` too)."""

    kind: str  # its registry name, stored as RecapConfig.music_kind
    config: Any  # has to_dict(); stored as RecapConfig.music

    @property
    def hidden_size(self) -> int:
        """D, the width of every token."""
        ...

    @property
    def sample_rate(self) -> int:
        """The rate, in Hz, of the waveforms `forward` expects."""
        ...

    def fingerprint(self) -> str:
        """A hash of everything that changes the tokens (settings and weights): the cache key."""
        ...

    def __call__(self, waveform: torch.Tensor) -> torch.Tensor:
        """waveform (B, T) at `sample_rate` → tokens (B, M, hidden_size)."""
        ...


@dataclass(frozen=True)
class EncoderBuilder:
    """How one kind of encoder is made.

    load: the text after `kind:` in a spec (a folder, a file, a hub name...) → a trained encoder.
    from_config: its config → an encoder of that shape, for a saved captioner's weights to fill.
    config_from_dict: config.json's `music` mapping → its config.
    """

    load: Callable[[str], Any]
    from_config: Callable[[Any], Any]
    config_from_dict: Callable[[Mapping[str, Any]], Any]


_REGISTRY: dict[str, EncoderBuilder] = {}


def register_music_encoder(kind: str, builder: EncoderBuilder) -> None:
    """Make `kind:<argument>` specs and `music_kind: kind` configs build with `builder`."""
    if not kind.isidentifier():
        raise RecapError(f"an encoder kind is a plain name, not {kind!r}")
    _REGISTRY[kind] = builder


def music_encoder_kinds() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def _builder(kind: str) -> EncoderBuilder:
    if kind not in _REGISTRY:
        raise RecapError(f"unknown music encoder kind {kind!r}; registered: {', '.join(_REGISTRY)}")
    return _REGISTRY[kind]


def parse_encoder_spec(spec: str | os.PathLike) -> tuple[str, str]:
    """`"hf:laion/larger_clap_music"` → ("hf", "laion/larger_clap_music"); a spec without a
    registered `kind:` prefix (a folder, a checkpoint, a preset name) → ("cnnsa", spec)."""
    text = str(spec)
    kind, sep, rest = text.partition(":")
    if sep and kind in _REGISTRY:
        if not rest:
            raise RecapError(f"music encoder spec {text!r} names no model after {kind}:")
        return kind, rest
    if sep and kind.isidentifier() and len(kind) > 1 and not Path(text).exists():
        # a one-letter prefix is a Windows drive ("C:\\enc"), anything else a kind we lack
        raise RecapError(
            f"unknown music encoder kind {kind!r} in {text!r}; registered: {', '.join(_REGISTRY)}"
        )
    return DEFAULT_KIND, text


def build_music_encoder(spec: Any, device: torch.device | str | None = None) -> Any:
    """A music encoder from a spec (see the module docstring), in eval mode on `device`;
    an encoder object is returned as it is (moved to `device`)."""
    if isinstance(spec, MusicEncoderProtocol):
        encoder = spec
    else:
        kind, argument = parse_encoder_spec(spec)
        encoder = _builder(kind).load(argument)
    return encoder.to(device) if device is not None else encoder


def music_encoder_from_config(kind: str, config: Any) -> Any:
    """An encoder of kind `kind` shaped by `config` (weights as initialised: load them after)."""
    return _builder(kind).from_config(config)


def music_config_from_dict(kind: str, data: Mapping[str, Any]) -> Any:
    return _builder(kind).config_from_dict(data)


def audio_config_for(encoder: Any, base: AudioConfig | None = None) -> AudioConfig:
    """`base` (default: `AudioConfig()`) decoding at the encoder's sample rate, so that files are
    resampled from their own rate straight to the encoder's; `base` itself without an encoder."""
    from recap.data.audio import AudioConfig

    base = base if base is not None else AudioConfig()
    if encoder is None or base.sample_rate == encoder.sample_rate:
        return base
    return replace(base, sample_rate=int(encoder.sample_rate))


def hash_state(h: Any, state: Mapping[str, torch.Tensor]) -> None:
    """Feed every tensor of `state` (name, dtype, shape, bytes) into the hash `h`, sorted by name."""
    import torch

    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # reinterpret as bytes so every dtype (bf16 too) hashes without numpy conversion issues
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def fingerprint_of(settings: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of JSON `settings` and the bytes of every tensor of `state`."""
    h = hashlib.sha256()
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    hash_state(h, state)
    return h.hexdigest()


# ----------------------------------------------------------------------------- built-in kinds
# Imported on use: the HF tower needs transformers' audio code, the registry must not.


def _cnnsa() -> EncoderBuilder:
    def load(argument: str) -> Any:
        from recap.models.music_encoder import load_music_encoder

        return load_music_encoder(argument)

    def from_config(config: Any) -> Any:
        from recap.models.music_encoder import MusicEncoder

        return MusicEncoder(config)

    def config_from_dict(data: Mapping[str, Any]) -> Any:
        from recap.models.music_encoder import MusicEncoderConfig

        return MusicEncoderConfig.from_dict(data)

    return EncoderBuilder(load, from_config, config_from_dict)


def _hf() -> EncoderBuilder:
    def load(argument: str) -> Any:
        from recap.models.hf_audio import load_hf_audio_encoder

        return load_hf_audio_encoder(argument)

    def from_config(config: Any) -> Any:
        from recap.models.hf_audio import HFAudioEncoder

        return HFAudioEncoder.from_config(config)

    def config_from_dict(data: Mapping[str, Any]) -> Any:
        from recap.models.hf_audio import HFAudioEncoderConfig

        return HFAudioEncoderConfig.from_dict(data)

    return EncoderBuilder(load, from_config, config_from_dict)


register_music_encoder("cnnsa", _cnnsa())
register_music_encoder("hf", _hf())
