"""`recap evaluate` on tiny untrained models saved to tmp_path: every row is evaluated (the last
batch is partial), the CSV and JSON are written, sampling runs once per seed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from recap.evaluation.evaluate import evaluate, resolve_target
from recap.inference.generate import DecodeSettings
from recap.utils import RecapError

SONGS = {
    "s1": "the river runs down to the sea\nand carries my heart away",
    "s2": "cold winter night\nthe snow is falling on the town",
    "s3": "dance with me until the morning light",
    "s4": "thunder and rain\nthe storm is coming home tonight",
    "s5": "roses in the garden\nmy mother sings a quiet song",
}
# Seven test rows over five songs (s1 and s4 have two interpretations each).
TEST_ROWS = [
    ("s1", "a song about a river and lost love"),
    ("s1", "the sea stands for longing"),
    ("s2", "a cold winter song"),
    ("s3", "a dance until dawn"),
    ("s4", "a storm song about coming home"),
    ("s4", "thunder means anger here"),
    ("s5", "a quiet song about a mother"),
]


def make_dataset(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        {"music4all_id": sid, "lyrics": SONGS[sid], "comment": c, "votes": 1, "split": "test"}
        for sid, c in TEST_ROWS
    ]
    lines.append(
        {
            "music4all_id": "s1",
            "lyrics": SONGS["s1"],
            "comment": "train row",
            "votes": 0,
            "split": "train",
        }
    )
    with open(folder / "dataset.jsonl", "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    return folder


def make_model(folder: Path, method: str) -> Path:
    import torch

    from recap.models.config import RecapConfig
    from recap.models.model import RecapModel
    from recap.models.tokenizer import train_bpe_tokenizer

    torch.manual_seed(0)
    texts = list(SONGS.values()) + [c for _, c in TEST_ROWS]
    tokenizer = train_bpe_tokenizer(texts * 3, vocab_size=300)
    cfg = RecapConfig.preset(method, "tiny", vocab_size=len(tokenizer))
    model = RecapModel(cfg)
    model.save_pretrained(folder, tokenizer=tokenizer)
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = make_dataset(root / "data")
    bart = make_model(root / "bart", "bart")
    fusion = make_model(root / "fusion", "bart-fusion")
    return root, data, bart, fusion


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_every_row_is_evaluated_with_a_partial_last_batch(setup, tmp_path):
    root, data, bart, _ = setup
    # 5 songs in batches of 2: the last batch holds one song.
    decode = DecodeSettings(num_beams=2, max_new_tokens=6, batch_size=2)
    result = evaluate(
        bart, data, decode=decode, meteor15=False, bootstrap=20, out_dir=tmp_path, progress=False
    )
    assert result["n_examples"] == len(TEST_ROWS) and result["n_songs"] == len(SONGS)
    rows = _read_csv(tmp_path / "predictions.csv")
    assert list(rows[0]) == ["song_id", "lyrics", "reference", "prediction"]
    assert [(r["song_id"], r["reference"]) for r in rows] == TEST_ROWS
    assert rows[0]["lyrics"] == SONGS["s1"].replace("\n", ";")
    # One caption per song, shared by that song's rows.
    assert rows[0]["prediction"] == rows[1]["prediction"]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["n_examples"] == 7 and saved["split"] == "test"
    s = saved["summary"]
    for key in (
        "ROUGE-1 recall",
        "ROUGE-2 recall",
        "ROUGE-L recall",
        "ROUGE-L F1",
        "METEOR (NLTK)",
    ):
        assert 0.0 <= s[key] <= 1.0
    assert s["ROUGE-L recall low"] <= s["ROUGE-L recall"] <= s["ROUGE-L recall high"]
    assert "METEOR 1.5" not in s
    assert result["runs"][0]["seed"] is None  # beam search: deterministic, one run
    assert result["runs"][0]["captions_generated"] == len(SONGS)  # once per song
    # Two labelled sets, each with intervals; the caption set is multi-reference per song.
    sets = saved["metric_sets"]
    assert sets["paper"]["keys"][:3] == ["ROUGE-1 recall", "ROUGE-2 recall", "ROUGE-L recall"]
    assert sets["caption"]["keys"] == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"] + [
        "ROUGE-L (COCO)",
        "CIDEr-D",
    ]
    for key in sets["paper"]["keys"] + sets["caption"]["keys"]:
        assert s[f"{key} low"] <= s[f"{key} high"] and s[key] >= 0
    caption = saved["runs"][0]["caption"]
    assert caption["n_items"] == len(SONGS) and caption["n_references"] == len(TEST_ROWS)
    assert saved["runs"][0]["paper"]["n_items"] == len(TEST_ROWS)
    assert "per_example" not in json.dumps(saved)  # the CSV holds the texts
    # `recap score` reads the written predictions back, row by row.
    from recap.evaluation.score import score_predictions

    rescored = score_predictions(tmp_path / "predictions.csv", data, meteor15=False, bootstrap=20)
    assert rescored["matching"]["rows_matched_by_reference"] == len(TEST_ROWS)
    # The grounding measures need the model (loss gaps, swap captions): evaluate only.
    grounding = {"distinct captions", "lyrics gap", "audio gap", "encoder dependence"}
    assert set(rescored["summary"]) == set(s) - {"per_seed"} - grounding
    assert rescored["distinct"]["songs"] == len(SONGS)
    assert rescored["distinct"]["captions"] == len(set(result_captions(tmp_path)))


def test_batch_size_does_not_change_beam_search(setup, tmp_path):
    _, data, bart, _ = setup
    outs = []
    for bs in (1, 3):
        decode = DecodeSettings(num_beams=2, max_new_tokens=6, batch_size=bs)
        evaluate(
            bart,
            data,
            decode=decode,
            meteor15=False,
            bootstrap=5,
            out_dir=tmp_path / str(bs),
            progress=False,
        )
        outs.append([r["prediction"] for r in _read_csv(tmp_path / str(bs) / "predictions.csv")])
    assert outs[0] == outs[1]


def test_fusion_model_sampled_over_seeds_reads_music(setup, tmp_path):
    from recap.models.config import RecapConfig

    _, data, _, fusion = setup
    dim = RecapConfig.load(fusion / "config.json").music_dim
    rng = np.random.default_rng(0)
    music = {sid: rng.standard_normal((119, dim)).astype(np.float16) for sid in SONGS}
    decode = DecodeSettings.paper_sampled(seeds=(2022, 2021), max_new_tokens=6, batch_size=4)
    result = evaluate(
        fusion,
        data,
        decode=decode,
        meteor15=False,
        bootstrap=5,
        out_dir=tmp_path,
        embeddings=music,
        progress=False,
    )
    assert [r["seed"] for r in result["runs"]] == [2022, 2021]
    # Sampling draws a fresh caption for every row, as the authors' loop did.
    assert [r["captions_generated"] for r in result["runs"]] == [len(TEST_ROWS)] * 2
    for seed in (2022, 2021):
        assert len(_read_csv(tmp_path / f"predictions_seed{seed}.csv")) == len(TEST_ROWS)
    per_seed = result["summary"]["per_seed"]
    mean = np.mean([per_seed[s]["ROUGE-1 recall"] for s in ("2022", "2021")])
    assert result["summary"]["ROUGE-1 recall"] == pytest.approx(mean)
    # A song without music cannot be captioned by a fusion model: reported, not dropped silently.
    del music["s5"]
    partial = evaluate(
        fusion,
        data,
        decode=DecodeSettings(num_beams=1, max_new_tokens=4),
        meteor15=False,
        bootstrap=5,
        out_dir=tmp_path / "partial",
        embeddings=music,
        progress=False,
    )
    assert partial["n_examples"] == 6 and partial["skipped"] == 1
    assert "s5" in (tmp_path / "partial" / "skipped.json").read_text()


def test_run_folder_resolves_to_best_and_writes_into_run(setup, tmp_path, caplog):
    import shutil

    _, data, bart, _ = setup
    run = tmp_path / "RUN"
    shutil.copytree(bart, run / "best")
    (run / "train_config.json").write_text(
        json.dumps({"variant": "full", "seed": 42, "val_fraction": 0.1})
    )
    target = resolve_target(run)
    assert target.model_dir == run / "best" and target.run_dir == run
    decode = DecodeSettings(num_beams=1, max_new_tokens=4)
    result = evaluate(run, data, decode=decode, meteor15=False, bootstrap=5, progress=False)
    assert Path(result["out_dir"]) == run / "eval" / "test-beam1-len4"
    assert (run / "eval" / "test-beam1-len4" / "metrics.json").is_file()
    # No done.json: an unfinished run is evaluated, with a warning in the log, JSON and printout.
    assert result["run_status"]["finished"] is False
    assert "unfinished run" in caplog.text
    from recap.evaluation.evaluate import format_summary

    assert "WARNING" in format_summary(result) and "done.json" in format_summary(result)
    (run / "done.json").write_text("{}")
    caplog.clear()
    finished = evaluate(run, data, decode=decode, meteor15=False, bootstrap=5, progress=False)
    assert finished["run_status"]["finished"] is True and "unfinished" not in caplog.text


def test_decode_config_checks_and_cli_parse():
    import argparse

    from recap.cli.evaluate import register
    from recap.cli.flags import decode_from_args

    with pytest.raises(RecapError):
        DecodeSettings(top_p=0).check()
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        ["evaluate", "--model", "m", "--data", "d", "--sample", "--seeds", "1,2", "--beams", "3"]
    )
    d = decode_from_args(args)
    assert d.do_sample and d.seeds == (1, 2) and d.num_beams == 3 and d.top_p == 0.92
    assert DecodeSettings.from_dict(d.to_dict()) == d
    assert DecodeSettings().tag() == "beam4" and not DecodeSettings().do_sample


def result_captions(out_dir) -> list[str]:
    """One generated caption per song, from an evaluation's predictions.csv."""
    with open(out_dir / "predictions.csv", encoding="utf-8", newline="") as f:
        return list({r["song_id"]: r["prediction"] for r in csv.DictReader(f)}.values())
