"""A Hugging Face transformers audio tower as RECAP's music encoder (kind `hf`): CLAP.

`recap ... --encoder hf:laion/larger_clap_music` (or `hf:FOLDER`) loads the audio tower of a
CLAP checkpoint (`ClapAudioModel`) and its `ClapFeatureExtractor` with transformers' own classes:
never `trust_remote_code`, and a folder or config whose `auto_map` asks for custom code is refused.
Offline (HF_HUB_OFFLINE=1) a hub name must already be in the Hugging Face cache.

waveform (B, T) at the extractor's rate (48 kHz for CLAP)
  → W windows of `max_length_s` (10 s) per clip: one if T fits (the extractor repeat-pads it),
    else ceil(T / L) windows spread evenly from the start to the end (they overlap)   (B·W, L)
  → ClapFeatureExtractor: log-mel (numpy, on the CPU)                        (B·W, 1, frames, mels)
  → ClapAudioModel (HTSAT, a Swin transformer) last_hidden_state             (B·W, D, F', T')
  → the F'·T' patch tokens of each window, windows one after another          (B, W·F'·T', D)

Why patch tokens and not the pooled vector: fusion is cross-attention, which needs a sequence to
attend over, as CNNSA's 119 tokens are. CLAP's `pooler_output` is exactly the mean of these
tokens, so RECAP's music vector (the token mean) is the mean of the windows' pooled CLAP vectors.
CLAP's 512-d text-audio projection is not used: it is trained for the pooled vector only.
`laion/larger_clap_music`: 64 tokens of 1024 per 10 s window, 128 tokens for a 15 s excerpt.
The projection to BART's width is fusion's key/value Linear (D → d_model), and alignment's
`align_proj` maps BART's pooled lyrics to D, exactly as for CNNSA (D = 256 there).

Determinism (the embeddings are cached): windows never exceed `max_length_s`, so the extractor's
random crops never happen; `is_longer` is False for every window, so its "mark a random clip as
longer" trick and CLAP's feature fusion stay off; numpy's global random state is restored.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recap.models.encoders import fingerprint_of
from recap.utils import RecapError, known_fields

# Bumped when the waveform → tokens recipe changes, so cached embeddings are recomputed.
TOKENS_VERSION = 1
# model_type of a checkpoint's config.json → the prefix of its audio tower's weights
CLAP_MODEL_TYPES = {"clap": "audio_model.", "clap_audio_model": ""}


@dataclass
class HFAudioEncoderConfig:
    """What rebuilds the tower without the network (the weights are in the captioner's file)."""

    source: str = ""  # the hub name or folder it was loaded from; informational only
    model_type: str = "clap_audio_model"
    hidden_size: int = 768
    sample_rate: int = 48_000
    model_config: dict[str, Any] = field(default_factory=dict)  # ClapAudioConfig.to_dict()
    feature_extractor: dict[str, Any] = field(default_factory=dict)  # its to_dict()

    def __post_init__(self) -> None:
        # as config.json will hold them (tuples become lists), so a reloaded config is equal
        self.model_config = json.loads(json.dumps(self.model_config))
        self.feature_extractor = json.loads(json.dumps(self.feature_extractor))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HFAudioEncoderConfig:
        return cls(**known_fields(cls, data, "HF audio encoder config"))


class HFAudioEncoder(nn.Module):
    """CLAP's audio tower behind `MusicEncoderProtocol` (see the module docstring)."""

    kind = "hf"

    def __init__(self, config: HFAudioEncoderConfig, model: nn.Module, feature_extractor: Any):
        super().__init__()
        self.config = config
        self.model = model
        self.feature_extractor = feature_extractor
        self.window = int(feature_extractor.nb_max_samples)  # samples per window (L)

    @classmethod
    def from_config(cls, config: HFAudioEncoderConfig) -> HFAudioEncoder:
        """The tower shaped by `config`, randomly initialised (a saved captioner fills it)."""
        from transformers import ClapAudioConfig, ClapAudioModel, ClapFeatureExtractor

        if not config.model_config or not config.feature_extractor:
            raise RecapError("this HF audio encoder config holds no model or extractor settings")
        model_config = ClapAudioConfig.from_dict(dict(config.model_config))
        extractor = ClapFeatureExtractor.from_dict(dict(config.feature_extractor))
        return cls(config, ClapAudioModel(model_config).eval(), extractor)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def sample_rate(self) -> int:
        return int(self.config.sample_rate)

    def fingerprint(self) -> str:
        settings = {"tokens_version": TOKENS_VERSION, **self.config.to_dict()}
        settings.pop("source")  # the same weights from a folder or the hub give the same tokens
        return fingerprint_of({"kind": self.kind, **settings}, self.state_dict())

    def window_starts(self, num_samples: int) -> list[int]:
        """Start samples of the windows of a clip: [0] when it fits one window, else ceil(T / L)
        starts spread evenly from 0 to T - L."""
        if num_samples <= self.window:
            return [0]
        count = math.ceil(num_samples / self.window)
        last = num_samples - self.window
        return [round(i * last / (count - 1)) for i in range(count)]

    def features(self, waveform: torch.Tensor) -> tuple[torch.Tensor, int]:
        """waveform (B, T) → (log-mel features (B·W, 1, frames, mels), W windows per clip)."""
        clips = waveform.detach().float().cpu().numpy()  # (B, T)
        starts = self.window_starts(clips.shape[-1])
        windows = [clip[s : s + self.window] for clip in clips for s in starts]  # B·W of ≤ L
        state = np.random.get_state()  # the extractor draws from numpy's global generator
        try:
            out = self.feature_extractor(
                windows, sampling_rate=self.sample_rate, return_tensors="pt"
            )
        finally:
            np.random.set_state(state)
        # A "fusion" extractor stacks 4 copies of a short window's mel; with is_longer False
        # CLAP reads only the first, and a tower without fusion accepts only one.
        return out["input_features"][:, :1], len(starts)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """waveform (B, T) or (T,) at `sample_rate` → tokens (B, W·F'·T', hidden_size)."""
        if waveform.dim() == 1:
            waveform = waveform.unsqueeze(0)  # (T,) → (1, T)
        if waveform.dim() != 2:
            raise RecapError(f"expected a waveform (B, T), got shape {tuple(waveform.shape)}")
        batch = waveform.shape[0]
        features, per_clip = self.features(waveform)
        weight = next(self.model.parameters())
        features = features.to(device=weight.device, dtype=weight.dtype)
        is_longer = torch.zeros(features.shape[0], 1, dtype=torch.bool, device=weight.device)
        hidden = self.model(input_features=features, is_longer=is_longer).last_hidden_state
        tokens = hidden.flatten(2).transpose(1, 2)  # (B·W, D, F', T') → (B·W, F'·T', D)
        return tokens.reshape(batch, per_clip * tokens.shape[1], tokens.shape[2])  # (B, M, D)


def _read_model_config(source: str) -> tuple[dict[str, Any], str]:
    """(config.json of `source`, where it was read): a folder's, or the hub's / its cache's."""
    path = Path(source)
    if path.is_dir():
        file = path / "config.json"
        if not file.is_file():
            raise RecapError(f"hf:{source}: the folder holds no config.json")
    elif path.exists():
        raise RecapError(f"hf:{source} is a file; an HF audio encoder is a folder or a hub name")
    else:
        from huggingface_hub import hf_hub_download

        try:
            file = Path(hf_hub_download(source, "config.json"))
        except Exception as exc:  # noqa: BLE001 - offline, unknown repo, bad name: all "cannot"
            raise RecapError(
                f"hf:{source} is not a local folder and cannot be fetched from the Hugging Face "
                "hub or found in its cache (with HF_HUB_OFFLINE=1 only cached models load: "
                f"download it once online, or pass a folder): {type(exc).__name__}: {exc}"
            ) from exc
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise RecapError(f"cannot read {file}: {exc}") from exc
    if not isinstance(data, dict):
        raise RecapError(f"{file} is not a model config")
    return data, str(file)


def load_hf_audio_encoder(source: str) -> HFAudioEncoder:
    """The audio tower and feature extractor of the CLAP checkpoint `source` (a hub name or a
    folder; a full `ClapModel` or a bare `ClapAudioModel`), in eval mode, float32."""
    config, where = _read_model_config(source)
    if config.get("auto_map"):
        raise RecapError(
            f"{where} names custom model code (auto_map); recap never runs code from a model"
        )
    model_type = config.get("model_type")
    if model_type not in CLAP_MODEL_TYPES:
        raise RecapError(
            f"hf:{source} is a {model_type!r} model; the HF music encoder reads CLAP checkpoints "
            f"({', '.join(CLAP_MODEL_TYPES)}): add an adapter in recap/models/hf_audio.py for others"
        )
    from transformers import ClapAudioModel, ClapFeatureExtractor
    from transformers.utils import logging as hf_logging

    prefix = CLAP_MODEL_TYPES[model_type]
    # A full CLAP checkpoint's text tower is "unexpected" for the audio tower: transformers would
    # print a table of its keys. What matters, weights missing from the tower, is checked below.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        # A full CLAP checkpoint stores the tower under audio_model.; ClapAudioModel alone would
        # leave every weight randomly initialised (with a warning only), hence the key mapping
        # and the check of what was loaded.
        model, info = ClapAudioModel.from_pretrained(
            source,
            key_mapping={f"^{prefix}": ""} if prefix else None,
            output_loading_info=True,
        )
        extractor = ClapFeatureExtractor.from_pretrained(source)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RecapError(f"cannot load the CLAP audio tower hf:{source}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise RecapError(
            f"hf:{source} lacks {len(missing)} weight(s) of the CLAP audio tower "
            f"({', '.join(missing[:3])}...): not a CLAP checkpoint?"
        )
    model = model.float().eval()
    encoder_config = HFAudioEncoderConfig(
        source=source,
        model_type="clap_audio_model",
        hidden_size=int(model.audio_encoder.num_features),
        sample_rate=int(extractor.sampling_rate),
        # "_name_or_path" is where it was loaded from: not a setting, and machine-specific
        model_config={k: v for k, v in model.config.to_dict().items() if not k.startswith("_")},
        feature_extractor=extractor.to_dict(),
    )
    return HFAudioEncoder(encoder_config, model, extractor)


__all__ = ["HFAudioEncoder", "HFAudioEncoderConfig", "load_hf_audio_encoder"]
