"""The CNNSA encoder's mel front end: waveform → power spectrogram → HTK mel bands.

Written with `torch.stft` because torchaudio is not a dependency; it reproduces
`torchaudio.transforms.MelSpectrogram`'s defaults (periodic Hann window, center=True with
reflect padding, power 2, HTK mel, no norm), and its module and buffer names
(`spec.spectrogram.window`, `spec.mel_scale.fb`) are the reference checkpoints'. The dB step
and its dtype guards are `MusicEncoder.log_mel`'s.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from recap.models.music_encoder import MusicEncoderConfig


def htk_mel_filterbank(
    n_freqs: int,
    f_min: float,
    f_max: float,
    n_mels: int,
    sample_rate: int,
    dtype: torch.dtype = torch.float32,
    freq_scale: float = 1.0,
) -> torch.Tensor:
    """Triangular HTK-mel filterbank without normalisation, (n_freqs, n_mels).

    torchaudio's `melscale_fbanks(..., norm=None, mel_scale="htk")` construction. In float32
    (the default) it equals the `fb` torchaudio stores in checkpoints bit for bit; float64
    differs from it by up to 1.3e-5 (float32 rounding of the mel grid) and equals librosa's.
    `freq_scale` multiplies every band edge (1: the mel filterbank itself); the tagger's pitch
    shift reads a spectrum moved k semitones with freq_scale 2^(-k/12).
    """
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=dtype)  # (F,)

    def hz_to_mel(hz: float) -> float:
        return 2595.0 * math.log10(1.0 + hz / 700.0)

    m_pts = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=dtype)
    f_pts = 700.0 * (10.0 ** (m_pts / 2595.0) - 1.0)  # (n_mels + 2,) band edges in Hz
    if freq_scale != 1.0:
        f_pts = f_pts * freq_scale
    f_diff = f_pts[1:] - f_pts[:-1]  # (n_mels + 1,)
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)  # (F, n_mels + 2)
    down = -slopes[:, :-2] / f_diff[:-1]  # (F, n_mels) rising edge
    up = slopes[:, 2:] / f_diff[1:]  # (F, n_mels) falling edge
    return torch.clamp(torch.minimum(down, up), min=0.0)


def chroma_filterbank(
    n_freqs: int, sample_rate: int, f_min: float = 60.0, f_max: float = 2000.0
) -> torch.Tensor:
    """(n_freqs, 12) 0/1 matrix giving each STFT bin between f_min and f_max to its nearest
    pitch class (column 0 = C), as the tagger's chroma target and `recap bench probe` read it."""
    freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)  # (F,)
    band = (freqs > f_min) & (freqs < f_max)
    fb = torch.zeros(n_freqs, 12)
    midi = torch.round(12 * torch.log2(freqs[band] / 440.0) + 69).long()  # MIDI 60 is C
    fb[band.nonzero().squeeze(1), midi % 12] = 1.0
    return fb


class Spectrogram(nn.Module):
    """Power spectrogram, torchaudio defaults: periodic Hann, center=True, reflect padding."""

    def __init__(self, n_fft: int, hop_length: int) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        # clone(): the periodic window is a view into an (n_fft + 1) storage, which safetensors
        # refuses to save.
        window = torch.hann_window(n_fft, periodic=True).clone()  # (n_fft,)
        self.register_buffer("window", window)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        # waveform (B, T) → (B, n_fft // 2 + 1, T // hop + 1)
        stft = torch.stft(
            waveform,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.n_fft,
            window=self.window.to(waveform.dtype),
            center=True,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        return stft.abs().pow(2.0)


class MelScale(nn.Module):
    """Projects a power spectrogram onto the HTK mel bands stored in the `fb` buffer."""

    def __init__(self, config: MusicEncoderConfig) -> None:
        super().__init__()
        fb = htk_mel_filterbank(
            config.n_freqs, config.f_min, config.f_max, config.n_mels, config.sample_rate
        )
        self.register_buffer("fb", fb)  # (n_freqs, n_mels)

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        # power (B, n_freqs, frames) → (B, frames, n_freqs) @ (n_freqs, n_mels) → (B, n_mels, frames)
        return torch.matmul(power.transpose(-1, -2), self.fb.to(power.dtype)).transpose(-1, -2)


class MelSpectrogram(nn.Module):
    """`spec` of the reference model: keys `spec.spectrogram.window`, `spec.mel_scale.fb`."""

    def __init__(self, config: MusicEncoderConfig) -> None:
        super().__init__()
        self.spectrogram = Spectrogram(config.n_fft, config.hop_length)
        self.mel_scale = MelScale(config)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        # (B, T) → (B, n_mels, frames) mel power
        return self.mel_scale(self.spectrogram(waveform))
