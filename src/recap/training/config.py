"""The settings of training runs, one `--flag` each: `TrainConfig` (`recap train`) with the checks
that a run folder is resumed or reused with the settings it was started with, and
`PretrainConfig` (`recap pretrain-text`)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recap.data.songs import VARIANTS
from recap.models.config import METHODS, SIZES, RecapConfig
from recap.utils import RecapError, flag_field, hash_file_into, known_fields, read_json

TRAIN_CONFIG_NAME = "train_config.json"
DONE_NAME = "done.json"
# Settings that may change between a run and its resumption without changing what it computes.
RESUME_MUTABLE = frozenset(
    {
        "resume",
        "overwrite",
        "max_steps",
        "progress",
        "num_workers",
        "log_every_steps",
        "checkpoint_every_steps",
        "embed_workers",
    }
)


_opt = flag_field


@dataclass
class TrainConfig:
    """Every setting of a training run. Each field is a `recap train --flag`; `None` means
    "the default of the size" (see `SIZE_DEFAULTS`), filled in by `resolved()`."""

    # --- what to train on
    data: str = _opt("", "dataset folder (dataset.jsonl, audios/, cache/)")
    out: str = _opt("", "run folder RUN")
    preset: str = _opt("recap", "method (SPEC §1.6)", choices=METHODS)
    size: str = _opt("paper", "model size", choices=SIZES)
    variant: str = _opt("full", "training data: full | not_negative (vote >= 0) | positive")
    val_fraction: float = _opt(0.1, "share of train held out for validation when none is given")
    encoder: str | None = _opt(
        None,
        "music encoder: a saved folder (recap tagger train), a CNNSA checkpoint or a preset, or "
        "hf:<hub name or folder> (CLAP's audio tower, frozen)",
    )
    bart: str | None = _opt(None, "pretrained BART name or folder; default: train from scratch")
    init: str | None = _opt(
        None,
        "a trained captioner (a run folder or a model folder) whose matching weights start this "
        "one, e.g. BART-fusion from the BART captioner: its text model and copy head; the fusion "
        "starts fresh. It must read the same tokenizer",
    )
    lyrics_dropout: float = _opt(
        0.0, "share of training examples with their lyrics left out (audio-only captions)"
    )
    text_rows: str | None = _opt(
        None,
        "extra training rows without audio (recap bench text-rows): more texts to learn reading "
        "from; the captioners that hear are given no music for them and their lyrics-only reference",
    )
    windows: int = _opt(1, "hear each song in up to N excerpts (1: the paper's one excerpt)")
    window_hop: float | None = _opt(None, "seconds between window starts (None: back to back)")
    # --- model settings the experiments vary (None: the preset's)
    align_weight: float | None = _opt(None, "w in L = L_cap + w L_align (paper 0.02)")
    align_loss: str | None = _opt(None, "cosine | infonce")
    align_pool: str | None = _opt(
        None, "pool the lyrics states for alignment by: mean (paper) | attention (learned)"
    )
    align_lr: float | None = _opt(
        None, "learning rate of the alignment projection and pool (None: lr, as the paper)"
    )
    vocab_size: int | None = _opt(None, "size of the local BPE (default: the size's vocab_size)")
    model_overrides: dict = _opt({}, "RecapConfig fields, KEY=VALUE (JSON values)", flag="--set")
    # --- optimisation (None: SIZE_DEFAULTS)
    batch_size: int | None = _opt(None, "GLOBAL batch size (split over processes)")
    lr: float | None = _opt(None, "learning rate (fixed unless lr_schedule says otherwise)")
    epochs: int | None = _opt(None, "maximum epochs")
    optimizer: str = _opt("adafactor", "adafactor (paper, fixed lr) | adamw (fused on CUDA)")
    adafactor_scale_parameter: bool | None = _opt(
        None,
        "Adafactor step = lr x RMS(weight) (True: the authors' and Hugging Face's default; "
        "None: the size's, True for paper, False for the demo sizes)",
    )
    weight_decay: float = _opt(0.0, "decoupled weight decay")
    max_grad_norm: float = _opt(0.0, "clip the gradient norm (0: off, as the public code)")
    lr_schedule: str = _opt("constant", "constant | step (StepLR per epoch, authors' code)")
    lr_step_epochs: int = _opt(10, "StepLR step size in epochs")
    lr_step_gamma: float = _opt(0.1, "StepLR factor")
    warmup_steps: int = _opt(0, "linear learning-rate warm-up over the first N steps (0: none)")
    ema_decay: float = _opt(
        0.0, "validate and save an exponential average of the weights, this decay (0: off)"
    )
    seed: int = _opt(42, "seed of weights, dropout, data order and the validation split")
    mega_batch_mult: int = _opt(50, "batches per length-sorted group (1: no length grouping)")
    captions_per_song: int = _opt(
        1,
        "put up to N captions of one song in a batch together and encode the song once for "
        "them (1: rows drawn one by one, the papers' batches)",
    )
    max_steps: int = _opt(0, "stop after this many optimizer steps in all, resumably (0: off)")
    # --- validation, best checkpoint, early stopping
    val_every_epochs: int = _opt(
        2, "validate every N epochs and after the last (0: after the last only: RUN/best = the end)"
    )
    val_metric: str = _opt("rougeL_f1", "selection metric: rouge{1,2,L}_{f1,recall}")
    patience: int = _opt(5, "stop after this many validations without improvement (0: never)")
    val_num_beams: int = _opt(1, "beams when validating (1: greedy, fast)")
    val_max_new_tokens: int | None = _opt(None, "caption length when validating (None: config)")
    val_max_examples: int = _opt(0, "validate on the first N val examples only (0: all)")
    val_batch_size: int | None = _opt(None, "generation batch per process (None: batch_size)")
    # --- checkpoints and logs
    checkpoint_every_steps: int = _opt(200, "write RUN/last every N steps too (0: epochs only)")
    log_every_steps: int = _opt(10, "log losses every N steps (each log is one host sync)")
    resume: bool = _opt(False, "continue RUN from RUN/last")
    overwrite: bool = _opt(False, "delete an existing RUN first")
    progress: bool = _opt(True, "tqdm progress bars")
    # --- performance
    mixed_precision: str = _opt(
        "auto", "auto: bf16 on a capable GPU, else no", choices=("auto", "no", "bf16", "fp16")
    )
    compile: bool = _opt(False, "torch.compile the model")
    num_workers: int = _opt(0, "DataLoader worker processes")
    pin_memory: bool | None = _opt(None, "pinned host memory (None: on CUDA only)")
    pad_to_multiple_of: int = _opt(8, "pad batch lengths to a multiple (tensor cores)")
    cpu: bool = _opt(False, "train on CPU even when a GPU is present")
    embed_workers: int | None = _opt(
        None, "audio-decoding processes for the embedding precompute (None: all cores)"
    )

    def resolved(self) -> TrainConfig:
        """A copy with every `None` size default filled in and the values checked."""
        if self.preset not in METHODS:
            raise RecapError(f"unknown preset {self.preset!r}; choose one of {', '.join(METHODS)}")
        if self.size not in SIZE_DEFAULTS:
            raise RecapError(
                f"unknown size {self.size!r}; choose one of {', '.join(SIZE_DEFAULTS)}"
            )
        defaults = SIZE_DEFAULTS[self.size]
        values = {
            k: (defaults[k] if getattr(self, k) is None and k in defaults else getattr(self, k))
            for k in (f.name for f in dataclasses.fields(self))
        }
        cfg = dataclasses.replace(self, **values)
        if cfg.optimizer not in ("adafactor", "adamw"):
            raise RecapError(f"optimizer must be adafactor or adamw, got {cfg.optimizer!r}")
        if cfg.warmup_steps < 0:
            raise RecapError(f"warmup_steps must be >= 0, got {cfg.warmup_steps}")
        if not 0.0 <= cfg.ema_decay < 1.0:
            raise RecapError(f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
        if cfg.lr_schedule not in ("constant", "step"):
            raise RecapError(f"lr_schedule must be constant or step, got {cfg.lr_schedule!r}")
        if cfg.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise RecapError(f"mixed_precision must be auto|no|bf16|fp16: {cfg.mixed_precision!r}")
        if cfg.variant not in VARIANTS:
            raise RecapError(f"variant must be full|not_negative|positive, got {cfg.variant!r}")
        parse_metric(cfg.val_metric)
        if not 0.0 <= cfg.lyrics_dropout < 1.0:
            raise RecapError(f"lyrics_dropout must be in [0, 1), got {cfg.lyrics_dropout}")
        cfg.audio_config()  # checks windows and window_hop
        if cfg.val_every_epochs < 0:
            raise RecapError(f"val_every_epochs must be >= 0, got {cfg.val_every_epochs}")
        if cfg.captions_per_song < 1:
            raise RecapError(f"captions_per_song must be >= 1, got {cfg.captions_per_song}")
        if cfg.align_lr is not None and cfg.align_lr <= 0:
            raise RecapError(f"align_lr must be > 0, got {cfg.align_lr}")
        if cfg.batch_size < 1 or cfg.epochs < 1 or cfg.lr <= 0:
            raise RecapError("batch_size and epochs must be positive and lr > 0")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def audio_config(self) -> Any:
        """The excerpts the music encoder hears (`recap.data.audio.AudioConfig`)."""
        from recap.data.audio import AudioConfig

        return AudioConfig(windows=self.windows, hop=self.window_hop)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        values = known_fields(cls, data)
        if "optimizer" in data and "adafactor_scale_parameter" not in data:
            # A run saved before the flag existed was trained without parameter scaling.
            values["adafactor_scale_parameter"] = False
        return cls(**values)


# The paper's protocol at paper size (SPEC §2); CPU-sized values for the demo and the tests.
# Adafactor at paper size is the authors' (Hugging Face's default `scale_parameter=True`: a
# step is lr x RMS(weight), ~50x smaller than lr on a std-0.02 weight). The demo sizes keep the
# measured recipe, an unscaled step of lr, for which their lr was chosen (docs/training.md).
SIZE_DEFAULTS: dict[str, dict[str, Any]] = {
    "paper": {"batch_size": 48, "lr": 6e-5, "epochs": 50, "adafactor_scale_parameter": True},
    "small": {"batch_size": 16, "lr": 3e-3, "epochs": 20, "adafactor_scale_parameter": False},
    "tiny": {"batch_size": 4, "lr": 1e-3, "epochs": 2, "adafactor_scale_parameter": False},
}


def parse_metric(name: str) -> tuple[str, str]:
    """'rougeL_f1' → ('rougeL', 'f1'); raises RecapError on anything else."""
    rouge, _, kind = name.partition("_")
    if rouge not in ("rouge1", "rouge2", "rougeL") or kind not in ("f1", "recall"):
        raise RecapError(f"val_metric must be rouge1|rouge2|rougeL + _f1|_recall, got {name!r}")
    return rouge, kind


def read_train_config(path: Path) -> TrainConfig:
    data = read_json(path, "training settings")
    try:
        return TrainConfig.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise RecapError(f"cannot read {path} (corrupt?): {exc}") from exc


# Settings that name files: compared by what they point at, not by how they are spelled.
_PATH_SETTINGS = ("data", "encoder", "bart", "text_rows", "init")


def _canonical(value: Any) -> Any:
    """An existing local path as its resolved absolute form; anything else (a hub name, a
    preset, a path that no longer exists) as written."""
    if not isinstance(value, str) or not value:
        return value
    path = Path(value).expanduser()
    try:
        return str(path.resolve()) if path.exists() else os.path.normpath(value)
    except OSError:
        return value


class StaleRunError(RecapError):
    """A finished run was trained from other settings or another starting point than asked."""


def _folder_digest(path: str | None) -> str | None:
    """sha256 of a local model folder's files (None for a hub name or nothing): a folder
    retrained in place (the demo's BART, its tagger) is another starting point."""
    if not path or not Path(path).is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).iterdir() if p.is_file()):
        if file.suffix in (".json", ".safetensors", ".txt", ".model") and file.name != "log.jsonl":
            digest.update(file.name.encode())
            hash_file_into(digest, file)
    return digest.hexdigest()


