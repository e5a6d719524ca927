"""Text pretraining of the captioner's BART: `recap pretrain-text` and
`pretrain_text(PretrainConfig) -> Path`.

The paper fine-tunes from `facebook/bart-base`, whose encoder already reads text. The small sizes
train BART from scratch on a thousand templated captions, and their lyrics encoder collapses to
input-independent states (issue 11). This job gives them what bart-base had: BART's own denoising
objective (Lewis et al. 2020) on lyrics the project reads offline —

* span infilling: span lengths ~ Poisson(λ = 3), ~30 % of the tokens masked, each span replaced
  by one <mask>;
* sentence permutation: the sentences (lines) of an input are shuffled;
* a share of uncorrupted inputs (pure copies), so that copying the input pays from the first
  steps — the captioner's templates quote the lyrics;

plus what the measurements (docs/training.md) showed copying needs at the small size within a
few CPU minutes: a guided cross-attention loss on the copies (`copy_attention_loss`) and the
encoder reconstruction term of `recap.models.losses.reconstruction_loss` — without either the copy
rate stays at 0-1 % — with AdamW at 2e-3 after a warm-up, and a curriculum from short to long
inputs (it saves time; copying emerges without it too).

Text: the lyrics of music21's corpus and of OpenScore Lieder (read as the benchmark reads them,
`recap.bench.sources`), plus text files, as the captioner sees them ('\\n' → ';'). A work in a
benchmark's val or test split is never trained on (`--exclude-splits-of BENCH`), nor is any line
whose text occurs in those splits' lyrics. A seeded share of the works is held out to measure
the exact-copy rate and the masked-span accuracy (never trained on either, by the same line rule).

The output folder is a Hugging Face BART checkpoint (config.json, model.safetensors, tokenizer
files), loaded by `RecapModel.from_bart(DIR)` and `recap train --bart DIR` as bart-base is, plus
`pretrain_config.json`, `pretrain_metrics.json` and `log.jsonl`. It is written beside and
renamed into place when finished; `DIR.partial/` holds a resumable checkpoint meanwhile. A
finished folder with the same settings is reused.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recap.training.config import (
    METRICS_NAME,
    PRETRAIN_CONFIG_NAME,
    REUSE_MUTABLE,
    PretrainConfig,
)
from recap.training.denoising import (
    Corrupted,
    Segment,
    corrupt,
    make_batch,
    make_segments,
)
from recap.training.text_corpus import (
    Corpus,
    Exclusion,
    read_bpe_text,
    read_corpus,
    split_corpus,
)
from recap.utils import RecapError, atomic_write_json, differing_settings

logger = logging.getLogger(__name__)

# ============================================================================ model


def _bart_config(cfg: PretrainConfig, tokenizer: Any) -> Any:
    from recap.models.config import RecapConfig

    overrides = dict(cfg.model_overrides)
    overrides.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,  # BART decodes from </s>
    )
    if cfg.copy_attention_weight > 0:
        # Attention weights are returned by the eager implementation only; the saved config
        # does not keep it (from_bart chooses its own).
        overrides["attn_implementation"] = "eager"
    rc = RecapConfig.preset("bart", cfg.size, **overrides)
    needed = max(cfg.curriculum) + 2  # <s> ... </s>
    if rc.max_position_embeddings < needed:
        raise RecapError(
            f"curriculum cap {max(cfg.curriculum)} exceeds max_position_embeddings "
            f"{rc.max_position_embeddings} of size {cfg.size}"
        )
    return rc.bart_config()


def sinusoidal_positions(model: Any, std: float) -> None:
    """Fill BART's learned position tables with sinusoids of RMS `std` (the token embeddings'
    init scale): a lever for copying (decoder step t must find encoder position t), kept as an
    option — with the guided copy attention it made no difference (docs/training.md). The
    tables stay learned parameters; the checkpoint format is BART's."""
    for emb in (model.model.encoder.embed_positions, model.model.decoder.embed_positions):
        rows, dim = emb.weight.shape
        offset = getattr(emb, "offset", 2)
        pos = torch.arange(rows, dtype=torch.float32)[:, None] - offset
        freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        table = torch.zeros(rows, dim)
        table[:, 0::2] = torch.sin(pos * freq)
        table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
        table *= std / table.pow(2).mean().sqrt()
        with torch.no_grad():
            emb.weight.copy_(table)


