"""Training: the batch sampler, TrainConfig and its flags, an end-to-end CPU run, exact resume."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from recap.cli.train import add_config_arguments, config_from_args
from recap.data.batching import LengthGroupedBatchSampler, pad_music
from recap.training.collate import Collator, Example
from recap.training.optim import build_optimizer
from recap.training.train import TrainConfig, train
from recap.utils import RecapError

WORDS = "love night river sun rain heart road home fire sea".split()
INSTRUMENTS = ["piano", "violin", "flute", "organ"]


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- fixtures


def make_dataset(root: Path, n_songs: int = 10, per_song: int = 3, audio: bool = False) -> Path:
    """dataset.jsonl (train songs, one val song, one test song) + 16 kHz wav clips if `audio`."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for s in range(n_songs):
        song = f"song{s:02d}"
        split = "test" if s == n_songs - 1 else "val" if s == n_songs - 2 else "train"
        words = [WORDS[(s + k) % len(WORDS)] for k in range(6)]
        lyrics = " ".join(words[:3]) + "\n" + " ".join(words[3:])
        for k in range(per_song):
            mood = " with a sad mood" if k % 2 else ""
            comment = f"a {INSTRUMENTS[s % 4]} song about {words[k]} and {words[k + 1]}{mood}"
            lines.append(
                {
                    "music4all_id": song,
                    "songmeanings_id": f"m{s}",
                    "lyrics": lyrics,
                    "comment": comment,
                    "votes": k - 1,
                    "split": split,
                }
            )
        if audio:
            import soundfile as sf

            (root / "audios").mkdir(exist_ok=True)
            t = np.arange(16_000) / 16_000  # 1 s; the excerpt pads it to 15 s
            wave = 0.3 * np.sin(2 * np.pi * (220 + 40 * s) * t)
            sf.write(root / "audios" / f"{song}.wav", wave.astype(np.float32), 16_000)
    with open(root / "dataset.jsonl", "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    return root


def fake_music_embeddings(
    data_dir, encoder, song_ids, device="cpu", progress=True, num_workers=0, audio_config=None
):
    """Stand-in for the embedding cache: a fixed random (W*119, D) float16 sequence per song,
    W = the audio config's windows for songs with an odd number, 1 for the others (so batches
    mix window counts as songs of different lengths do)."""
    width = encoder.config.hidden_size
    windows = audio_config.windows if audio_config is not None else 1
    return {
        sid: np.random.default_rng(int(sid[-2:]))
        .standard_normal(((windows if int(sid[-1]) % 2 else 1) * 119, width))
        .astype(np.float16)
        for sid in song_ids
    }


def train_fake(config: TrainConfig) -> Path:
    """`train` with the stand-in embeddings."""
    return train(config, embed=fake_music_embeddings)


def tiny_config(data: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(
        data=str(data),
        out=str(out),
        preset="recap",
        size="tiny",
        batch_size=4,
        epochs=2,
        val_every_epochs=1,
        log_every_steps=2,
        checkpoint_every_steps=0,
        progress=False,
        align_weight=0.5,  # large enough that a broken alignment path changes the weights
    )
    values.update(overrides)
    return TrainConfig(**values)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "last" / "model.safetensors"))


# ----------------------------------------------------------------------------- batching


def test_sampler_covers_every_example_once_and_groups_by_length():
    lengths = np.random.default_rng(1).integers(5, 500, size=103)
    sampler = LengthGroupedBatchSampler(lengths, batch_size=8, seed=3, mega_batch_mult=4)
    sampler.set_epoch(0)
    batches = list(sampler)
    assert len(batches) == sampler.batches_per_epoch() == 13
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(103))
    # Within a batch lengths are sorted descending (a mega-batch is sorted, then cut).
    assert all(list(lengths[b]) == sorted(lengths[b], reverse=True) for b in batches)

    # Grouping pads less than a random order would.
    def padding(bs):
        return sum(len(b) * max(lengths[b]) - sum(lengths[b]) for b in bs)

    rng = np.random.default_rng(0)
    perm = rng.permutation(103)
    random_batches = [perm[i : i + 8] for i in range(0, 103, 8)]
    assert padding(batches) < 0.5 * padding(random_batches)


def test_sampler_is_deterministic_per_epoch_and_resumes_mid_epoch():
    lengths = list(range(50))
    a = LengthGroupedBatchSampler(lengths, 6, seed=7)
    b = LengthGroupedBatchSampler(lengths, 6, seed=7)
    a.set_epoch(2)
    b.set_epoch(2)
    full = list(a)
    assert full == list(b)
    b.set_epoch(3)
    assert list(b) != full  # another epoch, another order
    b.set_epoch(2, start_batch=3)
    assert len(b) == len(full) - 3
    assert list(b) == full[3:]
    c = LengthGroupedBatchSampler(lengths, 6, seed=8)
    assert list(c) != list(LengthGroupedBatchSampler(lengths, 6, seed=7))


def test_sampler_shards_each_global_batch_across_ranks():
    lengths = np.random.default_rng(2).integers(1, 100, size=37)
    one = LengthGroupedBatchSampler(lengths, 8, seed=0, num_replicas=1)
    ranks = [LengthGroupedBatchSampler(lengths, 8, seed=0, num_replicas=2, rank=r) for r in (0, 1)]
    shards = [list(r) for r in ranks]
    assert len(shards[0]) == len(shards[1]) == len(list(one))
    for whole, r0, r1 in zip(one, *shards):
        assert len(r0) == len(r1)
        # The last global batch (5 examples) is padded by repeating one of its own examples.
        assert set(r0 + r1) == set(whole) and len(r0 + r1) == len(whole) + len(whole) % 2
    with pytest.raises(ValueError):
        LengthGroupedBatchSampler(lengths, 7, num_replicas=2)


