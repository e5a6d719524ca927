"""Fixture material shared by the captioning, retrieval and server tests: a catalogue of tone
"songs" with lyrics, and a tiny RECAP model trained a few steps on it (built once per session by
the `model_dir` fixture in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 22_050
# (song id, tone frequencies in Hz, lyrics): distinct audio and distinct words per song.
SONGS = [
    ("river", (220.0, 330.0), "the river runs down to the sea\nand carries my heart away"),
    ("winter", (440.0,), "cold winter night\nthe snow is falling on the town"),
    ("dance", (880.0, 1320.0), "dance with me until the morning light\nwe never sleep"),
    ("storm", (150.0, 600.0), "thunder and rain\nthe storm is coming home tonight"),
    ("garden", (520.0, 780.0), "roses in the garden\nmy mother sings a quiet song"),
    ("road", (300.0, 1000.0), "long road ahead\ndriving west with nothing left"),
]
CAPTIONS = {sid: f"a song about the {sid}" for sid, _, _ in SONGS}


def tone(freqs: tuple[float, ...], seconds: float = 2.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = sum(np.sin(2 * np.pi * f * t) * (0.3 + 0.2 * np.sin(2 * np.pi * 2 * t)) for f in freqs)
    return (0.4 * wave / len(freqs)).astype(np.float32)


def make_catalogue(folder: Path) -> Path:
    """`folder/<id>.wav` + `folder/<id>.txt` for every song in SONGS."""
    folder.mkdir(parents=True, exist_ok=True)
    for song_id, freqs, lyrics in SONGS:
        sf.write(folder / f"{song_id}.wav", tone(freqs), RATE)
        (folder / f"{song_id}.txt").write_text(lyrics + "\n", encoding="utf-8")
    return folder


def make_tiny_model(folder: Path, steps: int = 80) -> Path:
    """A tiny RECAP model, trained a few steps on SONGS so captions are words and the aligned
    space pairs each song's audio with its lyrics (retrieval better than chance)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from threads on a busy machine
    try:
        return _train_tiny_model(folder, steps)
    finally:
        torch.set_num_threads(threads)


def _train_tiny_model(folder: Path, steps: int) -> Path:
    import torch

    from recap.data.audio import AudioConfig, excerpt_from_array
    from recap.models.config import RecapConfig
    from recap.models.model import RecapModel
    from recap.models.tokenizer import train_bpe_tokenizer

    torch.manual_seed(0)
    texts = [lyr for _, _, lyr in SONGS] + list(CAPTIONS.values())
    tokenizer = train_bpe_tokenizer(texts * 3, vocab_size=320)
    model = RecapModel(RecapConfig.preset("recap", "tiny", with_music_encoder=True))
    model.config.generation.num_beams = 1
    waves = torch.from_numpy(
        np.stack([excerpt_from_array(tone(f), RATE, AudioConfig()).waveform for _, f, _ in SONGS])
    )  # (S, 240000)
    # An untrained CNNSA maps every input to nearly the same vector; calibrating its BatchNorm
    # statistics on these songs (no gradient) spreads them apart, as pretraining would.
    for module in model.music_encoder.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration pass
    model.music_encoder.train()
    with torch.no_grad():
        model.music_encoder(waves)
    model.eval()  # no dropout: a deterministic few steps
    with torch.no_grad():
        music = model.music_encoder(waves)  # (S, 119, C), fixed: the encoder is frozen
    enc = tokenizer(
        [lyr.replace("\n", ";") for _, _, lyr in SONGS], padding=True, return_tensors="pt"
    )
    labels = tokenizer([CAPTIONS[s] for s, _, _ in SONGS], padding=True, return_tensors="pt")
    targets = labels["input_ids"].masked_fill(labels["attention_mask"] == 0, -100)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        out = model(enc["input_ids"], enc["attention_mask"], labels=targets, music_embeds=music)
        a = torch.nn.functional.normalize(model.embed_music(music), dim=-1)  # (S, D)
        b = torch.nn.functional.normalize(
            model.embed_lyrics(enc["input_ids"], enc["attention_mask"]), dim=-1
        )
        logits = a @ b.T / 0.05  # (S, S): the diagonal holds the true pairs
        ref = torch.arange(len(SONGS))
        nce = torch.nn.functional.cross_entropy(logits, ref)
        nce = nce + torch.nn.functional.cross_entropy(logits.T, ref)
        opt.zero_grad()
        (out.loss + nce).backward()
        opt.step()
    from recap.inference.words import caption_vocabulary

    model.caption_words = frozenset(caption_vocabulary(CAPTIONS.values()))  # as `recap train`
    model.save_pretrained(folder, tokenizer=tokenizer)
    return folder


def make_tiny_clap(folder: Path, full: bool = False, seed: int = 0) -> Path:
    """A randomly initialised, tiny CLAP checkpoint saved like a hub one (config.json,
    model.safetensors, preprocessor_config.json): the audio tower alone (`ClapAudioModel`), or
    with `full` a whole `ClapModel` (text tower too) as laion/larger_clap_music is. 1 s windows
    at 48 kHz, 16 mel bands; 64 tokens of width 16 per window."""
    import torch
    from transformers import (
        ClapAudioConfig,
        ClapAudioModel,
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
    )

    audio = {
        "num_mel_bins": 16, "spec_size": 64, "patch_size": 4, "patch_stride": (4, 4),
        "window_size": 4, "depths": [1, 1], "num_attention_heads": [1, 2],
        "patch_embeds_hidden_size": 8, "hidden_size": 16, "num_hidden_layers": 2,
    }  # fmt: skip
    torch.manual_seed(seed)
    if full:
        text = {"vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 1,
                "num_attention_heads": 1, "intermediate_size": 16, "max_position_embeddings": 40}  # fmt: skip
        model = ClapModel(ClapConfig(audio_config=audio, text_config=text, projection_dim=8))
    else:
        model = ClapAudioModel(ClapAudioConfig(**audio))
    model.save_pretrained(folder)
    extractor = ClapFeatureExtractor(
        feature_size=16, sampling_rate=48_000, hop_length=480, max_length_s=1,
        truncation="fusion" if full else "rand_trunc",
    )  # fmt: skip
    extractor.save_pretrained(folder)
    return folder
