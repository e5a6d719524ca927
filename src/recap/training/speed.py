"""A fixed training workload that says how fast this machine trains right now.

The same code trains at different speeds on different days of a shared machine (identical
captioner steps at 42-45 samples/s in run W, 66-73 in run Y: docs/results.md), so a demo's wall
time alone cannot say whether a change made it faster. `recap demo` and `recap demo-alignment`
time this workload before their first stage and after their last and record both: two timings
compare only when their reference speeds agree. It is one training step of the `small`
BART-fusion on random tokens and music (the step `benchmarks/cpu_train_step.py` profiles), a few
seconds on two cores.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def captioner_step(
    method: str = "bart-fusion",
    overrides: dict[str, Any] | None = None,
    batch: int = 16,
    source: int = 128,
    target: int = 80,
    captions_per_song: int = 1,
) -> Callable[[], None]:
    """One training step (forward, backward, optimizer update) of a fresh `small` captioner on
    fixed random inputs, as a function to call; the model is built with seed 0 and the optimizer
    as `recap train` builds it for that size (Adafactor, lr 3e-3). `captions_per_song` K: the
    `batch` captions come from batch / K songs, each encoded once (`--captions-per-song`)."""
    from recap.models.config import RecapConfig
    from recap.models.model import RecapModel
    from recap.training.config import TrainConfig
    from recap.training.optim import build_optimizer

    with torch.random.fork_rng():  # the caller's random stream stays as it was
        torch.manual_seed(0)
        config = RecapConfig.preset(method, "small", music="mini", **(overrides or {}))
        model = RecapModel(config).train()
        n_songs = -(-batch // captions_per_song)
        ids = torch.randint(5, config.vocab_size, (n_songs, source))  # (U, S)
        labels = torch.randint(5, config.vocab_size, (batch, target))  # (B, T)
        music = torch.randn(n_songs, 119, config.music_dim) if config.use_music else None
    params = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(TrainConfig(preset=method, size="small").resolved(), params)
    songs = [str(i) for i in range(n_songs)]
    shared = None
    if captions_per_song > 1:  # (B,): caption b reads song b // K
        shared = torch.arange(batch) // captions_per_song

    def step() -> None:
        model(
            ids, labels=labels, music_embeds=music, song_ids=songs, source_index=shared
        ).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def seconds_per_step(step: Callable[[], None], steps: int = 10, warmup: int = 3) -> float:
    """Mean wall seconds of one of `steps` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def reference_speed(steps: int = 10, batch: int = 16) -> float:
    """Samples per second of the reference workload on this process's torch threads."""
    return batch / seconds_per_step(captioner_step(batch=batch), steps, warmup=min(3, steps))


def _cpuinfo(cpuinfo: str | Path) -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip() and fields:
            break  # the first processor's block is enough
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) ..."), or the platform's word for
    it where /proc/cpuinfo does not say."""
    name = _cpuinfo(cpuinfo).get("model name")
    return name or platform.processor() or platform.machine() or "unknown"


def cpu_generation(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's family and model, e.g. "family 25 model 1" ("" where /proc/cpuinfo does not
    say): a virtual machine's model name can be just "AMD EPYC" for two generations whose
    kernels differ (docs/results.md, run AH)."""
    fields = _cpuinfo(cpuinfo)
    family, model = fields.get("cpu family"), fields.get("model")
    return f"family {family} model {model}" if family and model else ""


def machine() -> dict[str, Any]:
    """What a run ran on, recorded beside its figures: the same commit and seed printed other
    figures on another CPU model (docs/results.md, runs Z and AH). `kernels` is the instruction
    set torch dispatches its CPU kernels to (AVX512, AVX2, ...), which changes the arithmetic."""
    return {
        "cpu": cpu_model(),
        "generation": cpu_generation(),
        "kernels": torch.backends.cpu.get_cpu_capability(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
    }