def _file_digest(path: Path) -> str | None:
    """sha256 of a file's contents (None when there is no such file)."""
    if not path.is_file():
        return None
    return hash_file_into(hashlib.sha256(), path).hexdigest()


def _init_digest(path: str) -> str | None:
    """The digest of the model `--init` reads (None when it is gone: not compared)."""
    from recap.inference.generate import resolve_model_dir

    try:
        return _folder_digest(str(resolve_model_dir(path)))
    except RecapError:
        return None


def starting_point(cfg: TrainConfig) -> dict[str, Any]:
    """What a run starts from besides its settings: the model preset as the code defines it
    now, the contents of the --bart and --encoder folders, and the training texts (the data's
    dataset.jsonl: a benchmark rebuilt in place with other interpretations is other data).
    Saved in done.json; a finished run is reused only while it matches (a done.json without
    one of them, from an older version, is not compared on it)."""
    preset = RecapConfig.preset(cfg.preset, cfg.size, **cfg.model_overrides).to_dict()
    return {
        "preset": preset,
        "bart": _folder_digest(cfg.bart),
        "encoder": _folder_digest(cfg.encoder),
        "data": _file_digest(Path(cfg.data) / "dataset.jsonl"),
        **({"text_rows": _file_digest(Path(cfg.text_rows))} if cfg.text_rows else {}),
        # a source deleted since is not compared: the finished run is what it started
        **({"init": digest} if cfg.init and (digest := _init_digest(cfg.init)) else {}),
    }


