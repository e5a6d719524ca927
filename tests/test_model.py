import json

import pytest
import torch
from transformers import BartConfig, BartForConditionalGeneration

from recap.models.config import FORMAT_VERSION, METHODS, RecapConfig
from recap.models.model import RecapModel
from recap.models.music_encoder import MusicEncoder, MusicEncoderConfig
from recap.models.tokenizer import train_bpe_tokenizer
from recap.utils import RecapError

SAMPLE_RATE = 16000


def tiny(method: str = "recap", **overrides) -> RecapModel:
    torch.manual_seed(0)
    return RecapModel(RecapConfig.preset(method, "tiny", **overrides)).eval()


def batch(config: RecapConfig, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, config.vocab_size, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    ids[1, 6:], mask[1, 6:] = config.pad_token_id, 0  # a right-padded row
    labels = torch.randint(5, config.vocab_size, (3, 7), generator=g)
    labels[2, 4:] = config.pad_token_id
    music = torch.randn(3, 119, config.music_dim, generator=g)
    return ids, mask, labels, music


# ----------------------------------------------------------------------------- config


def test_presets_are_one_config_with_three_methods():
    bart = RecapConfig.preset("bart", "tiny")
    fusion = RecapConfig.preset("bart-fusion", "tiny")
    recap = RecapConfig.preset("recap", "tiny")
    assert (bart.use_music, bart.fusion_layers, bart.align_weight) == (False, (), 0.0)
    assert (fusion.use_music, fusion.fusion_layers, fusion.align_weight) == (True, (4, 5), 0.0)
    assert (recap.fusion_layers, recap.align_weight) == ((4, 5), 0.02)
    paper = RecapConfig.preset("recap", "paper")
    assert (paper.d_model, paper.encoder_layers, paper.decoder_layers) == (768, 6, 6)
    assert (paper.encoder_attention_heads, paper.vocab_size, paper.music_dim) == (12, 50265, 256)
    assert (paper.fusion_heads, paper.fusion_scale, paper.fusion_shared) == (1, 0.1, True)
    assert RecapConfig.preset("recap", "tiny", align_loss="infonce").align_loss == "infonce"
    # Only the small BART takes the light reconstruction term; an override still wins.
    small = {m: RecapConfig.preset(m, "small").reconstruct_weight for m in METHODS}
    assert small == {"bart": 0.03, "bart-fusion": 0.0, "recap": 0.0}
    assert RecapConfig.preset("bart", "small", reconstruct_weight=0.0).reconstruct_weight == 0.0
    assert RecapConfig.preset("bart", "paper").reconstruct_weight == 0.0
    # Copy coverage: only the small BART counts what it copied (the fusion models broke with it).
    coverage = {m: RecapConfig.preset(m, "small").copy_coverage for m in METHODS}
    assert coverage == {"bart": 2, "bart-fusion": 0, "recap": 0}
    assert {RecapConfig.preset(m, "paper").copy_coverage for m in METHODS} == {0}
    # The content selector: an option, in no preset (the fusion models quoted fewer first lines).
    sizes = ("small", "paper")
    assert {RecapConfig.preset(m, z).copy_select_weight for m in METHODS for z in sizes} == {0.0}
    assert RecapConfig.preset("bart", "small", copy_select_weight=0.5).copy_select_weight == 0.5
    with pytest.raises(RecapError, match="unknown method"):
        RecapConfig.preset("gpt", "tiny")
    with pytest.raises(RecapError, match="unknown RecapConfig field"):
        RecapConfig.preset("recap", "tiny", fusion_layer=3)
    with pytest.raises(RecapError, match="out of range"):
        RecapConfig.preset("recap", "tiny", fusion_layers=(6,))


def test_config_json_round_trip_and_version_check(tmp_path):
    config = RecapConfig.preset("bart-fusion", "small", align_loss="infonce", fusion_gate=True)
    path = config.save(tmp_path)
    assert RecapConfig.load(tmp_path) == config
    data = json.loads(path.read_text())
    assert data["format_version"] == FORMAT_VERSION
    data["format_version"] = FORMAT_VERSION + 1
    path.write_text(json.dumps(data))
    with pytest.raises(RecapError, match="format_version"):
        RecapConfig.load(tmp_path)


# ----------------------------------------------------------------------------- encoder + fusion


def test_plain_loop_matches_hugging_face_encoder():
    model = tiny("bart")
    ids, mask, _, _ = batch(model.config)
    ours = model.encode(ids, mask).hidden_states
    theirs = model.bart.get_encoder()(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert len(ours) == len(theirs.hidden_states) == 7
    for a, b in zip(ours, theirs.hidden_states):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(ours[-1], theirs.last_hidden_state)


def test_fusion_changes_only_the_states_after_layer_4():
    fused = tiny("recap")
    plain = tiny("bart")
    plain.bart.load_state_dict(fused.bart.state_dict())  # same BART weights, no music
    ids, mask, _, music = batch(fused.config)
    with_music = fused.encode(ids, mask, music_embeds=music).hidden_states
    without = plain.encode(ids, mask).hidden_states
    other_music = fused.encode(ids, mask, music_embeds=music.flip(0)).hidden_states
    for k in range(5):  # embeddings and the outputs of layers 0..3
        torch.testing.assert_close(with_music[k], without[k], rtol=0, atol=0)
        torch.testing.assert_close(with_music[k], other_music[k], rtol=0, atol=0)
    for k in (5, 6):  # after fusion at layers 4 and 5
        assert (with_music[k] - without[k]).abs().max() > 1e-4
        assert (with_music[k] - other_music[k]).abs().max() > 1e-6


def test_fusion_parameters_exist_once():
    shared = tiny("recap")
    assert len(shared.fusion) == 1
    names = [n for n, _ in shared.named_parameters() if n.startswith("fusion.")]
    assert names and all(n.startswith("fusion.0.") for n in names)
    per_layer = tiny("recap", fusion_shared=False)
    assert len(per_layer.fusion) == 2
    assert per_layer.param_counts()["fusion"] == 2 * shared.param_counts()["fusion"]
    assert tiny("bart").fusion is None and tiny("bart").align_proj is None


def test_fusion_linears_are_initialised_as_the_reference():
    block = tiny("recap").fusion[0]
    linears = [block.query, block.key, block.value, block.attention.out_proj]
    for lin in linears:
        assert lin.bias.abs().max() == 0
        # normal(0, 0.02): the sample std of thousands of draws is within a few percent.
        assert lin.weight.std().item() == pytest.approx(0.02, rel=0.1)
    gated = tiny("recap", fusion_gate=True).fusion[0].gate
    assert gated.bias.abs().max() == 0 and gated.weight.std().item() == pytest.approx(0.02, rel=0.1)
    # The old PyTorch default (uniform, nonzero biases) stays available for old runs.
    old = tiny("recap", fusion_init="pytorch").fusion[0].query
    assert old.bias.abs().max() > 0
    with pytest.raises(RecapError, match="fusion_init"):
        RecapConfig.preset("recap", "tiny", fusion_init="xavier")


def test_pad_to_max_source_length_pads_inside_the_model():
    ids, mask, labels, music = batch(tiny("recap").config)
    plain = tiny("recap")
    padded = tiny("recap", pad_to_max_source_length=True)
    padded.load_state_dict(plain.state_dict())
    a = plain(ids, mask, labels=labels, music_embeds=music)
    b = padded(ids, mask, labels=labels, music_embeds=music)
    assert b.encoder_last_hidden_state.shape[1] == padded.config.max_source_length == 64
    # Padding is masked everywhere but in a pool that includes it: same captions and vectors.
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.lyrics_vector, b.lyrics_vector, rtol=1e-4, atol=1e-5)
    # The authors' setting: the pooled lyrics vector now averages over 64 positions, mostly pads.
    authors = tiny("recap", pad_to_max_source_length=True, pool_includes_padding=True)
    unpadded = tiny("recap", pool_includes_padding=True)
    for m in (authors, unpadded):
        m.load_state_dict(plain.state_dict())
    va = authors.embed_lyrics(ids, mask)
    vu = unpadded.embed_lyrics(ids, mask)
    assert (va - vu).abs().max() > 1e-3
    torch.testing.assert_close(va, authors.encode(ids, mask, music_embeds=music).lyrics_vector)
    gen = dict(num_beams=1, do_sample=False, max_new_tokens=5)
    assert torch.equal(
        plain.generate(ids, mask, music_embeds=music, **gen),
        padded.generate(ids, mask, music_embeds=music, **gen),
    )


def test_alignment_gradient_reaches_only_projection_embeddings_and_layers_0_to_3():
    model = tiny("recap", with_music_encoder=True).train()
    ids, mask, labels, music = batch(model.config)
    out = model(ids, mask, labels=labels, music_embeds=music)
    out.align_loss.backward()
    touched = {
        name
        for name, p in model.named_parameters()
        if p.grad is not None and p.grad.abs().sum() > 0
    }
    allowed = ("align_proj.", "bart.model.shared.", "bart.model.encoder.embed_positions.")
    allowed += ("bart.model.encoder.layernorm_embedding.",)
    allowed += tuple(f"bart.model.encoder.layers.{i}." for i in range(4))
    assert touched and all(name.startswith(allowed) for name in touched), touched
    assert any(n.startswith("bart.model.encoder.layers.3.") for n in touched)
    assert "align_proj.weight" in touched
    assert all(p.grad is None for p in model.music_encoder.parameters())
    assert not model.music_encoder.training  # frozen encoder stays in eval mode


def test_forward_returns_named_terms_and_masks_label_padding():
    model = tiny("recap")
    ids, mask, labels, music = batch(model.config)
    out = model(ids, mask, labels=labels, music_embeds=music, song_ids=["a", "b", "a"])
    assert out.logits.shape == (3, 7, model.config.vocab_size)
    assert out.loss.item() == pytest.approx(
        out.caption_loss.item() + 0.02 * out.align_loss.item(), rel=1e-6
    )
    assert out.lyrics_vector.shape == out.music_vector.shape == (3, 16)
    # The pads of row 2 are not trained on, unless the reference behaviour is asked for.
    with_pad = tiny("recap", loss_includes_padding=True)
    padded = with_pad(ids, mask, labels=labels, music_embeds=music)
    torch.testing.assert_close(padded.logits, out.logits)
    assert abs(padded.caption_loss.item() - out.caption_loss.item()) > 1e-4
    # bart ignores music: same loss with or without it, and no alignment term.
    bart = tiny("bart")
    a = bart(ids, mask, labels=labels, music_embeds=music)
    b = bart(ids, mask, labels=labels)
    assert a.align_loss.item() == 0.0 and a.loss.item() == b.loss.item()
    with pytest.raises(RecapError, match="music"):
        model(ids, mask, labels=labels)


def test_embeddings_for_retrieval():
    model = tiny("recap")
    ids, mask, _, music = batch(model.config)
    lyrics = model.embed_lyrics(ids, mask)
    assert lyrics.shape == (3, 16)
    # Same vector as the one the alignment loss sees; it needs no music (pooled before fusion).
    torch.testing.assert_close(lyrics, model.encode(ids, mask, music_embeds=music).lyrics_vector)
    torch.testing.assert_close(model.embed_music(music), music.mean(dim=1))
    unit = model.embed_music(music, normalize=True)
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(3))
    # Masked mean by default: padding does not move the lyrics vector of row 1.
    longer_pad = torch.cat([ids, torch.full((3, 4), 1)], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(3, 4, dtype=mask.dtype)], dim=1)
    torch.testing.assert_close(model.embed_lyrics(longer_pad, longer_mask), lyrics)
    pooled_pad = tiny("recap", pool_includes_padding=True)
    pooled_pad.load_state_dict(model.state_dict())
    assert (pooled_pad.embed_lyrics(ids, mask)[1] - lyrics[1]).abs().max() > 1e-5


