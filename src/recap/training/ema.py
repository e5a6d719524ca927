"""An exponential moving average of the trained weights (Polyak averaging), for validation and
the saved model.

The small captioners train for ~1,000 steps at a fixed learning rate, and their seeds differ a
lot in what the captions state (a quoted first line right for 52 % of the songs in one seed,
86 % in another, docs/results.md run O): the last weights are one noisy point of the trajectory.
The average of the recent steps is a common remedy (e.g. Polyak & Juditsky 1992; the EMA of
image models). Off (decay 0) by default and in the paper's recipe; the demo trains with 0.99
(docs/training.md "An average of the weights").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from recap.utils import RecapError

EMA_NAME = "ema.safetensors"


class WeightAverage:
    """`ema = decay * ema + (1 - decay) * weights` after every optimizer step, for the trainable
    parameters of `model` (frozen ones never change, so their average is themselves). The
    parameters are looked up once: the training step only runs the update."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise RecapError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.shadow = {name: p.detach().clone() for name, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        current = [p.detach() for p in self.params.values()]
        torch._foreach_lerp_(list(self.shadow.values()), current, 1.0 - self.decay)

    @contextmanager
    @torch.no_grad()
    def applied(self) -> Iterator[None]:
        """Inside the block the model holds the averaged weights; its own are put back after."""
        kept = {name: p.detach().clone() for name, p in self.params.items()}
        for name, value in self.shadow.items():
            self.params[name].copy_(value)
        try:
            yield
        finally:
            for name, value in kept.items():
                self.params[name].copy_(value)

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        # Tied weights share storage in the model, not here: every tensor is its own clone.
        save_file({k: v.contiguous() for k, v in self.shadow.items()}, str(folder / EMA_NAME))

    def load(self, folder: Path) -> None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = folder / EMA_NAME
        if not path.is_file():
            raise RecapError(f"{folder} has no {EMA_NAME}: it was not trained with ema_decay")
        try:
            saved = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise RecapError(f"cannot read {path}: {exc}") from exc
        if set(saved) != set(self.shadow):
            raise RecapError(f"{path} averages other parameters than this model trains")
        for name, value in saved.items():
            if value.shape != self.shadow[name].shape:
                raise RecapError(f"{path}: {name} has shape {tuple(value.shape)}")
            self.shadow[name].copy_(value)
