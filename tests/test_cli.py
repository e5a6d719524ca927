"""The `recap` entry point: every command listed cheaply, each one's flags built when it runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recap.cli import COMMAND_MODULES, build_parser, main

SRC = Path(__file__).resolve().parents[1] / "src"


def _run(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


def test_listing_the_commands_imports_no_library():
    out = _run(
        "import sys\n"
        "from recap.cli import build_parser\n"
        "parser = build_parser([])\n"
        "text = parser.format_help()\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'transformers') if m in sys.modules)\n"
        "print(heavy, 'caption' in text and 'pretrain-text' in text)\n"
    )
    assert out.split() == ["[]", "True"]


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    names = {name for m in COMMAND_MODULES for name in __import__(m, fromlist=["x"]).COMMANDS}
    assert len(names) >= 15 and all(name in text for name in names)


def test_every_command_builds_its_parser_and_unknown_ones_fail(capsys):
    parser = build_parser()  # every command in full
    args = parser.parse_args(["caption", "a.wav", "--model", "m", "--beams", "2"])
    assert args.command == "caption" and args.beams == 2 and callable(args.func)
    args = parser.parse_args(["-v", "train", "--data", "d", "--out", "o", "--set", "d_model=64"])
    assert args.verbose and args.model_overrides == [("d_model", 64)]
    with pytest.raises(SystemExit):
        main(["no-such-command"])
    assert "invalid choice" in capsys.readouterr().err


def test_bench_text_rows_writes_rows_outside_the_excluded_benchmark(tmp_path, capsys):
    import json

    held = "Dunkle Nacht umfängt das stille weite Land"
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "songs.jsonl").write_text(
        json.dumps({"song_id": "w1-0", "work_id": "w1", "split": "test"}) + "\n", "utf-8"
    )
    (bench / "dataset.jsonl").write_text(
        json.dumps({"music4all_id": "w1-0", "lyrics": held, "comment": "c", "split": "test"})
        + "\n",
        "utf-8",
    )
    texts = [
        "Gnade Himmel Sonne leuchtet hell über Tal und Hügel weit",
        held + "\nund Morgen leuchtet fern",  # shares the held-out line: never used
        "Wälder rauschen Winde wehen Vögel singen Lieder froh",
    ]
    (tmp_path / "texts.txt").write_text("\n\n".join(texts) + "\n", "utf-8")
    out = tmp_path / "rows.jsonl"
    code = main(["bench", "text-rows", "--text", str(tmp_path / "texts.txt"),
                 "--exclude", str(bench), "--per-text", "2", "--out", str(out)])  # fmt: skip
    assert code == 0 and "wrote 4 text rows" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert {r["lyrics"] for r in rows} == {texts[0], texts[2]}  # one line: no ';' to add
    assert all(r["split"] == "train" and r["comment_without_audio"] for r in rows)
    skipped = json.loads(out.with_suffix(".skipped.json").read_text("utf-8"))
    assert skipped["skipped"] == 1 and "held-out" in skipped["items"][0]["reason"]
    # and a text recombined from each (its sentences shuffled with another text's)
    code = main(["bench", "text-rows", "--text", str(tmp_path / "texts.txt"),
                 "--exclude", str(bench), "--per-text", "1", "--recombined", "1",
                 "--out", str(out)])  # fmt: skip
    assert code == 0 and "wrote 4 text rows" in capsys.readouterr().out
    ids = sorted(json.loads(line)["music4all_id"] for line in out.read_text("utf-8").splitlines())
    assert sum(i.startswith("text-mix0-") for i in ids) == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "text-rows", "--out", str(out)])  # --exclude needed
