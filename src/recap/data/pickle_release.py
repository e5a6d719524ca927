"""The authors' pickle release of the Song Interpretation dataset, read without running code:
only the classes those pickles need are allowed (`mymodel.LyricsCommentData`, numpy scalars)."""

from __future__ import annotations

import _compat_pickle
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from recap.data.songs import _BadRecord
from recap.utils import RecapError

# Restricted unpickling: the old pickles need `mymodel.LyricsCommentData`; anything else that a
# pickle could name (os.system, builtins.eval, ...) would run code, so it is refused.


class LyricsCommentData:
    """Stand-in for the authors' `mymodel.LyricsCommentData`: holds the pickled fields only."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) form
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("LyricsCommentData state is not a dict")
        # Python 2 pickles, read with encoding="bytes", name their attributes in bytes
        self.__dict__.update(
            {k.decode() if isinstance(k, bytes) else k: v for k, v in state.items()}
        )


def _numpy_scalar_globals() -> dict[tuple[str, str], Any]:
    # Ratings saved from pandas are numpy integers; rebuilding a scalar from (dtype, bytes) runs
    # no code, so these two are allowed, as torch's weights-only unpickler does.
    try:
        import numpy as np
        from numpy.core.multiarray import scalar  # type: ignore[attr-defined]
    except Exception:  # pragma: no cover - numpy is a dependency
        return {}
    out = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "scalar")] = scalar
    out[("numpy", "dtype")] = np.dtype
    return out


class _SafeUnpickler(pickle.Unpickler):
    _ALLOWED: dict[tuple[str, str], Any] = {
        ("mymodel", "LyricsCommentData"): LyricsCommentData,
        ("__main__", "LyricsCommentData"): LyricsCommentData,
        ("copyreg", "_reconstructor"): __import__("copyreg")._reconstructor,
        ("builtins", "object"): object,
        ("builtins", "list"): list,
        ("builtins", "dict"): dict,
        ("builtins", "tuple"): tuple,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("collections", "OrderedDict"): __import__("collections").OrderedDict,
        # protocols 0-2 write bytes objects as _codecs.encode(text, "latin1"): no side effects
        ("_codecs", "encode"): __import__("codecs").encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 pickles name modules by their old names (copy_reg, __builtin__)
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        allowed = {**self._ALLOWED, **_numpy_scalar_globals()}
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise RecapError(
            f"refused to unpickle: the file names {module}.{name}, and only "
            "mymodel.LyricsCommentData and plain containers are allowed (a pickle naming other "
            "globals can run arbitrary code)"
        )


def _object_records(obj: LyricsCommentData, where: str) -> list[tuple[str, Any]]:
    """One LyricsCommentData → row records. Fields are scalars (one song) or equal-length lists
    (a whole dataset); the older class holds `comments`, a list of (text, rating) per song."""
    d = dict(obj.__dict__)
    id_value = d.get("music4all_id")
    if isinstance(id_value, list | tuple):  # columnar: every field a list
        n = len(id_value)
        cols = {k: v for k, v in d.items() if isinstance(v, list | tuple) and len(v) == n}
        records = [
            (
                f"{where}[{i}]",
                {k: cols[k][i] for k in cols} | {k: v for k, v in d.items() if k not in cols},
            )
            for i in range(n)
        ]
        return [r for rec in records for r in _expand_comments(*rec)]
    return _expand_comments(where, d)


def _expand_comments(where: str, d: dict[str, Any]) -> list[tuple[str, Any]]:
    if "comments" not in d:
        return [(where, d)]
    base = {k: v for k, v in d.items() if k != "comments"}
    comments = d["comments"]
    if not isinstance(comments, list | tuple):
        return [(where, _BadRecord(f"comments has type {type(comments).__name__}"))]
    out: list[tuple[str, Any]] = []
    for j, item in enumerate(comments):
        if isinstance(item, list | tuple) and len(item) == 2:
            out.append((f"{where}.comments[{j}]", base | {"comment": item[0], "votes": item[1]}))
        else:
            out.append(
                (f"{where}.comments[{j}]", _BadRecord("comment is not a (text, rating) pair"))
            )
    return out


def read_pickle(path: Path) -> list[tuple[str, Any]]:
    try:
        with path.open("rb") as f:
            obj = _SafeUnpickler(f, encoding="bytes").load()
    except RecapError as err:
        raise RecapError(f"{path}: {err}") from None
    except Exception as err:  # a truncated or corrupt pickle
        raise RecapError(f"{path}: cannot unpickle ({type(err).__name__}: {err})") from err
    items: Iterable[tuple[str, Any]]
    if isinstance(obj, dict) and not any(k in obj for k in ("lyrics", "comment")):
        items = ((f"{path.name}[{k!r}]", v) for k, v in obj.items())
    elif isinstance(obj, list | tuple):
        items = ((f"{path.name}[{i}]", v) for i, v in enumerate(obj))
    else:
        items = [(path.name, obj)]
    out: list[tuple[str, Any]] = []
    for where, item in items:
        if isinstance(item, LyricsCommentData):
            out.extend(_object_records(item, where))
        elif isinstance(item, dict):
            d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in item.items()}
            out.extend(_expand_comments(where, d))
        else:
            out.append((where, _BadRecord(f"unexpected {type(item).__name__} in pickle")))
    return out
