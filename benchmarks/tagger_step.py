"""What the demo tagger's step and per-epoch validation cost, before and after the speed-ups of
2026-12-06, side by side in one run.

    .venv/bin/python benchmarks/tagger_step.py --threads 2 --repeats 3

A training step of the demo's `demo-chroma` encoder (batch 16, 6 s crops: the demo's recipe,
the token probe's loss included) on random log-mels, in two arms: the default memory layout with
torch's single-tensor AdamW (before), and channels_last with foreach AdamW (`recap tagger train`
now). Then the validation's ROC-AUC of every tag on a val split's worth of songs: sklearn's
`roc_auc_score` per tag (before) against `recap.training.tagger.roc_auc` (now). Arms alternate
over `--repeats` rounds after an untimed warm-up; medians are reported, with the two arms'
largest difference in AUC (they compute the same statistic).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per arm and round")
    ap.add_argument("--val-songs", type=int, default=168, help="the demo's val renderings")
    args = ap.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch is imported
    import numpy as np
    import torch
    import torch.nn.functional as F
    from sklearn.metrics import roc_auc_score

    from recap.models.music_encoder import MusicEncoder, MusicEncoderConfig
    from recap.training.tagger import roc_auc

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = MusicEncoderConfig.preset("demo-chroma")
    frames = int(round(6.0 * cfg.sample_rate / cfg.hop_length))
    n_tags = 28
    x = torch.randn(16, cfg.log_mel_rows, frames) * 10 - 40  # (B, rows, frames) dB-like
    y = (torch.rand(16, n_tags) < 0.2).float()

    def arm(channels_last: bool):
        model = MusicEncoder(cfg)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        probe = torch.nn.Linear(cfg.hidden_size, n_tags)
        head = torch.nn.Linear(cfg.hidden_size, n_tags)
        params = [*model.parameters(), *probe.parameters(), *head.parameters()]
        opt = torch.optim.AdamW(params, lr=2e-3, foreach=channels_last)

        def step() -> None:
            sequence = model.embed_log_mel(x)  # (B, 1 + T', hidden)
            loss = F.binary_cross_entropy_with_logits(head(sequence[:, 0]), y)
            loss = loss + F.binary_cross_entropy_with_logits(probe(sequence[:, 1:].mean(1)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    arms = {"before (default layout, single-tensor AdamW)": arm(False),
            "now (channels_last, foreach AdamW)": arm(True)}  # fmt: skip
    for step in arms.values():  # warm-up
        for _ in range(3):
            step()
    times: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(args.repeats):
        for name in list(arms)[:: 1 if r % 2 == 0 else -1]:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                arms[name]()
            times[name].append((time.perf_counter() - t0) / args.steps)

    rng = np.random.default_rng(0)
    targets = rng.random((args.val_songs, n_tags)) < 0.15
    targets[0], targets[1] = True, False  # every tag has both classes
    probs = rng.random((args.val_songs, n_tags)).round(3)  # some ties

    def auc_sklearn() -> list[float]:
        return [float(roc_auc_score(targets[:, j], probs[:, j])) for j in range(n_tags)]

    def auc_ranks() -> list[float]:
        return [roc_auc(targets[:, j], probs[:, j]) for j in range(n_tags)]

    auc_times: dict[str, list[float]] = {"sklearn roc_auc_score": [], "rank ROC-AUC": []}
    for fn, name in ((auc_sklearn, "sklearn roc_auc_score"), (auc_ranks, "rank ROC-AUC")):
        fn()  # warm-up (imports)
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            auc_times[name].append(time.perf_counter() - t0)
    gap = max(abs(a - b) for a, b in zip(auc_sklearn(), auc_ranks()))

    print(f"tagger step (batch 16, 6 s crops, {args.threads} threads; median of {args.repeats}):")
    for name, ts in times.items():
        print(f"  {name}: {1000 * statistics.median(ts):.1f} ms/step")
    print(f"one validation's ROC-AUC of {n_tags} tags over {args.val_songs} songs:")
    for name, ts in auc_times.items():
        print(f"  {name}: {1000 * statistics.median(ts):.1f} ms")
    print(f"  largest difference between the two: {gap:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
