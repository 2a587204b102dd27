"""`fashion schedule` on one machine: cron slots, the durable store, and the real scheduler firing real `fashion run`s.

The scheduler runs as its own process, started by `fashion schedule --cron` as a user's would be,
on schedules that fire every three seconds. One test lets it fire cheap runs (a source that does
not exist: a real `fashion run` that fails in its pre-flight check) and kills and restarts it; the
other lets one real `ci` run go to its end, while later slots find it running.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from core.errors import StepError
from pipeline import scheduler
from pipeline.cli import main
from tests.support.catalogue import make_catalogue
from tests.support.mlflow import make_store_template, workdir_from
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[1]
EVERY_3_S = "*/3 * * * * *"


@pytest.fixture(autouse=True)
def no_cluster(monkeypatch):
    """No Kubeflow host in the environment: `fashion schedule` means this machine."""
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)


def wait_for(what: str, check: Callable[[], object], timeout_s: float) -> object:
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(0.2)
    return found


def events(workdir: Path, name: str, kind: str) -> list[dict]:
    return [e for e in scheduler.history(workdir, name) if e["event"] == kind]


def slot_of(event: dict) -> datetime.datetime:
    return datetime.datetime.fromisoformat(event["slot"])


def serve_in_background(workdir: Path) -> subprocess.Popen:
    """`fashion schedule --serve` as its own process, as a user restarts it (its output in the scheduler log)."""
    log = open(scheduler.schedules_dir(workdir) / scheduler.SCHEDULER_LOG_FILE, "ab")  # noqa: SIM115
    with log:
        command = [sys.executable, "-m", "pipeline.cli", "schedule", "--serve", f"--workdir={workdir}"]
        return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_everything(workdir: Path) -> None:
    """Kill whatever scheduler and scheduled run a failed test left behind."""
    for holder in (scheduler.scheduler_pid(workdir), (scheduler.running_retrain(workdir) or {}).get("pid")):
        if holder:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(holder, signal.SIGKILL)


# --- cron slots and the store, no process ------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [("0 3 * * 1", "0 0 3 * * 1"), ("*/3 * * * * *", "*/3 * * * * *"), ("0 30 2 * * MON-FRI", "0 30 2 * * MON-FRI")],
)
def test_cron_takes_five_fields_or_six_with_seconds_first(given, stored):
    assert scheduler.parse_cron(given) == stored


def test_slots_follow_cron_meaning_weekdays_from_sunday_and_seconds():
    wednesday = datetime.datetime(2026, 12, 2, 10, 0, 1, tzinfo=datetime.UTC)
    monday_3am = scheduler.next_slot(scheduler.parse_cron("0 3 * * 1"), wednesday)
    assert (monday_3am.strftime("%A"), monday_3am.hour, monday_3am.minute) == ("Monday", 3, 0)
    sunday = scheduler.next_slot(scheduler.parse_cron("0 3 * * 0"), wednesday)
    assert sunday.strftime("%A") == "Sunday" and scheduler.next_slot("0 0 3 * * 7", wednesday) == sunday
    assert scheduler.next_slot(EVERY_3_S, wednesday) == wednesday.replace(second=3)


@pytest.mark.parametrize("bad", ["every day", "0 3 * *", "0 0 0 3 * * * *", "61 3 * * *", "0 3 * 13 *"])
def test_a_malformed_cron_creates_nothing(tmp_path, bad, capsys):
    assert main(["schedule", "--cron", bad, f"--workdir={tmp_path}"]) == 1
    assert "cron" in capsys.readouterr().err
    assert scheduler.load_schedules(tmp_path) == [] and scheduler.scheduler_pid(tmp_path) is None


def test_the_store_refuses_a_second_schedule_of_the_same_name_and_an_unknown_delete(tmp_path):
    schedule = scheduler.LocalSchedule("nightly", "0 0 2 * * *", ("--preset=ci",), str(tmp_path), "2026-12-02T00:00:00")
    scheduler.add_schedule(tmp_path, schedule)
    with pytest.raises(StepError, match="exists"):
        scheduler.add_schedule(tmp_path, schedule)
    assert scheduler.load_schedules(tmp_path) == [schedule]
    with pytest.raises(StepError, match="no schedule named 'weekly'.*nightly"):
        scheduler.remove_schedule(tmp_path, "weekly")
    assert scheduler.remove_schedule(tmp_path, "nightly") == schedule
    assert scheduler.load_schedules(tmp_path) == []


def test_cluster_flags_need_a_host_and_local_flags_need_none(tmp_path, capsys):
    dataflow = "--beam-args=--runner=DataflowRunner"
    assert main(["schedule", "--cron", "0 3 * * *", dataflow, f"--workdir={tmp_path}"]) == 1
    assert "--beam-args: for a Kubeflow cluster, pass --host" in capsys.readouterr().err
    assert main(["schedule", "--host", "http://127.0.0.1:1", "--serve", f"--workdir={tmp_path}"]) == 1
    assert "--serve, --workdir: for this machine's scheduler" in capsys.readouterr().err
    assert main(["schedule", "--list", f"--workdir={tmp_path}"]) == 0
    assert f"no schedules in {tmp_path}" in capsys.readouterr().out


# --- the real scheduler ------------------------------------------------------------------------


@pytest.mark.slow
def test_the_scheduler_fires_survives_a_restart_without_catching_up_and_stops_when_emptied(tmp_path, capsys):
    workdir = tmp_path / "work"
    missing = tmp_path / "no-catalogue-yet"
    create = ["schedule", "--cron", EVERY_3_S, "--name", "quick", "--preset", "ci", f"--source={missing}"]
    try:
        assert main([*create, f"--workdir={workdir}"]) == 0
        out = capsys.readouterr().out
        assert "schedule quick created" in out and "catch-up off" in out and "scheduler started" in out
        first_pid = scheduler.scheduler_pid(workdir)
        assert first_pid

        # Real `fashion run`s, each with its own log and its outcome recorded.
        finished = wait_for("two runs finished", lambda: events(workdir, "quick", "finished")[1:], 60)
        assert all(e["exit_code"] == 1 and e["outcome"] == "failed" for e in finished)
        log = Path(finished[0]["log"])
        assert log.parent == workdir / "schedules" / "quick" and log.suffix == ".log"
        assert "does not exist" in log.read_text() and "# exit code 1 (failed)" in log.read_text()
        assert len({e["log"] for e in events(workdir, "quick", "started")}) == len(events(workdir, "quick", "started"))

        assert main(["schedule", "--list", f"--workdir={workdir}"]) == 0
        listed = capsys.readouterr().out
        assert f"scheduler: running (pid {first_pid})" in listed
        assert "quick  cron '*/3 * * * * *'" in listed and "failed (exit code 1)" in listed
        assert f"--source={missing}" in listed

        # Killed outright, then down for several slots: none of them runs after the restart.
        os.kill(first_pid, signal.SIGKILL)
        wait_for("the killed scheduler's lock released", lambda: scheduler.scheduler_pid(workdir) is None, 10)
        down_since = scheduler.now()
        time.sleep(7)
        assert main(["schedule", "--list", f"--workdir={workdir}"]) == 0
        assert "scheduler: not running; start it with `fashion schedule --serve" in capsys.readouterr().out
        restarted_at = scheduler.now()
        restarted = serve_in_background(workdir)
        after = wait_for(
            "a run after the restart",
            lambda: [e for e in events(workdir, "quick", "started") if slot_of(e) > restarted_at],
            30,
        )
        assert scheduler.scheduler_pid(workdir) == restarted.pid
        handled = [e for e in scheduler.history(workdir, "quick") if "slot" in e]
        assert not [e for e in handled if down_since <= slot_of(e) <= restarted_at], "a missed slot was caught up"
        assert slot_of(after[0]) - restarted_at <= datetime.timedelta(seconds=3 + 10)  # its first slot, not later
        started = [slot_of(e) for e in events(workdir, "quick", "started")]
        assert all(b - a >= datetime.timedelta(seconds=3) for a, b in zip(started, started[1:], strict=False))

        # Deleting the last schedule stops the scheduler by itself; the logs stay.
        assert main(["schedule", "--delete", "quick", f"--workdir={workdir}"]) == 0
        assert "deleted schedule quick" in capsys.readouterr().out
        assert restarted.wait(timeout=60) == 0
        assert "no schedule left: the scheduler stops" in (workdir / "schedules" / "scheduler.log").read_text()
        assert log.is_file()
        assert main(["schedule", "--list", f"--workdir={workdir}"]) == 0
        assert "no schedules in" in capsys.readouterr().out
    finally:
        stop_everything(workdir)


@pytest.mark.slow
@pytest.mark.server
def test_a_scheduled_retrain_is_a_real_run_recorded_in_mlflow_and_never_overlaps(tmp_path, demo_dir, capsys):
    from mlflow import MlflowClient

    from components.register.backend import embedded_backend
    from pipeline.local.server import stop_server

    catalogue = make_catalogue(demo_dir, tmp_path / "catalogue")
    workdir = workdir_from(make_store_template(tmp_path / "template"), tmp_path / "work")
    ports = [f"--set=serving.grpc_port={free_port()}", f"--set=serving.rest_port={free_port()}"]
    try:
        args = ["schedule", "--cron", EVERY_3_S, "--name", "retrain", "--preset", "ci", f"--source={catalogue}"]
        assert main([*args, *ports, f"--workdir={workdir}"]) == 0
        capsys.readouterr()
        (started,) = wait_for("the first run started", lambda: events(workdir, "retrain", "started"), 60)
        holder = scheduler.running_retrain(workdir)
        assert holder["pid"] == started["pid"] and holder["schedule"] == "retrain"
        # Slots that come while it runs are skipped, and say why.
        skipped = wait_for("a slot skipped", lambda: events(workdir, "retrain", "skipped"), 30)
        assert "is still running" in skipped[0]["reason"]

        # Deleted while its run goes on: the run ends, is recorded, and the scheduler stops.
        assert main(["schedule", "--delete", "retrain", f"--workdir={workdir}"]) == 0
        assert f"its run in progress (pid {started['pid']}) goes on to its end" in capsys.readouterr().out
        (finished,) = wait_for("the run finished", lambda: events(workdir, "retrain", "finished"), 900)
        wait_for("the scheduler stopped", lambda: scheduler.scheduler_pid(workdir) is None, 30)
        assert len(events(workdir, "retrain", "started")) == 1
        assert all(slot_of(started) < slot_of(e) for e in events(workdir, "retrain", "skipped"))

        log = Path(finished["log"]).read_text()
        assert finished["log"] == started["log"] and "==> [1/6] ingest-images" in log
        client = MlflowClient(tracking_uri=embedded_backend(workdir).tracking_uri)
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = {r.info.run_id: r.info.status for r in client.search_runs(experiments)}
        registered = [run_id for run_id in runs if f"(MLflow run {run_id})" in log]  # the summary names it
        assert len(registered) == 1 and runs[registered[0]] == "FINISHED", runs
        assert (finished["exit_code"], finished["outcome"]) == (0, "succeeded"), log[-3000:]
        assert "Gate: PASSED" in log and "# exit code 0 (succeeded)" in log
        # The retrain lock went with the run, not to the server it left serving.
        assert (workdir / "serving" / "server.json").exists() and scheduler.running_retrain(workdir) is None
    finally:
        stop_everything(workdir)
        stop_server(workdir)
