"""Cost of the two music encoders on 15 s excerpts: CNNSA (the reference sizes) beside CLAP's
audio tower at laion/larger_clap_music's sizes (HTSAT, depths 2-2-12-2, width 128 → 1024).

Both are randomly initialised (the CLAP weights are not reachable offline): speed and shapes do
not depend on the weights. Reports parameters, the token sequence (M, D), and seconds per clip
for a batch, median of `--repeats` runs after one warm-up; the CLAP time includes its numpy
feature extractor, which runs on the CPU whatever the device.

    OMP_NUM_THREADS=2 python benchmarks/music_encoders.py --batch 4 --repeats 3 [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def clap_encoder():
    from transformers import ClapAudioConfig, ClapAudioModel, ClapFeatureExtractor

    from recap.models.hf_audio import HFAudioEncoder, HFAudioEncoderConfig

    config = ClapAudioConfig(depths=[2, 2, 12, 2], hidden_size=1024, patch_embeds_hidden_size=128)
    model = ClapAudioModel(config).eval()
    extractor = ClapFeatureExtractor(truncation="rand_trunc")
    settings = HFAudioEncoderConfig(
        source="larger_clap_music sizes, random weights",
        hidden_size=int(model.audio_encoder.num_features),
        sample_rate=int(extractor.sampling_rate),
        model_config=config.to_dict(),
        feature_extractor=extractor.to_dict(),
    )
    return HFAudioEncoder(settings, model, extractor)


def cnnsa_encoder():
    from recap.models.music_encoder import MusicEncoder, MusicEncoderConfig

    return MusicEncoder(MusicEncoderConfig.preset("reference")).eval()


def measure(name: str, encoder, batch: int, repeats: int, device: str) -> dict:
    encoder = encoder.to(device)
    wave = torch.randn(batch, int(15 * encoder.sample_rate)) * 0.1  # (B, T) 15 s excerpts
    times = []
    with torch.inference_mode():
        tokens = encoder(wave.to(device))  # warm-up
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            encoder(wave.to(device))
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return {
        "encoder": name,
        "params_M": round(sum(p.numel() for p in encoder.parameters()) / 1e6, 2),
        "sample_rate": encoder.sample_rate,
        "tokens": list(tokens.shape[1:]),
        "s_per_clip": round(statistics.median(times) / batch, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    for name, make in (("cnnsa reference", cnnsa_encoder), ("clap larger", clap_encoder)):
        print(json.dumps(measure(name, make(), args.batch, args.repeats, args.device)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
