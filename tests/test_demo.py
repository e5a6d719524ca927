"""`recap demo`, the main job, end to end on a tiny configuration (a few scores, tiny models)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from recap.demo import DemoConfig, check_tagger_settings, run_demo
from recap.utils import RecapError


def test_demo_runs_every_stage_and_records_what_it_measured(tmp_path, one_thread):
    # Text pretraining reads a small text file instead of the score corpora (minutes to parse).
    words = "night cold river light heart stone song rain field morning bird sorrow".split()
    # 8 words a text: enough for a first line and three key words (the text rows' facts)
    lines = [" ".join(words[(i + k) % len(words)] for k in range(8)) for i in range(60)]
    text = tmp_path / "lyrics.txt"
    text.write_text("\n\n".join(lines) + "\n", encoding="utf-8")
    cfg = DemoConfig(
        out=str(tmp_path / "demo"),
        limit=20,  # two test works at least: the swap test pairs different lyrics
        workers=1,
        renders_per_song=2,
        comments_per_render=2,
        tagger_preset="tiny",
        tagger_chroma_rotation=0.0,  # `tiny` has no chroma rows (tests/test_tagger.py rolls them)
        tagger_epochs=1,
        size="tiny",
        epochs=1,
        fusion_epochs=2,
        beams=1,
        max_new_tokens=16,
        meteor15=False,
        bootstrap=10,
        cross_source=str(tmp_path / "no-such-corpus"),  # the generalisation stage is skipped
        pretrain_steps=4,
        pretrain_sources=("none",),
        pretrain_texts=(str(text),),
        text_rows_per_text=1,
        text_rows_recombined=1,
        reference_steps=1,
    )
    result = run_demo(cfg)
    root = tmp_path / "demo"
    assert {r["method"] for r in result["table"]} == {"bart", "bart-fusion", "recap"}
    saved = json.loads((root / "results.json").read_text(encoding="utf-8"))
    assert saved["command"].startswith("recap demo")
    assert "commit" in saved and saved["cross_corpus"] is None
    for slots in saved["slots"]:
        # every captioner is checked for reading and hearing, not only scored by overlap
        assert slots["distinct"]["inputs"] > 0
        assert 0.0 <= slots["swap"]["lyrics_mean"] <= 1.0
        assert "lyrics_gap" in slots["diagnosis"]
        misses = slots["first_line_misses"]  # why the wrong quotes are wrong, counted
        assert sum(misses.values()) == round((1 - slots["accuracy"]["first_line"]) * slots["n"])
        # and the wrong word lists: none unless the F1 is below 1
        word_misses = slots["salient_word_misses"]
        assert set(word_misses) == {"not_stated", "unreadable", "repeated", "other_words"}
        assert (sum(word_misses.values()) == 0) == (slots["salient_words_f1"] == 1.0)
    # the machine's speed before and after, so that wall times compare across runs
    reference = saved["reference_samples_per_s"]
    assert reference["start"] > 0 and reference["end"] > 0 and reference["threads"] == 1
    # and what it ran on: the same seed prints other figures on another CPU model
    assert saved["machine"]["cpus"] >= 1 and saved["machine"]["cpu"]
    md = (root / "results.md").read_text(encoding="utf-8")
    assert "swap: A's audio" in md and "Table 1" in md and "Reference speed" in md
    assert f"Machine: {saved['machine']['cpu']}" in md
    assert (root / "experiments" / "sweep.png").is_file()
    # every captioner was fine-tuned from the demo's text-pretrained BART
    configs = sorted((root / "experiments").glob("full/*/seed0/train_config.json"))
    assert len(configs) == 3
    for path in configs:
        assert json.loads(path.read_text(encoding="utf-8"))["bart"] == str(root / "bart-lyrics")
    assert (root / "bart-lyrics" / "pretrain_metrics.json").is_file()
    # The demo's captioners learn audio-only interpretations too (lyrics dropout).
    run = root / "experiments" / "full" / "recap" / "seed0"
    assert json.loads((run / "train_config.json").read_text())["lyrics_dropout"] == 0.25
    # and on text-only rows of the texts the text pretraining read
    ids = [json.loads(r)["music4all_id"] for r in (root / "text-rows.jsonl").open(encoding="utf-8")]
    assert sum(not i.startswith("text-mix") for i in ids) == 12  # the file's 12 texts, once each
    # and one recombined text for each of them and each train text of the benchmark
    assert sum(i.startswith("text-mix0-bench-") for i in ids) > 0
    assert sum(i.startswith("text-mix0-") for i in ids) > 12
    # BART reads them; the fusion captioners start from its weights instead
    bart_run = root / "experiments" / "full" / "bart" / "seed0"
    rows_read = {p.parent.parent.name: json.loads(p.read_text())["text_rows"] for p in configs}
    assert rows_read == {"bart": str(root / "text-rows.jsonl"), "bart-fusion": None, "recap": None}
    assert json.loads(path.read_text(encoding="utf-8"))["init"] == str(bart_run)
    assert "--text-rows-per-text 1 --text-rows-recombined 1" in saved["command"]
    # the fusion models train their own number of epochs
    for method, epochs in (("bart", 1), ("bart-fusion", 2), ("recap", 2)):
        config = root / "experiments" / "full" / method / "seed0" / "train_config.json"
        assert json.loads(config.read_text(encoding="utf-8"))["epochs"] == epochs


def test_the_recorded_command_reproduces_the_run():
    from recap.demo import demo_command

    assert demo_command(DemoConfig()) == "recap demo --source music21 --out runs/demo"
    cfg = DemoConfig(seeds=(0, 1, 2), quote_lyrics=False, known_words=False, epochs=4)
    assert demo_command(cfg) == (
        "recap demo --source music21 --out runs/demo --seeds 0,1,2 --epochs 4 --free-quotes "
        "--free-words"
    )
    cfg = DemoConfig(fusion_epochs=0)
    assert demo_command(cfg).endswith("--fusion-epochs 0")
    cfg = DemoConfig(coupling=1.0, couple_by="language")
    assert demo_command(cfg).endswith("--out runs/demo --coupling 1 --couple-by language")
    from recap.cli import build_parser

    assert build_parser().parse_args(["demo", "--fusion-epochs", "0"]).fusion_epochs == 0
    assert demo_command(DemoConfig(fusion_from_bart=False)).endswith("--fusion-from-scratch")
    assert build_parser().parse_args(["demo", "--fusion-from-scratch"]).fusion_from_scratch
    assert demo_command(DemoConfig(music_memory=False)).endswith("--no-music-memory")
    assert not build_parser().parse_args(["demo", "--no-music-memory"]).music_memory
    assert build_parser().parse_args(["demo"]).music_memory
    # every setting that changes the results is named: by its flag, or from Python
    cfg = DemoConfig(
        tagger_preset="demo", tagger_chroma_rotation=0.0, lyrics_dropout=0.5, workers=1,
        tagger_crop_seconds=2.0,
    )  # fmt: skip
    assert demo_command(cfg) == (
        "recap demo --source music21 --out runs/demo --tagger-preset demo "
        "--tagger-chroma-rotation 0 --lyrics-dropout 0.5 "
        "with DemoConfig(tagger_crop_seconds=2.0) from Python"
    )
    from recap.cli import build_parser
    from recap.demo import _VALUE_FLAGS

    flags = build_parser().parse_args(
        ["demo", "--tagger-preset", "demo", "--lyrics-dropout", "0.5"]
    )
    assert (flags.tagger_preset, flags.lyrics_dropout) == ("demo", 0.5)
    assert set(_VALUE_FLAGS) <= set(vars(flags))  # every recorded flag is one `recap demo` takes


def test_the_weight_average_is_a_demo_flag_and_recorded():
    from recap.cli import build_parser
    from recap.cli.demo import train_overrides
    from recap.demo import demo_command
    from recap.evaluation.alignment import AlignmentDemoConfig, command_line

    parser = build_parser()
    args = parser.parse_args(["demo", "--epochs", "6", "--ema-decay", "0"])
    overrides = train_overrides(args, DemoConfig())
    assert overrides["ema_decay"] == 0.0
    assert overrides["val_every_epochs"] == DemoConfig().train_overrides["val_every_epochs"]
    cfg = DemoConfig(epochs=6, train_overrides=overrides)
    assert demo_command(cfg).endswith("--epochs 6 --ema-decay 0")
    # each command keeps its own default: the demo averages, the alignment sweep does not
    assert parser.parse_args(["demo"]).ema_decay == 0.99
    assert parser.parse_args(["demo-alignment"]).ema_decay == 0.0
    with pytest.raises(RecapError, match="ema-decay"):
        train_overrides(parser.parse_args(["demo", "--ema-decay", "1"]), DemoConfig())
    aligned = train_overrides(parser.parse_args(["demo-alignment"]), AlignmentDemoConfig())
    assert aligned == AlignmentDemoConfig().train_overrides
    averaged = AlignmentDemoConfig(train_overrides={**aligned, "ema_decay": 0.9})
    assert command_line(averaged).endswith("--ema-decay 0.9")
    assert "--ema-decay" not in command_line(AlignmentDemoConfig())


def test_a_tagger_without_chroma_rows_is_refused_before_any_rendering(tmp_path):
    cfg = DemoConfig(out=str(tmp_path / "demo"), tagger_preset="demo")
    assert DemoConfig().tagger_chroma_rotation > 0  # the default rolls the chroma rows
    with pytest.raises(RecapError, match="--tagger-chroma-rotation 0"):
        run_demo(cfg)
    assert not (tmp_path / "demo").exists()
    check_tagger_settings(dataclasses.replace(cfg, tagger_chroma_rotation=0.0))
    check_tagger_settings(DemoConfig())


def test_a_benchmark_of_another_shape_is_rebuilt_not_reused(tmp_path):
    from recap.demo import build_bench

    small = DemoConfig(out=str(tmp_path / "demo"), limit=3, workers=1, renders_per_song=1,
                       comments_per_render=2)  # fmt: skip
    bench = build_bench(small)
    first = (bench / "songs.jsonl").read_text("utf-8").splitlines()
    assert build_bench(small) == bench  # the same shape: reused
    bigger = dataclasses.replace(small, renders_per_song=2, comments_per_render=1)
    build_bench(bigger)
    songs = (bench / "songs.jsonl").read_text("utf-8").splitlines()
    assert len(songs) == 2 * len(first)
    assert set(first) <= set(songs)  # the first renderings kept as they were
    rows = (bench / "dataset.jsonl").read_text("utf-8").splitlines()
    assert len(rows) == len(songs)  # one interpretation each now


def test_only_the_fusion_captioners_get_the_music_memory(tmp_path):
    from recap.demo import experiment_config
    from recap.evaluation.alignment import AlignmentDemoConfig

    cfg = DemoConfig(train_overrides={**DemoConfig().train_overrides, "model_overrides": {"x": 1}})
    exp = experiment_config(cfg, tmp_path, tmp_path)
    for method in ("bart-fusion", "recap"):
        wanted = {"x": 1, "music_memory": True}
        assert exp.method_overrides[method]["model_overrides"] == wanted
        assert exp.method_overrides[method]["epochs"] == cfg.fusion_epochs  # kept beside it
    assert "model_overrides" not in exp.method_overrides.get("bart", {})  # BART hears nothing
    off = experiment_config(DemoConfig(music_memory=False), tmp_path, tmp_path)
    assert all("model_overrides" not in o for o in off.method_overrides.values())
    alignment = experiment_config(AlignmentDemoConfig(), tmp_path, tmp_path)
    assert all("model_overrides" not in o for o in alignment.method_overrides.values())
