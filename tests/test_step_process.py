"""A step's process ends as soon as kfp's executor has written its outputs, and only then."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.step_process import EXECUTOR_INPUT_FLAG, executor_output_file

# A stand-in for kfp's executor_main: a handler registered before the step starts stands for the
# interpreter's teardown work; the step body prints, then does what `how` says.
STEP = textwrap.dedent(
    """
    import atexit, pathlib, sys
    marker, how = pathlib.Path(sys.argv[1]), sys.argv[2]
    atexit.register(lambda: marker.write_text("teardown ran"))
    from pipeline.step_process import start_step
    start_step()
    print("step output, buffered", end="")
    output_file = pathlib.Path(__import__("json").loads(sys.argv[-1])["outputs"]["outputFile"])
    if how == "raise_after_write":
        output_file.write_text("{}")
        raise RuntimeError("the step failed after writing")
    if how == "exit_3":
        sys.exit(3)
    if how == "write":
        output_file.write_text("{}")
    """
)


def _run_step(tmp_path: Path, how: str) -> tuple[subprocess.CompletedProcess, Path, Path]:
    marker, output_file = tmp_path / "teardown", tmp_path / "executor_output.json"
    executor_input = json.dumps({"outputs": {"outputFile": str(output_file)}})
    done = subprocess.run(
        [sys.executable, "-c", STEP, str(marker), how, EXECUTOR_INPUT_FLAG, executor_input],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    return done, marker, output_file


def test_a_step_that_wrote_its_outputs_exits_at_once_with_its_output_flushed(tmp_path):
    done, marker, output_file = _run_step(tmp_path, "write")
    assert done.returncode == 0, done.stderr
    assert output_file.read_text() == "{}"
    assert done.stdout == "step output, buffered"
    assert not marker.exists(), "the teardown after the outputs were written should have been skipped"


@pytest.mark.parametrize(
    ("how", "code"),
    [("raise_after_write", 1), ("exit_3", 3), ("no_write", 0)],
    ids=["raised-after-writing", "sys-exit-before-writing", "wrote-nothing"],
)
def test_a_step_that_failed_or_wrote_nothing_exits_the_ordinary_way(tmp_path, how, code):
    done, marker, _ = _run_step(tmp_path, how)
    assert done.returncode == code, done.stderr
    assert marker.read_text() == "teardown ran"
    assert done.stdout == "step output, buffered"
    if how == "raise_after_write":
        assert "RuntimeError: the step failed after writing" in done.stderr


def test_the_output_file_is_read_from_the_executor_command_line(tmp_path):
    executor_input = json.dumps({"outputs": {"outputFile": "/gcs/out/executor_output.json"}})
    assert executor_output_file(["x", EXECUTOR_INPUT_FLAG, executor_input]) == Path("/gcs/out/executor_output.json")
    assert executor_output_file(["x", f"{EXECUTOR_INPUT_FLAG}={executor_input}"]) == Path(
        "/gcs/out/executor_output.json"
    )
    assert executor_output_file(["x", EXECUTOR_INPUT_FLAG, "not json"]) is None
    assert executor_output_file(["x", "--function_to_execute", "train_model"]) is None
