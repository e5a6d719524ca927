"""`recap score`: another captioner's predictions scored with both metric sets; BLEU-4 and
CIDEr-D equal pycocoevalcap's own on the same multi-reference input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import recap.cli
from recap.evaluation.score import read_predictions, score_predictions
from recap.utils import RecapError

# Three test songs with two or three interpretations each, one train row.
ROWS = [
    ("s1", "A slow waltz for piano; it is about love.", "test"),
    ("s1", "love song, slow piano", "test"),
    ("s2", "The vocalist sounds sad.", "test"),
    ("s2", "She is sad and the singer knows it!", "test"),
    ("s2", "a sad song", "test"),
    ("s3", "An organ song in D major, fast.", "test"),
    ("s3", "fast organ", "test"),
    ("s9", "a train row", "train"),
]
CAPTIONS = {
    "s1": "A slow piano waltz about love.",
    "s2": "The singer is sad, isn't she?",
    "s3": "a fast organ song (in D major)",
}


@pytest.fixture
def data(tmp_path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    with open(folder / "dataset.jsonl", "w", encoding="utf-8") as f:
        for sid, comment, split in ROWS:
            rec = {"music4all_id": sid, "lyrics": f"lyrics of {sid}", "comment": comment}
            f.write(json.dumps({**rec, "split": split}) + "\n")
    return folder


def write_csv(path: Path, header: list[str], lines: list[list[str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(lines)
    return path


def test_score_cli_matches_pycocoevalcap_on_a_fixed_example(data, tmp_path, capsys):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    preds = write_csv(tmp_path / "other.csv", ["song_id", "caption"], list(CAPTIONS.items()))
    out = tmp_path / "scores.json"
    rc = recap.cli.main(
        ["score", str(preds), "--data", str(data), "--no-meteor15", "--bootstrap", "50"]
        + ["--out", str(out)]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "paper metrics" in printed and "caption metrics" in printed and "CIDEr-D" in printed
    result = json.loads(out.read_text())
    # pycocoevalcap's own pipeline on the same input: each song's caption against all of its
    # test interpretations, PTB-tokenised.
    gts, res = {}, {}
    for sid, comment, split in ROWS:
        if split == "test":
            gts.setdefault(sid, []).append({"caption": comment})
            res[sid] = [{"caption": CAPTIONS[sid]}]
    tok = PTBTokenizer()
    gts, res = tok.tokenize(gts), tok.tokenize(res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    s = result["summary"]
    assert bleu[3] > 0 and cider > 0
    assert s["BLEU-4"] == pytest.approx(bleu[3], rel=1e-12)
    assert s["CIDEr-D"] == pytest.approx(float(cider), rel=1e-12)
    assert s["CIDEr-D low"] <= s["CIDEr-D high"]
    # The paper set scores every test row (7), the caption set every song (3).
    assert result["paper"]["n_items"] == 7 and result["caption"]["n_items"] == 3
    assert result["metric_sets"]["paper"]["keys"][0] == "ROUGE-1 recall"
    assert result["matching"]["rows_matched_by_song"] == 7


def test_jsonl_with_references_is_matched_per_row(data, tmp_path):
    # Per-row captions (as sampling writes them): the row of s2's second interpretation gets
    # its own caption, which changes the paper set but not the caption set (first per song).
    lines = []
    for sid, comment, split in ROWS:
        if split == "test":
            caption = "an unrelated caption" if comment.startswith("She") else CAPTIONS[sid]
            lines.append({"music4all_id": sid, "reference": comment, "prediction": caption})
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    per_row = score_predictions(path, data, meteor15=False, bootstrap=20)
    by_song = score_predictions(
        write_csv(tmp_path / "p.csv", ["song_id", "prediction"], list(CAPTIONS.items())),
        data,
        meteor15=False,
        bootstrap=20,
    )
    assert per_row["matching"]["rows_matched_by_reference"] == 7
    assert per_row["summary"]["ROUGE-1 recall"] < by_song["summary"]["ROUGE-1 recall"]
    assert per_row["summary"]["CIDEr-D"] == pytest.approx(by_song["summary"]["CIDEr-D"])
    assert per_row["matching"]["songs_with_several_captions"] == 1


def test_missing_and_unknown_songs_and_bad_files(data, tmp_path, caplog):
    two = write_csv(
        tmp_path / "two.csv",
        ["song_id", "caption"],
        [["s1", CAPTIONS["s1"]], ["s2", CAPTIONS["s2"]], ["zz", "not in the split"]],
    )
    with pytest.raises(RecapError, match="1 song.*no caption.*s3"):
        score_predictions(two, data, meteor15=False)
    partial = score_predictions(two, data, meteor15=False, bootstrap=10, allow_missing=True)
    assert partial["n_songs"] == 2 and partial["matching"]["songs_without_caption"] == ["s3"]
    assert partial["matching"]["predicted_songs_not_in_split"] == ["zz"]
    assert "not in the test split" in caplog.text
    bad = write_csv(tmp_path / "bad.csv", ["id", "text"], [["s1", "x"]])
    with pytest.raises(RecapError, match="no song id column.*song_id, music4all_id"):
        read_predictions(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"song_id": "s1", "caption": "x"}\n{oops\n')
    with pytest.raises(RecapError, match="broken.jsonl:2"):
        read_predictions(broken)


def test_score_help_exists(capsys):
    with pytest.raises(SystemExit) as exit_info:
        recap.cli.main(["score", "--help"])
    assert exit_info.value.code == 0
    assert "PREDICTIONS" in capsys.readouterr().out
