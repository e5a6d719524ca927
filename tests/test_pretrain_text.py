"""`recap pretrain-text`: the noise, the text rules (held-out, exclusion) and the output folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import recap.training.pretrain_text as pt
from recap.training import denoising
from recap.training.denoising import Segment, corrupt
from recap.training.pretrain_text import PretrainConfig, pretrain_text
from recap.training.text_corpus import (
    Document,
    Exclusion,
    normalize_line,
    prepare,
    split_corpus,
    split_sentences,
)

MASK = 4
WORDS = "love night river sun rain heart road home light song fire dream".split()


def lyrics(i: int, lines: int = 4) -> str:
    """A small song: `lines` lines of four words, different per song."""
    return "\n".join(
        " ".join(WORDS[(i * 7 + j * 3 + k) % len(WORDS)] for k in range(4)) + f" {i}-{j}"
        for j in range(lines)
    )


def segment(n: int = 60, sentences: int = 4) -> Segment:
    step = n // sentences
    return Segment(list(range(100, 100 + n)), list(range(0, n, step))[:sentences])


# ----------------------------------------------------------------------------- the noise


def test_span_masking_rate_spans_and_single_mask_per_span():
    rng = np.random.default_rng(0)
    seg = segment(60)
    masked_counts, runs = [], []
    for _ in range(200):
        c = corrupt(seg, rng, MASK, copy_share=0.0, mask_ratio=0.3, permute_sentences=False)
        assert c.target == seg.ids and not c.copy
        masked_counts.append(sum(c.masked))
        # Without permutation every masked run of the target is one <mask> in the source.
        flags = np.array(c.masked)
        starts = np.flatnonzero(flags & ~np.r_[False, flags[:-1]])
        runs.append(len(starts))
        assert c.source.count(MASK) == len(starts)
        kept = [t for t, m in zip(seg.ids, c.masked) if not m]
        assert [t for t in c.source if t != MASK] == kept
    assert set(masked_counts) == {18}  # round(0.3 · 60), exactly
    # Spans of mean ~3 (runs merge when they touch, so slightly fewer than 18 / 3.05).
    assert 4.0 <= np.mean(runs) <= 6.2


def test_span_lengths_are_poisson_lambda_3():
    rng = np.random.default_rng(1)
    lengths = [denoising.span_length(rng, 3.0, 100) for _ in range(20_000)]
    assert min(lengths) == 1
    # E[max(1, X)] for X ~ Poisson(3) = 3 + P(X = 0) = 3.05; variance ~ 3
    assert abs(np.mean(lengths) - 3.05) < 0.05 and abs(np.var(lengths) - 2.85) < 0.2
    assert denoising.span_length(rng, 3.0, 2) <= 2


def test_sentence_permutation_and_uncorrupted_share():
    rng = np.random.default_rng(2)
    seg = segment(40, sentences=4)
    copies, permuted = 0, 0
    for _ in range(400):
        c = corrupt(seg, rng, MASK, copy_share=0.5, mask_ratio=0.3)
        if c.copy:
            copies += 1
            assert c.source == c.target == seg.ids and not any(c.masked)
            continue
        visible = [t for t in c.source if t != MASK]
        assert sorted(visible) == sorted(t for t, m in zip(seg.ids, c.masked) if not m)
        permuted += visible != sorted(visible)  # ids rise along the original order
    assert 160 <= copies <= 240  # ~50 %
    assert permuted > 100  # most corrupted inputs are out of order
    # Seeded: the same generator state gives the same pair.
    a = corrupt(seg, np.random.default_rng(5), MASK, 0.0)
    b = corrupt(seg, np.random.default_rng(5), MASK, 0.0)
    assert a == b


def test_sentences_and_line_normalisation():
    text = "Meine Seel’ erhebt den Herren; und mein Geist freut sich. Amen!"
    assert split_sentences(text) == [
        "Meine Seel’ erhebt den Herren;",
        " und mein Geist freut sich.",
        " Amen!",
    ]
    # Line breaks (';' without a space) and the poet's '; ' both survive a round trip.
    assert split_sentences("one line;two line") == ["one line;", "two line"]
    assert "".join(split_sentences(text)) == text
    assert normalize_line("Meine SEEL’, erhebt!") == normalize_line("meine seel erhebt")


# ----------------------------------------------------------------------------- the text rules


def test_held_out_lines_are_never_trained_on():
    docs = [Document(f"w{i}", prepare(lyrics(i)), f"w{i}") for i in range(40)]
    # The same hymn under another work id: its lines must not leak in through the copy.
    docs.append(Document("twin", docs[3].text, "twin"))
    corpus = split_corpus(docs, Exclusion(), held_out_share=0.2, seed=0)
    held = {normalize_line(s) for doc in corpus.held_out for s in doc}
    trained = {normalize_line(s) for doc in corpus.train for s in doc}
    assert len(corpus.held_out) == 8 and held
    assert not held & trained
    again = split_corpus(docs, Exclusion(), held_out_share=0.2, seed=0)
    assert again.held_out == corpus.held_out  # seeded


def test_val_and_test_works_of_a_benchmark_are_excluded(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    songs, rows = [], []
    for i, split in enumerate(["train", "val", "test", "train"]):
        songs.append(
            {
                "song_id": f"w{i}-0",
                "work_id": f"w{i}",
                "split": split,
                "source": str(tmp_path / f"w{i}.mxl"),
            }  # fmt: skip
        )
        rows.append({"music4all_id": f"w{i}-0", "lyrics": lyrics(i), "split": split})
    (bench / "songs.jsonl").write_text("".join(json.dumps(s) + "\n" for s in songs))
    (bench / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ex = Exclusion.from_benchmarks([bench])
    assert ex.work_ids == {"w1", "w2"}
    docs = [Document(f"w{i}", prepare(lyrics(i)), f"w{i}") for i in range(4)]
    docs.append(Document("x", prepare(lyrics(2)), "x", str(tmp_path / "w2.mxl")))  # by path
    # Another work that quotes one line of a test song keeps its other lines only.
    quoting = lyrics(2).splitlines()[1] + "\n" + lyrics(9)
    docs.append(Document("q", prepare(quoting), "q"))
    corpus = split_corpus(docs, ex, held_out_share=0.0, seed=0)
    assert corpus.stats["excluded_works"] == 3
    trained = {normalize_line(s) for doc in corpus.train for s in doc}
    banned = {normalize_line(s) for i in (1, 2) for s in lyrics(i).splitlines()}
    assert not trained & banned
    assert {normalize_line(s) for s in lyrics(9).splitlines()} <= trained
    with pytest.raises(Exception, match="songs.jsonl"):
        Exclusion.from_benchmarks([tmp_path])


def test_segments_pack_sentences_within_the_cap():
    from recap.models.tokenizer import train_bpe_tokenizer

    texts = [prepare(lyrics(i)) for i in range(30)]
    tok = train_bpe_tokenizer(texts, vocab_size=300)
    docs = [split_sentences(t) for t in texts]
    for cap in (6, 12, 40):
        segs = denoising.make_segments(docs, tok, cap)
        assert all(0 < len(s.ids) <= cap for s in segs)
    whole = denoising.make_segments(docs[:1], tok, 1000)[0]
    # A whole song is its text, tokenised as the captioner tokenises it.
    assert tok.decode(whole.ids) == texts[0]
    assert whole.ids == tok(texts[0], add_special_tokens=False)["input_ids"]
    second = denoising.make_segments([docs[0][1:]], tok, 1000)[0]
    assert tok.decode(second.ids) == "".join(docs[0][1:]).lstrip()
    assert len(whole.starts) == len(docs[0])


# ----------------------------------------------------------------------------- the folder


def tiny_config(tmp_path: Path, **overrides) -> PretrainConfig:
    text = tmp_path / "lyrics.txt"
    if not text.exists():
        tmp_path.mkdir(parents=True, exist_ok=True)
        text.write_text("\n\n".join(lyrics(i) for i in range(30)), "utf-8")
    values = dict(
        out=str(tmp_path / "bart"), source=[], text=[str(text)], size="tiny", vocab_size=300,
        curriculum=[8, 16], max_steps=12, batch_size=4, warmup_steps=3, held_out_share=0.1,
        max_eval_lines=4, checkpoint_every_steps=5, log_every_steps=4, progress=False, threads=1,
    )  # fmt: skip
    values.update(overrides)
    return PretrainConfig(**values)


def test_pretraining_writes_a_bart_folder_that_from_bart_and_train_load(tmp_path):
    from recap.models.config import RecapConfig
    from recap.models.model import RecapModel

    out = pretrain_text(tiny_config(tmp_path))
    for name in ("config.json", "model.safetensors", "tokenizer.json", "pretrain_metrics.json"):
        assert (out / name).is_file(), name
    assert not out.with_name(out.name + ".partial").exists()
    metrics = json.loads((out / "pretrain_metrics.json").read_text())
    assert 0 <= metrics["copy_lines"]["exact"] <= 1 and metrics["copy_lines"]["n"] > 0
    assert 0 <= metrics["masked_span_accuracy"]["accuracy"] <= 1

    model = RecapModel.from_bart(out, RecapConfig.preset("bart", "tiny"))
    assert model.tokenizer is not None and model.tokenizer.mask_token_id == MASK
    assert model.config.vocab_size == len(model.tokenizer)
    enc = model.tokenizer(["love night river sun"], return_tensors="pt")
    assert model.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=4).shape[0] == 1

    # A finished folder with the same settings is reused; other settings are refused.
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert pretrain_text(tiny_config(tmp_path, progress=True)) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    # A folder written before a setting existed is reused while that setting is at its default.
    saved = json.loads((out / "pretrain_config.json").read_text())
    del saved["bpe_text"]
    (out / "pretrain_config.json").write_text(json.dumps(saved))
    assert pretrain_text(tiny_config(tmp_path)) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(Exception, match="overwrite"):
        pretrain_text(tiny_config(tmp_path, lr=0.5))

    # `recap train --bart DIR` fine-tunes from it as from facebook/bart-base.
    from test_train import make_dataset

    from recap.cli import main

    data = make_dataset(tmp_path / "data", n_songs=5, per_song=2)
    rc = main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--preset", "bart",
               "--size", "tiny", "--bart", str(out), "--epochs", "1", "--no-progress"])  # fmt: skip
    assert rc == 0
    tuned = RecapModel.from_pretrained(tmp_path / "run" / "best")
    assert tuned.config.d_model == model.config.d_model


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    straight = pretrain_text(tiny_config(tmp_path / "a"))

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pt, "evaluate", stop)  # killed after the last checkpoint (step 10)
    with pytest.raises(KeyboardInterrupt):
        pretrain_text(tiny_config(tmp_path / "b"))
    partial = tmp_path / "b" / "bart.partial"
    assert json.loads((partial / "last" / "state.json").read_text())["step"] == 10
    assert not (tmp_path / "b" / "bart").exists()  # nothing half-written in place
    monkeypatch.undo()
    resumed = pretrain_text(tiny_config(tmp_path / "b"))
    a = load_file(str(straight / "model.safetensors"))
    b = load_file(str(resumed / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_cli_flags(tmp_path):
    from recap.cli import build_parser
    from recap.cli.flags import dataclass_from_args

    args = build_parser().parse_args(
        [
            "pretrain-text",
            "--out",
            "x",
            "--source",
            "music21",
            "lieder",
            "--text",
            "a.txt",
            "--curriculum",
            "8",
            "16",
            "--copy-share",
            "0.3",
            "--no-permute-sentences",
        ]  # fmt: skip
    )
    cfg = dataclass_from_args(PretrainConfig, args)
    assert cfg.source == ["music21", "lieder"] and cfg.text == ["a.txt"]
    assert cfg.curriculum == [8, 16] and cfg.copy_share == 0.3 and not cfg.permute_sentences
    assert dataclass_from_args(PretrainConfig, build_parser().parse_args(
        ["pretrain-text", "--out", "x"])).curriculum == PretrainConfig().curriculum  # fmt: skip
    only_text = build_parser().parse_args(["pretrain-text", "--out", "x", "--source", "none",
                                           "--text", "a.txt"])  # fmt: skip
    assert dataclass_from_args(PretrainConfig, only_text).resolved().source == []
    with pytest.raises(Exception, match="curriculum"):
        PretrainConfig(out="x", curriculum=[2]).resolved()


def test_copy_attention_loss_reads_the_diagonal_of_copies_only():
    # One copy and one corrupted row whose labels are longer than any source in the batch.
    copy = denoising.Corrupted([10, 11, 12], [10, 11, 12], [False] * 3, True)
    noisy = denoising.Corrupted([MASK, 13], [20, 21, 22, 23, 13], [True] * 4 + [False], False)
    batch = denoising.make_batch([copy, noisy], 0, 2, 1)
    b, s = batch["input_ids"].shape
    t = batch["labels"].shape[1]
    assert t > s
    perfect = torch.zeros(b, 2, t, s)
    perfect[:, 0, torch.arange(s), torch.arange(s)] = 1.0
    assert pt.copy_attention_loss([perfect], batch).item() < 1e-4
    uniform = torch.full((b, 2, t, s), 1.0 / s)
    assert pt.copy_attention_loss([uniform, uniform], batch).item() == pytest.approx(np.log(s))


def test_bpe_text_reads_the_training_captions_of_a_dataset_only(tmp_path):
    from recap.training.text_corpus import read_bpe_text
    from recap.utils import RecapError

    rows = [
        {"lyrics": "Gott ist gut", "comment": 'It opens "Gott ist", about Gott.', "split": "train"},
        {"lyrics": "l1", "comment": "a slow hymn in the key of G", "split": "train"},
        {"lyrics": "l2", "comment": "a test caption never to be seen", "split": "test"},
        {"lyrics": "l3", "comment": "a fast song with a harp", "split": "train"},
    ]
    dataset = tmp_path / "dataset.jsonl"
    dataset.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert read_bpe_text(dataset) == [
        'It opens " ", about .',  # the words quoted from the lyrics keep the lyrics' pieces
        "a slow hymn in the key of G",
        "a fast song with a harp",
    ]
    plain = tmp_path / "more.txt"
    plain.write_text("first verse\nline two\n\nsecond verse\n")
    assert read_bpe_text(plain) == ["first verse;line two", "second verse"]  # SPEC §1.2
    (tmp_path / "bad.jsonl").write_text('{"comment": "x"}\nnot json\n')
    with pytest.raises(RecapError, match="bad.jsonl:2"):
        read_bpe_text(tmp_path / "bad.jsonl")


def test_the_bpe_learns_the_extra_text(tmp_path):
    from recap.models.tokenizer import load_tokenizer

    caption = "Schwungvoll interpretiert"  # a word the lyrics never hold
    extra = tmp_path / "captions.jsonl"
    extra.write_text(
        "\n".join(json.dumps({"comment": caption, "split": "train"}) for _ in range(50))
    )
    without = pretrain_text(tiny_config(tmp_path / "a", max_steps=2, checkpoint_every_steps=0))
    with_extra = pretrain_text(
        tiny_config(tmp_path / "b", max_steps=2, checkpoint_every_steps=0, bpe_text=[str(extra)])
    )
    n = lambda out: len(load_tokenizer(out)(caption, add_special_tokens=False)["input_ids"])  # noqa: E731
    assert n(with_extra) < n(without)
    with pytest.raises(Exception, match="--tokenizer"):
        pretrain_text(tiny_config(tmp_path / "c", tokenizer=str(without), bpe_text=[str(extra)]))
