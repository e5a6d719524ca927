"""Training the captioner: `recap train` and `train(TrainConfig) -> Path`.

One loop for CPU, one GPU and many (Hugging Face Accelerate; launch with `accelerate launch` or
`torchrun` for DDP). The data are pre-tokenised once, music embeddings come precomputed from the
cache, batches are length-grouped and padded per batch (`recap.data.batching`).

A run folder RUN holds:
    train_config.json   every setting (resolved), seeds included
    tokenizer/          the local BPE (when no pretrained BART is given)
    last/               the resumable checkpoint: model, optimizer, scheduler, state, RNG states
    best/               the best validated model (RecapModel.save_pretrained, with tokenizer)
    log.jsonl, tb/      losses per term, learning rate, samples/s, tokens/s; validations
    done.json           written last: the run finished (an existing finished run is reused)

Resume is exact: the data order is a function of (seed, epoch), the checkpoint records how many
batches of the epoch were trained, and the RNG states (dropout) are restored, so a run killed and
resumed ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import pickle
import random
import shutil
import time
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from recap.data.batching import LengthGroupedBatchSampler
from recap.utils import RecapError, SkipReport, atomic_write_json, flag_field, known_fields

logger = logging.getLogger(__name__)

TRAIN_CONFIG_NAME = "train_config.json"
DONE_NAME = "done.json"
METHODS = ("bart", "bart-fusion", "recap")
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
    size: str = _opt("paper", "model size", choices=("tiny", "small", "paper"))
    variant: str = _opt("full", "training data: full | not_negative (vote >= 0) | positive")
    val_fraction: float = _opt(0.1, "share of train held out for validation when none is given")
    encoder: str | None = _opt(
        None, "music encoder: a saved folder (recap tagger train), a CNNSA checkpoint or a preset"
    )
    bart: str | None = _opt(None, "pretrained BART name or folder; default: train from scratch")
    # --- model settings the experiments vary (None: the preset's)
    align_weight: float | None = _opt(None, "w in L = L_cap + w L_align (paper 0.02)")
    align_loss: str | None = _opt(None, "cosine | infonce")
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
    seed: int = _opt(42, "seed of weights, dropout, data order and the validation split")
    mega_batch_mult: int = _opt(50, "batches per length-sorted group (1: no length grouping)")
    max_steps: int = _opt(0, "stop after this many optimizer steps in all, resumably (0: off)")
    # --- validation, best checkpoint, early stopping
    val_every_epochs: int = _opt(2, "validate every N epochs (and after the last)")
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

    # ------------------------------------------------------------------ presets
    @classmethod
    def for_preset(
        cls, preset: str = "recap", size: str = "paper", **overrides: Any
    ) -> TrainConfig:
        """The paper's protocol for `preset` at `size`, with keyword overrides, resolved."""
        return cls(preset=preset, size=size, **overrides).resolved()

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
        if cfg.lr_schedule not in ("constant", "step"):
            raise RecapError(f"lr_schedule must be constant or step, got {cfg.lr_schedule!r}")
        if cfg.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise RecapError(f"mixed_precision must be auto|no|bf16|fp16: {cfg.mixed_precision!r}")
        if cfg.variant not in ("full", "not_negative", "positive"):
            raise RecapError(f"variant must be full|not_negative|positive, got {cfg.variant!r}")
        parse_metric(cfg.val_metric)
        if cfg.batch_size < 1 or cfg.epochs < 1 or cfg.lr <= 0:
            raise RecapError("batch_size and epochs must be positive and lr > 0")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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


# ============================================================================ data


@dataclass
class Example:
    """One pre-tokenised interpretation."""

    song_id: str
    lyrics_ids: list[int]
    caption_ids: list[int]
    lyrics: str = ""
    caption: str = ""

    @property
    def length(self) -> int:
        return len(self.lyrics_ids) + len(self.caption_ids)


class ExampleDataset(Dataset):
    def __init__(self, examples: Sequence[Example]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]


def tokenize_rows(
    rows: Sequence[Any], tokenizer: Any, max_source: int, max_target: int
) -> list[Example]:
    """`recap.data.songs.Row`s → Examples (lyrics and caption truncated to the model's lengths)."""
    if not rows:
        return []
    lyrics = [r.lyrics for r in rows]  # newlines are already ';' (recap.data.songs, SPEC §1.2)
    captions = [r.comment for r in rows]
    src = tokenizer(lyrics, truncation=True, max_length=max_source)["input_ids"]
    tgt = tokenizer(captions, truncation=True, max_length=max_target)["input_ids"]
    return [
        Example(str(r.song_id), list(s), list(t), lyr, cap)
        for r, s, t, lyr, cap in zip(rows, src, tgt, lyrics, captions)
    ]