def test_sampler_keeps_units_of_one_songs_captions_together():
    songs = [f"s{i // 4:02d}" for i in range(4 * 25)][:-1]  # 25 songs, 4 captions (one has 3)
    lengths = np.random.default_rng(4).integers(5, 300, size=len(songs))
    sampler = LengthGroupedBatchSampler(
        lengths, 16, seed=1, mega_batch_mult=2, groups=songs, per_group=4
    )
    batches = list(sampler)
    assert len(batches) == sampler.batches_per_epoch()
    assert sorted(i for b in batches for i in b) == list(range(len(songs)))
    # Four songs per batch of 16, so the collator encodes 4 sources, not 16; the song with three
    # captions goes last (units cut in two could only be there) and is the short last batch.
    counts = [len({songs[i] for i in b}) for b in batches]
    assert sorted(counts) == [1] + [4] * 6
    assert batches != list(LengthGroupedBatchSampler(lengths, 16, seed=1, mega_batch_mult=2))
    with pytest.raises(ValueError):
        LengthGroupedBatchSampler(lengths, 16, per_group=4)  # no groups


def test_captions_of_one_song_share_its_source_and_decode_as_if_repeated():
    from recap.models.config import RecapConfig
    from recap.models.model import RecapModel

    songs = [Example(f"s{i}", [0, 10 + i, 11, 12 + i, 2], [0, 20 + k, 21, 2]) for i in range(2) for k in range(3)]  # fmt: skip
    plain = Collator(pad_token_id=1)(songs)
    shared = Collator(pad_token_id=1, share_sources=True)(songs)
    assert "source_index" not in plain and plain["input_ids"].shape[0] == 6
    assert shared["input_ids"].shape[0] == 2 and shared["song_ids"] == ["s0", "s1"]
    assert shared["source_index"].tolist() == [0, 0, 0, 1, 1, 1]
    torch.testing.assert_close(shared["input_ids"][shared["source_index"]], plain["input_ids"])
    # A caption whose lyrics are dropped reads its own (empty) source.
    dropping = Collator(pad_token_id=1, lyrics_dropout=0.5, seed=3, share_sources=True)(songs)
    assert dropping["input_ids"].shape[0] == len(set(dropping["source_index"].tolist())) > 2
    assert len(dropping["lyrics_present"]) == dropping["input_ids"].shape[0]

    torch.manual_seed(0)
    config = RecapConfig.preset(
        "recap", "tiny", align_weight=1.0, copy_head=True, copy_coverage=2,
        copy_word_positions=8, copy_select_weight=0.5,
    )  # fmt: skip
    model = RecapModel(config).eval()
    model.copy_head.word_start.fill_(2)  # no tokenizer here: every token is a word of its own
    music = torch.randn(2, 119, config.music_dim)
    with torch.no_grad():
        once = model(**{k: v for k, v in shared.items() if k != "n_tokens"}, music_embeds=music)
        repeated = model(plain["input_ids"], plain["attention_mask"], labels=plain["labels"],
                         music_embeds=music[shared["source_index"]], song_ids=plain["song_ids"])  # fmt: skip
    torch.testing.assert_close(once.logits, repeated.logits)
    torch.testing.assert_close(once.caption_loss, repeated.caption_loss)
    torch.testing.assert_close(once.align_loss, repeated.align_loss)
    # each caption's selector targets are its own caption's words, read from its own source
    assert once.select_loss.item() > 0
    torch.testing.assert_close(once.select_loss, repeated.select_loss)


# ----------------------------------------------------------------------------- TrainConfig


def test_train_config_flags_come_from_the_dataclass():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(
        [
            "--data",
            "D",
            "--out",
            "R",
            "--preset",
            "bart-fusion",
            "--batch-size",
            "12",
            "--lr",
            "3e-4",
            "--no-progress",
            "--set",
            "dropout=0.2",
            "--set",
            "fusion_scale=0.5",
            "--align-weight",
            "0.05",
        ]  # fmt: skip
    )
    cfg = config_from_args(args)
    assert (cfg.preset, cfg.batch_size, cfg.lr, cfg.progress) == ("bart-fusion", 12, 3e-4, False)
    assert cfg.model_overrides == {"dropout": 0.2, "fusion_scale": 0.5}
    assert cfg.align_weight == 0.05
    # Left-out flags keep defaults; the paper size resolves to the paper's protocol (SPEC §2).
    paper = TrainConfig(data="D", out="R").resolved()
    assert (paper.batch_size, paper.lr, paper.epochs, paper.optimizer) == (
        48,
        6e-5,
        50,
        "adafactor",
    )
    assert TrainConfig.from_dict(paper.to_dict()) == paper
    with pytest.raises(Exception, match="val_metric"):
        TrainConfig(val_metric="bleu").resolved()