def test_waveform_input_equals_precomputed_embeddings():
    model = tiny("recap", with_music_encoder=True)
    ids, mask, labels, _ = batch(model.config)
    waveform = torch.randn(3, SAMPLE_RATE) * 0.1
    with torch.no_grad():
        embeds = model.music_encoder(waveform)
    from_wave = model(ids, mask, labels=labels, waveform=waveform)
    from_embeds = model(ids, mask, labels=labels, music_embeds=embeds)
    torch.testing.assert_close(from_wave.logits, from_embeds.logits)
    torch.testing.assert_close(from_wave.loss, from_embeds.loss)
    with pytest.raises(RecapError, match="music encoder"):
        tiny("recap")(ids, mask, labels=labels, waveform=waveform)


def test_windows_concatenate_along_the_token_axis_and_padding_is_masked():
    model = tiny("recap", with_music_encoder=True)
    ids, mask, labels, _ = batch(model.config)
    waves = torch.randn(3, 2, SAMPLE_RATE) * 0.1  # (B, W, T): every song heard in 2 windows
    with torch.no_grad():
        per_window = model.music_encoder(waves.reshape(6, SAMPLE_RATE))  # (6, M, D)
        m = per_window.size(1)
        music = model.music_sequence(waveform=waves)
    assert music.shape == (3, 2 * m, model.config.music_dim)
    torch.testing.assert_close(music[1, m:], per_window[3])  # song 1, window 2
    # A song with one window, padded to the batch's two with a mask, reads as it does alone.
    padded = music.clone()
    padded[0, m:] = 1e3  # garbage where the mask is 0 must not matter
    music_mask = torch.ones(3, 2 * m, dtype=torch.long)
    music_mask[0, m:] = 0
    with torch.no_grad():
        out = model(ids, mask, labels=labels, music_embeds=padded, music_mask=music_mask)
        alone = model(ids[:1], mask[:1], labels=labels[:1], music_embeds=music[:1, :m])
        vector = model.embed_music(padded, music_mask=music_mask)
    torch.testing.assert_close(out.logits[0], alone.logits[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(vector[0], music[0, :m].mean(0))
    torch.testing.assert_close(out.music_vector[1:], music[1:].mean(1))


# ----------------------------------------------------------------------------- generation


def test_generation_with_beam_search_and_sampling():
    model = tiny("recap")
    ids, mask, _, music = batch(model.config)
    beams = model.generate(ids, mask, music_embeds=music, num_beams=3, max_new_tokens=8)
    assert beams.shape[0] == 3 and beams.shape[1] <= 10
    assert beams[:, :2].tolist() == [[2, 0]] * 3  # decoder start </s>, then forced <s>
    again = model.generate(ids, mask, music_embeds=music, num_beams=3, max_new_tokens=8)
    assert torch.equal(beams, again)
    kwargs = {"do_sample": True, "top_p": 0.92, "num_beams": 2, "max_new_tokens": 6}
    torch.manual_seed(2022)
    sampled = model.generate(ids, mask, music_embeds=music, num_return_sequences=2, **kwargs)
    torch.manual_seed(2022)
    resampled = model.generate(ids, mask, music_embeds=music, num_return_sequences=2, **kwargs)
    assert sampled.shape[0] == 6 and torch.equal(sampled, resampled)
    # The music reaches the decoder: other music, other next-token logits.
    greedy = {"num_beams": 1, "max_new_tokens": 2, "output_logits": True}
    greedy["return_dict_in_generate"] = True
    s1 = model.generate(ids, mask, music_embeds=music, **greedy).logits[0]
    s2 = model.generate(ids, mask, music_embeds=music.flip(0), **greedy).logits[0]
    assert not torch.allclose(s1, s2)
    assert model.generation_config.no_repeat_ngram_size == 3
    assert model.generation_config.forced_eos_token_id == 2


# ----------------------------------------------------------------------------- checkpoints


def test_save_and_load_round_trip(tmp_path):
    model = tiny("recap", with_music_encoder=True)
    tokenizer = train_bpe_tokenizer(["a song about love", "a song about rain"] * 20, 300)
    model.save_pretrained(tmp_path / "ckpt", tokenizer=tokenizer)
    names = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not [n for n in names if n.startswith(".")]  # no leftover staging files
    loaded = RecapModel.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == model.config and not loaded.training
    first = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    for i in range(6):  # the same weights, the same bytes (docs/results.md run Z)
        model.save_pretrained(tmp_path / f"again{i}")
        assert (tmp_path / f"again{i}" / "model.safetensors").read_bytes() == first
    ids, mask, labels, music = batch(model.config)
    waveform = torch.randn(3, SAMPLE_RATE) * 0.1
    a = model(ids, mask, labels=labels, music_embeds=music)
    b = loaded(ids, mask, labels=labels, music_embeds=music)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)
    torch.testing.assert_close(
        model.embed_music(waveform=waveform), loaded.embed_music(waveform=waveform)
    )
    assert torch.equal(
        model.generate(ids, mask, music_embeds=music),
        loaded.generate(ids, mask, music_embeds=music),
    )
    assert loaded.tokenizer("a song")["input_ids"] == tokenizer("a song")["input_ids"]


def test_bad_folders_raise_recap_error(tmp_path):
    with pytest.raises(RecapError, match="config.json missing"):
        RecapModel.from_pretrained(tmp_path)
    tiny("bart").save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RecapError):
        RecapModel.from_pretrained(tmp_path / "m")
    with pytest.raises(RecapError, match="BART"):
        RecapModel.from_bart(tmp_path / "nothing-here")