@dataclass
class Collator:
    """Pads a batch to its own longest sequence (dynamic padding) and looks up the music.

    Labels are padded with the pad id (the model masks them unless `loss_includes_padding`).
    Music embeddings stay float16 on the host: half the bytes to copy; the device casts.
    """

    pad_token_id: int
    embeddings: Mapping[str, np.ndarray] | None = None
    pad_to_multiple_of: int = 1

    def _pad(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        longest = max(len(s) for s in seqs)
        m = max(1, self.pad_to_multiple_of)
        longest = -(-longest // m) * m
        out = torch.full((len(seqs), longest), self.pad_token_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        return out

    def __call__(self, examples: Sequence[Example]) -> dict[str, Any]:
        input_ids = self._pad([e.lyrics_ids for e in examples])  # (B, S)
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": (input_ids != self.pad_token_id).long(),
            "labels": self._pad([e.caption_ids for e in examples]),  # (B, T)
            "song_ids": [e.song_id for e in examples],
            # Host-side counts for throughput logging, so the step never waits on the device.
            "n_tokens": sum(e.length for e in examples),
        }
        if self.embeddings is not None:
            music = np.stack([np.asarray(self.embeddings[e.song_id]) for e in examples])
            batch["music_embeds"] = torch.from_numpy(music)  # (B, 119, D) float16
        return batch


def music_embeddings(
    data_dir: str,
    encoder: Any,
    song_ids: Sequence[str],
    device: str = "cpu",
    progress: bool = True,
    workers: int | None = None,
) -> Mapping[str, Any]:
    """song id → (M, D) float16 music sequence of the frozen `encoder` (a MusicEncoder), computed
    once and cached under DATA/cache keyed by the encoder's weights (`recap.data.cache`)."""
    from recap.data.cache import ensure_embeddings

    return ensure_embeddings(
        data_dir, encoder, song_ids, device=device, progress=progress, num_workers=workers
    )


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if key == "music_embeds":
                value = value.float()
        out[key] = value
    return out


# ============================================================================ run state


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0  # the epoch in progress (or the next one)
    batch_in_epoch: int = 0  # batches of `epoch` already trained
    best_metric: float | None = None
    best_epoch: int | None = None
    bad_validations: int = 0
    validations: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainState:
        return cls(**dict(data))


def _rng_state() -> dict[str, Any]:
    """Every generator's state as tensors, ints and strings only, so that it loads with
    `torch.load(weights_only=True)`: a run folder is data, and unpickling it must not run code."""
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64)},
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if gauss is not None:
        state["python"]["gauss"] = float(gauss)
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py.get("gauss")))
    npy = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": npy["bit_generator"],
            "state": {"key": npy["key"].numpy().astype(np.uint32), "pos": npy["pos"]},
            "has_gauss": npy["has_gauss"],
            "gauss": npy["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _load_state_file(path: Path, what: str, map_location: Any = None) -> Any:
    """`torch.load(weights_only=True)`: tensors and plain containers only. A file that needs
    more (a planted pickle payload, or a file written by an old recap) is refused, never run."""
    if not path.is_file():
        raise RecapError(f"{path.parent} is incomplete: the {what} file {path.name} is missing")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise RecapError(
            f"refused to load {path}: it holds objects other than tensors and plain data "
            "(a tampered file, or one written by an older recap); nothing in it was run"
        ) from exc
    except Exception as exc:  # truncated zip, bad tensor records ...
        raise RecapError(f"cannot read the {what} in {path}: {type(exc).__name__}: {exc}") from exc


def _swap_dir(tmp: Path, final: Path) -> None:
    """Replace folder `final` by `tmp` so that a crash at any point leaves one complete copy:
    final → final.old, tmp → final, remove final.old (a reader falls back to .old)."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def _existing_dir(final: Path) -> Path | None:
    """`final`, or its `.old` copy when a crash hit between the two renames of `_swap_dir`."""
    if final.is_dir():
        return final
    old = final.with_name(final.name + ".old")
    return old if old.is_dir() else None


# ============================================================================ the loop


class Trainer:
    """Builds everything `train` needs and runs the loop. Use `train(config)`."""

    def __init__(self, config: TrainConfig) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.cfg = cfg = config.resolved()
        if not cfg.data or not cfg.out:
            raise RecapError("TrainConfig needs data (a dataset folder) and out (the run folder)")
        self.run = Path(cfg.out)
        mp = cfg.mixed_precision
        use_cuda = torch.cuda.is_available() and not cfg.cpu
        if mp == "auto":
            mp = "bf16" if use_cuda and torch.cuda.is_bf16_supported() else "no"
        kwargs: dict[str, Any] = {}
        if cfg.compile:
            from accelerate.utils import TorchDynamoPlugin

            # Dynamic shapes: every batch has its own padded length.
            kwargs["dynamo_plugin"] = TorchDynamoPlugin(backend="inductor", dynamic=True)
        self.accelerator = Accelerator(mixed_precision=mp, cpu=cfg.cpu or not use_cuda, **kwargs)
        self.mixed_precision = mp
        # Same seed on every rank: identical initial weights, dropout seeds per rank alike.
        set_seed(cfg.seed)

    # -------------------------------------------------------------- setup
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _prepare_run_dir(self) -> bool:
        """Check/create RUN; returns whether to resume from RUN/last."""
        cfg, run = self.cfg, self.run
        saved = run / TRAIN_CONFIG_NAME
        resume = False
        if self.is_main:
            if cfg.overwrite and run.exists():
                if any(run.iterdir()) and not saved.exists():
                    raise RecapError(f"{run} is not a training run; refusing to delete it")
                shutil.rmtree(run)
            if saved.exists():
                _check_same_config(_read_train_config(saved), cfg, run)
            run.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()
        if _existing_dir(run / "last") is not None:
            if not cfg.resume:
                raise RecapError(
                    f"{run} holds an unfinished run; pass --resume to continue it "
                    "(--overwrite deletes it and starts again)"
                )
            resume = True
        if self.is_main:
            atomic_write_json(saved, cfg.to_dict())
        return resume

    def _build(self) -> None:
        from recap.data.songs import load_splits
        from recap.models.config import RecapConfig
        from recap.models.model import RecapModel

        cfg, acc = self.cfg, self.accelerator
        report = SkipReport("load dataset")
        splits = load_splits(
            cfg.data,
            variant=cfg.variant,
            val_fraction=cfg.val_fraction,
            seed=cfg.seed,
            report=report,
        )
        if self.is_main:
            report.write(self.run / "skipped_rows.json")
            if len(report):
                logger.warning(report.summary())
        train_rows, val_rows = splits["train"], splits["val"]
        if not train_rows:
            raise RecapError(f"no training rows in {cfg.data} (variant {cfg.variant})")

        overrides: dict[str, Any] = dict(cfg.model_overrides)
        for key in ("align_weight", "align_loss"):
            if getattr(cfg, key) is not None:
                overrides[key] = getattr(cfg, key)
        encoder = None
        if cfg.preset == "bart" and cfg.encoder:
            logger.warning("the bart preset hears no music; --encoder %s is not used", cfg.encoder)
        if cfg.preset != "bart":
            from recap.models.music_encoder import load_music_encoder

            # Without --encoder: the size's CNNSA preset, randomly initialised from the seed
            # (frozen random features; `recap tagger train` makes a trained one).
            spec = cfg.encoder or _music_preset_name(RecapConfig.preset(cfg.preset, cfg.size).music)
            encoder = load_music_encoder(spec)
            overrides["music"] = encoder.config
        self.encoder = encoder
        # --- tokenizer
        tokenizer = self._tokenizer(
            train_rows, RecapConfig.preset(cfg.preset, cfg.size, **overrides)
        )
        overrides.update(_special_ids(tokenizer))
        if cfg.bart:
            model_cfg = RecapConfig.preset(cfg.preset, cfg.size, **overrides)
            model = RecapModel.from_bart(cfg.bart, model_cfg, music_encoder=encoder)
        else:
            overrides["vocab_size"] = len(tokenizer)
            model_cfg = RecapConfig.preset(cfg.preset, cfg.size, **overrides)
            # The frozen encoder rides along (no gradient), so RUN/best captions audio files.
            model = RecapModel(model_cfg, music_encoder=encoder)
        self.model_config = mcfg = model.config
        self.tokenizer = tokenizer

        # --- data
        self.train_examples = tokenize_rows(
            train_rows, tokenizer, mcfg.max_source_length, mcfg.max_target_length
        )
        val = val_rows[: cfg.val_max_examples] if cfg.val_max_examples else val_rows
        self.val_examples = tokenize_rows(
            val, tokenizer, mcfg.max_source_length, mcfg.max_target_length
        )
        embeddings = None
        if cfg.preset != "bart":
            songs = sorted({e.song_id for e in self.train_examples + self.val_examples})
            # Computed once by the main process; the others then read the cache.
            with acc.main_process_first():
                embeddings = music_embeddings(
                    cfg.data,
                    self.encoder,
                    songs,
                    str(acc.device),
                    cfg.progress and self.is_main,
                    cfg.embed_workers,
                )
            missing = [s for s in songs if s not in embeddings]
            if missing:
                # Songs whose audio could not be embedded (reported by the cache) cannot train.
                logger.warning("%d song(s) without music embeddings are left out", len(missing))
                lost = set(missing)
                self.train_examples = [e for e in self.train_examples if e.song_id not in lost]
                self.val_examples = [e for e in self.val_examples if e.song_id not in lost]
        self.embeddings = embeddings
        self.collator = Collator(mcfg.pad_token_id, embeddings, cfg.pad_to_multiple_of)
        if cfg.batch_size % acc.num_processes:
            raise RecapError(
                f"--batch-size {cfg.batch_size} is the global batch: it must divide evenly "
                f"among {acc.num_processes} processes"
            )
        self.sampler = LengthGroupedBatchSampler(
            [e.length for e in self.train_examples],
            cfg.batch_size,
            seed=cfg.seed,
            mega_batch_mult=cfg.mega_batch_mult,
            num_replicas=acc.num_processes,
            rank=acc.process_index,
        )
        pin = cfg.pin_memory if cfg.pin_memory is not None else acc.device.type == "cuda"
        self.loader = DataLoader(
            ExampleDataset(self.train_examples),
            batch_sampler=self.sampler,
            collate_fn=self.collator,
            num_workers=cfg.num_workers,
            pin_memory=pin,
            # Its own generator: creating an iterator must not draw from the global RNG, or a
            # resumed epoch would see other dropout masks than an uninterrupted one.
            generator=torch.Generator().manual_seed(cfg.seed),
        )

        # --- model, optimizer
        self._freeze_unused(model)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = self._optimizer(params)
        self.scheduler = (
            torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step_epochs, cfg.lr_step_gamma)
            if cfg.lr_schedule == "step"
            else None
        )
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.n_params = sum(p.numel() for p in params)

    def _tokenizer(self, train_rows: Sequence[Any], model_cfg: Any) -> Any:
        from recap.models.tokenizer import load_tokenizer, train_bpe_tokenizer

        cfg = self.cfg
        if cfg.bart:
            return load_tokenizer(cfg.bart)
        tok_dir = self.run / "tokenizer"
        if self.is_main and not (tok_dir / "tokenizer.json").exists():
            # One text per song's lyrics plus every caption: the BPE sees both languages.
            lyrics = {r.song_id: r.lyrics for r in train_rows}
            texts = list(lyrics.values()) + [r.comment for r in train_rows]
            train_bpe_tokenizer(texts, cfg.vocab_size or model_cfg.vocab_size, out_dir=tok_dir)
        self.accelerator.wait_for_everyone()
        return load_tokenizer(tok_dir)

    def _freeze_unused(self, model: torch.nn.Module) -> None:
        """Freeze what the loss never reaches (w = 0: the alignment projection), so DDP need not
        search for unused parameters every step and the optimizer skips them."""
        if not self.model_config.align_weight:
            for name, param in model.named_parameters():
                if "align" in name.split(".")[0]:
                    param.requires_grad_(False)

    def _optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return build_optimizer(self.cfg, params, self.accelerator.device.type)

    # -------------------------------------------------------------- checkpoints
    def save_checkpoint(self, state: TrainState) -> None:
        """RUN/last, written beside and swapped in: a kill at any moment leaves a whole one."""
        from safetensors.torch import save_model

        acc = self.accelerator
        tmp = self.run / ".last.tmp"
        if self.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        # Every rank keeps its own RNG stream (CUDA generators differ per device).
        torch.save(_rng_state(), tmp / f"rng_state_{acc.process_index}.pt")
        if self.is_main:
            save_model(acc.unwrap_model(self.model), str(tmp / "model.safetensors"))
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            if self.scheduler is not None:
                torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            atomic_write_json(tmp / "state.json", state.to_dict())
        acc.wait_for_everyone()
        if self.is_main:
            _swap_dir(tmp, self.run / "last")
        acc.wait_for_everyone()

    def load_checkpoint(self) -> TrainState:
        from safetensors import SafetensorError
        from safetensors.torch import load_model

        acc = self.accelerator
        last = _existing_dir(self.run / "last")
        if last is None:
            raise RecapError(f"no checkpoint to resume in {self.run}")
        weights = last / "model.safetensors"
        if not weights.is_file():
            raise RecapError(f"{last} is incomplete: model.safetensors is missing")
        try:
            load_model(acc.unwrap_model(self.model), str(weights), device=str(acc.device))
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise RecapError(f"cannot read the checkpoint {weights}: {exc}") from exc
        try:
            self.optimizer.load_state_dict(
                _load_state_file(last / "optimizer.pt", "optimizer state", acc.device)
            )
            if self.scheduler is not None:
                self.scheduler.load_state_dict(
                    _load_state_file(last / "scheduler.pt", "scheduler state")
                )
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise RecapError(f"the optimizer state in {last} does not fit this run: {exc}") from exc
        rng = last / f"rng_state_{acc.process_index}.pt"
        written = len(list(last.glob("rng_state_*.pt")))
        if written != acc.num_processes and (written or acc.num_processes > 1):
            raise RecapError(
                f"{last} holds RNG states of {written} process(es) but {acc.num_processes} now "
                "run; resume with the same number of processes"
            )
        rng_state = _load_state_file(rng, "RNG state")
        try:
            _set_rng_state(rng_state)
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
            raise RecapError(f"{rng} is not a valid RNG state: {exc}") from exc
        state_path = last / "state.json"
        try:
            state = TrainState.from_dict(json.loads(state_path.read_text(encoding="utf-8")))
        except FileNotFoundError as exc:
            raise RecapError(f"{last} is incomplete: state.json is missing") from exc
        except (OSError, ValueError, TypeError, RecursionError) as exc:
            raise RecapError(f"cannot read {state_path}: {exc}") from exc
        logger.info(
            "resuming %s at step %d (epoch %d, batch %d)",
            self.run,
            state.step,
            state.epoch,
            state.batch_in_epoch,
        )
        return state

    def save_best(self) -> None:
        tmp = self.run / ".best.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        self.accelerator.unwrap_model(self.model).save_pretrained(tmp, tokenizer=self.tokenizer)
        _swap_dir(tmp, self.run / "best")

    # -------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Generate captions for the val split (sharded over processes) and score them."""
        from accelerate.utils import gather_object

        from recap.inference.generate import DecodeSettings, generate_texts

        cfg, acc = self.cfg, self.accelerator
        model = acc.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        mine = list(range(acc.process_index, len(self.val_examples), acc.num_processes))
        examples = [self.val_examples[i] for i in mine]
        settings = DecodeSettings(
            num_beams=cfg.val_num_beams,
            max_new_tokens=cfg.val_max_new_tokens or None,
            batch_size=cfg.val_batch_size or cfg.batch_size,
        )
        music = None
        if self.embeddings is not None:
            music = [self.embeddings[e.song_id] for e in examples]
        texts = generate_texts(
            model,
            self.tokenizer,
            [e.lyrics_ids for e in examples],
            music,
            settings,
            autocast=acc.autocast,
        )
        preds = list(zip(mine, texts))
        if was_training:
            model.train()
        # Every rank gets every prediction, so all take the same best/early-stop decision.
        everything = sorted(gather_object(preds)) if acc.num_processes > 1 else preds
        references = [self.val_examples[i].caption for i, _ in everything]
        return validation_scores([text for _, text in everything], references)

    # -------------------------------------------------------------- loop
    def fit(self) -> Path:
        from tqdm.auto import tqdm

        cfg, acc, run = self.cfg, self.accelerator, self.run
        resume = self._prepare_run_dir()
        self._build()
        state = self.load_checkpoint() if resume else TrainState()
        writer = _TensorBoard(run / "tb") if self.is_main else None
        log_path = run / "log.jsonl"
        if self.is_main:
            _append_jsonl(
                log_path,
                {
                    "event": "resume" if resume else "start",
                    "step": state.step,
                    "seed": cfg.seed,
                    "n_params": self.n_params,
                    "n_train": len(self.train_examples),
                    "n_val": len(self.val_examples),
                    "processes": acc.num_processes,
                    "mixed_precision": self.mixed_precision,
                    "device": str(acc.device),
                },
            )
        model = self.model
        model.train()
        per_epoch = self.sampler.batches_per_epoch()
        total_steps = per_epoch * cfg.epochs
        bar = tqdm(
            total=total_steps,
            initial=state.step,
            desc=f"train {cfg.preset}",
            disable=not (cfg.progress and self.is_main),
            dynamic_ncols=True,
        )
        # Loss terms summed on the device; read (one host sync) every log_every_steps steps.
        terms = ("loss", "caption_loss", "align_loss", "reconstruct_loss")
        sums = torch.zeros(len(terms), device=acc.device)
        n_sum, samples, tokens, t_last = 0, 0, 0, time.perf_counter()
        paused = False
        for epoch in range(state.epoch, cfg.epochs):
            state.epoch = epoch
            self.sampler.set_epoch(epoch, state.batch_in_epoch)
            for batch in self.loader:
                n_tokens = batch.pop("n_tokens")
                batch = _to_device(batch, acc.device)
                if cfg.warmup_steps and state.step <= cfg.warmup_steps:
                    # Derived from the step, so a resumed run warms up exactly as an unbroken one.
                    factor = min(1.0, (state.step + 1) / max(cfg.warmup_steps, 1))
                    for group in self.optimizer.param_groups:
                        group["lr"] = cfg.lr * factor
                out = model(**batch)
                acc.backward(self._global_loss(out, batch["labels"]))
                if cfg.max_grad_norm > 0:
                    acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                sums += torch.stack([_term(out, name) for name in terms])
                n_sum += 1
                samples += len(batch["song_ids"]) * acc.num_processes
                tokens += n_tokens * acc.num_processes  # other ranks' lengths are alike (approx.)
                state.step += 1
                state.batch_in_epoch += 1
                bar.update(1)
                if state.step % cfg.log_every_steps == 0:
                    values = (sums / n_sum).tolist()
                    elapsed = max(time.perf_counter() - t_last, 1e-9)
                    record = {
                        "step": state.step,
                        "epoch": epoch,
                        **dict(zip(terms, values)),
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "samples_per_s": samples / elapsed,
                        "tokens_per_s": tokens / elapsed,
                    }
                    if self.is_main:
                        _append_jsonl(log_path, record)
                        writer.scalars(record, state.step)
                        bar.set_postfix(loss=f"{values[0]:.3f}")
                    sums.zero_()
                    n_sum, samples, tokens, t_last = 0, 0, 0, time.perf_counter()
                if cfg.max_steps and state.step >= cfg.max_steps:
                    paused = True
                    break
                if cfg.checkpoint_every_steps and state.step % cfg.checkpoint_every_steps == 0:
                    self.save_checkpoint(state)
            if paused:
                break
            # --- end of epoch: validate, keep the best, maybe stop
            state.epoch, state.batch_in_epoch = epoch + 1, 0
            if self.scheduler is not None:
                self.scheduler.step()
            last_epoch = epoch + 1 == cfg.epochs
            if (epoch + 1) % cfg.val_every_epochs == 0 or last_epoch:
                self._validate_and_select(state, log_path, writer)
            stop = cfg.patience > 0 and state.bad_validations >= cfg.patience
            state.stopped_early = stop and not last_epoch
            self.save_checkpoint(state)
            if stop:
                break
        bar.close()
        if paused:
            self.save_checkpoint(state)
            logger.info("stopped at step %d (max_steps); continue with --resume", state.step)
            if writer is not None:
                writer.close()
            return run
        if self.is_main:
            if not (run / "best").is_dir():  # no validation ran (e.g. an empty val split)
                self.save_best()
            result = {
                "step": state.step,
                "epochs": state.epoch,
                "best_metric": state.best_metric,
                "best_epoch": state.best_epoch,
                "val_metric": cfg.val_metric,
                "stopped_early": state.stopped_early,
                "validations": state.validations,
            }
            atomic_write_json(run / DONE_NAME, result)
            _append_jsonl(log_path, {"event": "done", **result})
            writer.close()
        acc.wait_for_everyone()
        return run

    def _global_loss(self, out: Any, labels: torch.Tensor) -> torch.Tensor:
        """The loss whose DDP-averaged gradient is that of the GLOBAL batch.

        Each rank's caption loss is a mean over its own target tokens; DDP then averages ranks,
        which weights a token on a short-caption rank more. Re-weighting by the rank's share of
        the global token count (one small all-reduce, no host sync) makes N processes compute
        what one process does on the same global batch. One process: `out.loss` unchanged.
        """
        acc = self.accelerator
        if acc.num_processes == 1:
            return out.loss
        mcfg = self.model_config
        counted = labels != -100
        if not mcfg.loss_includes_padding:
            counted &= labels != mcfg.pad_token_id
        local = counted.sum().float()
        total = acc.reduce(local.clone(), reduction="sum")
        loss = out.caption_loss * (local * acc.num_processes / total.clamp_min(1.0))
        if out.align_loss is not None and mcfg.align_weight:
            # Equal rows per rank, so averaging the ranks' means is the global mean (up to songs
            # that repeat across ranks, which the per-rank de-duplication counts once per rank).
            loss = loss + mcfg.align_weight * out.align_loss
        if out.reconstruct_loss is not None and mcfg.reconstruct_weight:
            loss = loss + mcfg.reconstruct_weight * out.reconstruct_loss
        return loss

    def _validate_and_select(self, state: TrainState, log_path: Path, writer: Any) -> None:
        cfg = self.cfg
        if not self.val_examples:
            return
        scores = self.validate()
        value = scores[cfg.val_metric]
        improved = state.best_metric is None or value > state.best_metric
        if improved:
            state.best_metric, state.best_epoch, state.bad_validations = value, state.epoch, 0
            if self.is_main:
                self.save_best()
        else:
            state.bad_validations += 1
        record = {
            "event": "validation",
            "step": state.step,
            "epoch": state.epoch,
            **scores,
            "best": improved,
        }
        state.validations.append(record)
        if self.is_main:
            _append_jsonl(log_path, record)
            writer.scalars({f"val/{k}": v for k, v in scores.items()}, state.step)
            logger.info(
                "epoch %d: %s %.4f%s",
                state.epoch,
                cfg.val_metric,
                value,
                " (best)" if improved else "",
            )
        self.accelerator.wait_for_everyone()


def build_optimizer(
    cfg: TrainConfig, params: Sequence[torch.nn.Parameter], device_type: str = "cpu"
) -> torch.optim.Optimizer:
    """The run's optimizer from a resolved config.

    Adafactor with a fixed lr as both public codebases build it (`relative_step=False,
    warmup_init=False`); `scale_parameter` is `cfg.adafactor_scale_parameter` (True at paper
    size, as the authors: Hugging Face's default). AdamW is fused on CUDA.
    """
    if cfg.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        if cfg.adafactor_scale_parameter is None:
            raise RecapError("adafactor_scale_parameter is unset: resolve the TrainConfig first")
        return Adafactor(
            list(params),
            lr=cfg.lr,
            relative_step=False,
            scale_parameter=bool(cfg.adafactor_scale_parameter),
            warmup_init=False,
            weight_decay=cfg.weight_decay,
        )
    fused = device_type == "cuda"
    return torch.optim.AdamW(list(params), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def _term(out: Any, name: str) -> torch.Tensor:
    value = getattr(out, name, None)
    if value is None:
        return torch.zeros((), device=out.loss.device)
    return value.detach().float()


def _special_ids(tokenizer: Any) -> dict[str, int]:
    """The model's special ids follow the tokenizer's (BART: <s>=0, <pad>=1, </s>=2)."""
    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "decoder_start_token_id": tokenizer.eos_token_id,  # BART starts decoding from </s>
    }
    missing = [k for k, v in ids.items() if v is None]
    if missing:
        raise RecapError(f"the tokenizer has no {', '.join(missing)}")
    return ids


def _music_preset_name(config: Any) -> str:
    from recap.models.music_encoder import PRESETS, MusicEncoderConfig

    for name in PRESETS:
        if MusicEncoderConfig.preset(name) == config:
            return name
    raise RecapError("pass --encoder: the music config is no preset")


def _read_train_config(path: Path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, RecursionError) as exc:
        raise RecapError(f"cannot read {path} (corrupt?): {exc}") from exc


# Settings that name files: compared by what they point at, not by how they are spelled.
_PATH_SETTINGS = ("data", "encoder", "bart")


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


def _check_same_config(saved: TrainConfig, now: TrainConfig, run: Path) -> None:
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
        raise RecapError(
            f"{run} was trained with other settings ({details}); pass the run's own settings "
            f"(saved in {run / TRAIN_CONFIG_NAME}) to continue it, or use another --out"
        )


def validation_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L recall and F1 over the examples (`recap.evaluation.metrics`: rouge_score, no
    stemming), as flat keys `rouge1_recall` ... `rougeL_f1`. The plain mean, not the bootstrap
    median, so that checkpoint selection is deterministic."""
    from recap.evaluation.metrics import rouge_scores

    result = rouge_scores(list(predictions), list(references), bootstrap=1)
    return {
        f"{name}_{kind}": float(np.mean(values))
        for name, per_kind in result["per_example"].items()
        for kind, values in per_kind.items()
    }


def _append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"time": time.time(), **record}, default=str) + "\n")


class _TensorBoard:
    """A thin SummaryWriter wrapper that logs the numeric entries of a record."""

    def __init__(self, path: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(path))

    def scalars(self, record: Mapping[str, Any], step: int) -> None:
        for key, value in record.items():
            if (
                key not in ("step", "epoch", "time")
                and isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


def train(config: TrainConfig) -> Path:
    """Train one run and return its folder RUN. A finished run (RUN/done.json) is returned at
    once unless `config.overwrite`; an unfinished one needs `config.resume`."""
    cfg = config.resolved()
    run = Path(cfg.out)
    if (run / DONE_NAME).exists() and not cfg.overwrite:
        saved = run / TRAIN_CONFIG_NAME
        if saved.exists():
            _check_same_config(_read_train_config(saved), cfg, run)
        logger.info("%s is finished; reusing it (pass --overwrite to train again)", run)
        return run
    return Trainer(cfg).fit()


# ============================================================================ CLI


def _flag_type(annotation: Any) -> tuple[type, bool]:
    """(the scalar type, whether None is allowed) of a field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a bare string


def add_dataclass_arguments(
    parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()
) -> None:
    """One flag per field of the dataclass `cls` (`--batch-size`, `--no-progress`, dicts as
    repeated `--set KEY=VALUE`); every default is None, so flags left out keep the dataclass's."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind, _ = _flag_type(hints[f.name])
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        help_text = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        if kind is dict:
            parser.add_argument(
                flag, dest=f.name, action="append", type=_parse_override, default=None,
                metavar="KEY=VALUE", help=help_text,
            )  # fmt: skip
        elif kind is bool:
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                help=help_text,
            )  # fmt: skip
        else:
            default = f.default if f.default is not dataclasses.MISSING else None
            parser.add_argument(
                flag,
                dest=f.name,
                type=kind,
                default=None,
                choices=choices,
                help=f"{help_text} (default: {default})",
            )


def dataclass_from_args(cls: type, args: argparse.Namespace) -> Any:
    """An instance of `cls` from parsed flags; flags left out keep the dataclass defaults."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is not None:
            values[f.name] = (
                dict(value) if isinstance(value, list) and f.type in (dict, "dict") else value
            )
    return cls(**values)


def add_config_arguments(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """`recap train`'s flags: one per TrainConfig field."""
    add_dataclass_arguments(parser, TrainConfig, skip)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return dataclass_from_args(TrainConfig, args)


def _handler(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    run = train(cfg)
    done = run / DONE_NAME
    if done.exists():
        result = json.loads(done.read_text())
        print(
            f"{run}: best {result['val_metric']} = {result['best_metric']} (epoch {result['best_epoch']})"
        )
    else:
        print(f"{run}: paused at max_steps; continue with --resume")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a captioner (bart | bart-fusion | recap); runs under accelerate launch too",
        description=__doc__.split("\n\n")[0],
    )
    add_config_arguments(parser)
    parser.set_defaults(func=_handler)


__all__: list[str] = [
    "Collator",
    "Example",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "add_config_arguments",
    "config_from_args",
    "register",
    "train",
    "validation_scores",
]