def _losses(
    model: Any,
    batch: dict[str, torch.Tensor],
    cfg: PretrainConfig | None = None,
    mask_id: int | None = None,
) -> dict[str, Any]:
    """The denoising loss and, with `cfg` (training), the auxiliary terms it switches on."""
    from transformers.models.bart.modeling_bart import shift_tokens_right

    from recap.models.losses import reconstruction_loss

    config = model.config
    labels = batch["labels"]
    enc = model.model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    dec_in = shift_tokens_right(
        labels.masked_fill(labels == -100, config.pad_token_id),
        config.pad_token_id,
        config.decoder_start_token_id,
    )
    if cfg is not None and cfg.decoder_input_dropout > 0:
        # Hide some of the tokens the decoder has written so far: a decoder that can predict
        # the next word from its own prefix never needs the encoder (the LM shortcut).
        drop = torch.rand(dec_in.shape) < cfg.decoder_input_dropout
        drop[:, :2] = False  # the start tokens </s> <s>
        dec_in = dec_in.masked_fill(drop & (dec_in != config.pad_token_id), mask_id)
    guided = cfg is not None and cfg.copy_attention_weight > 0 and bool(batch["copy"].any())
    out = model(
        encoder_outputs=enc,
        attention_mask=batch["attention_mask"],
        decoder_input_ids=dec_in,
        labels=labels,
        output_attentions=guided,
    )
    result = {"loss": out.loss, "denoise": out.loss, "logits": out.logits}
    if cfg is not None and cfg.reconstruct_weight > 0:
        logits = model.lm_head(enc.last_hidden_state) + model.final_logits_bias
        result["reconstruct"] = reconstruction_loss(
            logits, batch["input_ids"], batch["attention_mask"]
        )
    if guided:
        result["copy_attention"] = copy_attention_loss(out.cross_attentions, batch)
    return result


def copy_attention_loss(cross_attentions: Sequence[torch.Tensor], batch: dict) -> torch.Tensor:
    """-log of the attention that head 0 of each decoder layer pays, at decoder step j of a copy,
    to source position j (the token that step writes: both read <s> x1 … xn </s>).

    Why: copying needs cross-attention to walk the source in step with the output. From the
    token loss alone that alignment was not learned in 400 steps (the decoder learns the
    language and ignores the encoder: 0-1 % exact copies); told which position to read, as
    guided attention does in speech synthesis, it is learned in ~200 steps (docs/training.md).
    Only head 0 is guided; the others stay free for infilling."""
    rows = batch["copy"]
    # A copy's source is as long as its labels; the batch's padded widths need not agree.
    length = min(batch["labels"].shape[1], batch["input_ids"].shape[1])
    valid = batch["labels"][rows, :length] != -100  # (B, T)
    idx = torch.arange(length)
    total = torch.zeros(())
    for attn in cross_attentions:
        diag = attn[rows][:, 0, idx, idx]  # (B, T): step j on source position j
        total = total - torch.log(diag.clamp_min(1e-6))[valid].mean()
    return total / len(cross_attentions)


# ============================================================================ evaluation


