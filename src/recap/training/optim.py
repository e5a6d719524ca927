"""A training run's optimizer, built from its resolved `TrainConfig`: Adafactor as the public
codebases build it, or AdamW."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from recap.training.config import TrainConfig
from recap.utils import RecapError


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