def test_paper_preset_builds_the_authors_adafactor():
    """Paper size: Hugging Face's default `scale_parameter=True` (a step is lr x RMS(weight));
    the demo sizes keep the unscaled step their lr was measured with."""
    paper = TrainConfig(preset="recap", size="paper").resolved()
    small = TrainConfig(preset="recap", size="small").resolved()
    assert paper.adafactor_scale_parameter is True and small.adafactor_scale_parameter is False
    opt = build_optimizer(paper, [torch.nn.Parameter(torch.zeros(2))])
    d = opt.defaults
    assert (d["scale_parameter"], d["relative_step"], d["warmup_init"]) == (True, False, False)
    assert d["lr"] == paper.lr

    def update_rms(cfg: TrainConfig) -> float:
        torch.manual_seed(0)
        weight = torch.nn.Parameter(0.02 * torch.randn(64, 64))  # std 0.02, as BART's init
        before = weight.detach().clone()
        opt = build_optimizer(cfg, [weight])
        weight.grad = torch.randn(64, 64)
        opt.step()
        return float((weight.detach() - before).pow(2).mean().sqrt())

    lr = paper.lr
    # Scaled: the step is about lr x RMS(weight) = lr x 0.02; unscaled it is about lr.
    scaled = update_rms(paper)
    unscaled = update_rms(
        TrainConfig(preset="recap", size="paper", adafactor_scale_parameter=False).resolved()
    )
    assert scaled == pytest.approx(lr * 0.02, rel=0.2)
    assert unscaled == pytest.approx(lr, rel=0.2)
    # A run saved before the flag existed was trained unscaled: it still reads that way.
    old = {k: v for k, v in small.to_dict().items() if k != "adafactor_scale_parameter"}
    assert TrainConfig.from_dict(old).adafactor_scale_parameter is False


def test_align_lr_gives_the_alignment_parameters_their_own_learning_rate():
    from types import SimpleNamespace

    from recap.models.config import RecapConfig
    from recap.models.model import RecapModel
    from recap.training.train import Trainer

    model = RecapModel(RecapConfig.preset("recap", "tiny", align_pool="attention"))
    names = {id(p): n for n, p in model.named_parameters()}
    paper = TrainConfig(preset="recap", size="tiny").resolved()
    assert paper.align_lr is None  # the paper's: one learning rate for everything
    plain = Trainer._param_groups(SimpleNamespace(cfg=paper), model)
    assert len(plain) == len(list(model.parameters()))
    assert len(build_optimizer(paper, plain).param_groups) == 1
    cfg = TrainConfig(preset="recap", size="tiny", align_lr=0.05).resolved()
    groups = Trainer._param_groups(SimpleNamespace(cfg=cfg), model)
    opt = build_optimizer(cfg, groups)
    rest, align = opt.param_groups
    assert (rest["lr"], align["lr"]) == (cfg.lr, 0.05)
    assert {names[id(p)] for p in align["params"]} == {
        "align_proj.weight", "align_proj.bias", "align_pool.score.weight", "align_pool.score.bias"
    }  # fmt: skip
    assert len(rest["params"]) + len(align["params"]) == len(plain)
    with pytest.raises(Exception, match="align_lr"):
        TrainConfig(align_lr=0.0).resolved()


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_end_to_end_cpu_run_with_real_embedding_cache(tmp_path):
    """Real path: wav files → embedding cache → train → validate → RUN/best loads."""
    from recap.models.model import RecapModel

    data = make_dataset(tmp_path / "data", n_songs=6, per_song=2, audio=True)
    run = train(tiny_config(data, tmp_path / "run", epochs=1, embed_workers=0))
    for name in ("train_config.json", "log.jsonl", "done.json", "last/model.safetensors",
                 "best/config.json", "best/tokenizer.json", "tokenizer/tokenizer.json"):  # fmt: skip
        assert (run / name).exists(), name
    assert any((run / "tb").iterdir())
    done = json.loads((run / "done.json").read_text())
    assert done["val_metric"] == "rougeL_f1" and 0.0 <= done["best_metric"] <= 1.0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "caption_loss" in r and "event" not in r]
    assert steps and {"loss", "align_loss", "lr", "samples_per_s", "tokens_per_s"} <= set(steps[0])
    assert any(r.get("event") == "validation" for r in log)

    model = RecapModel.from_pretrained(run / "best")
    assert model.music_encoder is not None  # captions audio files on its own
    # The words of the training captions travel with the model (known-words decoding).
    from recap.data.songs import load_splits
    from recap.inference.words import caption_vocabulary
    from recap.training.collate import caption_texts

    train_rows = load_splits(data, val_fraction=0.1, seed=tiny_config(data, run).seed)["train"]
    assert model.caption_words == frozenset(caption_vocabulary(caption_texts(train_rows)))
    tok = model.tokenizer
    enc = tok(["love night river;sun rain heart"], return_tensors="pt")
    out = model.generate(enc["input_ids"], enc["attention_mask"],
                         waveform=torch.zeros(1, 16_000), max_new_tokens=5)  # fmt: skip
    assert out.shape[0] == 1
    # A finished run is reused, not retrained.
    stamp = (run / "done.json").stat().st_mtime_ns
    assert train(tiny_config(data, tmp_path / "run", epochs=1, embed_workers=0)) == run
    assert (run / "done.json").stat().st_mtime_ns == stamp


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    data = make_dataset(tmp_path / "data")
    # Lyrics dropout and songs heard in 1 or 2 windows (padded music with a mask) must resume
    # exactly too: the dropout draw depends on (seed, epoch, example) only.
    extra = {"lyrics_dropout": 0.3, "windows": 2}
    # 8 songs x 3 train rows = 24 examples, batch 4: 6 steps per epoch, 12 in all.
    straight = train_fake(tiny_config(data, tmp_path / "a", **extra))
    # Stop mid-epoch 2 (step 8), resume; then stop exactly at an epoch end (step 6) and resume.
    paused = train_fake(
        tiny_config(data, tmp_path / "b", max_steps=8, checkpoint_every_steps=3, **extra)
    )
    assert not (paused / "done.json").exists()
    state = json.loads((paused / "last" / "state.json").read_text())
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (8, 1, 2)
    with pytest.raises(Exception, match="--resume"):
        train_fake(tiny_config(data, tmp_path / "b", **extra))
    resumed = train_fake(tiny_config(data, tmp_path / "b", resume=True, **extra))
    assert (resumed / "done.json").exists()
    # The model records the windows it was trained on: captioning hears as many by default.
    assert json.loads((resumed / "best" / "config.json").read_text())["music_windows"] == 2

    a, b = final_weights(straight), final_weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    done_a = json.loads((straight / "done.json").read_text())
    done_b = json.loads((resumed / "done.json").read_text())
    assert done_a["best_metric"] == done_b["best_metric"]
    assert [v["rougeL_f1"] for v in done_a["validations"]] == [
        v["rougeL_f1"] for v in done_b["validations"]
    ]