@torch.no_grad()
def evaluate(
    model: Any,
    tokenizer: Any,
    held_out: Sequence[Sequence[str]],
    cfg: PretrainConfig,
    caps: Sequence[int] | None = None,
) -> dict[str, Any]:
    """On held-out works: greedy exact copy of uncorrupted inputs — single lines and segments
    packed up to each cap — and teacher-forced token accuracy on masked spans."""
    from recap.inference.generate import generate_ids

    model.eval()
    bos, eos, pad, mask = (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        tokenizer.mask_token_id,
    )
    top = max(cfg.curriculum)
    caps = sorted({c for c in (caps or (32, 64, top)) if c <= top} | {top})
    rng = np.random.default_rng([cfg.seed, 99])
    report: dict[str, Any] = {}

    def copy_rate(segments: list[Segment]) -> tuple[float, int]:
        if not segments:
            return float("nan"), 0
        pick = rng.permutation(len(segments))[: cfg.max_eval_lines]
        chosen = [segments[i] for i in sorted(pick)]
        hits = 0
        for start in range(0, len(chosen), 32):
            part = chosen[start : start + 32]
            pairs = [Corrupted(s.ids, s.ids, [False] * len(s.ids), True) for s in part]
            batch = make_batch(pairs, bos, eos, pad)
            out = generate_ids(
                model,
                batch["input_ids"],
                batch["attention_mask"],
                num_beams=1,
                do_sample=False,
                max_new_tokens=max(len(s.ids) for s in part) + 4,
                no_repeat_ngram_size=0,  # lyrics repeat themselves; a copy must too
                forced_bos_token_id=bos,
                forced_eos_token_id=eos,
            )
            for s, row in zip(part, out.tolist()):
                got = [t for t in row if t not in (bos, eos, pad)]
                hits += got == s.ids
        return hits / len(chosen), len(chosen)

    lines = [[sentence] for doc in held_out for sentence in doc]
    rate, n = copy_rate(make_segments(lines, tokenizer, top))
    report["copy_lines"] = {"exact": rate, "n": n}
    for cap in caps:
        rate, n = copy_rate(make_segments(held_out, tokenizer, cap))
        report[f"copy_{cap}"] = {"exact": rate, "n": n}
    # Masked spans, every input corrupted (copy_share 0), teacher-forced.
    segments = make_segments(held_out, tokenizer, top)
    pick = sorted(rng.permutation(len(segments))[: cfg.max_eval_lines].tolist())
    right = total = 0
    for start in range(0, len(pick), 32):
        pairs = [
            corrupt(
                segments[i],
                rng,
                mask,
                0.0,
                cfg.mask_ratio,
                cfg.poisson_lambda,
                cfg.permute_sentences,
            )  # fmt: skip
            for i in pick[start : start + 32]
        ]
        batch = make_batch(pairs, bos, eos, pad)
        logits = _losses(model, batch)["logits"]
        pred = logits.argmax(-1)
        m = batch["masked"]
        right += int((pred[m] == batch["labels"][m]).sum())
        total += int(m.sum())
    report["masked_span_accuracy"] = {"accuracy": right / total if total else float("nan")}
    report["masked_span_accuracy"]["n_tokens"] = total
    model.train()
    return report


