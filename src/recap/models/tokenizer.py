"""Tokenizers: BART's own for a pretrained BART, or a byte-level BPE trained locally.

No PyPI package ships BART's vocabulary, so on machines without the hub the captioner trains its
own byte-level BPE with `tokenizers` (a 2k vocabulary on a few thousand strings takes about a
second). It uses BART's special-token layout, so the BART config defaults (pad 1, decoder start
</s> = 2, forced BOS <s> = 0, forced EOS </s> = 2) hold for both:

    <s> = 0, <pad> = 1, </s> = 2, <unk> = 3, <mask> = 4;  encode("x") = <s> x </s>

transformers 5 pitfalls (SPEC §4): vocabulary files go in as `vocab=`/`merges=` (the v4
`vocab_file=` keywords are silently ignored); targets are tokenised with `text_target=`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from recap.utils import RecapError

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # ids 0..4, as in BART


def _special_kwargs() -> dict[str, str]:
    return {
        "bos_token": "<s>",
        "pad_token": "<pad>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
        "cls_token": "<s>",
        "sep_token": "</s>",
    }


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 2048,
    out_dir: str | os.PathLike | None = None,
    min_frequency: int = 2,
) -> Any:  # -> transformers.PreTrainedTokenizerFast
    """Train a byte-level BPE on `texts` with BART's special tokens and post-processing.

    The vocabulary includes all 256 byte symbols, so any text encodes without <unk>; the result
    may be smaller than `vocab_size` when the texts hold fewer merges. Saved to `out_dir` (as
    `tokenizer.json` + `tokenizer_config.json`) when given.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    minimum = 256 + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise RecapError(f"a byte-level BPE vocabulary needs at least {minimum} entries")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((t for t in texts if t), trainer=trainer)
    ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
    if ids != list(range(len(SPECIAL_TOKENS))):  # pragma: no cover - guaranteed by the trainer
        raise RecapError(f"special tokens got ids {ids}, expected 0..4")
    # BART wraps one sequence as <s> X </s> and a pair as <s> A </s></s> B </s> (RoBERTa style).
    tokenizer.post_processor = processors.RobertaProcessing(
        ("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **_special_kwargs())
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def has_tokenizer_files(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds a tokenizer (`tokenizer.json`, or BART's vocab + merges)."""
    directory = Path(directory)
    return (directory / "tokenizer.json").is_file() or (
        (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file()
    )


def load_tokenizer(name_or_path: str | os.PathLike) -> Any:
    """A saved tokenizer folder (ours or a BART checkpoint's), or a hub name such as
    "facebook/bart-base" (needs the hub or its cache)."""
    from transformers import AutoTokenizer, BartTokenizer

    path = Path(name_or_path)
    if path.is_dir():
        refuse_remote_code(path)
        if (path / "tokenizer.json").is_file():
            return _auto(AutoTokenizer, path)
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            # Bare GPT-2-style vocabulary files: build BART's tokenizer from them explicitly
            # (keyword names matter in transformers 5, see the module docstring).
            return BartTokenizer(
                vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"), **_special_kwargs()
            )
        raise RecapError(f"{path} holds no tokenizer (tokenizer.json or vocab.json + merges.txt)")
    if path.exists():
        raise RecapError(f"{path} is a file; a tokenizer is loaded from a folder")
    return _auto(AutoTokenizer, name_or_path)


def refuse_remote_code(folder: Path) -> None:
    """A tokenizer config with `auto_map` asks transformers to import Python files shipped with
    the model; recap never runs code from a model folder, so such a folder is refused outright
    (transformers would otherwise ask "[y/N]" and run the code on "y")."""
    import json

    for name in ("tokenizer_config.json", "config.json"):
        file = folder / name
        if not file.is_file():
            continue
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise RecapError(f"cannot read {file}: {exc}") from exc
        if isinstance(config, dict) and config.get("auto_map"):
            raise RecapError(
                f"{file} names custom tokenizer code (auto_map); recap never runs code from a "
                "model folder — remove auto_map to use the standard tokenizer"
            )


def _auto(auto: Any, source: str | os.PathLike) -> Any:
    try:
        # trust_remote_code=False: code shipped with a model is refused, never prompted for.
        return auto.from_pretrained(str(source), trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RecapError(f"cannot load a tokenizer from {source!s}: {exc}") from exc