def test_weight_average_is_validated_saved_as_best_and_resumed(tmp_path):
    from safetensors.torch import load_file

    from recap.training.ema import EMA_NAME, WeightAverage

    # The average itself: one update moves it (1 - decay) of the way to the weights.
    layer = torch.nn.Linear(2, 2)
    ema = WeightAverage(layer, 0.9)
    before = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(1.0)
    ema.update()
    torch.testing.assert_close(ema.shadow["weight"], before + 0.1)
    with ema.applied():
        torch.testing.assert_close(layer.weight.detach(), before + 0.1)
    torch.testing.assert_close(layer.weight.detach(), before + 1.0)  # put back

    data = make_dataset(tmp_path / "data")
    # val every epoch, 2 epochs: RUN/best is one of the two averages, never the raw weights.
    straight = train_fake(tiny_config(data, tmp_path / "a", ema_decay=0.5, val_every_epochs=3))
    raw = final_weights(straight)
    average = load_file(str(straight / "last" / EMA_NAME))
    best = load_file(str(straight / "best" / "model.safetensors"))
    trained = [k for k in average if k in best]
    assert trained and any(not torch.equal(raw[k], average[k]) for k in trained)
    for key in trained:  # only validation after the last epoch: best is the final average
        torch.testing.assert_close(best[key], average[key], rtol=0, atol=0, msg=key)

    paused = train_fake(
        tiny_config(data, tmp_path / "b", ema_decay=0.5, val_every_epochs=3, max_steps=8)
    )
    resumed = train_fake(
        tiny_config(data, tmp_path / "b", ema_decay=0.5, val_every_epochs=3, resume=True)
    )
    assert resumed == paused
    again = load_file(str(resumed / "last" / EMA_NAME))
    for key in average:
        torch.testing.assert_close(again[key], average[key], rtol=0, atol=1e-6, msg=key)
    with pytest.raises(RecapError, match="ema_decay"):
        TrainConfig(data="d", out="o", ema_decay=1.0).resolved()


def test_val_every_epochs_zero_validates_once_and_keeps_the_end_as_best(tmp_path):
    from safetensors.torch import load_file

    data = make_dataset(tmp_path / "data")
    run = train_fake(tiny_config(data, tmp_path / "run", epochs=3, val_every_epochs=0))
    done = json.loads((run / "done.json").read_text())
    assert [v["epoch"] for v in done["validations"]] == [3] and done["best_epoch"] == 3
    best = load_file(str(run / "best" / "model.safetensors"))
    last = final_weights(run)
    # the same tensors (the two files may name the tied embedding differently)
    shared = [k for k in best if k in last]
    assert len(shared) > 10 and all(torch.equal(best[k], last[k]) for k in shared)
    with pytest.raises(RecapError, match="val_every_epochs"):
        TrainConfig(data="d", out="o", size="tiny", val_every_epochs=-1).resolved()


def test_captions_per_song_trains_end_to_end_and_resumes_exactly(tmp_path):
    data = make_dataset(tmp_path / "data", per_song=3)
    config = tiny_config(data, tmp_path / "run", epochs=2, captions_per_song=3, lyrics_dropout=0.3)
    run = train_fake(config)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any("caption_loss" in r and r.get("samples_per_s", 0) > 0 for r in log)
    one_by_one = final_weights(train_fake(tiny_config(data, tmp_path / "rows", epochs=2)))
    grouped = final_weights(run)
    assert any(not torch.equal(grouped[k], one_by_one[k]) for k in grouped)  # other batches
    # Interrupted after 3 steps and resumed: the same weights (the units are a function of the
    # seed and the epoch, like single rows).
    part = str(tmp_path / "part")
    paused = train_fake(
        dataclasses.replace(config, out=part, max_steps=3, checkpoint_every_steps=3)
    )
    assert not (paused / "done.json").exists()
    again = final_weights(train_fake(dataclasses.replace(config, out=part, resume=True)))
    for key in grouped:
        torch.testing.assert_close(again[key], grouped[key], rtol=0, atol=1e-6, msg=key)
    with pytest.raises(RecapError, match="captions_per_song"):
        TrainConfig(data="d", out="o", size="tiny", captions_per_song=0).resolved()


def test_bart_preset_trains_without_music_and_changed_settings_are_refused(tmp_path):
    def no_music(*args, **kwargs):  # the lyrics-only baseline must never ask for audio
        raise AssertionError("bart preset asked for music embeddings")

    data = make_dataset(tmp_path / "data", n_songs=5, per_song=2)
    cfg = tiny_config(data, tmp_path / "run", preset="bart", epochs=1, optimizer="adamw",
                      align_weight=None, max_grad_norm=1.0)  # fmt: skip
    run = train(cfg, embed=no_music)
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["optimizer"] == "adamw" and saved["lr"] == 1e-3  # resolved size default
    with pytest.raises(Exception, match="other settings"):
        train(tiny_config(data, tmp_path / "run", preset="bart", epochs=1, lr=0.5,
                          align_weight=None, optimizer="adamw", max_grad_norm=1.0))  # fmt: skip