def test_from_bart_initialises_the_bart_part(tmp_path):
    torch.manual_seed(1)
    bart_config = BartConfig(
        vocab_size=300,
        d_model=24,
        encoder_layers=6,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        max_position_embeddings=64,
    )
    bart = BartForConditionalGeneration(bart_config)
    bart.save_pretrained(tmp_path / "bart")
    tokenizer = train_bpe_tokenizer(["lyrics of a song"] * 10, 290)
    tokenizer.save_pretrained(tmp_path / "bart")
    MusicEncoder(MusicEncoderConfig.preset("tiny")).save_pretrained(tmp_path / "cnnsa")

    model = RecapModel.from_bart(
        tmp_path / "bart", RecapConfig.preset("recap", "tiny"), music_encoder=tmp_path / "cnnsa"
    )
    assert (model.config.d_model, model.config.vocab_size, model.config.decoder_layers) == (
        24,
        300,
        1,
    )
    for name, tensor in bart.state_dict().items():
        torch.testing.assert_close(model.bart.state_dict()[name], tensor, rtol=0, atol=0)
    assert model.music_encoder is not None and model.config.with_music_encoder
    assert model.tokenizer is not None and len(model.tokenizer) == len(tokenizer)
    ids = torch.randint(5, 300, (2, 6))
    out = model(ids, labels=ids, waveform=torch.randn(2, SAMPLE_RATE) * 0.1)
    assert torch.isfinite(out.loss)
    with pytest.raises(RecapError, match="not a RECAP model"):
        RecapModel.from_pretrained(tmp_path / "bart")


