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
