"""Small shared pieces: the expected-error type, atomic writes and the skipped-item report."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class RecapError(Exception):
    """An expected failure (bad input, missing file, wrong version) reported without a traceback."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    Readers never see a half-written file, and a killed job leaves the old file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_unique(
        lambda p: os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)),
        path.parent,
        f".{path.name}.",
        suffix or ".tmp",
    )
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_save_safetensors(state: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write the tensors `state` to the safetensors file `path` atomically (`atomic_path`),
    the same weights always to the same bytes."""
    from safetensors.torch import save_file

    with atomic_path(path, suffix=".safetensors") as tmp:
        # One metadata key: safetensors serialises the metadata from a Rust HashMap, whose order
        # changes from process to process, so with two keys two saves of the same weights
        # differed in their bytes (and sha256).
        save_file(dict(state), str(tmp), metadata={"format": "pt"})


def _create_unique(create: Any, parent: Path, prefix: str, suffix: str = "") -> Path:
    """Create a new entry `parent/prefix<random>suffix` with `create(path)`, retrying on a name
    clash. Unlike tempfile's mkstemp/mkdtemp (0600 files, 0700 folders) the entry gets the
    usual permissions under the user's umask: outputs are meant to be shared like any file."""
    for _ in range(100):
        candidate = parent / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            create(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"no free temporary name in {parent}")  # pragma: no cover


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A new, empty folder in `parent` with normal (umask) permissions, for staging output
    that is renamed into place when complete."""
    return _create_unique(lambda p: os.mkdir(p, 0o777), Path(parent), prefix)


def is_file(path: str | os.PathLike) -> bool:
    """`Path.is_file`, but False (not OSError) for a name the file system cannot hold, such
    as one over 255 bytes built from a long song id: no such file can exist."""
    try:
        return Path(path).is_file()
    except OSError:
        return False


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """The JSON in `path`; a missing, unreadable or malformed file is a RecapError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RecapError(f"{what} {path} does not exist") from exc
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RecapError(f"cannot read {what} {path} (corrupt?): {exc}") from exc


@dataclass
class SkipReport:
    """Items a job could not use, each with the reason; written as JSON beside the output.

    Long jobs record a bad item here and carry on, so nothing is lost silently.
    """

    job: str
    items: list[dict[str, str]] = field(default_factory=list)

    def add(self, item: object, reason: str) -> None:
        self.items.append({"item": str(item), "reason": reason})

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:  # an empty report is still a report, not "missing"
        return True

    def write(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        atomic_write_json(path, {"job": self.job, "skipped": len(self.items), "items": self.items})
        return path

    def summary(self) -> str:
        if not self.items:
            return f"{self.job}: nothing skipped"
        return f"{self.job}: skipped {len(self.items)} item(s); see the report for reasons"


def hash_file_into(digest: Any, path: str | os.PathLike) -> Any:
    """Feed a file's bytes to a hashlib `digest` in 1 MiB blocks (weights files are large);
    returns the digest."""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest


def known_fields(cls: type, data: Mapping[str, Any], what: str | None = None) -> dict[str, Any]:
    """`data` as keyword arguments for the dataclass `cls`; unknown keys are an error (a file
    written by another version, or a typo), not silently dropped."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise RecapError(f"unknown {what or cls.__name__} field(s): {', '.join(unknown)}")
    return dict(data)


def differing_settings(
    saved: Mapping[str, Any],
    now: Mapping[str, Any],
    defaults: Mapping[str, Any],
    ignore: Collection[str] = (),
) -> list[str]:
    """The settings, `ignore` left out, whose value a finished folder was written with (`saved`)
    differs from `now`. A setting the folder does not record (added to the code since) counts at
    its value in `defaults`; one it records that `now` lacks (removed since) differs."""
    saved = {**defaults, **saved}
    return sorted(
        k for k in saved.keys() | now.keys() if k not in ignore and saved.get(k) != now.get(k)
    )


def flag_field(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field whose help text (and any argparse keywords, e.g. `flag=`, `choices=`)
    becomes its command-line flag's (`recap.cli.flags.add_dataclass_arguments`)."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})
