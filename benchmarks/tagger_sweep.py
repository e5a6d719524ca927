"""One demo-tagger setting, measured the way docs/training.md "The demo tagger" reports it.

The excerpts are decoded once (into WORK/waves.npy) and shared by every setting; the run is the
demo's `pretrain_tagger` recipe (batch 16, dropout 0, token loss 1, seed 0) with the music
encoder preset overridden by ENCODER (JSON: front end and sizes) and the tagger by TAGGER (JSON:
TaggerConfig fields). One JSON line per run is appended to WORK/results.jsonl: the test split's
mean-token probe (what the captioner reads) per slot, its mean ROC-AUC, the tagging head's, and
the CPU seconds of the process (compare settings by CPU time on a shared machine).

    PYTHONPATH=src .venv/bin/python benchmarks/tagger_sweep.py --data runs/demo/bench \\
        --work /tmp/sweep --name G --threads 1 \\
        --encoder '{"n_fft": 2048, "n_mels": 64, "f_min": 60, "f_max": 4000, "hop_length": 512}' \\
        --tagger '{"lr": 2e-3, "schedule": "cosine", "crop_seconds": 6.0, "epochs": 40}'
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch


def decode(data: Path, work: Path) -> tuple[np.ndarray, list[str]]:
    """Every song's 15 s excerpt (float32, 16 kHz), decoded once by 2 processes."""
    from multiprocessing import Pool

    from recap.bench import load_truth

    waves, ids_path = work / "waves.npy", work / "wave_ids.json"
    if not waves.is_file():
        ids = sorted(load_truth(data))
        with Pool(2) as pool:
            arrays = pool.starmap(_excerpt, [(str(data), s) for s in ids], chunksize=8)
        np.save(waves, np.stack(arrays))
        ids_path.write_text(json.dumps(ids))
    return np.load(waves, mmap_mode="r"), json.loads(ids_path.read_text())


def _excerpt(data: str, song_id: str) -> np.ndarray:
    from recap.data.audio import AudioConfig, load_excerpt
    from recap.data.songs import audio_path

    return load_excerpt(audio_path(Path(data), song_id), AudioConfig()).waveform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a built benchmark (songs.jsonl, audios/)")
    parser.add_argument("--work", required=True, help="decoded excerpts, runs, results.jsonl")
    parser.add_argument("--name", required=True)
    parser.add_argument("--base", default="mini", help="preset the overrides start from")
    parser.add_argument("--encoder", default="{}", help="MusicEncoderConfig overrides (JSON)")
    parser.add_argument("--tagger", default="{}", help="TaggerConfig overrides (JSON)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import recap.data.cache
    from recap.models import music_encoder
    from recap.training import tagger

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    waves, ids = decode(Path(args.data), work)
    music_encoder.PRESETS["sweep"] = {
        **music_encoder.PRESETS[args.base], **json.loads(args.encoder)
    }  # fmt: skip

    class Store(dict):
        root = work

    def from_memory(data, model, kind, song_ids, **_):  # stands in for recap.data.cache.precompute
        store = Store()
        with torch.inference_mode():
            for i in range(0, len(ids), 32):
                chunk = np.array(waves[i : i + 32])
                out = chunk if kind == "waveform" else model.log_mel(torch.from_numpy(chunk))
                for sid, array in zip(ids[i : i + 32], np.asarray(out)):
                    store[sid] = array.astype(np.float16)
        return store, []

    recap.data.cache.precompute = from_memory
    overrides = json.loads(args.tagger)
    cfg = {
        "data": args.data, "out": str(work / "runs" / args.name), "preset": "sweep",
        "epochs": 30, "batch_size": 16, "lr": 1e-3, "crop_seconds": 2.0, "dropout": 0.0,
        "token_loss_weight": 1.0, "seed": 0, "progress": False, "overwrite": True, **overrides,
    }  # fmt: skip
    load = os.getloadavg()[0]
    before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    metrics = tagger.train_tagger(tagger.TaggerConfig(**cfg))
    after = resource.getrusage(resource.RUSAGE_SELF)
    probe = metrics["token_probe"]
    saved = json.loads((Path(cfg["out"]) / tagger.METRICS_NAME).read_text())
    result = {
        "name": args.name,
        "enc": music_encoder.PRESETS["sweep"],
        "tagger": overrides,
        "threads": args.threads,
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
        "load_start": round(load, 2),
        "load_end": round(os.getloadavg()[0], 2),
        "probe": {k: round(v["accuracy"], 3) for k, v in probe["per_slot"].items()},
        "probe_auc": round(probe["mean_roc_auc"], 3),
        "head": {k: round(v["accuracy"], 3) for k, v in metrics["per_slot"].items()},
        "head_auc": round(metrics["mean_roc_auc"], 3),
        "best_epoch": saved["best_epoch"],
    }
    print(json.dumps(result))
    with open(work / "results.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