def test_checkpoint_swap_leaves_one_complete_copy(tmp_path):
    from recap.training.checkpoint import existing_dir as _existing_dir
    from recap.training.checkpoint import swap_dir as _swap_dir

    last = tmp_path / "last"
    for version in ("1", "2"):
        tmp = tmp_path / ".last.tmp"
        tmp.mkdir()
        (tmp / "state.json").write_text(version)
        _swap_dir(tmp, last)
        assert (last / "state.json").read_text() == version
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    # A kill between the two renames leaves only last.old: resume reads it.
    last.rename(tmp_path / "last.old")
    assert _existing_dir(last) == tmp_path / "last.old"


# ----------------------------------------------------------------------------- lyrics dropout


def _examples(n: int) -> list[Example]:
    return [Example(f"s{i:02d}", [0, 10 + i, 11 + i, 12, 2], [0, 20 + i % 7, 2]) for i in range(n)]


def test_lyrics_dropout_empties_a_share_of_examples_deterministically():
    examples = _examples(400)
    collate = Collator(pad_token_id=1, lyrics_dropout=0.25, empty_lyrics_ids=(0, 2), seed=7)
    batch = collate(examples)
    present = batch["lyrics_present"]
    dropped = [i for i, p in enumerate(present) if not p]
    assert 0.18 < len(dropped) / len(examples) < 0.32
    # A dropped row is exactly <s></s> then padding, and its attention mask says so.
    for i in dropped:
        assert batch["input_ids"][i, :2].tolist() == [0, 2]
        assert batch["attention_mask"][i].tolist() == [1, 1] + [0] * (
            batch["input_ids"].size(1) - 2
        )
    kept = [i for i, p in enumerate(present) if p]
    assert all(batch["attention_mask"][i].sum() == 5 for i in kept)
    assert batch["labels"].tolist() == collate(examples, train=False)["labels"].tolist()
    # Same (seed, epoch): same draw; another epoch draws again; validation never drops.
    assert collate(examples)["lyrics_present"] == present
    collate.epoch = 1
    assert collate(examples)["lyrics_present"] != present
    assert "lyrics_present" not in collate(examples, train=False)
    assert "lyrics_present" not in Collator(pad_token_id=1)(examples)  # off by default


def test_a_dropped_example_learns_its_comment_without_lyrics_when_the_row_has_one():
    from recap.data.songs import Row
    from recap.models.tokenizer import train_bpe_tokenizer
    from recap.training.collate import tokenize_rows

    rows = [
        Row(f"s{i}", "love night river", f'A harp leads. The text begins "love night" {i}.',
            extra={"comment_without_lyrics": "A harp leads."} if i % 2 else {})
        for i in range(40)
    ]  # fmt: skip
    tok = train_bpe_tokenizer([r.lyrics for r in rows] + [r.comment for r in rows], 300)
    examples = tokenize_rows(rows, tok, 32, 32)
    assert examples[0].caption_without_lyrics_ids is None
    assert tok.decode(examples[1].caption_without_lyrics_ids, skip_special_tokens=True) == (
        "A harp leads."
    )
    collate = Collator(pad_token_id=tok.pad_token_id, lyrics_dropout=0.5, seed=3)
    batch = collate(examples)
    labels = [tok.decode(ids, skip_special_tokens=True) for ids in batch["labels"].tolist()]
    for i, present in enumerate(batch["lyrics_present"]):
        # the audio-only reference only where the lyrics are gone and the row has one
        expected = rows[i].comment if present or i % 2 == 0 else "A harp leads."
        assert labels[i] == expected, i
    assert not all(batch["lyrics_present"][1::2])  # some odd rows did drop their lyrics
    assert [tok.decode(i, skip_special_tokens=True) for i in collate(examples, train=False)[
        "labels"
    ].tolist()] == [r.comment for r in rows]  # fmt: skip


def test_alignment_leaves_out_rows_without_lyrics():
    from recap.models.config import RecapConfig
    from recap.models.model import RecapModel

    torch.manual_seed(0)
    model = RecapModel(RecapConfig.preset("recap", "tiny", align_weight=1.0)).eval()
    examples = _examples(4)
    collate = Collator(pad_token_id=1)
    batch = collate(examples)
    music = torch.randn(4, 119, model.config.music_dim)
    empty = Collator(pad_token_id=1, lyrics_dropout=0.999, seed=1)(examples[2:])
    ids = torch.nn.functional.pad(empty["input_ids"], (0, batch["input_ids"].size(1) - 2), value=1)
    mixed = torch.cat([batch["input_ids"][:2], ids])  # rows 2, 3 without lyrics
    with torch.no_grad():
        both = model(mixed, (mixed != 1).long(), labels=batch["labels"], music_embeds=music,
                     lyrics_present=[True, True, False, False])  # fmt: skip
        inferred = model(mixed, (mixed != 1).long(), labels=batch["labels"], music_embeds=music)
        first_two = model(batch["input_ids"][:2], batch["attention_mask"][:2],
                          labels=batch["labels"][:2], music_embeds=music[:2])  # fmt: skip
    torch.testing.assert_close(both.align_loss, first_two.align_loss)
    torch.testing.assert_close(inferred.align_loss, first_two.align_loss)


