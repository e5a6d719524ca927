"""CPU time of one training step of the `small` captioner, with and without dropout.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/cpu_train_step.py --profile

One Adafactor step (forward, backward, update) of BART-fusion at `small` size on random tokens
and music tokens (batch 16, 128 lyrics tokens, 80 caption tokens, 119 music tokens of the `mini`
tagger, width 32), timed over 10 steps after 3 warm-up steps, for the `small` preset (no dropout)
and the same model with bart-base's dropout 0.1 (the baseline), in the same run. `--profile`
prints the operators that dominate the baseline step.
"""

from __future__ import annotations

import argparse

import torch


def _step_seconds(overrides: dict, args: argparse.Namespace, profile: bool = False) -> float:
    from recap.training.speed import captioner_step, seconds_per_step

    step = captioner_step(args.method, overrides, args.batch, args.source, args.target)
    seconds = seconds_per_step(step, args.steps)
    if profile:
        from torch.profiler import profile as torch_profile

        with torch_profile() as prof:
            for _ in range(3):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
    return seconds


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="bart-fusion")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--source", type=int, default=128)
    ap.add_argument("--target", type=int, default=80)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    with_dropout = {"dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.1}
    base = _step_seconds(with_dropout, args, profile=args.profile)
    ours = _step_seconds({}, args)
    print(f"threads {torch.get_num_threads()}, batch {args.batch}, lyrics {args.source} tokens")
    print("| small captioner step | s per step | samples/s |\n|---|---|---|")
    for name, s in (("dropout 0.1 (baseline)", base), ("no dropout (the preset)", ours)):
        print(f"| {name} | {s:.3f} | {args.batch / s:.1f} |")


if __name__ == "__main__":
    main()