# ============================================================================ training


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio · lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _cap_at(step: int, cfg: PretrainConfig) -> int:
    phase = min(len(cfg.curriculum) - 1, step * len(cfg.curriculum) // cfg.max_steps)
    return cfg.curriculum[phase]


def _same_settings(saved: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether a folder written with `saved` settings is what `now` would train. A setting
    added to the code after the folder was written counts as equal at its default value."""
    return not differing_settings(saved, now, PretrainConfig().to_dict(), REUSE_MUTABLE)


def is_finished(out: str | Path, cfg: PretrainConfig) -> bool:
    """Whether `out` holds a finished model trained with `cfg`'s settings."""
    saved = Path(out) / PRETRAIN_CONFIG_NAME
    if not (saved.is_file() and (Path(out) / METRICS_NAME).is_file()):
        return False
    try:
        return _same_settings(json.loads(saved.read_text("utf-8")), cfg.to_dict())
    except (OSError, json.JSONDecodeError):
        return False


def _tokenizer_for(cfg: PretrainConfig, corpus: Corpus, work: Path) -> Any:
    from recap.models.config import RecapConfig
    from recap.models.tokenizer import load_tokenizer, train_bpe_tokenizer

    if cfg.tokenizer:
        if cfg.bpe_text:
            raise RecapError("--bpe-text trains a new BPE; it cannot be used with --tokenizer")
        tok = load_tokenizer(cfg.tokenizer)
        if tok.mask_token_id is None:
            raise RecapError(f"the tokenizer of {cfg.tokenizer} has no <mask> token")
        return tok
    tok_dir = work / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        vocab = cfg.vocab_size or RecapConfig.preset("bart", cfg.size).vocab_size
        # Trained on the training text only: held-out lines stay unseen even by the BPE.
        texts = ["".join(d).strip() for d in corpus.train]
        # The captions a fine-tuned model will write: a lyrics-only BPE splits them into ~110
        # tokens against ~69 (the demo's test captions), slowing every decoder pass.
        texts += [t for path in cfg.bpe_text for t in read_bpe_text(path)]
        train_bpe_tokenizer(texts, vocab, out_dir=tok_dir)
    return load_tokenizer(tok_dir)


def pretrain_text(config: PretrainConfig) -> Path:
    """Pretrain a BART on lyrics by denoising and return the finished folder `config.out`.

    A folder already holding a finished model with the same settings is returned at once (the
    demo caches it so); different settings need `overwrite`. A killed run resumes from
    `OUT.partial/` when started again with the same settings.
    """
    from tqdm.auto import tqdm
    from transformers import BartForConditionalGeneration

    cfg = config.resolved()
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        if is_finished(out, cfg):
            logger.info("%s holds a finished model with these settings; reusing it", out)
            return out
        raise RecapError(
            f"{out} exists and is not a finished pretraining with these settings; "
            "pass --overwrite to replace it"
        )
    work = out.with_name(out.name + ".partial")
    saved = work / PRETRAIN_CONFIG_NAME
    if saved.is_file() and not _same_settings(json.loads(saved.read_text()), cfg.to_dict()):
        logger.info("%s was started with other settings; starting afresh", work)
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(saved, cfg.to_dict())
    t_start = time.perf_counter()

    # --- text
    docs = read_corpus(cfg)
    exclusion = Exclusion.from_benchmarks(cfg.exclude_splits_of)
    corpus = split_corpus(docs, exclusion, cfg.held_out_share, cfg.seed)
    if not corpus.train:
        raise RecapError("no training text left after the exclusions")
    tokenizer = _tokenizer_for(cfg, corpus, work)
    encoded: dict[str, list[int]] = {}
    phases = {cap: make_segments(corpus.train, tokenizer, cap, encoded) for cap in cfg.curriculum}
    n_tokens = sum(len(s.ids) for s in phases[max(cfg.curriculum)])
    logger.info(
        "text: %d training documents (%d tokens), %d held-out works, %d works excluded, "
        "%d lines dropped as excluded/held-out",
        corpus.stats["train_documents"],
        n_tokens,
        corpus.stats["held_out_works"],
        corpus.stats["excluded_works"],
        corpus.stats["dropped_lines"],
    )
    t_text = time.perf_counter() - t_start

    # --- model and optimizer
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = BartForConditionalGeneration(_bart_config(cfg, tokenizer))
    if cfg.position_init == "sinusoidal":
        sinusoidal_positions(model, model.config.init_std)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed_positions" not in n]
    rest = [
        p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed_positions" not in n)
    ]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        foreach=True,  # one kernel per operation over all tensors (torch's default on CUDA only)
    )
    step = 0
    last = work / "last"
    if (last / "state.json").is_file():
        from safetensors.torch import load_model

        load_model(model, str(last / "model.safetensors"))
        optimizer.load_state_dict(torch.load(last / "optimizer.pt", weights_only=False))
        step = int(json.loads((last / "state.json").read_text())["step"])
        logger.info("resuming %s at step %d", work, step)
    model.train()
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    log_path = work / "log.jsonl"
    bar = tqdm(total=cfg.max_steps, initial=step, desc="pretrain-text", disable=not cfg.progress)
    t_train = time.perf_counter()
    steps_at_start = step
    sums: dict[str, float] = {}
    while step < cfg.max_steps:
        # Each step's batch and noise are a function of (seed, step): a resumed run sees
        # exactly the batches an uninterrupted one would.
        rng = np.random.default_rng([cfg.seed, step])
        torch.manual_seed(int(rng.integers(2**62)))  # dropout masks too
        cap = _cap_at(step, cfg)
        pool = phases[cap]
        pairs = [
            corrupt(
                pool[int(i)],
                rng,
                tokenizer.mask_token_id,
                cfg.copy_share,
                cfg.mask_ratio,
                cfg.poisson_lambda,
                cfg.permute_sentences,
            )  # fmt: skip
            for i in rng.integers(len(pool), size=cfg.batch_size)
        ]
        batch = make_batch(pairs, bos, eos, pad)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, cfg)
        terms = _losses(model, batch, cfg, tokenizer.mask_token_id)
        loss = terms["denoise"]
        if "reconstruct" in terms:
            loss = loss + cfg.reconstruct_weight * terms["reconstruct"]
        if "copy_attention" in terms:
            loss = loss + cfg.copy_attention_weight * terms["copy_attention"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        step += 1
        bar.update()
        for k in ("denoise", "reconstruct", "copy_attention"):
            if k in terms:
                sums[k] = sums.get(k, 0.0) + float(terms[k].detach())
        if step % cfg.log_every_steps == 0 or step == cfg.max_steps:
            n = (step - 1) % cfg.log_every_steps + 1
            record = {"step": step, "cap": cap, "lr": _lr_at(step - 1, cfg)}
            record.update({k: round(v / n, 4) for k, v in sums.items()})
            record["seconds"] = round(time.perf_counter() - t_train, 1)
            sums = {}
            with log_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=record.get("denoise"), cap=cap)
        if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
            _save_last(model, optimizer, step, work)
    bar.close()
    train_seconds = time.perf_counter() - t_train

    # --- report and the folder
    t_eval = time.perf_counter()
    metrics = evaluate(model, tokenizer, corpus.held_out, cfg)
    metrics.update(
        {
            "corpus": {**corpus.stats, "train_tokens": n_tokens},
            "steps": cfg.max_steps,
            "steps_this_run": cfg.max_steps - steps_at_start,
            "seconds": {
                "text": round(t_text, 1),
                "train": round(train_seconds, 1),
                "eval": round(time.perf_counter() - t_eval, 1),
            },
            "parameters": sum(p.numel() for p in model.parameters()),
            "bar_exact_copy_lines": 0.9,
        }
    )
    final = work / "final"
    if final.exists():
        shutil.rmtree(final)
    model.save_pretrained(str(final))
    tokenizer.save_pretrained(str(final))
    atomic_write_json(final / PRETRAIN_CONFIG_NAME, cfg.to_dict())
    if log_path.is_file():
        shutil.copy(log_path, final / "log.jsonl")
    atomic_write_json(final / METRICS_NAME, metrics)  # written last: marks a finished model
    if out.exists():
        shutil.rmtree(out)
    final.replace(out)
    shutil.rmtree(work)
    return out


def _save_last(model: Any, optimizer: Any, step: int, work: Path) -> None:
    """`work/last`, written beside and renamed in, so a kill leaves a whole checkpoint."""
    from safetensors.torch import save_model

    tmp = work / ".last.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    atomic_write_json(tmp / "state.json", {"step": step})
    last = work / "last"
    if last.exists():
        shutil.rmtree(last)
    tmp.replace(last)


def format_metrics(metrics: dict[str, Any]) -> str:
    lines = []
    for key, value in metrics.items():
        if key.startswith("copy_"):
            lines.append(f"exact copy, {key[5:]:>5}: {value['exact']:.1%} of {value['n']}")
    acc = metrics.get("masked_span_accuracy", {})
    if acc:
        lines.append(
            f"masked-span token accuracy: {acc['accuracy']:.1%} of {acc['n_tokens']} tokens"
        )
    return "\n".join(lines)


__all__ = [
    "PretrainConfig",
    "copy_attention_loss",
    "evaluate",
    "format_metrics",
    "is_finished",
    "pretrain_text",
]
