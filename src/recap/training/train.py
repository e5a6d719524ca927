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

import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from recap.data.batching import LengthGroupedBatchSampler
from recap.inference.words import caption_vocabulary
from recap.training.checkpoint import (
    TrainState,
    existing_dir,
    load_checkpoint,
    save_checkpoint,
    swap_dir,
)
from recap.training.collate import (
    Collator,
    Example,
    ExampleDataset,
    caption_texts,
    to_device,
    tokenize_rows,
)
from recap.training.config import (
    DONE_NAME,
    TRAIN_CONFIG_NAME,
    TrainConfig,
    check_same_config,
    check_same_start,
    read_train_config,
    starting_point,
)
from recap.training.ema import WeightAverage
from recap.training.optim import build_optimizer
from recap.training.runlog import TensorBoard, append_jsonl, validation_scores
from recap.utils import RecapError, SkipReport, atomic_write_json, read_json

logger = logging.getLogger(__name__)

# The music sequences of songs: (data_dir, encoder, song_ids, device=, progress=, num_workers=,
# audio_config=) → song id → (W*M, D) array. Tests pass a stand-in; runs use the embedding cache.
EmbedFn = Callable[..., Mapping[str, Any]]

# ============================================================================ the loop


class Trainer:
    """Builds everything `train` needs and runs the loop. Use `train(config)`."""

    def __init__(self, config: TrainConfig, embed: EmbedFn | None = None) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        if embed is None:
            from recap.data.cache import ensure_embeddings as embed
        self.embed = embed

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
                check_same_config(read_train_config(saved), cfg, run)
            run.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()
        if existing_dir(run / "last") is not None:
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
        text_ids: set[str] = set()
        if cfg.text_rows:
            text_report = SkipReport("load text rows")
            extra = _text_rows(cfg.text_rows, cfg.preset != "bart", text_report)
            if self.is_main:
                text_report.write(self.run / "skipped_text_rows.json")
                if len(text_report):
                    logger.warning(text_report.summary())
            text_ids = {r.song_id for r in extra}
            clash = text_ids & {r.song_id for rows in splits.values() for r in rows}
            if clash:
                raise RecapError(
                    f"{cfg.text_rows}: song id {sorted(clash)[0]} is also a song of {cfg.data}"
                )
            train_rows = train_rows + extra

        overrides: dict[str, Any] = dict(cfg.model_overrides)
        for key in ("align_weight", "align_loss", "align_pool"):
            if getattr(cfg, key) is not None:
                overrides[key] = getattr(cfg, key)
        encoder = None
        if cfg.preset == "bart" and cfg.encoder:
            logger.warning("the bart preset hears no music; --encoder %s is not used", cfg.encoder)
        if cfg.preset != "bart":
            from recap.models.encoders import build_music_encoder

            # Without --encoder: the size's CNNSA preset, randomly initialised from the seed
            # (frozen random features; `recap tagger train` makes a trained one).
            spec = cfg.encoder or _music_preset_name(RecapConfig.preset(cfg.preset, cfg.size).music)
            encoder = build_music_encoder(spec)
            overrides["music_kind"] = encoder.kind
            overrides["music"] = encoder.config
            # Saved in config.json: captioning hears as many windows by default (Captioner).
            overrides["music_windows"] = cfg.windows
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
        model.attach_tokenizer(tokenizer)
        if cfg.init:
            copied, fresh = model.init_from(cfg.init)
            logger.info(
                "started from %s: %d tensors copied, %d initialised (%s)",
                cfg.init,
                len(copied),
                len(fresh),
                ", ".join(sorted({n.split(".")[0] for n in fresh})) or "none",
            )
        model.caption_words = frozenset(caption_vocabulary(caption_texts(train_rows)))
        self.model_config = mcfg = model.config
        self.tokenizer = tokenizer

        # --- data
        self.train_examples = tokenize_rows(
            train_rows, tokenizer, mcfg.max_source_length, mcfg.max_target_length
        )
        for example in self.train_examples:
            example.hears = example.song_id not in text_ids
        val = val_rows[: cfg.val_max_examples] if cfg.val_max_examples else val_rows
        self.val_examples = tokenize_rows(
            val, tokenizer, mcfg.max_source_length, mcfg.max_target_length
        )
        embeddings = None
        if cfg.preset != "bart":
            songs = sorted({e.song_id for e in self.train_examples + self.val_examples if e.hears})
            # Computed once by the main process; the others then read the cache.
            with acc.main_process_first():
                embeddings = self.embed(
                    cfg.data,
                    self.encoder,
                    songs,
                    device=str(acc.device),
                    progress=cfg.progress and self.is_main,
                    num_workers=cfg.embed_workers,
                    audio_config=cfg.audio_config(),
                )
            missing = [s for s in songs if s not in embeddings]
            if missing:
                # Songs whose audio could not be embedded (reported by the cache) cannot train.
                logger.warning("%d song(s) without music embeddings are left out", len(missing))
                lost = set(missing)
                self.train_examples = [e for e in self.train_examples if e.song_id not in lost]
                self.val_examples = [e for e in self.val_examples if e.song_id not in lost]
        self.embeddings = embeddings
        dropout = cfg.lyrics_dropout
        if dropout and not mcfg.use_music:
            # Without audio an example without lyrics has no input at all: nothing to learn.
            logger.warning("the %s preset hears no audio; lyrics_dropout is not used", cfg.preset)
            dropout = 0.0
        self.collator = Collator(
            mcfg.pad_token_id,
            embeddings,
            cfg.pad_to_multiple_of,
            lyrics_dropout=dropout,
            empty_lyrics_ids=tuple(tokenizer("")["input_ids"]),
            seed=cfg.seed,
            share_sources=cfg.captions_per_song > 1,
            music_dim=mcfg.music_dim if embeddings is not None else 0,
        )
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
            groups=[e.song_id for e in self.train_examples],
            per_group=cfg.captions_per_song,
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
        optimizer = self._optimizer(self._param_groups(model))
        self.scheduler = (
            torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step_epochs, cfg.lr_step_gamma)
            if cfg.lr_schedule == "step"
            else None
        )
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.n_params = sum(p.numel() for p in params)
        self.ema = (
            WeightAverage(acc.unwrap_model(self.model), cfg.ema_decay) if cfg.ema_decay else None
        )

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

    def _param_groups(self, model: torch.nn.Module) -> list[Any]:
        """The trainable parameters; with `align_lr`, the alignment's own (projection, pool,
        temperature: top-level names starting with "align") in a group of their own."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if self.cfg.align_lr is None:
            return [p for _, p in named]
        align = [p for n, p in named if n.split(".")[0].startswith("align")]
        rest = [p for n, p in named if not n.split(".")[0].startswith("align")]
        return [{"params": rest}, {"params": align, "lr": self.cfg.align_lr}]

    def _optimizer(self, params: list[Any]) -> torch.optim.Optimizer:
        return build_optimizer(self.cfg, params, self.accelerator.device.type)

    # -------------------------------------------------------------- checkpoints
    def save_checkpoint(self, state: TrainState) -> None:
        save_checkpoint(
            self.run / "last",
            self.accelerator,
            self.model,
            self.optimizer,
            self.scheduler,
            state,
            self.ema,
        )

    def load_checkpoint(self) -> TrainState:
        state = load_checkpoint(
            self.run / "last",
            self.accelerator,
            self.model,
            self.optimizer,
            self.scheduler,
            self.ema,
        )
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
        with self._averaged():
            self.accelerator.unwrap_model(self.model).save_pretrained(tmp, tokenizer=self.tokenizer)
        swap_dir(tmp, self.run / "best")

    def _averaged(self) -> Any:
        """The weights validation and RUN/best see: the average when training keeps one."""
        return self.ema.applied() if self.ema is not None else nullcontext()

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
        with self._averaged():
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
        writer = TensorBoard(run / "tb") if self.is_main else None
        log_path = run / "log.jsonl"
        if self.is_main:
            append_jsonl(
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
        terms = ("loss", "caption_loss", "align_loss", "reconstruct_loss", "select_loss")
        sums = torch.zeros(len(terms), device=acc.device)
        n_sum, samples, tokens, t_last = 0, 0, 0, time.perf_counter()
        paused = False
        for epoch in range(state.epoch, cfg.epochs):
            state.epoch = epoch
            self.sampler.set_epoch(epoch, state.batch_in_epoch)
            self.collator.epoch = epoch  # lyrics dropout draws anew each epoch
            for batch in self.loader:
                n_tokens = batch.pop("n_tokens")
                batch = to_device(batch, acc.device)
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
                if self.ema is not None:
                    self.ema.update()
                sums += torch.stack([_term(out, name) for name in terms])
                n_sum += 1
                samples += len(batch["labels"]) * acc.num_processes  # captions, not sources
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
                        append_jsonl(log_path, record)
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
            every = cfg.val_every_epochs
            if last_epoch or (every and (epoch + 1) % every == 0):
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
                "starts_from": starting_point(cfg),
                "step": state.step,
                "epochs": state.epoch,
                "best_metric": state.best_metric,
                "best_epoch": state.best_epoch,
                "val_metric": cfg.val_metric,
                "stopped_early": state.stopped_early,
                "validations": state.validations,
            }
            atomic_write_json(run / DONE_NAME, result)
            append_jsonl(log_path, {"event": "done", **result})
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
        if out.select_loss is not None and mcfg.copy_select_weight:
            loss = loss + mcfg.copy_select_weight * out.select_loss
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
            append_jsonl(log_path, record)
            writer.scalars({f"val/{k}": v for k, v in scores.items()}, state.step)
            logger.info(
                "epoch %d: %s %.4f%s",
                state.epoch,
                cfg.val_metric,
                value,
                " (best)" if improved else "",
            )
        self.accelerator.wait_for_everyone()


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


def _text_rows(path: str, hears: bool, report: SkipReport) -> list[Any]:
    """The rows of a `recap bench text-rows` file, for the train split. A captioner that hears
    (`hears`) is given no music for them, so its reference is the row's lyrics sentences
    (`comment_without_audio`); BART, which never hears, reads the whole comment as for any row.
    Unusable rows go to `report`, as any dataset's."""
    import dataclasses

    from recap.bench.text_rows import COMMENT_WITHOUT_AUDIO
    from recap.data.songs import load_rows

    rows = []
    for row in load_rows(path, report=report):
        if row.split not in (None, "train"):
            report.add(row.song_id, f"split {row.split!r}: text rows only train")
            continue
        if hears:
            reference = row.extra.get(COMMENT_WITHOUT_AUDIO)
            if not reference:
                report.add(row.song_id, f"no {COMMENT_WITHOUT_AUDIO}: nothing to caption unheard")
                continue
            row = dataclasses.replace(row, comment=str(reference))
        rows.append(row)
    if not rows:
        raise RecapError(f"no usable text rows in {path}")
    return rows