def _as_now(preset: Any) -> Any:
    """A saved preset as the code reads it now: a setting added since takes its default, which
    is what the saved run was trained with (a newer field off by default is no change)."""
    try:
        return RecapConfig.from_dict(preset).to_dict()
    except (RecapError, TypeError, ValueError, AttributeError):
        return preset  # unreadable now: compared as saved, so it counts as changed


def check_same_start(saved: dict[str, Any], now: dict[str, Any], run: Path) -> None:
    if "preset" in saved:
        saved = {**saved, "preset": _as_now(saved["preset"])}
    changed = sorted(k for k in now if k in saved and saved[k] != now[k])
    if changed:
        raise StaleRunError(
            f"{run} was trained from another starting point ({', '.join(changed)} changed "
            "since); pass --overwrite to train it again, or use another --out"
        )


def check_same_config(saved: TrainConfig, now: TrainConfig, run: Path) -> None:
    a, b = saved.to_dict(), now.to_dict()
    # `out` is where the run is now: a run folder may be moved or named by another path.
    ignore = RESUME_MUTABLE | {"out"}
    changed = sorted(
        k
        for k in a
        if k not in ignore
        and (_canonical(a[k]) != _canonical(b.get(k)) if k in _PATH_SETTINGS else a[k] != b.get(k))
    )
    if changed:
        details = "; ".join(f"{k}: {a[k]!r} then, {b.get(k)!r} now" for k in changed[:5])
        # Never suggest --overwrite here: it deletes the run the user is trying to continue.
        raise StaleRunError(
            f"{run} was trained with other settings ({details}); pass the run's own settings "
            f"(saved in {run / TRAIN_CONFIG_NAME}) to continue it, or use another --out"
        )


