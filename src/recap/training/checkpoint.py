"""Where a training run stands and how it is saved: the state, every RNG's state, and folders
swapped in so that a kill at any moment leaves one whole copy."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recap.utils import RecapError, atomic_write_json


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


def rng_state() -> dict[str, Any]:
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


def set_rng_state(state: Mapping[str, Any]) -> None:
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


def load_state_file(path: Path, what: str, map_location: Any = None) -> Any:
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


def swap_dir(tmp: Path, final: Path) -> None:
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


def existing_dir(final: Path) -> Path | None:
    """`final`, or its `.old` copy when a crash hit between the two renames of `_swap_dir`."""
    if final.is_dir():
        return final
    old = final.with_name(final.name + ".old")
    return old if old.is_dir() else None


def save_checkpoint(
    last: Path,
    acc: Any,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    state: TrainState,
    ema: Any = None,
) -> None:
    """The resumable checkpoint RUN/last (`last`): weights, optimizer, scheduler, state, each
    process's RNG states and the weight average (`recap.training.ema`, when trained with one),
    written beside and swapped in, so that a kill at any moment leaves a whole one. `acc`: the
    run's Accelerator; every process calls this."""
    from safetensors.torch import save_model

    tmp = last.with_name(".last.tmp")
    if acc.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    # Every rank keeps its own RNG stream (CUDA generators differ per device).
    torch.save(rng_state(), tmp / f"rng_state_{acc.process_index}.pt")
    if acc.is_main_process:
        save_model(acc.unwrap_model(model), str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if ema is not None:
            ema.save(tmp)
        atomic_write_json(tmp / "state.json", state.to_dict())
    acc.wait_for_everyone()
    if acc.is_main_process:
        swap_dir(tmp, last)
    acc.wait_for_everyone()


def load_checkpoint(
    last: Path, acc: Any, model: Any, optimizer: Any, scheduler: Any, ema: Any = None
) -> TrainState:
    """Restore weights, optimizer, scheduler, this process's RNG states and the weight average
    (`ema`, when given) from `last` (RUN/last, or its .old copy) and return the state;
    RecapError on anything unusable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    found = existing_dir(last)
    if found is None:
        raise RecapError(f"no checkpoint to resume in {last.parent}")
    last = found
    weights = last / "model.safetensors"
    if not weights.is_file():
        raise RecapError(f"{last} is incomplete: model.safetensors is missing")
    try:
        load_model(acc.unwrap_model(model), str(weights), device=str(acc.device))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise RecapError(f"cannot read the checkpoint {weights}: {exc}") from exc
    if ema is not None:
        ema.load(last)
    try:
        optimizer.load_state_dict(
            load_state_file(last / "optimizer.pt", "optimizer state", acc.device)
        )
        if scheduler is not None:
            scheduler.load_state_dict(load_state_file(last / "scheduler.pt", "scheduler state"))
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise RecapError(f"the optimizer state in {last} does not fit this run: {exc}") from exc
    rng = last / f"rng_state_{acc.process_index}.pt"
    written = len(list(last.glob("rng_state_*.pt")))
    if written != acc.num_processes and (written or acc.num_processes > 1):
        raise RecapError(
            f"{last} holds RNG states of {written} process(es) but {acc.num_processes} now "
            "run; resume with the same number of processes"
        )
    saved_rng = load_state_file(rng, "RNG state")
    try:
        set_rng_state(saved_rng)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise RecapError(f"{rng} is not a valid RNG state: {exc}") from exc
    state_path = last / "state.json"
    try:
        state = TrainState.from_dict(json.loads(state_path.read_text(encoding="utf-8")))
    except FileNotFoundError as exc:
        raise RecapError(f"{last} is incomplete: state.json is missing") from exc
    except (OSError, ValueError, TypeError, RecursionError) as exc:
        raise RecapError(f"cannot read {state_path}: {exc}") from exc
    return state
