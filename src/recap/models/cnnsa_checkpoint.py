"""Reading CNNSA checkpoints in the public reference's format (`best_model.pth`).

The reference's state dicts come nested (under 'state_dict' or 'model'), with DataParallel's
'module.' prefix, with legacy keys and with a mel front end computed by older torchaudio
releases; `MusicEncoder.from_checkpoint` reads them strictly once these are normalised here.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from recap.models.music_encoder import MusicEncoderConfig
from recap.utils import RecapError

logger = logging.getLogger(__name__)

# The public reference keeps 64 copies of the CLS vector as a plain attribute (not saved), so it
# fails above batch 64; some forks saved it. Such keys are dropped on load (the vector is fixed).
_LEGACY_CLS_KEYS = ("vec_cls",)


def read_reference(
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
    config: MusicEncoderConfig | None = None,
) -> tuple[MusicEncoderConfig, dict[str, torch.Tensor], str]:
    """(config, state dict, source name) of a checkpoint file or a state dict: the state dict
    unwrapped, and the config read from the weights (without `config`) or `config` with the
    checkpoint's tag count."""
    source = str(checkpoint) if isinstance(checkpoint, str | os.PathLike) else "state dict"
    state = _normalise_state_dict(
        _read_checkpoint(checkpoint) if isinstance(checkpoint, str | os.PathLike) else checkpoint,
        source,
    )
    if config is None:
        config = _infer_config(state, source)
    else:
        config = _with_checkpoint_tags(config, state, source)
    return config, state, source


def fit_front_end(
    state: dict[str, torch.Tensor], computed: Mapping[str, torch.Tensor], source: str
) -> None:
    """Replace, in `state`, a stored mel filterbank or window whose shape differs from the
    computed one (`computed`: state-dict key → the new model's buffer)."""
    for key, expected in computed.items():
        stored = state.get(key)
        if stored is not None and stored.shape != expected.shape:
            logger.info(
                "%s: stored %s has shape %s, expected %s; using the computed one",
                source,
                key,
                tuple(stored.shape),
                tuple(expected.shape),
            )
            state[key] = expected.clone()


def _read_checkpoint(path: str | os.PathLike) -> Mapping[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RecapError(f"music encoder checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        # weights_only: a checkpoint is data, never code to run
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt or foreign file
        raise RecapError(f"cannot read music encoder checkpoint {path}: {err}") from err


def _normalise_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """Unwrap {'state_dict': ...}/{'model': ...}, strip 'module.', drop the legacy CLS copies."""
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in ("state_dict", "model") if k in obj), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise RecapError(f"{source} holds no state dict (got {type(obj).__name__})")
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue  # e.g. an epoch counter stored beside the weights
        key = key.removeprefix("module.")
        if key in _LEGACY_CLS_KEYS:
            continue
        state[key] = value
    return state


def _infer_config(state: Mapping[str, torch.Tensor], source: str) -> MusicEncoderConfig:
    """Read the sizes a state dict fixes; the rest (heads, dropout, audio) stay the defaults."""
    try:
        n_channels = state["layer1.conv_1.weight"].shape[0]
        n_tags = state["dense.weight"].shape[0]
    except KeyError as err:
        raise RecapError(f"{source} is not a CNNSA checkpoint: no {err.args[0]!r}") from err
    overrides: dict[str, Any] = {"n_channels": n_channels, "n_tags": n_tags}
    layers = {k.split(".")[2] for k in state if k.startswith("encoder.layer.")}
    overrides["n_layers"] = len(layers)
    if "encoder.layer.0.intermediate.dense.weight" in state:
        overrides["ffn_dim"] = state["encoder.layer.0.intermediate.dense.weight"].shape[0]
    window = state.get("spec.spectrogram.window")
    if window is not None and window.dim() == 1 and window.numel() >= 2:
        overrides["n_fft"] = window.numel()
    fb = state.get("spec.mel_scale.fb")
    n_freqs = overrides.get("n_fft", MusicEncoderConfig.n_fft) // 2 + 1
    if fb is not None and fb.dim() == 2 and fb.shape[0] == n_freqs:
        overrides["n_mels"] = fb.shape[1]  # otherwise (empty or transposed) keep the default
    heads = MusicEncoderConfig.n_heads
    if (2 * n_channels) % heads:
        heads = math.gcd(2 * n_channels, heads)
    overrides["n_heads"] = heads
    return MusicEncoderConfig(**overrides)


def _with_checkpoint_tags(
    config: MusicEncoderConfig, state: Mapping[str, torch.Tensor], source: str
) -> MusicEncoderConfig:
    """The tagging head's size is a fact of the weights: take n_tags from the checkpoint."""
    head = state.get("dense.weight")
    if head is None or head.dim() != 2 or head.shape[0] == config.n_tags:
        return config
    n_tags = head.shape[0]
    names = config.tag_names if len(config.tag_names) == n_tags else []
    if config.tag_names and not names:
        logger.warning(
            "%s has %d tags but the config names %d; dropping the tag names",
            source,
            n_tags,
            len(config.tag_names),
        )
    return replace(config, n_tags=n_tags, tag_names=names)
