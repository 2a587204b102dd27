"""What `fashion run` shows: live progress, statuses and outputs read from kfp.local's files, the end summary.

No `from __future__ import annotations` here: kfp reads the probe steps' artifact annotations as real types.
"""

import io
import json
import logging

import pytest
from kfp import dsl, local
from kfp.dsl import Dataset, Input, Output
from kfp.local import logging_utils
from kfp.local.status import Status

from pipeline.local.progress import StepTracker, Tee
from pipeline.local.results import RunResult, StepRecord, find_cache_hits, read_steps
from pipeline.local.run import pick_sample
from pipeline.local.summary import format_summary


def _log_like_kfp_local(lines):
    """Emit records the way kfp.local does (root logger, its colours, inside its logger context)."""
    with logging_utils.local_logger_context():
        for line in lines:
            logging.info(line)


def test_progress_follows_kfp_locals_log_lines():
    echoed = []
    tracker = StepTracker(echoed.append)
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
    assert tracker.attempts["ingest-images"] == 2 and tracker.seconds["ingest-images"] >= 0.0
    assert "train-model" not in tracker.attempts
    assert echoed[0] == "==> [1/6] ingest-images" and echoed[1].startswith("==> ingest-images failed in ")
    assert echoed[2] == "==> [1/6] ingest-images (attempt 2)"
    assert echoed[3].startswith("==> ingest-images succeeded in ")
    assert echoed[4:] == ["==> resize-images reused from the step cache"]
    assert "\x1b" not in "".join(echoed)  # progress lines carry no terminal colour codes


def test_a_failed_steps_own_error_line_is_kept_and_verbose_shows_all_but_the_input_dump():
    tracker = StepTracker(lambda _: None)
    tracker.current = "ingest-images"
    terminal = io.StringIO()
    tee = Tee(terminal, tracker, verbose=True)
    tee.write('    [KFP Executor 2026 INFO]: Got executor_input:\n    {\n        "inputs": {}\n    }\n')
    tee.write('    Traceback (most recent call last):\n      File "x.py", line 1\n')
    tee.write("    core.errors.StepError: source /x.zip is neither a folder, a .zip archive nor a gs")
    tee.write(":// URI\n")
    tee.drain()
    shown = terminal.getvalue()
    assert "Got executor_input: (not shown" in shown and '"inputs"' not in shown
    assert "Traceback" in shown
    assert tee.error_message("ingest-images") == (
        "StepError: source /x.zip is neither a folder, a .zip archive nor a gs:// URI"
    )


def _executor_output(task_dir, artifacts=None, parameters=None):
    """Write an executor_output.json the way kfp's executor does at the end of a successful step."""
    task_dir.mkdir(parents=True)
    data = {"artifacts": {}, "parameterValues": parameters or {}}
    for name, metadata in (artifacts or {}).items():
        data["artifacts"][name] = {"artifacts": [{"name": name, "uri": str(task_dir / name), "metadata": metadata}]}
    (task_dir / "executor_output.json").write_text(json.dumps(data))


def test_statuses_outputs_and_the_gate_are_read_from_the_task_folders(tmp_path):
    run = tmp_path / "fashion-classifier-2026"
    _executor_output(run / "ingest-images", {"manifest": {"usable": 24}})
    _executor_output(run / "train-model", {"model": {"epochs": 2}})
    _executor_output(run / "evaluate-model", {"metrics": {"category_accuracy": 0.5}}, {"Output": False})
    cached = {"resize-images": StepRecord("resize-images", "cached", 0.0, outputs={"examples": {"uri": "/old"}})}
    steps = read_steps(run, cached)
    assert {name: step.status for name, step in steps.items()} == {
        "ingest-images": "succeeded",
        "resize-images": "cached",
        "train-model": "succeeded",
        "evaluate-model": "succeeded",
        "register-model": "skipped (gate)",
        "deploy-model": "skipped (gate)",
    }
    assert steps["ingest-images"].outputs["manifest"] == {
        "uri": str(run / "ingest-images" / "manifest"),
        "metadata": {"usable": 24},
    }
    assert steps["resize-images"].outputs["examples"]["uri"] == "/old"
    assert steps["evaluate-model"].parameters == {"Output": False}

    # A task folder without an executor output is a step that failed; the steps after it never started.
    failed = tmp_path / "fashion-classifier-2027"
    _executor_output(failed / "ingest-images", {"manifest": {"usable": 24}})
    (failed / "resize-images").mkdir()
    steps = read_steps(failed, {})
    assert [step.status for step in steps.values()] == ["succeeded", "failed"] + ["not run"] * 4
    assert steps["resize-images"].outputs == {} and steps["resize-images"].parameters == {}
    assert all(step.status == "not run" for step in read_steps(None, {}).values())


