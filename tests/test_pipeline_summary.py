"""What `fashion run` shows: progress from kfp.local's own log lines, a failed step's message, the end summary."""

from __future__ import annotations

import io
import logging

from kfp.local import logging_utils
from kfp.local.status import Status

from pipeline.local import RunResult, StepRecord, _StepTracker, _Tee, format_summary, pick_sample


def _log_like_kfp_local(lines):
    """Emit records the way kfp.local does (root logger, its colours, inside its logger context)."""
    with logging_utils.local_logger_context():
        for line in lines:
            logging.info(line)


def test_progress_follows_kfp_locals_log_lines():
    echoed = []
    tracker = _StepTracker(echoed.append)
    root = logging.getLogger()
    root.addFilter(tracker)
    try:
        ingest = logging_utils.format_task_name("ingest-images")
        _log_like_kfp_local(
            [
                f"Executing task {ingest}",
                f"Task {ingest} finished with status {logging_utils.format_status(Status.FAILURE)}",
                "Task ingest-images failed (attempt 1/3). Retrying in 10.0s...",
                f"Executing task {ingest}",
                f"Task {ingest} finished with status {logging_utils.format_status(Status.SUCCESS)}",
                "Task resize-images cache hit (key=0123456789ab); skipping execution.",
            ]
        )
    finally:
        root.removeFilter(tracker)
    steps = tracker.steps
    assert steps["ingest-images"].status == "succeeded" and steps["ingest-images"].attempts == 2
    assert steps["resize-images"].status == "cached" and steps["resize-images"].cache_key == "0123456789ab"
    assert steps["train-model"].status == "not run"
    assert "==> [1/6] ingest-images (attempt 2)" in echoed
    assert "\x1b" not in "".join(echoed)  # progress lines carry no terminal colour codes


def test_a_failed_steps_own_error_line_is_kept_and_the_input_dump_is_not_shown():
    tracker = _StepTracker(lambda _: None)
    tracker.current = "ingest-images"
    terminal = io.StringIO()
    tee = _Tee(terminal, tracker)
    tee.write("    [KFP Executor 2026 INFO]: Got executor_input:\n    {\n        \"inputs\": {}\n    }\n")
    tee.write("    Traceback (most recent call last):\n      File \"x.py\", line 1\n")
    tee.write("    core.errors.StepError: source /x.zip is neither a folder, a .zip archive nor a gs")
    tee.write(":// URI\n")
    tee.drain()
    shown = terminal.getvalue()
    assert "Got executor_input: (not shown)" in shown and '"inputs"' not in shown
    assert "Traceback" in shown
    assert tee.error_message("ingest-images") == (
        "StepError: source /x.zip is neither a folder, a .zip archive nor a gs:// URI"
    )


def test_summary_of_a_failed_run_names_the_step_and_keeps_the_champion():
    failed = StepRecord("ingest-images", "failed", 3.2, "StepError: source /x.zip is not a zip", attempts=3)
    result = RunResult(
        ok=False, run_dir="/w/run-1", seconds=41.0, steps={failed.name: failed}, error="step ingest-images failed"
    )
    text = format_summary(result)
    assert "Pipeline run FAILED" in text
    assert "ingest-images    failed" in text and "StepError: source /x.zip is not a zip" in text
    assert "train-model      not run" in text
    assert "The serving champion was left untouched." in text


def test_the_sample_photo_is_one_of_a_class_the_model_knows(samples_dir):
    assert pick_sample(samples_dir, ["Jeans", "Casual Shoes"]).name.startswith(("jeans-", "casual-shoes-"))
    assert pick_sample(samples_dir, ["Perfume and Body Mist"]).name.startswith("perfume-and-body-mist-")
    assert pick_sample(samples_dir, []).parent == samples_dir
