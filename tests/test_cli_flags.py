"""The CLI a newcomer expects: both spellings of every flag, `--version`, and help in one spelling."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "argv, dest, value",
    [
        (["serve", "--model_base_path", "/m"], "model_base_path", "/m"),
        (["serve", "--model-base-path", "/m"], "model_base_path", "/m"),
        (["run", "--model_base_path", "/m"], "model_base_path", "/m"),
        (["run", "--model-base-path", "/m"], "model_base_path", "/m"),
        (["run", "--no_cache"], "no_cache", True),
        (["serve", "--rest-api-port", "9"], "rest_api_port", 9),
    ],
)
def test_every_flag_takes_both_spellings(argv, dest, value):
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value


def test_help_shows_one_spelling_per_flag(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "--model_base_path" in out and "--model-base-path" not in out


def test_version_prints_the_version_and_the_commit():
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--version"], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    assert re.fullmatch(r"fashion \d+\.\d+\.\d+ \(commit [0-9a-f]{40}(-dirty)?\)\n", out), out
    assert commit in out
