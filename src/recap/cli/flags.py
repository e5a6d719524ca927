"""Flags shared by commands: dataclass configs as flags, KEY=VALUE overrides, decoding.

Only the standard library is imported here, so that listing the commands stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Sequence
from typing import Any

from recap.utils import RecapError


# ---------------------------------------------------------------------------- dataclasses
def _flag_type(annotation: Any) -> tuple[type, bool]:
    """(the scalar type, whether None is allowed) of a field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


def parse_key_value(text: str) -> tuple[str, Any]:
    """'KEY=VALUE' → (KEY, VALUE as JSON, else the bare string); argparse reports a bad one."""
    key, sep, value = text.partition("=")
    key = key.strip()
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
                flag, dest=f.name, action="append", type=parse_key_value, default=None,
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


# ---------------------------------------------------------------------------- decoding
def add_decode_arguments(
    parser: Any,
    seed_aliases: Sequence[str] = (),
    seeds_help: str | None = None,
    batch_help: str = "songs decoded together",
) -> None:
    """The decoding flags of every command that generates (caption, evaluate, experiment), with
    `DecodeSettings`' defaults. `seed_aliases`: older spellings of `--sample-seeds` a command
    still accepts (`recap caption --seed`, `recap evaluate --seeds`)."""
    from recap.inference.generate import DecodeSettings

    d = DecodeSettings()
    g = parser.add_argument_group("decoding")
    g.add_argument("--beams", type=int, default=d.num_beams, help="beam width (default 4)")
    g.add_argument(
        "--sample",
        action="store_true",
        help="sample (top-p, beams, seeded) instead of deterministic beam search",
    )
    g.add_argument(
        "--top-p", type=float, default=d.top_p, help="nucleus mass when sampling (default 0.92)"
    )
    g.add_argument(
        "--sample-seeds",
        *seed_aliases,
        dest="sample_seeds",
        default=",".join(str(s) for s in d.seeds),
        help=seeds_help
        or "comma-separated sampling seeds (with --sample; default 2022,2021,2020): an "
        "evaluation decodes once per seed and averages, a caption uses the first",
    )
    g.add_argument(
        "--no-repeat-ngram",
        "--no-repeat-ngram-size",
        dest="no_repeat_ngram",
        type=int,
        default=d.no_repeat_ngram_size,
        help="never repeat an n-gram of this size (0: off; default 3)",
    )
    g.add_argument(
        "--max-new-tokens", type=int, default=None, help="caption length (default: the model's)"
    )
    g.add_argument("--batch-size", type=int, default=d.batch_size, help=f"{batch_help} (16)")
    g.add_argument(
        "--quote-lyrics",
        action="store_true",
        help="a quote in a caption continues the song's lyrics verbatim (docs/training.md)",
    )
    g.add_argument(
        "--known-words",
        action="store_true",
        help="every word of a caption is one of the training captions' or the song's lyrics'",
    )


def add_int8_argument(parser: Any) -> None:
    """`--int8` of the commands that caption on a CPU (caption, serve)."""
    parser.add_argument(
        "--int8",
        action="store_true",
        help="int8 Linear layers (CPU only): faster, captions differ a little (docs/cpu.md)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def add_bootstrap_argument(parser: Any) -> None:
    """`--bootstrap N` of the commands that score: rouge_score's intervals need N ≥ 1."""
    parser.add_argument(
        "--bootstrap", type=_positive_int, default=1000, help="bootstrap resamples (at least 1)"
    )


def decode_from_args(args: Any) -> Any:
    """The DecodeSettings of parsed `add_decode_arguments` flags (checked: RecapError)."""
    from recap.inference.generate import DecodeSettings

    try:
        seeds = tuple(int(s) for s in str(args.sample_seeds).split(",") if s.strip())
    except ValueError as exc:
        raise RecapError(
            f"sampling seeds must be comma-separated integers: {args.sample_seeds!r}"
        ) from exc
    return DecodeSettings(
        num_beams=args.beams,
        do_sample=args.sample,
        top_p=args.top_p,
        seeds=seeds,
        no_repeat_ngram_size=args.no_repeat_ngram,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        quote_lyrics=args.quote_lyrics,
        known_words=args.known_words,
    ).check()


def csv_list(text: str, cast: type = str) -> tuple:
    """'0, 1,2' → (0, 1, 2) with `cast`; RecapError naming the text when an item does not parse."""
    try:
        return tuple(cast(x.strip()) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise RecapError(f"cannot parse the list {text!r}") from exc
