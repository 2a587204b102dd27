"""A quiet console: step lines, live progress and results for people; library chatter in one log file per step."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest

from core.progress import LOGGER_NAME, Progress, Update, format_seconds
from pipeline import console as console_module
from pipeline.console import (
    PROGRESS_PREFIX,
    PROGRESS_TO_RUNNER_ENV,
    Console,
    ConsoleHandler,
    SparseProgress,
    command_output,
    parse_progress_line,
    report_progress,
)
from pipeline.local.logs import RunLogs
from pipeline.local.progress import StepTracker, Tee

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def progress_records():
    """The records of the progress logger, as a handler sees them."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger(LOGGER_NAME)
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield records
    logger.removeHandler(handler)
    logger.setLevel(saved[0])
    logger.propagate = saved[1]


def test_an_update_reads_as_counts_share_and_time_left():
    update = Update("checking photos", 300, 1200, "photos", elapsed_s=30.0, note="10 photos/s", left_s=90.0)
    assert update.text() == "checking photos: 300/1200 photos (25%), 10 photos/s, 1m30s left"
    final = Update("checking photos", 1200, 1200, "photos", elapsed_s=75.0, final=True)
    assert final.text() == "checking photos: 1200/1200 photos (100%), done in 1m15s"
    assert Update("reading", 7, None, "rows", 1.0).text() == "reading: 7 rows"
    assert Update.from_dict(update.to_dict()) == update
    assert [format_seconds(s) for s in (4.4, 65, 3725)] == ["4s", "1m05s", "1h02m"]


def test_progress_sends_at_most_five_updates_a_second_and_always_the_last(progress_records):
    clock = FakeClock()
    with Progress("training", 100, "batches", clock=clock) as progress:
        for done in range(1, 101):
            clock.now += 0.01  # a batch every 10 ms: 1 s in all
            progress.update(done)
    updates = [r.progress for r in progress_records]
    assert 5 <= len(updates) <= 8, [u.done for u in updates]
    assert updates[-2].done == 100 and not updates[-2].final  # the last count always goes out
    assert updates[-1].final and updates[-1].done == 100
    assert all(r.getMessage() == r.progress.text() for r in progress_records)


def test_the_time_left_leaves_out_the_first_units_start_up(progress_records):
    clock = FakeClock()
    progress = Progress("training", 100, "batches", clock=clock)
    clock.now += 10.0  # the first batch traces the model
    progress.update(1)
    for done in range(2, 6):
        clock.now += 1.0
        progress.update(done)
    first, last = progress_records[0].progress, progress_records[-1].progress
    assert first.left_s is None and "left" not in first.text()
    assert last.done == 5 and last.left_s == pytest.approx(95.0)


def test_off_a_terminal_lines_are_plain_and_progress_is_a_sparse_heartbeat():
    clock, out = FakeClock(), io.StringIO()
    console = Console(out, tty=False, sparse_interval_s=30.0, clock=clock)
    console.line(console.colour("\x1b[92msucceeded\x1b[0m", "green"))
    update = Update("training", 10, 100, "batches", 5.0)
    for _ in range(100):  # five minutes of updates a second apart
        clock.now += 3.0
        console.progress(update)
    console.progress(Update("training", 100, 100, "batches", 300.0, final=True))
    lines = out.getvalue().splitlines()
    assert lines[0] == "succeeded" and "\x1b" not in out.getvalue()
    assert len(lines) == 1 + 10  # one progress line per 30 s, and none for the final update
    assert all(line == update.text() for line in lines[1:])


def test_on_a_terminal_progress_is_redrawn_in_place_and_the_next_line_replaces_it():
    out = io.StringIO()
    console = Console(out, tty=True)
    console.progress(Update("training", 1, 4, "batches", 1.0))
    console.progress(Update("training", 2, 4, "batches", 2.0))
    console.line(console.colour("done", "green"))
    text = out.getvalue()
    assert text.count("\r") >= 3 and "\n" not in text.split("\x1b[32m")[0]
    assert text.endswith("\x1b[32mdone\x1b[0m\n")
    assert text.count("\n") == 1  # progress added no line of its own


def test_the_console_shows_progress_and_project_warnings_only():
    out = io.StringIO()
    console = Console(out, tty=False, sparse_interval_s=0.0)
    handler = ConsoleHandler(console)

    def record(name: str, level: int, message: str, **extra) -> logging.LogRecord:
        made = logging.LogRecord(name, level, __file__, 1, message, None, None)
        made.__dict__.update(extra)
        return made

    handler.handle(record("tensorflow", logging.WARNING, "oneDNN custom operations are on"))
    handler.handle(record("components.ingest.step", logging.INFO, "read 1200 rows"))
    handler.handle(record("components.train.callbacks", logging.WARNING, "could not mirror the checkpoint"))
    update = Update("checking photos", 1, 2, "photos", 1.0, left_s=1.0)
    handler.handle(record(LOGGER_NAME, logging.INFO, "x", progress=update))
    assert out.getvalue().splitlines() == [
        "warning: could not mirror the checkpoint",
        "checking photos: 1/2 photos (50%), 1s left",
    ]


