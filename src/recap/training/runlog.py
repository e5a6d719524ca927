"""What a training run records: log lines (RUN/log.jsonl), TensorBoard scalars, and the
validation scores that select its best checkpoint."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


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


def append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"time": time.time(), **record}, default=str) + "\n")


class TensorBoard:
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