# ============================================================================ pretrain-text

PRETRAIN_CONFIG_NAME = "pretrain_config.json"
METRICS_NAME = "pretrain_metrics.json"
# Settings that do not change what is trained: a finished folder is reused when only these differ.
REUSE_MUTABLE = frozenset(
    {"out", "overwrite", "progress", "workers", "corpus_cache", "threads", "checkpoint_every_steps"}
)


_opt = flag_field


@dataclass
class PretrainConfig:
    """Every setting of a text pretraining run; each field is a `recap pretrain-text --flag`."""

    # --- text
    out: str = _opt("", "output folder DIR (a Hugging Face BART checkpoint)")
    source: list = _opt(
        ["music21", "openscore-lieder"],
        "lyrics of scores: music21 | openscore-lieder | a folder of scores | none (--text only)",
    )
    text: list = _opt(
        [], "text files: .jsonl rows with 'lyrics' or 'text', else blank-line paragraphs"
    )
    exclude_splits_of: list = _opt(
        [], "benchmark folder(s) whose val/test works and lyrics are never trained on (repeat)"
    )
    held_out_share: float = _opt(0.05, "share of the works held out for the copy/infill report")
    max_eval_lines: int = _opt(200, "held-out inputs scored per measure")
    corpus_cache: str = _opt("", "JSONL file caching the lyrics read from scores ('': none)")
    workers: int = _opt(2, "score-parsing processes")
    # --- model
    size: str = _opt("small", "BART size of RecapConfig.preset", choices=("tiny", "small", "paper"))
    tokenizer: str = _opt("", "reuse this tokenizer folder ('': train a byte-level BPE)")
    vocab_size: int = _opt(0, "size of the trained BPE (0: the size's vocab_size)")
    bpe_text: list = _opt(
        [],
        "files the BPE also learns from, never denoised: a benchmark's dataset.jsonl gives its "
        "training rows' captions (repeat)",
    )
    model_overrides: dict = _opt({}, "RecapConfig BART fields, KEY=VALUE (JSON)", flag="--set")
    position_init: str = _opt(
        "random",
        "position tables: random (BART's init) | sinusoidal (scaled to init_std)",
        choices=("random", "sinusoidal"),
    )
    # --- objective
    copy_share: float = _opt(0.5, "share of inputs left uncorrupted (pure copies)")
    mask_ratio: float = _opt(0.3, "share of the tokens of a corrupted input that are masked")
    poisson_lambda: float = _opt(3.0, "mean span length of the infilling")
    permute_sentences: bool = _opt(True, "shuffle the sentences of a corrupted input")
    reconstruct_weight: float = _opt(
        1.0, "weight of predicting each input token from the encoder output (0: off)"
    )
    copy_attention_weight: float = _opt(
        1.0,
        "weight of a guided cross-attention loss on copies: head 0 of each decoder layer "
        "attends to the source token it copies (0: off)",
    )
    decoder_input_dropout: float = _opt(
        0.0, "share of decoder input tokens replaced by <mask> in training (0: off)"
    )
    # --- optimisation
    curriculum: list = _opt(
        [16, 32, 64, 128], "input-length caps in tokens, trained in turn for equal step shares"
    )
    max_steps: int = _opt(600, "optimizer steps in all")
    batch_size: int = _opt(32, "sequences per step")
    lr: float = _opt(2e-3, "peak learning rate (AdamW)")
    warmup_steps: int = _opt(50, "linear warm-up steps")
    min_lr_ratio: float = _opt(0.1, "cosine decay to this share of lr at the last step")
    weight_decay: float = _opt(0.01, "AdamW decoupled weight decay")
    max_grad_norm: float = _opt(1.0, "gradient clipping (0: off)")
    seed: int = _opt(0, "seed of weights, held-out works, batches and corruption")
    checkpoint_every_steps: int = _opt(250, "write DIR.partial every N steps (0: never)")
    log_every_steps: int = _opt(50, "log the losses every N steps")
    threads: int = _opt(0, "torch CPU threads (0: torch's default; 1 is fastest on busy cores)")
    overwrite: bool = _opt(False, "train again even when DIR holds a finished model")
    progress: bool = _opt(True, "tqdm progress bar")

    def read_sources(self) -> list[str]:
        """The score sources that are read ("none" names no source: text files alone)."""
        return [s for s in self.source if s != "none"]

    def resolved(self) -> PretrainConfig:
        """A checked copy (RecapError on bad values)."""
        if not self.out:
            raise RecapError("pretrain-text needs --out DIR")
        source = self.read_sources()
        if not source and not self.text:
            raise RecapError("nothing to read: give --source and/or --text")
        if self.position_init not in ("sinusoidal", "random"):
            raise RecapError(f"position_init must be sinusoidal or random: {self.position_init!r}")
        if not 0 <= self.copy_share <= 1:
            raise RecapError("copy_share must lie in [0, 1]")
        if not 0 < self.mask_ratio < 1:
            raise RecapError("mask_ratio must lie in (0, 1)")
        if not 0 <= self.held_out_share < 1:
            raise RecapError("held_out_share must lie in [0, 1)")
        if not self.curriculum or any(int(c) < 4 for c in self.curriculum):
            raise RecapError("curriculum: one or more length caps of at least 4 tokens")
        if self.max_steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise RecapError("max_steps and batch_size must be positive and lr > 0")
        if self.copy_attention_weight < 0 or self.reconstruct_weight < 0:
            raise RecapError("loss weights must be >= 0")
        if not 0 <= self.decoder_input_dropout < 1:
            raise RecapError("decoder_input_dropout must lie in [0, 1)")
        if self.poisson_lambda <= 0:
            raise RecapError("poisson_lambda must be > 0")
        return dataclasses.replace(
            self, source=source, curriculum=[int(c) for c in self.curriculum]
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        return cls(**known_fields(cls, data, "PretrainConfig"))