def test_songs_with_different_window_counts_pad_their_music_with_a_mask():
    one, two = np.ones((119, 8), np.float16), np.full((238, 8), 2, np.float16)
    music, mask = pad_music([one, two])
    assert music.shape == (2, 238, 8) and mask.sum(axis=1).tolist() == [119, 238]
    assert not music[0, 119:].any()
    same, none = pad_music([one, one])
    assert same.shape == (2, 119, 8) and none is None  # one window: the paper's path, no mask


def test_a_finished_run_from_another_starting_point_is_refused(tmp_path):
    """A --bart or --encoder folder retrained in place, or a preset the code has changed since,
    makes a finished run stale: reusing it would report a model the settings no longer build."""
    from recap.training.config import StaleRunError, _folder_digest

    data = make_dataset(tmp_path / "data", n_songs=5, per_song=2)
    cfg = tiny_config(data, tmp_path / "run", preset="bart", epochs=1, align_weight=None)
    run = train(cfg)
    done = json.loads((run / "done.json").read_text())
    assert done["starts_from"]["preset"]["d_model"] == 32 and done["starts_from"]["bart"] is None
    assert train(cfg) == run  # same start: reused
    done["starts_from"]["preset"]["copy_head"] = not done["starts_from"]["preset"]["copy_head"]
    (run / "done.json").write_text(json.dumps(done))
    with pytest.raises(StaleRunError, match="starting point .*preset"):
        train(cfg)
    done["starts_from"]["preset"]["copy_head"] = not done["starts_from"]["preset"]["copy_head"]
    (run / "done.json").write_text(json.dumps(done))
    assert train(cfg) == run
    # a run saved before a setting existed was trained with its default: not stale; with
    # another value of it, stale
    assert done["starts_from"]["preset"].pop("music_memory") is False
    (run / "done.json").write_text(json.dumps(done))
    assert train(cfg) == run
    saved = done["starts_from"]["preset"]
    saved["use_music"] = saved["music_memory"] = True  # a preset readable now, but another
    (run / "done.json").write_text(json.dumps(done))
    with pytest.raises(StaleRunError, match="starting point .*preset"):
        train(cfg)
    saved["use_music"] = False
    del saved["music_memory"]
    (run / "done.json").write_text(json.dumps(done))
    assert train(cfg) == run
    # the same settings on training texts rewritten in place (a rebuilt benchmark): stale
    rows = (data / "dataset.jsonl").read_text().splitlines()
    (data / "dataset.jsonl").write_text("\n".join(reversed(rows)) + "\n")
    with pytest.raises(StaleRunError, match="starting point .*data"):
        train(cfg)
    # folder digests follow the files' contents, not their names or times
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    first = _folder_digest(str(tmp_path / "m"))
    (tmp_path / "m" / "config.json").write_text('{"d_model": 2}')
    assert _folder_digest(str(tmp_path / "m")) != first
    assert _folder_digest("facebook/bart-base") is None


# ----------------------------------------------------------------------------- text-only rows


def _text_rows_file(path: Path, n: int = 6) -> Path:
    """A `recap bench text-rows` file of `n` texts, two rows each, from the benchmark's code."""
    from recap.bench.text_rows import text_rows, write_text_rows
    from recap.training.text_corpus import Document

    docs = [
        Document(f"doc{i}", " ".join(WORDS[(i + k) % len(WORDS)] + "word" for k in range(12)))
        for i in range(n)
    ]
    return write_text_rows(text_rows(docs, per_text=2, seed=0), path)


def test_a_text_only_row_leaves_its_text_as_it_would_be_without_music():
    from recap.models.fusion import FusionBlock

    torch.manual_seed(0)
    block = FusionBlock(d_model=8, music_dim=6, num_heads=2).eval()
    text, music = torch.randn(3, 5, 8), torch.randn(3, 4, 6)
    mask = torch.ones(3, 4, dtype=torch.long)
    mask[1] = 0  # row 1 has no music at all
    with torch.no_grad():
        out = block(text, music, mask)
        alone = block(text[[0, 2]], music[[0, 2]])
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], block.layer_norm(text[1]))  # no update, only the norm
    torch.testing.assert_close(out[[0, 2]], alone)  # the other rows as without the silent one


def test_text_only_rows_get_no_music_no_alignment_and_keep_their_lyrics():
    from recap.models.config import RecapConfig
    from recap.models.model import RecapModel

    examples = _examples(4)
    examples[1].hears = examples[3].hears = False
    store = {e.song_id: np.ones((119, 16), np.float16) for e in examples}
    batch = Collator(pad_token_id=1, embeddings=store, music_dim=16, lyrics_dropout=0.999)(examples)
    assert batch["music_present"] == [True, False, True, False]
    assert batch["music_mask"].sum(dim=1).tolist() == [119, 0, 119, 0]
    assert batch["lyrics_present"] == [False, True, False, True]  # dropout spares them
    silent = Collator(pad_token_id=1, embeddings=store, music_dim=16)([examples[1], examples[3]])
    assert silent["music_embeds"].shape == (2, 1, 16) and not silent["music_mask"].any()

    torch.manual_seed(0)
    model = RecapModel(RecapConfig.preset("recap", "tiny", align_weight=1.0)).eval()
    batch = Collator(pad_token_id=1)(examples)
    music = torch.randn(4, 119, model.config.music_dim)
    mask = torch.tensor([[1] * 119, [0] * 119, [1] * 119, [0] * 119])
    with torch.no_grad():
        mixed = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"],
                      music_embeds=music, music_mask=mask,
                      music_present=[True, False, True, False])  # fmt: skip
        heard = model(batch["input_ids"][[0, 2]], batch["attention_mask"][[0, 2]],
                      labels=batch["labels"][[0, 2]], music_embeds=music[[0, 2]])  # fmt: skip
    torch.testing.assert_close(mixed.align_loss, heard.align_loss)
    assert torch.isfinite(mixed.loss)