def test_paper_preset_parameter_counts_on_meta_device():
    with torch.device("meta"):
        model = RecapModel(RecapConfig.preset("recap", "paper", with_music_encoder=True))
    d, ffn, vocab, pos, m = 768, 3072, 50265, 1024, 256

    def linear(i, o):
        return i * o + o

    attention = 4 * linear(d, d)
    layer_norm = 2 * d
    encoder_layer = attention + layer_norm + linear(d, ffn) + linear(ffn, d) + layer_norm
    decoder_layer = encoder_layer + attention + layer_norm  # + cross-attention and its norm
    bart = vocab * d + 2 * (pos + 2) * d + 2 * layer_norm + 6 * encoder_layer + 6 * decoder_layer
    fusion = linear(d, d) + 2 * linear(m, d) + (3 * d * d + 3 * d) + linear(d, d) + layer_norm
    counts = model.param_counts()
    assert counts["bart"] == bart == 139_420_416  # bart-base, shared embeddings once
    assert counts["fusion"] == fusion == 3_349_248  # ONE shared block
    assert counts["projection"] == linear(d, m) == 196_864
    assert counts["music_encoder"] == 10_521_652  # the reference CNNSA (SPEC: 10.52 M)
    assert counts["total"] == bart + fusion + linear(d, m) + 10_521_652
    assert counts["trainable"] == counts["total"] - counts["music_encoder"]


