"""CNNSA music encoder (Won, Chun & Serra 2019), the frozen audio tower of RECAP (SPEC §1.1).

waveform (B, T) 16 kHz mono
  → log-mel: torch.stft power spectrogram → HTK mel filterbank → dB          (B, n_mels, frames)
  → BatchNorm2d(1) → 7 Res_2d blocks (frequency n_mels → 1, time ÷ 8)       (B, 2C, 1, T')
  → [chroma_tokens only] + Linear(pitch-class profile of each token's frames) (B, T', 2C)
  → fixed CLS vector prepended                                              (B, 1 + T', 2C)
  → BERT-style post-LN transformer                                          (B, 1 + T', 2C)
  → [tagging only] pooler(CLS) → dropout → Linear → sigmoid                 (B, n_tags)

Module and buffer names follow the public reference code, so its pretrained checkpoints
(`best_model.pth`) load with `strict=True` (`MusicEncoder.from_checkpoint`; reading that format:
recap.models.cnnsa_checkpoint). The mel front end, `torch.stft` in place of torchaudio's
`MelSpectrogram`, is recap.models.mel.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recap.models.mel import MelSpectrogram, chroma_filterbank
from recap.utils import RecapError, atomic_save_safetensors, atomic_write_json, known_fields

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# Strides of the 7 Res_2d blocks (frequency, time): three blocks halve both axes, four more
# halve frequency only. Every block halves frequency (rounding up), so after 7 blocks any
# n_mels <= 2**7 = 128 reaches exactly 1, which the sequence step requires.
BLOCK_STRIDES: tuple[tuple[int, int], ...] = ((2, 2),) * 3 + ((2, 1),) * 4
MAX_N_MELS = 2 ** len(BLOCK_STRIDES)


def _conv_out(size: int, stride: int) -> int:
    """Output length of a 3x3 convolution with padding 1: ceil(size / stride)."""
    return (size - 1) // stride + 1


@dataclass
class MusicEncoderConfig:
    """Sizes of the CNNSA encoder; the defaults are the reference (public checkpoint) sizes."""

    # mel front end (torchaudio MelSpectrogram defaults, SPEC §1.1)
    sample_rate: int = 16000
    n_fft: int = 512  # also the window length
    hop_length: int = 256
    f_min: float = 0.0
    f_max: float = 8000.0
    n_mels: int = 128
    # Floor each clip's dB log-mel at its maximum minus top_db (librosa's and torchaudio's
    # top_db), as the first step of `embed_log_mel`. None, the reference, has no floor: digital
    # silence then sits at -100 dB and dominates the input BatchNorm's statistics, which slows
    # training from scratch on rendered audio (docs/results.md).
    top_db: float | None = None
    # Beyond CNNSA, off in the reference: a pitch-class profile (chroma, 60 Hz-2 kHz) of each
    # token's frames, linearly projected and added to the CNN's tokens before the transformer.
    # The demo's 16-channel CNN carries the melody, accompaniment and tempo or a little of the
    # key, not all four (docs/training.md "The demo tagger"); this hands it the pitch classes
    # the key is read from. `log_mel` then returns n_mels + 12 rows: the chroma in dB last.
    chroma_tokens: bool = False
    # The chroma's make (chroma_tokens only; the defaults are run T's). Bins up to chroma_f_max;
    # each bin's power raised to chroma_power (0.5: magnitude; 0.25 weighs the quiet partials
    # nearer the loud ones); "token" scales each token's profile to sum 1, "clip" divides it by
    # the clip's mean token energy, so the mean token holds the loudness-weighted profile of
    # the whole excerpt. A logistic regression on the tokens' mean profile names the heard key
    # of 63 % of the demo's test songs with the defaults, 76 % with 1 kHz, 0.25 and "clip"
    # (benchmarks/chroma_key_ceiling.py; docs/training.md "A chroma the key can be read from").
    chroma_f_max: float = 2000.0
    chroma_power: float = 0.5
    chroma_norm: str = "token"
    # Where the projected profiles join the tokens: "input" to the transformer (run T's), or
    # "output", added to its output tokens (not the CLS), so the transformer reads the mel
    # rows alone and rolled chroma rows (the tagger's chroma_rotation) never contradict them
    # there, and the mean token is linear in the excerpt's profile.
    chroma_at: str = "input"
    # CNN width; the transformer width is 2 * n_channels
    n_channels: int = 128
    # transformer
    n_layers: int = 2
    n_heads: int = 8
    ffn_dim: int | None = None  # None → 4 * hidden_size (1024 for the reference)
    hidden_dropout: float = 0.4
    attention_dropout: float = 0.5
    layer_norm_eps: float = 1e-12
    # seed of the fixed, non-learned CLS vector: np.random.seed(0); np.random.random((1, hidden))
    cls_seed: int = 0
    # tagging head
    head_dropout: float = 0.5
    n_tags: int = 50
    tag_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.ffn_dim is None:
            self.ffn_dim = 4 * self.hidden_size
        self.tag_names = list(self.tag_names)
        problems = []
        if not 1 <= self.n_mels <= MAX_N_MELS:
            problems.append(
                f"n_mels={self.n_mels} must be in 1..{MAX_N_MELS}: the {len(BLOCK_STRIDES)} "
                f"Res_2d blocks halve frequency {len(BLOCK_STRIDES)} times and must reach 1"
            )
        if self.n_channels < 1 or self.n_layers < 0 or self.n_heads < 1 or self.ffn_dim < 1:
            problems.append("n_channels, n_heads and ffn_dim must be positive, n_layers >= 0")
        elif self.hidden_size % self.n_heads:
            problems.append(
                f"hidden size {self.hidden_size} (2 * n_channels) is not divisible by "
                f"n_heads={self.n_heads}"
            )
        if self.hop_length < 1 or self.n_fft < 2:
            problems.append("n_fft must be >= 2 and hop_length >= 1")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            problems.append(
                f"need 0 <= f_min < f_max <= sample_rate/2, got f_min={self.f_min}, "
                f"f_max={self.f_max}, sample_rate={self.sample_rate}"
            )
        if not self.f_min < self.chroma_f_max <= self.sample_rate / 2 or not self.chroma_power > 0:
            problems.append(
                f"need f_min < chroma_f_max <= sample_rate/2 and chroma_power > 0, got "
                f"chroma_f_max={self.chroma_f_max}, chroma_power={self.chroma_power}"
            )
        if self.chroma_norm not in ("token", "clip"):
            problems.append(f"chroma_norm is 'token' or 'clip', not {self.chroma_norm!r}")
        if self.chroma_at not in ("input", "output"):
            problems.append(f"chroma_at is 'input' or 'output', not {self.chroma_at!r}")
        if self.top_db is not None and not self.top_db > 0:
            problems.append(f"top_db must be positive or None, got {self.top_db}")
        if self.n_tags < 1:
            problems.append(f"n_tags must be positive, got {self.n_tags}")
        if self.tag_names and len(self.tag_names) != self.n_tags:
            problems.append(f"{len(self.tag_names)} tag_names given for n_tags={self.n_tags}")
        if problems:
            raise RecapError("invalid MusicEncoderConfig: " + "; ".join(problems))

    @property
    def hidden_size(self) -> int:
        return 2 * self.n_channels

    @property
    def log_mel_rows(self) -> int:
        """Rows of `MusicEncoder.log_mel`: the mel bands, then 12 chroma rows if chroma_tokens."""
        return self.n_mels + (12 if self.chroma_tokens else 0)

    @property
    def n_freqs(self) -> int:
        """Rows of the one-sided spectrogram (257 for n_fft 512)."""
        return self.n_fft // 2 + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MusicEncoderConfig:
        return cls(**known_fields(cls, data))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> MusicEncoderConfig:
        """`reference` (10.52 M params, the public checkpoints), `small` (CPU-trainable), `tiny`
        (tests), `mini` and `demo` (the demo's taggers, before and since issue 11)."""
        if name not in PRESETS:
            raise RecapError(
                f"unknown music encoder preset {name!r}; choose one of {', '.join(PRESETS)}"
            )
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    "reference": {},
    # ~0.7 M params: trainable on CPU on the rendered-songs benchmark
    "small": {"n_channels": 32, "n_heads": 4},
    # ~40 k params, 32 mel bands: for tests
    "tiny": {"n_channels": 8, "n_heads": 2, "n_mels": 32},
    # ~0.17 M params, 32 mel bands, an 80 dB floor: the demo's tagger before issue 11
    "mini": {"n_channels": 16, "n_heads": 2, "n_mels": 32, "top_db": 80.0},
    # ~0.17 M params, the demo's tagger since issue 11: `mini`'s network on a front end that
    # resolves pitch (n_fft 2048: 7.8 Hz bins; 64 mel bands over 60 Hz-4 kHz, the melody's
    # register) with hop 512 (32 ms frames, 256 ms tokens: half the CNN work per second)
    "demo": {
        "n_channels": 16,
        "n_heads": 2,
        "n_mels": 64,
        "n_fft": 2048,
        "hop_length": 512,
        "f_min": 60.0,
        "f_max": 4000.0,
        "top_db": 80.0,
    },
}
# `demo` with each token's pitch-class profile added (chroma_tokens): the demo's tagger since
# run T (docs/results.md; docs/training.md "Chroma tokens").
PRESETS["demo-chroma"] = {**PRESETS["demo"], "chroma_tokens": True}
# `demo-chroma` with a chroma the mean token's key can be read from (see chroma_f_max), added
# after the transformer (chroma_at): the demo's tagger since run AK (docs/training.md).
PRESETS["demo-key"] = {
    **PRESETS["demo-chroma"],
    "chroma_f_max": 1000.0,
    "chroma_power": 0.25,
    "chroma_norm": "clip",
    "chroma_at": "output",
}


