"""The whole registration flow over HTTP against a real `mlflow server` (SQLite backend) on a loopback port."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import pytest

from components.register import Registry, register_model
from core.config import load_config
from tests.support.mlflow import (
    cli_at_once,
    copy_export,
    make_eval_dir,
    make_model_and_export,
    mlflow_server,
    two_pipeline_runs,
)

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return make_model_and_export(tmp_path_factory.mktemp("trained"))


def server_config(url: str, model_name: str):
    config = load_config("ci")
    registry = dataclasses.replace(config.registry, tracking_uri=url, model_name=model_name)
    return dataclasses.replace(config, registry=registry)


def test_two_pipeline_runs_over_http(server, trained, tmp_path):
    config = server_config(server, "fashion-http")
    runs = two_pipeline_runs(config, tmp_path, *trained)
    source = runs["registry"].client.get_model_version_download_uri("fashion-http", "2")
    assert source.startswith("mlflow-artifacts:/")  # artifacts went through the server, not the local disk


def test_two_registrations_at_once_over_http(server, trained, tmp_path):
    config = server_config(server, "fashion-race")
    model_dir, export_dir = trained
    results, errors = {}, []

    def register(name: str) -> None:
        try:
            results[name] = register_model(
                model_dir, make_eval_dir(tmp_path / f"eval-{name}", 0.6),
                copy_export(export_dir, tmp_path / f"export-{name}"), config, name,
            )  # fmt: skip
        except Exception as err:  # collected and asserted on below
            errors.append(err)

    threads = [threading.Thread(target=register, args=(f"race-{i}",)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(r.version for r in results.values()) == ["1", "2"]
    assert Registry(server, "fashion-race").get_version("challenger") in ("1", "2")


def test_three_registrations_of_one_pipeline_run_at_once_make_one_run_and_one_version(server, trained, tmp_path):
    model_dir, export_dir = trained
    argvs = [
        [
            "register", "--preset", "ci", "--model", str(model_dir),
            "--eval", str(make_eval_dir(tmp_path / f"eval-{i}", 0.6)),
            "--export", str(copy_export(export_dir, tmp_path / f"export-{i}")), "--run-id", "cli-race",
            "--tracking-uri", server, "--set", "registry.model_name=fashion-cli-race", "--workdir", str(tmp_path),
        ]
        for i in range(3)
    ]  # fmt: skip
    finished = cli_at_once(argvs, tmp_path / "procs")
    for process in finished:
        assert process["code"] == 0, process["err"][-3000:]
    results = [json.loads(process["out"]) for process in finished]
    assert len({(r["run_id"], r["version"], r["model_id"]) for r in results}) == 1

    registry = Registry(server, "fashion-cli-race")
    runs = registry.client.search_runs([results[0]["experiment_id"]], filter_string="tags.pipeline_run_id = 'cli-race'")
    assert [(r.info.run_id, r.info.status) for r in runs] == [(results[0]["run_id"], "FINISHED")]
    assert "registration_heartbeat" not in runs[0].data.tags  # only there while the run is being logged
    versions = registry.client.search_model_versions("name = 'fashion-cli-race'")
    assert [str(v.version) for v in versions] == ["1"]
    assert registry.get_version("challenger") == "1"


def test_a_run_left_running_long_ago_is_replaced_over_http(server, trained, tmp_path):
    model_dir, export_dir = trained
    config = server_config(server, "fashion-crashed")
    client = Registry(server, "fashion-crashed").client
    experiment = client.get_experiment_by_name(config.registry.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(config.registry.experiment)
    # What an attempt killed an hour ago leaves: a run that never finished.
    an_hour_ago = int((time.time() - 3600) * 1000)
    crashed = client.create_run(experiment_id, start_time=an_hour_ago, tags={"pipeline_run_id": "run-crashed"})

    result = register_model(
        model_dir, make_eval_dir(tmp_path / "eval", 0.6), copy_export(export_dir, tmp_path / "export"), config,
        "run-crashed",
    )  # fmt: skip
    assert result.run_id != crashed.info.run_id and (result.version, result.created) == ("1", True)
    assert client.get_run(crashed.info.run_id).info.lifecycle_stage == "deleted"
