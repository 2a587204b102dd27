"""The whole registration flow over HTTP against a real `mlflow server` (SQLite backend) on a loopback port."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from components.register import Registry, register_model
from core.config import load_config
from tests.support.mlflow import (
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
