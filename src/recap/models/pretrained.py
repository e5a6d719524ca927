"""Persistence of `RecapModel`, in the manner of Hugging Face's `PreTrainedModel`: a model
folder holds `config.json`, `model.safetensors` (tied tensors stored once) and the tokenizer's
files, and `caption_words.json` when the training captions' words are known; `from_bart` starts
a captioner from a plain BART checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import BartForConditionalGeneration

from recap.inference.words import load_caption_words, save_caption_words
from recap.models.config import CONFIG_NAME, RecapConfig
from recap.models.encoders import MusicEncoderProtocol, build_music_encoder
from recap.utils import RecapError, atomic_save_safetensors, atomic_write_json

if TYPE_CHECKING:
    from recap.models.model import RecapModel

WEIGHTS_NAME = "model.safetensors"


class PretrainedMixin:
    """`save_pretrained`, `from_pretrained` and `from_bart` of `RecapModel` (which holds the
    network: `config`, `tokenizer`, the state dict)."""

    def save_pretrained(self, directory: str | os.PathLike, tokenizer: Any = None) -> Path:
        """Write `model.safetensors`, the tokenizer files (if one is given or attached) and, last,
        `config.json` into `directory`; each file is replaced atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        full = self.state_dict()
        state = {k: full[k].detach().cpu().contiguous().clone() for k in _unique_state_names(full)}
        atomic_save_safetensors(state, directory / WEIGHTS_NAME)
        if tokenizer is not None:
            # The tokenizer writes several files: stage them, then move each into place.
            with tempfile.TemporaryDirectory(dir=directory, prefix=".tokenizer.") as staging:
                for written in tokenizer.save_pretrained(staging):
                    written = Path(written)
                    if written.is_file():
                        os.replace(written, directory / written.name)
        if self.caption_words is not None:
            save_caption_words(directory, self.caption_words)
        atomic_write_json(directory / CONFIG_NAME, self.config.to_dict())
        return directory

    def _load_weights(self, weights: Path) -> None:
        """Load `model.safetensors` strictly, tied aliases (lm_head = shared embeddings) aside."""
        state = _read_weights(weights)
        try:
            missing, unexpected = self.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise RecapError(f"{weights} does not fit its config.json: {exc}") from exc
        full = self.state_dict()
        missing = set(missing) - (set(full) - set(_unique_state_names(full)))
        if missing or unexpected:
            raise RecapError(
                f"{weights} does not fit its config.json: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )

    def init_from(self, name_or_path: str | os.PathLike) -> tuple[list[str], list[str]]:
        """Start from another captioner's weights: every tensor of the saved model (a
        `save_pretrained` folder, or a training run, whose `best/` is read: `resolve_model_dir`)
        whose name and shape match one of this model's is copied; the rest keep their
        initialisation (a BART captioner gives a BART-fusion its BART and copy head; the fusion
        starts fresh).

        Both must read one tokenizer: token ids are what the copied embeddings mean. Returns
        the names copied and the names left as initialised.
        """
        from recap.inference.generate import resolve_model_dir

        directory = resolve_model_dir(name_or_path)
        theirs = _maybe_tokenizer(directory)
        if self.tokenizer is None or theirs is None:
            raise RecapError(
                f"{directory}: both models need a tokenizer to start one from the other"
            )
        if theirs.get_vocab() != self.tokenizer.get_vocab():
            raise RecapError(
                f"{directory} reads another tokenizer; its weights cannot start this model"
            )
        state = _read_weights(directory / WEIGHTS_NAME)
        own = self.state_dict()
        # The frozen music encoder is this run's own (its embeddings are cached under it):
        # never replaced by the other model's.
        fitting = {
            k: v
            for k, v in state.items()
            if k in own and own[k].shape == v.shape and not k.startswith("music_encoder.")
        }
        if not fitting:
            raise RecapError(f"{directory}: no tensor fits this model")
        self.load_state_dict(fitting, strict=False)
        # A tied alias (lm_head = shared embeddings) is copied with the tensor it shares.
        shared = {own[k].data_ptr() for k in fitting}
        copied = {n for n, t in own.items() if t.data_ptr() in shared}
        return sorted(copied), sorted(set(own) - copied)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, device: torch.device | str | None = None
    ) -> RecapModel:
        """Load a folder written by `save_pretrained` (or a hub repo in that format); eval mode.

        A plain Hugging Face BART folder is refused with a pointer to `from_bart`.
        """
        directory = _resolve_folder(name_or_path)
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            raise RecapError(f"{directory} is not a RECAP model folder: {CONFIG_NAME} missing")
        config = RecapConfig.load(config_path)
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise RecapError(f"{directory} is not a RECAP model folder: {WEIGHTS_NAME} missing")
        model = cls(config)
        model._load_weights(weights)
        model.tokenizer = _maybe_tokenizer(directory)
        model.caption_words = load_caption_words(directory)
        if device is not None:
            model.to(device)
        return model.eval()

    @classmethod
    def from_bart(
        cls,
        name_or_path: str | os.PathLike,
        config: RecapConfig | None = None,
        music_encoder: str | os.PathLike | MusicEncoderProtocol | None = None,
    ) -> RecapModel:
        """A captioner whose BART part comes from a Hugging Face BART checkpoint.

        `name_or_path`: e.g. "facebook/bart-base" or a local folder in that format. The BART
        sizes of `config` (default: the `recap` preset) are replaced by the checkpoint's.
        `music_encoder`: an encoder spec (`recap.models.encoders.build_music_encoder`: a CNNSA
        checkpoint file or folder, `hf:<name>`...) or an encoder; its kind and config replace
        `config.music_kind` and `config.music`. Fusion and projection start freshly initialised.
        """
        config = RecapConfig.from_dict((config or RecapConfig.preset("recap")).to_dict())
        encoder = None
        if music_encoder is not None:
            encoder = build_music_encoder(music_encoder)
            config.music_kind = encoder.kind
            config.music = encoder.config
        try:
            bart = BartForConditionalGeneration.from_pretrained(
                str(name_or_path), attn_implementation=config.attn_implementation
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RecapError(f"cannot load a BART checkpoint from {name_or_path!s}: {exc}") from exc
        config = config.with_bart_config(bart.config.to_dict())
        model = cls(config, bart=bart, music_encoder=encoder)
        model.attach_tokenizer(_maybe_tokenizer(name_or_path))
        return model


def _unique_state_names(state: dict[str, torch.Tensor]) -> list[str]:
    """State-dict names with tied aliases removed (the first name of each tensor is kept):
    BART's lm_head and token embeddings are one tensor, stored once."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    names = []
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            names.append(name)
    return names


def _read_weights(weights: Path) -> dict[str, torch.Tensor]:
    """The tensors of a `model.safetensors` file (never a pickle); RecapError when unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise RecapError(f"cannot read {weights}: {exc}") from exc


def _resolve_folder(name_or_path: str | os.PathLike) -> Path:
    """A local folder as is; otherwise a hub repo id fetched with huggingface_hub (cache/offline
    rules apply)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists():
        raise RecapError(f"{path} is a file; a RECAP model is a folder")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name_or_path)))
    except Exception as exc:  # noqa: BLE001 - any hub failure is "cannot load this name"
        raise RecapError(
            f"{name_or_path!s} is not a local folder and could not be fetched from the hub: {exc}"
        ) from exc


def _maybe_tokenizer(name_or_path: str | os.PathLike) -> Any:
    """The tokenizer saved beside a model, or None when there is none."""
    from recap.models.tokenizer import has_tokenizer_files, load_tokenizer, refuse_remote_code

    path = Path(name_or_path)
    if path.is_dir():
        refuse_remote_code(path)  # a folder that asks to run its own code is an error, not "none"
        if not has_tokenizer_files(path):
            return None
    try:
        return load_tokenizer(name_or_path)
    except RecapError:
        return None