def test_text_rows_state_the_texts_facts_and_never_a_held_out_text(tmp_path):
    from recap.bench.facts import lyrics_facts
    from recap.bench.templates import parse_caption
    from recap.bench.text_rows import COMMENT_WITHOUT_AUDIO, text_rows
    from recap.training.text_corpus import Document, Exclusion
    from recap.utils import SkipReport

    text = " ".join(["Gnade", "Himmel", "Sonne", "leuchtet", "hell", "über", "Tal"] * 2)
    held = "Dunkle Nacht umfängt das stille Land"
    docs = [Document("a", text), Document("b", held + ". " + text[:40]), Document("c", "zu kurz")]
    exclusion = Exclusion()
    exclusion.add_text(held)
    report = SkipReport("t")
    rows = text_rows(docs, per_text=3, seed=1, exclusion=exclusion, report=report)
    assert [r["music4all_id"] for r in rows] == ["text-a-0", "text-a-1", "text-a-2"]
    assert {i["item"] for i in report.items} == {"b", "c"}  # a held-out line; too short
    facts = lyrics_facts(text)
    for row in rows:
        assert row["split"] == "train" and row["lyrics"] == text
        for caption in (row["comment"], row[COMMENT_WITHOUT_AUDIO]):
            said = parse_caption(caption)
            assert said["first_line"] == facts.first_line and said["theme"] == facts.theme
            assert said["salient_words"] == list(facts.salient_words)
        assert "melody" in parse_caption(row["comment"])  # audio facts drawn, as a rendering's
        assert not {"melody", "tempo", "key", "mood"} & set(
            parse_caption(row[COMMENT_WITHOUT_AUDIO])
        )
    assert rows == text_rows(docs, per_text=3, seed=1, exclusion=exclusion)  # seeded


def test_recombined_text_rows_mix_texts_of_one_language(tmp_path):
    import json

    from recap.bench.facts import lyrics_facts, words
    from recap.bench.templates import parse_caption
    from recap.bench.text_rows import COMMENT_WITHOUT_AUDIO, text_rows, train_texts
    from recap.training.text_corpus import Document, Exclusion, split_sentences
    from recap.utils import SkipReport

    german = [
        "Die Sonne leuchtet hell über dem Tal. Der Himmel singt von Gnade und Sonne. "
        "Die Sonne sinkt.",
        "Im Walde rauschen Bäume leise. Die Vögel singen ihre Weise. Die Bäume schlafen.",
    ]
    english = "The river runs along the valley. The river sings of morning light."
    held = "Dunkle Nacht umfängt das stille Land"
    docs = [Document("a", german[0]), Document("b", german[1]), Document("c", english)]
    partner = Document("p", "Grüne Wiesen blühen im Frühling. Wiesen und Felder leuchten.", "w")
    leaky = Document("q", held + ". Wiesen blühen wieder.", "w2")
    exclusion = Exclusion()
    exclusion.add_text(held)
    report = SkipReport("t")

    rows = text_rows(docs, 1, 3, exclusion, report, recombined=2, partners=[partner, leaky])
    ids = [r["music4all_id"] for r in rows]
    assert ids[:3] == ["text-a-0", "text-b-0", "text-c-0"]  # the texts as they are, once
    assert sorted(ids[3:]) == sorted(f"text-mix{j}-{d}-0" for d in "abcp" for j in (0, 1))
    assert "q" in {i["item"] for i in report.items}  # a held-out line: never mixed in
    sentences = {s.strip() for t in [*german, english, partner.text] for s in split_sentences(t)}
    for row in rows[3:]:
        text = row["lyrics"]
        assert held not in text
        parts = [s.strip() for s in split_sentences(text)]
        assert set(parts) <= sentences
        origin = row["music4all_id"].split("-")[2]
        own = {"a": german, "b": german, "c": [english], "p": german + [partner.text]}[origin]
        if origin in "ab":
            own = own + [partner.text]
        assert {s.strip() for t in own for s in split_sentences(t)} >= set(parts)  # one language
        # cut after the sentence that reaches the original's length
        goal = len(words({"a": german[0], "b": german[1], "c": english, "p": partner.text}[origin]))
        assert len(words(text)) >= goal > len(words(" ".join(parts[:-1])))
        facts = lyrics_facts(text)  # the facts are the new text's, by the benchmark's rule
        said = parse_caption(row[COMMENT_WITHOUT_AUDIO])
        assert said["first_line"] == facts.first_line
        assert said["salient_words"] == list(facts.salient_words)
    originals = {*german, english, partner.text}
    assert len({r["lyrics"] for r in rows[3:]} - originals) >= 6  # new texts (a shuffle may not be)
    assert rows == text_rows(docs, 1, 3, exclusion, recombined=2, partners=[partner, leaky])
    assert [r["lyrics"] for r in rows[:3]] == [*german, english]  # a partner is never read as is
    # within="theme": the partner also shares the text's theme (the lexicon's reading)
    faith = "Gott der Herr ist gnädig und gerecht. Jesu Christ, dein Heil und Segen, Gottes Gnade."
    texts = {"a": german[0], "b": german[1], "c": english, "p": partner.text, "d": faith}
    group = {k: (lyrics_facts(t).language, lyrics_facts(t).theme) for k, t in texts.items()}
    assert group["d"] != group["a"] == group["b"] == group["p"]  # German: faith, nature
    themed_docs = [*docs, Document("d", faith)]
    themed = text_rows(
        themed_docs, 1, 3, exclusion, recombined=1, partners=[partner], within="theme"
    )
    assert len(themed) == 4 + 5
    for row in themed[4:]:
        origin = row["music4all_id"].split("-")[2]
        same = [t for k, t in texts.items() if group[k] == group[origin]]
        allowed = {s.strip() for t in same for s in split_sentences(t)}
        assert {s.strip() for s in split_sentences(row["lyrics"])} <= allowed
    with pytest.raises(ValueError, match="within"):
        text_rows(docs, 1, 3, exclusion, recombined=1, within="genre")

    bench = tmp_path / "bench"
    bench.mkdir()
    lines = [
        {"split": "train", "lyrics": "Eins zwei drei vier fünf", "work_id": "w1"},
        {"split": "train", "lyrics": "Eins zwei drei vier fünf", "work_id": "w1"},
        {"split": "test", "lyrics": "Nie gesehen im Training", "work_id": "w2"},
        {"split": "train", "lyrics": "Eine zweite Fassung desselben Werks", "work_id": "w1"},
    ]
    (bench / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), "utf-8")
    found = train_texts([bench])
    assert [(d.text, d.work_id) for d in found] == [
        ("Eins zwei drei vier fünf", "w1"),
        ("Eine zweite Fassung desselben Werks", "w1"),
    ]
    assert len({d.doc_id for d in found}) == 2  # one id each: their rows' ids differ


