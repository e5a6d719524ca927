"""Throughput of RECAP against plain Hugging Face BART, on the same shapes, in the same run.

    python benchmarks/gpu.py                       # on the GPU machine: paper shapes, < 8 min
    python benchmarks/gpu.py --size tiny --quick   # anywhere (CPU): the same code paths, small

Three measurements (issue 7):
1. training step — RecapModel (bart-base + fusion + alignment, precomputed music embeddings
   (B, 119, 256)) vs `BartForConditionalGeneration` alone, batch 48, lyrics 512 / caption 512,
   in fp32 eager, bf16 autocast + SDPA, and bf16 + torch.compile;
2. caption generation — beam 4, 128 new tokens, batch 32 and a large batch: `RecapModel.generate`
   vs plain `BartForConditionalGeneration.generate()`;
3. music-encoder precompute — CNNSA on 15 s clips with the mel front end on the device.

Throughput is samples/s (clips/s for the encoder); MFU counts 6 × parameters × tokens (encoder
layers × lyrics tokens; decoder layers + output head × caption tokens; fusion × lyrics tokens)
plus attention, against the H100's dense bf16 peak (989 TFLOP/s) — the convention of the anchors
in issue 7. On CPU, MFU is not reported. Results go to docs/gpu_benchmark.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import BartForConditionalGeneration

from recap.models.config import RecapConfig
from recap.models.model import RecapModel
from recap.models.music_encoder import MusicEncoder, MusicEncoderConfig

H100_BF16_PEAK = 989e12
DOCS = Path(__file__).resolve().parents[1] / "docs"


@dataclass
class Result:
    task: str
    impl: str
    mode: str
    batch: int
    per_s: float  # samples/s (train), captions/s (generate), clips/s (encoder)
    tokens_per_s: float | None = None
    mfu: float | None = None
    peak_mem_gib: float | None = None
    note: str = ""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _time(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Seconds per call after `warmup` calls (compilation, autotuning, allocator warm-up)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


def _autocast(device: torch.device, bf16: bool):
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


# ---------------------------------------------------------------------------- FLOPs
def train_flops_per_sample(config: RecapConfig, src_len: int, tgt_len: int) -> float:
    """6·N·tokens for the matmul weights plus attention scores/values (fwd + bwd = 3 × fwd)."""
    d, n_enc, n_dec = config.d_model, config.encoder_layers, config.decoder_layers
    ffn_e, ffn_d = config.encoder_ffn_dim, config.decoder_ffn_dim
    enc_layer = 4 * d * d + 2 * d * ffn_e  # q, k, v, o + two FFN matrices
    dec_layer = 8 * d * d + 2 * d * ffn_d  # self + cross attention + FFN
    head = d * config.vocab_size
    dense = 6 * (n_enc * enc_layer * src_len + (n_dec * dec_layer + head) * tgt_len)
    # attention: QK^T and AV are 2·L_q·L_k·d multiply-adds each → 4·L_q·L_k·d flops forward.
    attn = 3 * 4 * d * (n_enc * src_len**2 + n_dec * (tgt_len**2 + tgt_len * src_len))
    if config.use_music and config.fusion_layers:
        m, music_len = config.music_dim, 119
        fusion_dense = 6 * len(config.fusion_layers) * (2 * d * d * src_len + 2 * m * d * music_len)
        fusion_attn = 3 * 4 * d * len(config.fusion_layers) * src_len * music_len
        dense += fusion_dense
        attn += fusion_attn
    return float(dense + attn)


# ---------------------------------------------------------------------------- training
def bench_train(args: argparse.Namespace, device: torch.device) -> list[Result]:
    results = []
    config = RecapConfig.preset("recap", args.size, with_music_encoder=False)
    B, S, T = args.batch, args.src_len, args.tgt_len
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, config.vocab_size, (B, S), generator=g).to(device)
    mask = torch.ones_like(ids)
    labels = torch.randint(4, config.vocab_size, (B, T), generator=g).to(device)
    music = torch.randn(B, 119, config.music_dim, generator=g).to(device)
    song_ids = list(range(B))
    flops = train_flops_per_sample(config, S, T)
    plain_cfg = RecapConfig.preset("bart", args.size, with_music_encoder=False)
    plain_flops = train_flops_per_sample(plain_cfg, S, T)

    for mode in args.train_modes:
        bf16 = mode.startswith("bf16") and device.type == "cuda"
        attn = "eager" if mode == "fp32-eager" else "sdpa"
        for impl in ("hf-bart", "recap"):
            torch.manual_seed(0)
            if impl == "recap":
                model = RecapModel(dataclasses.replace(config, attn_implementation=attn))
                inputs = dict(music_embeds=music, song_ids=song_ids)
            else:
                model = BartForConditionalGeneration(plain_cfg.bart_config())
                model.config._attn_implementation = attn
                inputs = {}
            model = model.to(device).train()
            model_c = torch.compile(model) if mode.endswith("compile") else model
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")

            def step(model_c=model_c, opt=opt, inputs=inputs, bf16=bf16) -> None:
                with _autocast(device, bf16):
                    loss = model_c(input_ids=ids, attention_mask=mask, labels=labels, **inputs).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            _reset_peak(device)
            try:
                sec = _time(step, device, args.warmup + 3 * mode.endswith("compile"), args.iters)
            except Exception as err:  # report, don't hide: one failed mode keeps the rest
                results.append(Result("train", impl, mode, B, float("nan"), note=repr(err)[:200]))
                continue
            per_s = B / sec
            f = flops if impl == "recap" else plain_flops
            mfu = per_s * f / H100_BF16_PEAK if device.type == "cuda" else None
            results.append(
                Result("train", impl, mode, B, per_s, per_s * (S + T), mfu, _peak_gib(device))
            )
            print(results[-1])
            del model, model_c, opt
    return results


# ---------------------------------------------------------------------------- generation
def bench_generate(args: argparse.Namespace, device: torch.device) -> list[Result]:
    results = []
    config = RecapConfig.preset("recap", args.size, with_music_encoder=False)
    torch.manual_seed(0)
    ours = RecapModel(config).to(device).eval()
    plain = BartForConditionalGeneration(config.bart_config()).to(device).eval()
    plain.load_state_dict(ours.bart.state_dict())
    # Random weights stop at EOS at random: force the full length so both decode the same work.
    gen = dict(
        num_beams=args.beams,
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        no_repeat_ngram_size=3,
        do_sample=False,
    )
    for B in args.gen_batches:
        g = torch.Generator().manual_seed(B)
        ids = torch.randint(4, config.vocab_size, (B, args.src_len), generator=g).to(device)
        mask = torch.ones_like(ids)
        music = torch.randn(B, 119, config.music_dim, generator=g).to(device)

        def hf(ids=ids, mask=mask) -> object:
            return plain.generate(input_ids=ids, attention_mask=mask, **gen)

        def recap(ids=ids, mask=mask, music=music, bf16=False) -> object:
            with _autocast(device, bf16):
                return ours.generate(ids, mask, music_embeds=music, **gen)

        runs: list[tuple[str, str, Callable[[], object]]] = [
            ("hf-bart", "fp32", hf),
            ("recap", "fp32", recap),
        ]
        if device.type == "cuda":
            runs.append(("recap", "bf16-autocast", functools.partial(recap, bf16=True)))
        for impl, mode, fn in runs:
            _reset_peak(device)
            try:
                with torch.no_grad():
                    sec = _time(fn, device, 1, args.gen_iters)
            except Exception as err:
                results.append(
                    Result("generate", impl, mode, B, float("nan"), note=repr(err)[:200])
                )
                continue
            results.append(
                Result(
                    "generate",
                    impl,
                    mode,
                    B,
                    B / sec,
                    B * args.new_tokens / sec,
                    None,
                    _peak_gib(device),
                )
            )
            print(results[-1])
    return results


# ---------------------------------------------------------------------------- encoder
def bench_encoder(args: argparse.Namespace, device: torch.device) -> list[Result]:
    results = []
    cfg = MusicEncoderConfig.preset("reference" if args.size == "paper" else "tiny")
    torch.manual_seed(0)
    encoder = MusicEncoder(cfg).to(device).eval()
    B = args.encoder_batch
    wave = torch.randn(B, 240_000, device=device) * 0.1
    for mode in ("fp32", "bf16-autocast"):
        if mode.startswith("bf16") and device.type != "cuda":
            continue

        def run(bf16: bool = mode.startswith("bf16")) -> object:
            with torch.no_grad(), _autocast(device, bf16):
                return encoder(wave)

        _reset_peak(device)
        sec = _time(run, device, 1, args.iters)
        results.append(Result("encoder", "recap", mode, B, B / sec, None, None, _peak_gib(device)))
        print(results[-1])
    return results


# ---------------------------------------------------------------------------- report
def markdown(results: list[Result], meta: dict) -> str:
    lines = [
        "# GPU benchmark: RECAP vs plain Hugging Face BART",
        "",
        f"Command: `{meta['command']}`  ",
        f"Device: {meta['device']}; torch {meta['torch']}; transformers {meta['transformers']}; "
        f"size `{meta['size']}`; lyrics {meta['src_len']} / caption {meta['tgt_len']} tokens.",
        "",
        "| task | implementation | mode | batch | per s | tokens/s | MFU | peak GiB | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        mfu = f"{100 * r.mfu:.1f}%" if r.mfu is not None else "—"
        tok = f"{r.tokens_per_s:,.0f}" if r.tokens_per_s else "—"
        mem = f"{r.peak_mem_gib:.1f}" if r.peak_mem_gib is not None else "—"
        lines.append(
            f"| {r.task} | {r.impl} | {r.mode} | {r.batch} | {r.per_s:,.2f} | {tok} | {mfu} | "
            f"{mem} | {r.note} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", default="paper", choices=["paper", "small", "tiny"])
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--src-len", type=int, default=512)
    p.add_argument("--tgt-len", type=int, default=512)
    p.add_argument("--train-modes", default="fp32-eager,bf16-sdpa,bf16-compile")
    p.add_argument("--gen-batches", default="32,256")
    p.add_argument("--beams", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--encoder-batch", type=int, default=256)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--gen-iters", type=int, default=2)
    p.add_argument("--only", default="train,generate,encoder")
    p.add_argument("--quick", action="store_true", help="CPU-sized shapes: batch 4, 64/32 tokens")
    p.add_argument("--out", type=Path, default=DOCS / "gpu_benchmark")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.src_len, args.tgt_len = 4, 64, 32
        args.gen_batches, args.new_tokens, args.encoder_batch = "2,8", 16, 4
        args.warmup, args.iters, args.gen_iters = 1, 2, 1
    args.train_modes = args.train_modes.split(",")
    args.gen_batches = [int(b) for b in args.gen_batches.split(",")]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    import transformers

    meta = {
        "command": "python benchmarks/gpu.py " + " ".join(argv if argv is not None else []),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "size": args.size,
        "src_len": args.src_len,
        "tgt_len": args.tgt_len,
    }
    results: list[Result] = []
    only = set(args.only.split(","))
    if "train" in only:
        results += bench_train(args, device)
    if "generate" in only:
        results += bench_generate(args, device)
    if "encoder" in only:
        results += bench_encoder(args, device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=2) + "\n"
    )
    args.out.with_suffix(".md").write_text(markdown(results, meta))
    print(markdown(results, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
