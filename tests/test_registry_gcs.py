"""Registration with the MLflow artifact root on gs:// (the GCS emulator), embedded and through a server."""

from __future__ import annotations

import dataclasses

import pytest

from components.register import Registry, register_model
from components.register.backend import embedded_backend
from core.config import load_config
from core.errors import StepError
from tests.support.mlflow import (
    copy_export,
    make_eval_dir,
    make_model_and_export,
    make_store_template,
    two_pipeline_runs,
    workdir_from,
)

pytestmark = [pytest.mark.gcs, pytest.mark.slow]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return make_model_and_export(tmp_path_factory.mktemp("trained"))


@pytest.fixture
def workdir(tmp_path_factory, tmp_path):
    return workdir_from(make_store_template(tmp_path_factory.mktemp("store")), tmp_path / "work")


def gcs_config(artifact_uri: str):
    config = load_config("ci")
    return dataclasses.replace(config, registry=dataclasses.replace(config.registry, artifact_uri=artifact_uri))


def test_two_pipeline_runs_with_artifacts_on_gcs(gcs_emulator, trained, tmp_path, workdir):
    bucket = gcs_emulator.create_bucket("mlflow-artifacts-test")
    config = gcs_config("gs://mlflow-artifacts-test/mlflow")
    runs = two_pipeline_runs(config, tmp_path / "runs", *trained, workdir=workdir)
    names = [b.name for b in gcs_emulator.list_blobs(bucket)]
    run_id, model_id = runs["second"].run_id, runs["second"].model_id
    assert any(n.endswith(f"{run_id}/artifacts/evaluation/report.html") for n in names)
    assert any(n.endswith(f"{run_id}/artifacts/model/model.keras") for n in names)
    assert any(f"models/{model_id}/artifacts/data/saved_model/saved_model.pb" in n for n in names)
    assert not (workdir / "mlflow" / "artifacts").exists()


def test_missing_bucket_fails_naming_it_and_leaves_nothing_half_written(gcs_emulator, trained, tmp_path, workdir):
    model_dir, export_dir = trained
    config = gcs_config("gs://no-such-bucket-for-mlflow/mlflow")
    with pytest.raises(StepError, match="artifacts: gs://no-such-bucket-for-mlflow/mlflow"):
        register_model(model_dir, make_eval_dir(tmp_path / "eval", 0.6), copy_export(export_dir, tmp_path / "e"),
                       config, "run-nobucket", workdir=workdir)  # fmt: skip
    registry = Registry(embedded_backend(workdir).tracking_uri, config.registry.model_name)
    experiment = registry.client.get_experiment_by_name(config.registry.experiment)
    assert registry.client.search_runs([experiment.experiment_id]) == []
    assert registry.find_version("run-nobucket") is None
