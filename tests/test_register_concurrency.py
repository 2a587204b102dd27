"""Registrations at once against the embedded SQLite store: every caller succeeds, and one pipeline run
is one MLflow run and one version.

Real `fashion register` processes race on a fresh store; the pieces that a tracking server relies on
(claiming a pipeline run's MLflow run, keeping the first of its versions) race in threads; and a
registration after an attempt that crashed half-way replaces what that attempt left.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from mlflow.entities import ViewType

from components.register import Registry, register_model
from components.register.backend import embedded_backend, make_client
from components.register.coordination import HEARTBEAT_TAG, Heartbeat, now_ms
from components.register.tracking import claim_run
from core.config import load_config
from tests.support.mlflow import cli_at_once, copy_export, make_eval_dir, make_model_and_export

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real model folder and its real SavedModel export, shared by the module's tests."""
    return make_model_and_export(tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One embedded store for the module's in-process tests: (its URI, a client, an experiment in it)."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root}/mlflow.db"
    client = make_client(uri)
    return uri, client, client.create_experiment("races", artifact_location=str(root / "artifacts"))


class RacingClient:
    """A real MlflowClient in a race: another registration creates its run of the pipeline run just
    before this one creates its own, then finishes it a moment later."""

    def __init__(self, client, finish_after_s: float) -> None:
        self._client, self._finish_after_s = client, finish_after_s
        self.rival = None
        self.created: list[str] = []

    def __getattr__(self, name):
        return getattr(self._client, name)

    def create_run(self, experiment_id, tags):
        if self.rival is None:
            self.rival = self._client.create_run(experiment_id, tags=tags)
            threading.Timer(self._finish_after_s, self._client.set_terminated, (self.rival.info.run_id,)).start()
        run = self._client.create_run(experiment_id, tags=tags)
        self.created.append(run.info.run_id)
        return run


def register_argv(trained, root, run_id: str, *options: str) -> list[str]:
    """`fashion register` arguments for one caller, with its own evaluation and export folders."""
    model_dir, export_dir = trained
    root.mkdir(parents=True)
    return [
        "register", "--preset", "ci", "--model", str(model_dir), "--eval", str(make_eval_dir(root / "eval", 0.6)),
        "--export", str(copy_export(export_dir, root / "export")), "--run-id", run_id, *options,
    ]  # fmt: skip


def results_of(finished: list[dict]) -> list[dict]:
    """The JSON each `fashion register` printed, after checking that every one of them succeeded."""
    for process in finished:
        assert process["code"] == 0, process["err"][-3000:]
    return [json.loads(process["out"]) for process in finished]


def test_registrations_at_once_on_a_fresh_store_succeed_and_one_pipeline_run_is_one_run(trained, tmp_path):
    workdir = tmp_path / "work"  # no store yet: the racing registrations create it
    ids = ["run-same", "run-same", "run-other"]
    argvs = [
        register_argv(trained, tmp_path / f"caller-{i}", rid, "--workdir", str(workdir)) for i, rid in enumerate(ids)
    ]
    *same, other = results_of(cli_at_once(argvs, tmp_path / "procs"))

    assert len({(r["run_id"], r["version"], r["model_id"]) for r in same}) == 1
    assert sorted(r["created"] for r in same) == [False, True]
    assert other["run_id"] != same[0]["run_id"]
    assert sorted([same[0]["version"], other["version"]]) == ["1", "2"]

    registry = Registry(embedded_backend(workdir).tracking_uri, "fashion-classifier")
    experiment = registry.client.get_experiment_by_name(load_config("ci").registry.experiment)
    runs = registry.client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)  # deleted ones too
    assert sorted(r.data.tags["pipeline_run_id"] for r in runs) == ["run-other", "run-same"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    versions = registry.client.search_model_versions("name = 'fashion-classifier'")
    assert sorted(v.version for v in versions) == [1, 2]
    assert registry.get_version("challenger") in ("1", "2")


def test_a_run_left_running_by_a_crashed_attempt_is_replaced_at_once(trained, tmp_path):
    model_dir, export_dir = trained
    config = load_config("ci")
    workdir = tmp_path / "work"
    (workdir / "mlflow").mkdir(parents=True)
    client = Registry(embedded_backend(workdir).tracking_uri, config.registry.model_name).client
    experiment_id = client.create_experiment(config.registry.experiment)
    # What an attempt killed mid-way leaves: a run that started a moment ago and never finished.
    crashed = client.create_run(experiment_id, tags={"pipeline_run_id": "run-crashed"}).info.run_id

    result = register_model(
        model_dir, make_eval_dir(tmp_path / "eval", 0.6), copy_export(export_dir, tmp_path / "export"), config,
        "run-crashed", workdir=workdir,
    )  # fmt: skip
    assert result.run_id != crashed and (result.version, result.created) == ("1", True)
    assert client.get_run(crashed).info.lifecycle_stage == "deleted"
    assert [r.info.run_id for r in client.search_runs([experiment_id])] == [result.run_id]


def test_a_registration_that_began_at_the_same_moment_as_another_steps_back_and_adopts_its_run(store):
    _, client, experiment_id = store
    racing = RacingClient(client, finish_after_s=1.0)
    run, created = claim_run(racing, experiment_id, "run-tie", {"pipeline_run_id": "run-tie"})
    assert (run.info.run_id, created) == (racing.rival.info.run_id, False)
    assert [client.get_run(r).info.lifecycle_stage for r in racing.created] == ["deleted"]
    runs = client.search_runs([experiment_id], filter_string="tags.pipeline_run_id = 'run-tie'")
    assert [(r.info.run_id, r.info.status) for r in runs] == [(racing.rival.info.run_id, "FINISHED")]


def test_a_long_registration_with_a_heartbeat_is_waited_for_and_not_deleted(store):
    _, client, experiment_id = store
    tags = {"pipeline_run_id": "run-long"}
    an_hour_ago = int((time.time() - 3600) * 1000)
    first_beat = now_ms()
    other = client.create_run(experiment_id, start_time=an_hour_ago, tags={**tags, HEARTBEAT_TAG: str(first_beat)})
    finisher = threading.Timer(2.0, client.set_terminated, (other.info.run_id,))
    with Heartbeat(client, other.info.run_id, interval_s=0.2):
        finisher.start()
        run, created = claim_run(client, experiment_id, "run-long", tags)
    finisher.join()
    assert (run.info.run_id, created) == (other.info.run_id, False)
    finished = client.get_run(other.info.run_id)
    assert finished.info.status == "FINISHED" and int(finished.data.tags[HEARTBEAT_TAG]) > first_beat


def test_when_the_registration_waited_for_fails_the_waiting_one_logs_the_pipeline_run_itself(store):
    _, client, experiment_id = store
    tags = {"pipeline_run_id": "run-retry"}
    other = client.create_run(experiment_id, tags={**tags, HEARTBEAT_TAG: str(now_ms())}).info.run_id
    # The other registration fails a moment later and deletes its run, as log_training_run does.
    failer = threading.Timer(1.0, client.delete_run, (other,))
    failer.start()
    run, created = claim_run(client, experiment_id, "run-retry", tags)
    failer.join()
    assert run.info.run_id != other and created is True
    assert run.info.status == "RUNNING"  # for this caller to log now


def versions_at_once(store, model_name: str, pipeline_run_ids: list[str]) -> tuple[Registry, list[tuple[str, bool]]]:
    """`find_or_register` in one thread per pipeline run id, all starting together on a new registered model."""
    uri, client, experiment_id = store
    registry = Registry(uri, model_name)
    models = {}
    for pipeline_run_id in sorted(set(pipeline_run_ids)):
        run_id = client.create_run(experiment_id, tags={"pipeline_run_id": pipeline_run_id}).info.run_id
        models[pipeline_run_id] = (run_id, client.create_logged_model(experiment_id, source_run_id=run_id).model_id)
    start, results, errors = threading.Barrier(len(pipeline_run_ids)), [], []

    def register(pipeline_run_id: str) -> None:
        own = Registry(uri, model_name)
        run_id, model_id = models[pipeline_run_id]
        start.wait()  # all look for a version, find none and make one, at about the same moment
        try:
            results.append(own.find_or_register(run_id, pipeline_run_id=pipeline_run_id, model_id=model_id))
        except Exception as err:  # collected and asserted on below
            errors.append(err)

    threads = [threading.Thread(target=register, args=(pipeline_run_id,)) for pipeline_run_id in pipeline_run_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return registry, results


def test_versions_made_at_once_for_one_pipeline_run_become_one(store):
    registry, results = versions_at_once(store, "fashion-one", ["run-v"] * 4)
    assert sorted(results) == [("1", False), ("1", False), ("1", False), ("1", True)]
    assert [str(v.version) for v in registry.client.search_model_versions("name = 'fashion-one'")] == ["1"]
    assert registry.get_version("challenger") == "1"


def test_first_versions_of_a_model_made_at_once_are_distinct_and_one_is_the_challenger(store):
    # The first `challenger` alias is inserted, not updated: four at once clash on it.
    registry, results = versions_at_once(store, "fashion-four", ["run-a", "run-b", "run-c", "run-d"])
    assert sorted(results) == [("1", True), ("2", True), ("3", True), ("4", True)]
    assert registry.get_version("challenger") in ("1", "2", "3", "4")