# ----------------------------------------------------------------------------- alignment options


def test_paper_alignment_is_the_mean_of_hidden_states_4_through_one_linear():
    # The options beyond the paper (attention pool, learned temperature) must leave the default
    # model exactly as it was: the same parameters and the same lyrics vector.
    for size in ("tiny", "paper"):
        config = RecapConfig.preset("recap", size)
        assert (config.align_pool, config.align_learn_temperature) == ("mean", False)
    with torch.device("meta"):
        paper = RecapModel(RecapConfig.preset("recap", "paper"))
    assert {k for k in paper.state_dict() if k.startswith("align")} == {
        "align_proj.weight",
        "align_proj.bias",
    }
    assert paper.align_pool is None and paper.align_temperature() == 0.3
    model = tiny("recap")
    ids, mask, _, _ = batch(model.config)
    states = model._run_encoder(ids, mask, None)
    mean = (states[4] * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, d)
    torch.testing.assert_close(model.embed_lyrics(ids, mask), model.align_proj(mean))


def test_attention_pool_starts_as_the_mean_and_learns_to_weight_tokens():
    from recap.models.losses import AttentionPool, masked_mean

    pool = AttentionPool(8)
    x = torch.randn(3, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    torch.testing.assert_close(pool(x, mask), masked_mean(x, mask))  # zero score: the mean
    with torch.no_grad():
        pool.score.weight.copy_(x[0, 3])  # a query that matches token 3 of row 0 best
        pool.score.weight.mul_(10.0)
    pooled = pool(x, mask)
    assert torch.allclose(pooled[0], x[0, 3], atol=1e-2)  # the keyword, not the mean
    # padding never gets weight, and an empty row pools to zeros (no NaN)
    padded = torch.cat([x[1:2, :2], 100 * torch.randn(1, 3, 8)], dim=1)
    torch.testing.assert_close(pool(padded, mask[1:2]), pooled[1:2])
    assert torch.equal(pooled[2], torch.zeros(8))


def test_attention_pool_option_changes_what_is_aligned_and_trains():
    model = tiny("recap", align_pool="attention").train()
    keys = {k for k in model.state_dict() if k.startswith("align")}
    assert keys == {"align_proj.weight", "align_proj.bias", "align_pool.score.weight",
                    "align_pool.score.bias"}  # fmt: skip
    assert model.param_counts()["projection"] == 32 * 16 + 16 + 32 + 1
    ids, mask, labels, music = batch(model.config)
    out = model(ids, mask, labels=labels, music_embeds=music)
    out.align_loss.backward()
    assert model.align_pool.score.weight.grad.abs().sum() > 0
    # with a trained score the vector is no longer the mean model's (same other weights)
    mean_model = tiny("recap")
    mean_model.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("align_pool")}
    )
    model.eval()
    torch.testing.assert_close(model.embed_lyrics(ids, mask), mean_model.embed_lyrics(ids, mask))
    with torch.no_grad():
        model.align_pool.score.weight.normal_()
    assert (model.embed_lyrics(ids, mask) - mean_model.embed_lyrics(ids, mask)).abs().max() > 1e-4
    # the retrieval vector is the one the loss sees
    torch.testing.assert_close(
        model.embed_lyrics(ids, mask), model.encode(ids, mask, music_embeds=music).lyrics_vector
    )
    with pytest.raises(RecapError, match="align_pool"):
        RecapConfig.preset("recap", "tiny", align_pool="max")