def _music_preset_name(config: Any) -> str:
    from recap.models.music_encoder import PRESETS, MusicEncoderConfig

    for name in PRESETS:
        if MusicEncoderConfig.preset(name) == config:
            return name
    raise RecapError("pass --encoder: the music config is no preset")


def train(config: TrainConfig, embed: EmbedFn | None = None) -> Path:
    """Train one run and return its folder RUN. A finished run (RUN/done.json) is returned at
    once unless `config.overwrite`; an unfinished one needs `config.resume`.

    `embed(data_dir, encoder, song_ids, device=, progress=, num_workers=)` → song id → (M, D)
    music sequence; default `recap.data.cache.ensure_embeddings` (cached under DATA/cache).
    """
    cfg = config.resolved()
    run = Path(cfg.out)
    if (run / DONE_NAME).exists() and not cfg.overwrite:
        saved = run / TRAIN_CONFIG_NAME
        if saved.exists():
            check_same_config(read_train_config(saved), cfg, run)
        done = read_json(run / DONE_NAME, "done.json")
        if isinstance(done, dict) and "starts_from" in done:
            check_same_start(done["starts_from"], starting_point(cfg), run)
        logger.info("%s is finished; reusing it (pass --overwrite to train again)", run)
        return run
    return Trainer(cfg, embed).fit()


__all__: list[str] = [
    "Collator",
    "Example",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "train",
    "validation_scores",
]