# ----------------------------------------------------------------------------- CNN


class Res_2d(nn.Module):  # noqa: N801 - the reference class name, kept for recognisability
    """3x3 conv-BN-ReLU-3x3 conv-BN plus a conv+BN projection shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int]) -> None:
        super().__init__()
        self.conv_1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.bn_1 = nn.BatchNorm2d(out_channels)
        self.conv_2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.bn_2 = nn.BatchNorm2d(out_channels)
        self.diff = tuple(stride) != (1, 1) or in_channels != out_channels
        if self.diff:  # the shortcut must change shape too
            self.conv_3 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
            self.bn_3 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x (B, C_in, F, T) → (B, C_out, ceil(F / s_f), ceil(T / s_t))
        out = self.bn_2(self.conv_2(F.relu(self.bn_1(self.conv_1(x)))))
        shortcut = self.bn_3(self.conv_3(x)) if self.diff else x
        return F.relu(shortcut + out)


# ----------------------------------------------------------------------------- transformer
# Plain modules named like Hugging Face's BertEncoder/BertPooler, which the reference used.


class _SelfAttention(nn.Module):
    def __init__(self, config: MusicEncoderConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.n_heads = config.n_heads
        self.dropout_p = config.attention_dropout
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape  # (B, N, H)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, N, H) → (B, heads, N, H / heads)
            return t.view(b, n, self.n_heads, h // self.n_heads).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(
            heads(self.query(x)),
            heads(self.key(x)),
            heads(self.value(x)),
            dropout_p=self.dropout_p if self.training else 0.0,
        )  # (B, heads, N, H / heads); no mask: every clip is full length
        return ctx.transpose(1, 2).reshape(b, n, h)  # (B, N, H)


class _AddNorm(nn.Module):
    """Post-LN residual: LayerNorm(residual + dropout(dense(x)))."""

    def __init__(self, in_dim: int, config: MusicEncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(in_dim, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # noqa: N815
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(x)))


class _Attention(nn.Module):
    def __init__(self, config: MusicEncoderConfig) -> None:
        super().__init__()
        self.self = _SelfAttention(config)
        self.output = _AddNorm(config.hidden_size, config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x), x)


class _Intermediate(nn.Module):
    def __init__(self, config: MusicEncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.ffn_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact erf GELU, as BERT's "gelu"


class TransformerLayer(nn.Module):
    def __init__(self, config: MusicEncoderConfig) -> None:
        super().__init__()
        self.attention = _Attention(config)
        self.intermediate = _Intermediate(config)
        self.output = _AddNorm(config.ffn_dim, config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, N, H) → (B, N, H)
        x = self.attention(x)
        return self.output(self.intermediate(x), x)


class TransformerEncoder(nn.Module):
    def __init__(self, config: MusicEncoderConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(TransformerLayer(config) for _ in range(config.n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


class Pooler(nn.Module):
    def __init__(self, config: MusicEncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        # (B, N, H) → (B, H): tanh(dense(CLS token))
        return torch.tanh(self.dense(sequence[:, 0]))


# ----------------------------------------------------------------------------- the encoder


class MusicEncoder(nn.Module):
    """CNNSA: waveform → token sequence (B, 1 + T', hidden) and tag probabilities (B, n_tags).

    Inputs follow the module's device; the mel front end runs in at least float32 (fp16 power
    spectra overflow), the rest in the parameters' dtype. Implements `MusicEncoderProtocol`
    (recap.models.encoders) as kind "cnnsa".
    """

    kind = "cnnsa"

    def __init__(self, config: MusicEncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MusicEncoderConfig()
        self.spec = MelSpectrogram(config)
        self.spec_bn = nn.BatchNorm2d(1)
        c = config.n_channels
        widths = [1, c, c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c]  # channels into/out of each block
        for i, stride in enumerate(BLOCK_STRIDES):
            self.add_module(f"layer{i + 1}", Res_2d(widths[i], widths[i + 1], stride))
        if config.chroma_tokens:
            self.chroma_proj = nn.Linear(12, config.hidden_size)
            fb = chroma_filterbank(
                config.n_freqs, config.sample_rate, f_max=config.chroma_f_max
            )  # (n_freqs, 12)
            self.register_buffer("chroma_fb", fb, persistent=False)  # computed, not stored
        self.encoder = TransformerEncoder(config)
        self.pooler = Pooler(config)
        self.dropout = nn.Dropout(config.head_dropout)
        self.dense = nn.Linear(config.hidden_size, config.n_tags)
        # Fixed, non-learned CLS vector (reference: np.random.seed(0); np.random.random((1, 256))).
        # A seeded RandomState draws the same numbers without touching numpy's global state.
        cls = np.random.RandomState(config.cls_seed).random_sample((1, config.hidden_size))
        self.register_buffer(
            "cls_vector", torch.tensor(cls, dtype=torch.float32), persistent=False
        )  # (1, hidden)

    @property
    def blocks(self) -> list[Res_2d]:
        return [getattr(self, f"layer{i + 1}") for i in range(len(BLOCK_STRIDES))]

    # -- the music-encoder protocol (recap.models.encoders)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def fingerprint(self) -> str:
        """SHA-256 of the config and every state-dict tensor's bytes (weights and buffers)."""
        from recap.models.encoders import fingerprint_of

        return fingerprint_of(self.config.to_dict(), self.state_dict())

    def mel_fingerprint(self) -> str:
        """SHA-256 of the mel front end alone (settings, window, filterbank): the log-mel cache's
        key, which training the network does not change."""
        from recap.models.encoders import fingerprint_of

        fields = ("sample_rate", "n_fft", "hop_length", "n_mels", "f_min", "f_max")
        settings: dict[str, Any] = {f: getattr(self.config, f) for f in fields}
        if self.config.chroma_tokens:  # only then: older caches keep their keys
            settings["chroma_tokens"] = True
            for name in ("chroma_f_max", "chroma_power"):  # likewise, only when not run T's
                if (
                    getattr(self.config, name)
                    != MusicEncoderConfig.__dataclass_fields__[name].default
                ):
                    settings[name] = getattr(self.config, name)
        return fingerprint_of(settings, self.spec.state_dict())

    # -- shapes

    def num_frames(self, num_samples: int) -> int:
        """Spectrogram frames for `num_samples` samples (center=True): 240,000 → 938."""
        return num_samples // self.config.hop_length + 1

    def output_length(self, num_samples: int) -> int:
        """Tokens of `forward` (CLS included) for `num_samples` samples: 240,000 → 119."""
        t = self.num_frames(num_samples)
        for _, s_time in BLOCK_STRIDES:
            t = _conv_out(t, s_time)
        return 1 + t

    # -- stages

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """Waveform (B, T) or (T,) → dB log-mel (B, n_mels, frames), before the BatchNorm; with
        chroma_tokens, (B, n_mels + 12, frames), the chroma's dB rows after the mel bands."""
        if waveform.dim() == 1:
            waveform = waveform.unsqueeze(0)  # (T,) → (1, T)
        if waveform.dim() != 2:
            raise RecapError(f"expected a waveform (B, T), got shape {tuple(waveform.shape)}")
        if waveform.shape[-1] <= self.config.n_fft // 2:
            raise RecapError(
                f"waveform of {waveform.shape[-1]} samples is too short: reflect padding needs "
                f"more than n_fft / 2 = {self.config.n_fft // 2}"
            )
        # fp16/bf16 power spectra overflow or lose the quiet bands: compute in >= float32
        compute_dtype = torch.promote_types(waveform.dtype, torch.float32)
        waveform = waveform.to(device=self.spec_bn.weight.device, dtype=compute_dtype)
        # autocast would run the filterbank matmul in fp16, where loud frames overflow
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            power = self.spec.spectrogram(waveform)  # (B, n_freqs, frames)
            mel = self.spec.mel_scale(power)  # (B, n_mels, frames) power
            db = 10.0 * torch.log10(torch.clamp(mel, min=1e-10))  # dB, ref 1.0; top_db: embed
            if self.config.chroma_tokens:
                db = torch.cat([db, self.chroma_db(power)], dim=1)  # (B, n_mels + 12, frames)
        return db

    def chroma_db(self, power: torch.Tensor) -> torch.Tensor:
        """Power spectrogram (B, n_freqs, frames) → pitch-class magnitudes in dB (B, 12, frames):
        the power raised to chroma_power (0.5: the magnitude, so partials count less unequally)
        summed per class."""
        exponent = self.config.chroma_power
        compressed = power.sqrt() if exponent == 0.5 else power.clamp(min=0) ** exponent
        compressed = compressed.transpose(-1, -2)  # (B, frames, n_freqs)
        pcs = torch.matmul(compressed, self.chroma_fb.to(power.dtype)).transpose(-1, -2)
        return 10.0 * torch.log10(torch.clamp(pcs, min=1e-10))  # (B, 12, frames)

    def _chroma_per_token(self, chroma_db: torch.Tensor) -> torch.Tensor:
        """Chroma dB rows (B, 12, frames) → each token's pitch-class profile (B, T', 12), centred
        (12 p - 1: 0 for a flat profile). A token covers 8 frames, as the CNN's time strides.
        `chroma_norm` "token": each profile sums to 1; "clip": the profiles sum to 1 on average
        over the clip's tokens, so their mean is the excerpt's profile."""
        stride = int(np.prod([s for _, s in BLOCK_STRIDES]))
        magnitude = 10.0 ** (chroma_db.float() / 10.0)  # (B, 12, frames)
        pooled = F.avg_pool1d(magnitude, stride, stride, ceil_mode=True)  # (B, 12, T')
        energy = pooled.sum(dim=1, keepdim=True)  # (B, 1, T')
        if self.config.chroma_norm == "clip":
            energy = energy.mean(dim=-1, keepdim=True)  # (B, 1, 1)
        profile = pooled / energy.clamp(min=1e-10)
        return (12.0 * profile - 1.0).transpose(1, 2)  # (B, T', 12)

    def embed_log_mel(self, log_mel_db: torch.Tensor) -> torch.Tensor:
        """dB log-mel (B, n_mels, frames) → last encoder layer's tokens (B, 1 + T', hidden);
        with chroma_tokens the input is `log_mel`'s (B, n_mels + 12, frames)."""
        x = log_mel_db.to(device=self.spec_bn.weight.device, dtype=self.spec_bn.weight.dtype)
        if x.shape[-2] != self.config.log_mel_rows:
            raise RecapError(
                f"expected {self.config.log_mel_rows} log-mel rows, got {x.shape[-2]}: a log-mel "
                "of another front end (a cache from an encoder with other settings?)"
            )
        chroma = None
        if self.config.chroma_tokens:
            x, chroma = x[:, : self.config.n_mels], x[:, self.config.n_mels :]
        if self.config.top_db is not None:
            peak = x.amax(dim=(-2, -1), keepdim=True)  # (B, 1, 1): each clip's loudest bin
            x = torch.maximum(x, peak - self.config.top_db)
        x = self.spec_bn(x.unsqueeze(1))  # (B, 1, n_mels, frames)
        for block in self.blocks:
            x = block(x)  # ... → (B, 2C, 1, T')
        x = x.squeeze(2).transpose(1, 2)  # (B, 2C, T') → (B, T', 2C)
        pitch = None
        if chroma is not None:
            profile = self._chroma_per_token(chroma).to(x.dtype)  # (B, T', 12)
            pitch = self.chroma_proj(profile)  # (B, T', 2C)
        at_input = self.config.chroma_at == "input"
        if pitch is not None and at_input:
            x = x + pitch
        cls = self.cls_vector.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, 2C), any batch
        x = torch.cat([cls, x], dim=1)  # (B, 1 + T', 2C)
        x = self.encoder(x)
        if pitch is not None and not at_input:  # "output": the CLS stays the transformer's
            x = torch.cat([x[:, :1], x[:, 1:] + pitch], dim=1)  # (B, 1 + T', 2C)
        return x

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Waveform (B, T) → token sequence (B, 1 + T', hidden); 240,000 samples → (B, 119, 256)."""
        return self.embed_log_mel(self.log_mel(waveform))

    def tag_logits_from_sequence(self, sequence: torch.Tensor) -> torch.Tensor:
        """Token sequence (B, N, hidden) → tag logits (B, n_tags)."""
        return self.dense(self.dropout(self.pooler(sequence)))

    def tag_logits(self, waveform: torch.Tensor) -> torch.Tensor:
        """Waveform (B, T) → tag logits (B, n_tags), for BCE-with-logits training."""
        return self.tag_logits_from_sequence(self(waveform))

    def tag(self, waveform: torch.Tensor) -> torch.Tensor:
        """Waveform (B, T) → tag probabilities (B, n_tags)."""
        return torch.sigmoid(self.tag_logits(waveform))

    # -- persistence

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
        config: MusicEncoderConfig | None = None,
    ) -> MusicEncoder:
        """Load a reference-format CNNSA checkpoint (`best_model.pth`) or a state dict, strictly.

        The state dict may be nested under 'state_dict'/'model' and carry DataParallel's
        'module.' prefix. Without `config`, the sizes are read from the weights. A stored mel
        filterbank or window of another shape (older torchaudio) is replaced by the computed one.
        Returned in eval mode.
        """
        from recap.models.cnnsa_checkpoint import fit_front_end, read_reference

        config, state, source = read_reference(checkpoint, config)
        model = cls(config)
        fit_front_end(
            state,
            {
                "spec.mel_scale.fb": model.spec.mel_scale.fb,
                "spec.spectrogram.window": model.spec.spectrogram.window,
            },
            source,
        )
        model._load_strict(state, source)
        return model.eval()

    def _load_strict(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise RecapError(
                f"{source} does not fit this CNNSA music encoder "
                f"(n_channels={self.config.n_channels}, n_mels={self.config.n_mels}, "
                f"n_layers={self.config.n_layers}, n_tags={self.config.n_tags}): {err}"
            ) from err

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write `config.json` + `model.safetensors` into `directory` (atomically, file by file)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_save_safetensors(state, directory / WEIGHTS_NAME)
        atomic_write_json(directory / CONFIG_NAME, self.config.to_dict())
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> MusicEncoder:
        """Load a folder written by `save_pretrained`; returned in eval mode."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise RecapError(f"{directory} is not a saved music encoder: {path.name} missing")
        try:
            config = MusicEncoderConfig.from_dict(json.loads(config_path.read_text("utf-8")))
        except (ValueError, TypeError, RecursionError) as err:
            raise RecapError(f"{config_path} is not a valid music encoder config: {err}") from err
        try:
            state = load_file(str(weights_path))
        except (SafetensorError, OSError) as err:
            raise RecapError(f"cannot read {weights_path}: {err}") from err
        model = cls(config)
        model._load_strict(state, str(weights_path))
        return model.eval()


def load_music_encoder(
    spec: str | os.PathLike, device: torch.device | str | None = None
) -> MusicEncoder:
    """A saved folder, a reference checkpoint file, or a preset name (untrained) → eval model."""
    path = Path(spec)
    if path.is_dir():
        model = MusicEncoder.from_pretrained(path)
    elif path.is_file():
        model = MusicEncoder.from_checkpoint(path)
    elif str(spec) in PRESETS:
        logger.warning(
            "music encoder %r is a randomly initialised preset, not a trained model: its "
            "embeddings carry no musical meaning until it is trained",
            str(spec),
        )
        model = MusicEncoder(MusicEncoderConfig.preset(str(spec))).eval()
    else:
        raise RecapError(
            f"music encoder {str(spec)!r} is neither a folder, a checkpoint file nor a preset "
            f"({', '.join(PRESETS)})"
        )
    return model.to(device) if device is not None else model