def test_learned_temperature_enters_the_infonce_loss():
    from recap.models.losses import infonce_alignment_loss

    model = tiny("recap", align_loss="infonce", align_learn_temperature=True).train()
    assert model.align_temperature().item() == pytest.approx(0.3)
    with torch.no_grad():
        model.align_log_temperature.fill_(torch.tensor(0.1).log())
    ids, mask, labels, music = batch(model.config)
    out = model(ids, mask, labels=labels, music_embeds=music)
    expected = infonce_alignment_loss(out.music_vector, out.lyrics_vector, temperature=0.1)
    assert out.align_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    out.align_loss.backward()
    assert model.align_log_temperature.grad.abs() > 0
    with torch.no_grad():
        model.align_log_temperature.fill_(-20.0)  # clamped: the logits cannot blow up
    assert model.align_temperature().item() == pytest.approx(0.01)


def test_music_memory_is_one_more_position_the_decoder_reads_and_generation_agrees():
    model = tiny("bart-fusion", music_memory=True)
    assert tiny("bart-fusion").music_memory is None  # the papers' decoder by default
    ids, mask, labels, music = batch(model.config)
    out = model(ids, mask, labels=labels, music_embeds=music)
    out.loss.backward()
    assert model.music_memory.weight.grad.abs().sum() > 0  # the caption loss reaches it
    with torch.no_grad():
        other = model(ids, mask, labels=labels, music_embeds=music.flip(0)).logits
        model.fusion = None  # leave the memory as the only way the music reaches the decoder
        alone = model(ids, mask, labels=labels, music_embeds=music).logits
        alone_other = model(ids, mask, labels=labels, music_embeds=music + 1).logits
    assert not torch.allclose(out.logits, other)
    assert not torch.allclose(alone, alone_other)
    model = tiny("bart-fusion", music_memory=True)
    with torch.no_grad():
        teacher = model(ids, mask, labels=labels, music_embeds=music).logits
    greedy = {"num_beams": 1, "max_new_tokens": 1, "output_logits": True}
    first = model.generate(ids, mask, music_embeds=music, return_dict_in_generate=True, **greedy)
    # the first generated step reads what teacher forcing reads at position 0
    assert torch.allclose(first.logits[0], teacher[:, 0], atol=1e-5)
    beams = model.generate(ids, mask, music_embeds=music, num_beams=3, max_new_tokens=6)
    assert beams.shape[0] == 3
    with pytest.raises(RecapError, match="music_memory"):
        RecapConfig.preset("bart", "tiny", music_memory=True)
