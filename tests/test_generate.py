"""The one generation path: settings, flags shared by every command, batching, one call site."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from support import SONGS

from recap.cli.flags import decode_from_args
from recap.inference.generate import (
    PAPER_SAMPLING_SEEDS,
    DecodeSettings,
    generate_texts,
    load_model_and_tokenizer,
)
from recap.utils import RecapError

SRC = Path(__file__).resolve().parents[1] / "src" / "recap"


def test_settings_from_options_and_checks():
    s = DecodeSettings.from_options(num_beams=2, do_sample=True, seed=7, top_p=None)
    assert s.seeds == (7,) and s.seed == 7 and s.top_p == 0.92 and s.num_beams == 2
    assert DecodeSettings().seed is None  # beam search is not seeded
    assert DecodeSettings(do_sample=True).run_seeds == PAPER_SAMPLING_SEEDS
    with pytest.raises(RecapError, match="unknown decoding option"):
        DecodeSettings.from_options(beams=2)
    for bad, message in [
        ({"num_beams": 0}, "num_beams"),
        ({"num_beams": "many"}, "num_beams must be an integer"),
        ({"top_p": 1.5}, "top_p"),
        ({"seeds": (2**64,)}, "seed must be"),
        ({"do_sample": True, "seeds": ()}, "at least one seed"),
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
    ]:
        with pytest.raises(RecapError, match=message):
            DecodeSettings(**bad).check()
    with pytest.raises(RecapError, match="position limit"):
        DecodeSettings(max_new_tokens=200).check(max_positions=128)
    assert DecodeSettings.from_dict(s.to_dict()) == s


def test_every_command_has_the_same_decoding_flags_and_defaults():
    from recap.cli import build_parser

    parser = build_parser()
    commands = [
        ["caption", "x.wav", "--model", "m"],
        ["evaluate", "--model", "m", "--data", "d"],
        ["experiment", "table1", "--data", "d"],
    ]
    flags = ["--beams", "3", "--sample", "--top-p", "0.5", "--no-repeat-ngram", "2",
             "--max-new-tokens", "9", "--batch-size", "5", "--sample-seeds", "4,5"]  # fmt: skip

    def settings(argv):
        args = parser.parse_args(argv)
        if argv[0] == "experiment":  # seeds default to each run's own (the authors' pairing)
            from recap.cli.experiment import config_from_args

            return config_from_args(args).decode
        return decode_from_args(args)

    default = DecodeSettings()
    for argv in commands:
        assert settings(argv) == default, argv[0]
        assert settings(argv + flags) == DecodeSettings(
            num_beams=3, do_sample=True, top_p=0.5, no_repeat_ngram_size=2, max_new_tokens=9,
            batch_size=5, seeds=(4, 5),
        ), argv[0]  # fmt: skip
    # The older spellings still work where they existed.
    args = parser.parse_args(commands[0] + ["--sample", "--seed", "3"])
    assert decode_from_args(args).seed == 3
    args = parser.parse_args(commands[1] + ["--seeds", "1,2", "--no-repeat-ngram-size", "4"])
    assert decode_from_args(args).seeds == (1, 2)
    assert decode_from_args(args).no_repeat_ngram_size == 4


def test_batches_and_order_do_not_change_captions(model_dir):
    import torch

    model, tokenizer, _ = load_model_and_tokenizer(model_dir, device="cpu")
    lyrics = [lyr.replace("\n", ";") for _, _, lyr in SONGS]
    ids = tokenizer(lyrics)["input_ids"]
    with torch.inference_mode():
        music = model.music_sequence(
            waveform=torch.randn(len(ids), 240_000, generator=torch.Generator().manual_seed(0))
        )  # (B, M, D)
    settings = DecodeSettings(num_beams=2, max_new_tokens=8)
    one_by_one = [
        generate_texts(model, tokenizer, [i], [m], settings)[0] for i, m in zip(ids, music)
    ]
    batched = generate_texts(model, tokenizer, ids, list(music.numpy()), settings)
    assert batched == one_by_one and all(isinstance(t, str) for t in batched)
    with pytest.raises(RecapError, match="top_p"):
        generate_texts(model, tokenizer, ids, list(music), DecodeSettings(top_p=2.0))
    assert generate_texts(model, tokenizer, [], None, settings) == []
    sampled = DecodeSettings(do_sample=True, max_new_tokens=8, batch_size=2)
    first = generate_texts(model, tokenizer, ids, list(music), sampled, seed=5)
    assert generate_texts(model, tokenizer, ids, list(music), sampled, seed=5) == first
    assert np.all([isinstance(t, str) for t in first])


def test_the_model_generates_from_one_module():
    calls = {
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if re.search(r"\.generate\(", path.read_text(encoding="utf-8"))
    }
    # models/model.py is the model's own generate (it hands over to Hugging Face's).
    assert calls == {"inference/generate.py", "models/model.py"}