def test_a_log_keeps_one_progress_update_per_task_every_interval_and_the_final_one():
    sparse = SparseProgress(interval_s=30.0)
    kept = []
    for second in range(0, 100, 5):
        made = logging.LogRecord(LOGGER_NAME, logging.INFO, __file__, 1, "x", None, None)
        made.created = 1000.0 + second
        made.progress = Update("training", second, 100, "batches", float(second))
        kept += [second] if sparse.filter(made) else []
    final = logging.LogRecord(LOGGER_NAME, logging.INFO, __file__, 1, "x", None, None)
    final.progress = Update("training", 100, 100, "batches", 100.0, final=True)
    assert kept == [0, 30, 60, 90] and sparse.filter(final)


def test_a_step_process_sends_its_progress_as_lines_the_runner_reads(monkeypatch, capsys):
    logger = logging.getLogger(LOGGER_NAME)
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)
    monkeypatch.setenv(PROGRESS_TO_RUNNER_ENV, "1")
    report_progress()
    Progress("processing photos", 10, "photos").update(4, "note")
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(PROGRESS_PREFIX)
    update = parse_progress_line("    " + line)  # kfp.local indents what a step prints
    assert (update.task, update.done, update.total, update.note) == ("processing photos", 4, 10, "note")
    assert parse_progress_line("    [KFP Executor 2026 INFO]: checked 4/10 photos") is None


def test_a_runs_lines_go_to_their_steps_log_and_only_progress_to_the_console(tmp_path):
    out, stdout = io.StringIO(), io.StringIO()
    console = Console(out, tty=False, sparse_interval_s=0.0)
    tracker = StepTracker(console.line)
    logs = RunLogs(lambda: None, tmp_path / "fallback", folder=tmp_path / "logs")
    tee = Tee(stdout, tracker, logs, console)
    tracker.current = "train-model"
    progress = Update("training", 3, 10, "batches", 3.0, left_s=7.0)
    tee.write("    [KFP Executor 2026 INFO]: Got executor_input:\n    {\n    }\n")
    tee.write("    I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on.\n")
    tee.write(f"    {PROGRESS_PREFIX}{json.dumps(progress.to_dict())}\n")
    tee.write("    \x1b[96m[KFP Executor 2026 INFO]: resuming training from epoch 2 of 4: checkpoint /c\n")
    tee.drain()
    logs.close()
    assert stdout.getvalue() == ""  # without verbose, nothing of the step's own output is shown
    assert out.getvalue().splitlines() == [
        "    train-model: training: 3/10 batches (30%), 7s left",
        "==> train-model: resuming training from epoch 2 of 4 (checkpoint of an earlier run)",
    ]
    log = (tmp_path / "logs" / "train-model.log").read_text()
    assert "Got executor_input" in log and "oneDNN" in log and "training: 3/10 batches" in log
    assert "\x1b" not in log


def test_run_logs_are_held_until_kfp_makes_the_run_folder(tmp_path):
    run = tmp_path / "pipeline" / "fashion-classifier-2026"
    logs = RunLogs(lambda: run if run.is_dir() else None, tmp_path / "fallback")
    logs.write("run", "before the first step")
    assert logs.path() is None and not (tmp_path / "fallback").exists()
    run.mkdir(parents=True)
    logs.write("ingest-images", "\x1b[96mthe first step\x1b[0m")
    assert logs.close() == run / "logs"
    assert (run / "logs" / "run.log").read_text() == "before the first step\n"
    assert (run / "logs" / "ingest-images.log").read_text() == "the first step\n"
    # A run that never made a folder keeps its lines in the work directory's logs.
    orphan = RunLogs(lambda: None, tmp_path / "fallback")
    orphan.write("run", "kfp failed before any step")
    folder = orphan.close()
    assert folder.parent == tmp_path / "fallback" and (folder / "run.log").is_file()


def test_c_level_stderr_goes_to_the_log_and_python_stderr_stays_on_the_console(tmp_path):
    # A child process whose stderr is a real descriptor 2, as in a terminal or a pipe.
    log = tmp_path / "step.log"
    script = (
        "import os, sys\n"
        "from pipeline.console import c_stderr_into\n"
        f"with c_stderr_into({str(log)!r}):\n"
        "    os.write(2, b'I0000 oneDNN custom operations are on\\n')\n"
        "    print('fashion train: the command speaks', file=sys.stderr)\n"
        "os.write(2, b'after\\n')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stderr.splitlines() == ["fashion train: the command speaks", "after"]
    assert log.read_text() == "I0000 oneDNN custom operations are on\n"


@pytest.fixture
def absl_at_default_level():
    """absl's logger at its default level: once TensorFlow is imported (by an earlier test) absl sets it
    to WARNING itself, and the test using this is about where records go, not which absl lets through."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.NOTSET)
    yield
    absl.setLevel(level)


@pytest.mark.usefixtures("absl_at_default_level")
def test_a_command_writes_every_record_to_its_log_and_shows_only_warnings(tmp_path):
    out = io.StringIO()
    console = Console(out, tty=False)
    with command_output(console, tmp_path / "logs" / "train.log") as path:
        logging.getLogger("absl").info("Function `serve` contains input name(s)")
        logging.getLogger("components.train.step").info("training unified/small_cnn on 968 examples")
        logging.getLogger("components.train.step").warning("checkpoints can live on a local disk or gs:// only")
        import warnings

        warnings.warn("a library's deprecation", UserWarning, stacklevel=1)
    text = path.read_text()
    assert "Function `serve`" in text and "training unified" in text and "a library's deprecation" in text
    assert out.getvalue() == "warning: checkpoints can live on a local disk or gs:// only\n"
    assert console_module.DEFAULT_LOG_DIR != "runs/logs"  # tests keep their logs out of the repository
