"""int8 dynamic quantization of the captioner: what is replaced, and agreement with fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import SONGS
from torch import nn

from recap.cli import main
from recap.inference.captioner import Captioner
from recap.inference.generate import DecodeSettings
from recap.inference.quantize import quantize_int8, token_agreement
from recap.models.config import RecapConfig
from recap.models.model import RecapModel
from recap.utils import RecapError


def linear_kinds(model: nn.Module) -> dict[str, str]:
    """name -> "int8" (a dynamic quantized Linear), "fp32" (nn.Linear) or "subclass"."""
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

    kinds = {}
    for name, m in model.named_modules():
        if isinstance(m, Int8Linear):
            kinds[name] = "int8"
        elif isinstance(m, nn.Linear):
            kinds[name] = "fp32" if type(m) is nn.Linear else "subclass"
    return kinds


def test_int8_captions_agree_with_fp32(model_dir, songs_dir, one_thread):
    fp32 = Captioner.from_pretrained(model_dir, device="cpu")
    before = {k: v.clone() for k, v in fp32.model.state_dict().items()}
    int8 = Captioner(fp32.model, fp32.tokenizer, int8=True)
    kinds = linear_kinds(int8.model)
    quantized = [n for n, k in kinds.items() if k == "int8"]
    # every decoder/encoder/LM-head Linear is int8; the alignment projection and attention's
    # out_proj (read directly by nn.MultiheadAttention) stay fp32
    assert "bart.lm_head" in quantized and "bart.model.decoder.layers.0.fc1" in quantized
    assert kinds["align_proj"] == "fp32" and kinds["fusion.0.attention.out_proj"] == "subclass"
    assert len(quantized) > 40 and "fp32" not in {k for n, k in kinds.items() if n != "align_proj"}
    # the caller's model is untouched (quantized a copy)
    assert "int8" not in linear_kinds(fp32.model).values()
    assert all(torch.equal(before[k], v) for k, v in fp32.model.state_dict().items())

    waves = [fp32.load_waveform(songs_dir / f"{sid}.wav") for sid, _, _ in SONGS]
    lyrics = [lyr for _, _, lyr in SONGS]
    ids = {}
    for name, cap in (("fp32", fp32), ("int8", int8)):
        batch = cap.encode_lyrics(lyrics)
        wave = torch.from_numpy(np.concatenate(waves))  # (S, T): one window per song
        ids[name] = cap.model.generate(
            batch["input_ids"],
            batch["attention_mask"],
            waveform=wave,
            **DecodeSettings().generate_kwargs(cap.model.config),
        )
    agreement = token_agreement(ids["int8"], ids["fp32"])
    assert agreement >= 0.9, agreement
    captions = int8.caption_waveforms(waves, lyrics, DecodeSettings())
    assert sum(sid in c for (sid, _, _), c in zip(SONGS, captions)) >= len(SONGS) - 1


def test_copy_head_hook_survives_quantization(one_thread):
    torch.manual_seed(0)
    model = RecapModel(RecapConfig.preset("recap", "tiny", copy_head=True)).eval()
    q = quantize_int8(model)
    assert linear_kinds(q)["bart.lm_head"] == "int8"
    assert len(q.bart.lm_head._forward_hooks) == len(model.bart.lm_head._forward_hooks) == 1
    ids = torch.randint(5, 300, (2, 12))
    music = torch.randn(2, 119, model.config.music_dim)
    out = q.generate(ids, music_embeds=music, max_new_tokens=4, num_beams=2)
    assert out.shape[0] == 2


def test_token_agreement_by_hand():
    a = torch.tensor([[2, 0, 5, 6, 2, 1], [2, 0, 7, 2, 1, 1]])
    b = torch.tensor([[2, 0, 5, 9, 2, 1], [2, 0, 7, 8, 2, 1]])
    # row 1: 4 of 5 counted positions agree; row 2: 3 of 5 (pad in both is not counted)
    assert token_agreement(a, b) == pytest.approx(7 / 10)
    assert token_agreement(a, a[:, :3]) == pytest.approx(6 / 9)  # missing positions disagree
    with pytest.raises(RecapError, match=r"\(B, T\)"):
        token_agreement(a[0], b)


def test_int8_needs_the_cpu():
    with torch.device("meta"):
        model = RecapModel(RecapConfig.preset("recap", "tiny"))
    with pytest.raises(RecapError, match="CPU only"):
        quantize_int8(model)


def test_caption_cli_int8(model_dir, songs_dir, capsys):
    song = songs_dir / "storm.wav"
    assert main(["caption", str(song), "--model", str(model_dir), "--int8", "--no-progress"]) == 0
    assert "storm" in capsys.readouterr().out