def test_training_with_text_rows_reads_them_unheard(tmp_path):
    data = make_dataset(tmp_path / "data")
    rows_file = _text_rows_file(tmp_path / "text-rows.jsonl")
    asked: list[str] = []

    def embed(data_dir, encoder, song_ids, **kwargs):
        asked.extend(song_ids)
        return fake_music_embeddings(data_dir, encoder, song_ids, **kwargs)

    run = train(tiny_config(data, tmp_path / "run", epochs=1, text_rows=str(rows_file)),
                embed=embed)  # fmt: skip
    assert asked and not any(s.startswith("text-") for s in asked)  # no audio asked for
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    start = next(r for r in log if r.get("event") == "start")
    assert start["n_train"] == len(make_rows_of(data)) + 12  # 6 texts, 2 rows each
    assert all(np.isfinite(r["loss"]) for r in log if "loss" in r)
    done = json.loads((run / "done.json").read_text())
    assert done["starts_from"]["text_rows"]  # the file's digest: other rows, another run
    bart = train(tiny_config(data, tmp_path / "bart", preset="bart", epochs=1, align_weight=None,
                             text_rows=str(rows_file)))  # fmt: skip
    assert (bart / "done.json").is_file()


def make_rows_of(data: Path) -> list:
    from recap.data.songs import load_splits

    return load_splits(data, val_fraction=0.1, seed=tiny_config(data, data).seed)["train"]


def test_a_captioner_starts_from_another_captioners_weights(tmp_path):
    from recap.models.model import RecapModel
    from recap.models.tokenizer import train_bpe_tokenizer

    data = make_dataset(tmp_path / "data", n_songs=5, per_song=2)
    bart_run = train(tiny_config(data, tmp_path / "bart", preset="bart", epochs=1,
                                 align_weight=None))  # fmt: skip
    run = train_fake(tiny_config(data, tmp_path / "fusion", preset="bart-fusion", epochs=1,
                                 align_weight=None, init=str(bart_run)))  # fmt: skip
    done = json.loads((run / "done.json").read_text())
    assert done["starts_from"]["init"]  # the folder's digest: another BART, another run

    trained = RecapModel.from_pretrained(run / "best")
    fresh = RecapModel(trained.config)
    fresh.attach_tokenizer(trained.tokenizer)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    copied, left = fresh.init_from(bart_run)  # a run folder: its best/ is read
    bart = RecapModel.from_pretrained(bart_run / "best").state_dict()
    after = fresh.state_dict()
    assert "bart.model.encoder.layers.0.fc1.weight" in copied
    assert "bart.lm_head.weight" in copied  # tied to the embeddings, copied with them
    assert all(torch.equal(after[k], bart[k]) for k in copied if k in bart)
    assert any(k.startswith("fusion") for k in left)
    assert all(torch.equal(after[k], before[k]) for k in left)  # the fusion starts fresh

    twin = RecapModel(trained.config)  # a fusion model from a fusion run: all but its encoder
    twin.attach_tokenizer(trained.tokenizer)
    copied, left = twin.init_from(run)
    assert any(k.startswith("fusion") for k in copied)
    assert left and all(k.startswith("music_encoder.") for k in left)

    fresh.attach_tokenizer(train_bpe_tokenizer(["other words entirely"] * 20, 300,
                                               out_dir=tmp_path / "tok"))  # fmt: skip
    with pytest.raises(RecapError, match="another tokenizer"):
        fresh.init_from(bart_run)
    with pytest.raises(RecapError, match="neither a model folder"):
        fresh.init_from(data)
    # a finished run is still reused once the model it started from is gone
    finished = (run / "done.json").read_text()
    shutil.rmtree(bart_run)
    again = train_fake(tiny_config(data, tmp_path / "fusion", preset="bart-fusion", epochs=1,
                                   align_weight=None, init=str(bart_run)))  # fmt: skip
    assert again == run and (run / "done.json").read_text() == finished  # not trained again
