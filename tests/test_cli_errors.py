"""Failures a user can fix end in one line that names the cause and the fix, never a traceback."""

from __future__ import annotations

import pytest

from pipeline.cli import main


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def test_ingest_into_a_folder_under_a_file_is_one_line(tmp_path, demo_dir, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = main(["ingest", "--preset=ci", f"--source={demo_dir}", f"--out={blocker / 'out'}"])
    assert code == 1
    err = _one_line_error(capsys)
    assert str(blocker / "out") in err and "--out" in err


@pytest.mark.parametrize("content", ["{not json", '{"categories": 3}', "[]"])
def test_a_corrupt_labels_file_in_a_model_folder_is_one_line(tmp_path, capsys, content):
    from tests.support.serving import make_model_dir

    model_dir = make_model_dir(tmp_path / "model")
    (model_dir / "labels.json").write_text(content)
    code = main(["evaluate", "--preset=ci", f"--model={model_dir}", f"--data={tmp_path}", f"--out={tmp_path / 'ev'}"])
    assert code == 1
    err = _one_line_error(capsys)
    assert "labels.json" in err and "re-run" in err