def make_table(source: str, table: Output[Dataset]):
    """A cached probe step: an artifact with metadata."""
    with open(table.path, "w") as f:
        f.write(source)
    table.metadata.update({"source": source, "rows": 24})


def count_rows(table: Input[Dataset], counts: Output[Dataset]):
    """A cached probe step fed by another's artifact (kfp reuses an entry only while its files exist)."""
    with open(counts.path, "w") as f:
        f.write(str(table.metadata["rows"]))
    counts.metadata["rows"] = table.metadata["rows"]


def check_rows(counts: Input[Dataset], fail: bool, report: Output[Dataset]):
    """An uncached probe step that fails on request, after kfp's executor made its output folder."""
    if fail:
        raise ValueError("the check failed")
    with open(report.path, "w") as f:
        f.write("ok")


def _probe_pipeline():
    steps = [
        dsl.component(f, base_image="python:3.11", install_kfp_package=False)
        for f in (make_table, count_rows, check_rows)
    ]

    @dsl.pipeline(name="cache-probe")
    def probe(source: str, fail: bool):
        table = steps[0](source=source).set_caching_options(enable_caching=True)
        counts = steps[1](table=table.outputs["table"]).set_caching_options(enable_caching=True)
        steps[2](counts=counts.outputs["counts"], fail=fail).set_caching_options(enable_caching=False)

    return probe


def test_cache_hits_are_the_entries_kfp_local_reused(tmp_path):
    root, cache_root = tmp_path / "pipeline", tmp_path / "cache"
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        enable_caching=True,
        cache_root=str(cache_root),
    )
    probe = _probe_pipeline()
    names = ("make-table", "count-rows", "check-rows")
    probe(source="s3", fail=False)
    (first,) = root.iterdir()
    assert find_cache_hits(probe.pipeline_spec, {"source": "s3", "fail": False}, cache_root, first) == {}
    assert {n: s.status for n, s in read_steps(first, {}, names).items()} == dict.fromkeys(names, "succeeded")

    with pytest.raises(RuntimeError):
        probe(source="s3", fail=True)
    (second,) = set(root.iterdir()) - {first}
    hits = find_cache_hits(probe.pipeline_spec, {"source": "s3", "fail": True}, cache_root, second)
    steps = read_steps(second, hits, names)
    assert {n: s.status for n, s in steps.items()} == {
        "make-table": "cached",
        "count-rows": "cached",
        "check-rows": "failed",
    }
    assert steps["make-table"].outputs["table"]["metadata"] == {"source": "s3", "rows": 24}
    assert steps["count-rows"].outputs["counts"]["uri"] == str(first / "count-rows" / "counts")
    assert (cache_root / f"{steps['count-rows'].cache_key}.json").is_file()


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


def test_a_failed_step_records_its_error_in_its_output_folder_and_the_summary_reads_it(tmp_path):
    import types

    from core import layouts
    from core.errors import StepError
    from pipeline.local.results import read_steps
    from pipeline.metadata import recording_failure

    output = types.SimpleNamespace(path=str(tmp_path / "run" / "ingest-images" / "manifest"))
    with pytest.raises(StepError), recording_failure(output):
        raise StepError("source http://u:pw@host/x is not a zip")
    assert (tmp_path / "run" / "ingest-images" / "manifest" / layouts.STEP_ERROR).is_file()
    steps = read_steps(tmp_path / "run", names=("ingest-images",))
    assert steps["ingest-images"].status == "failed"
    assert steps["ingest-images"].message == "StepError: source http://u:***@host/x is not a zip"
