"""Registration against the embedded MLflow store (SQLite + file artifacts in the work directory)."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import pytest

from components.register import Registry, register_model
from components.register.backend import embedded_backend
from core.config import load_config
from core.errors import StepError
from tests.support.mlflow import (
    copy_export,
    free_port,
    make_eval_dir,
    make_manifest,
    make_model_and_export,
    make_store_template,
    photo_bytes,
    serve_predictions,
    two_pipeline_runs,
    workdir_from,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real model folder and its real SavedModel export, shared by the module's tests."""
    return make_model_and_export(tmp_path_factory.mktemp("trained"))


@pytest.fixture
def config():
    return load_config("ci")


@pytest.fixture(scope="module")
def store_template(tmp_path_factory):
    return make_store_template(tmp_path_factory.mktemp("store"))


@pytest.fixture
def workdir(store_template, tmp_path):
    """A fresh embedded store for each test (a copy of an initialised empty one)."""
    return workdir_from(store_template, tmp_path / "work")


def test_two_pipeline_runs_register_promote_and_roll_back(trained, config, tmp_path, monkeypatch, workdir):
    monkeypatch.chdir(tmp_path)  # MLflow must not write anything into the current directory
    two_pipeline_runs(config, tmp_path / "runs", *trained, workdir=workdir)
    assert (workdir / "mlflow" / "mlflow.db").is_file()
    assert (workdir / "mlflow" / "artifacts").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "work"]


def test_run_page_holds_config_history_metrics_reports_and_both_model_formats(trained, config, tmp_path, workdir):
    model_dir, export_dir = trained
    manifest = make_manifest(tmp_path / "ingest")
    result = register_model(
        model_dir, make_eval_dir(tmp_path / "eval", 0.65), copy_export(export_dir, tmp_path / "export"), config,
        "run-a", workdir=workdir, manifest_uri=str(manifest), commit="abc123",
    )  # fmt: skip
    client = Registry(result.tracking_uri, config.registry.model_name).client
    run = client.get_run(result.run_id)

    assert run.info.status == "FINISHED"
    assert run.data.params["model.backbone"] == "small_cnn"
    assert run.data.params["evaluate.floors.category_accuracy"] == "0.0"
    assert run.data.params["labels.attributes"] == "baseColour,season,usage,gender"
    assert [m.value for m in client.get_metric_history(result.run_id, "train.loss")] == [2.5, 1.9, 1.4]
    assert [m.step for m in client.get_metric_history(result.run_id, "val.category_accuracy")] == [0, 1, 2]
    assert run.data.metrics["test.category_accuracy"] == 0.65
    assert run.data.metrics["train.best_epoch"] == 3
    tags = run.data.tags
    assert tags["pipeline_run_id"] == "run-a" and tags["git_commit"] == "abc123"
    assert tags["backbone"] == "small_cnn" and tags["image_size"] == "40x32"
    assert len(tags["data_manifest_sha256"]) == 64 and tags["gate_blessed"] == "true"

    datasets = run.inputs.dataset_inputs
    assert [d.dataset.name for d in datasets] == ["fashion-catalogue"]
    assert json.loads(datasets[0].dataset.profile)["num_rows"] == 2
    assert str(manifest) in datasets[0].dataset.source

    files = {f.path for f in client.list_artifacts(result.run_id, "evaluation")}
    assert {"evaluation/report.html", "evaluation/report.md", "evaluation/confusion_category.png"} <= files
    model_files = {f.path for f in client.list_artifacts(result.run_id, "model")}
    assert {"model/model.keras", "model/history.json", "model/labels.json"} <= model_files
    assert {"labels.json", "config.yaml"} <= {f.path for f in client.list_artifacts(result.run_id)}

    logged = client.get_logged_model(result.model_id)
    assert logged.source_run_id == result.run_id
    assert [o.model_id for o in run.outputs.model_outputs] == [result.model_id]


def test_version_has_signature_input_example_and_predicts_through_pyfunc(trained, config, tmp_path, workdir):
    import mlflow.pyfunc
    from mlflow.models import Model

    model_dir, export_dir = trained
    result = register_model(
        model_dir, make_eval_dir(tmp_path / "eval", 0.6), copy_export(export_dir, tmp_path / "export"), config,
        "run-sig", workdir=workdir,
    )  # fmt: skip
    registry = Registry(result.tracking_uri, config.registry.model_name)
    source = registry.client.get_model_version_download_uri(config.registry.model_name, result.version)
    meta = Model.load(str(Path(source) / "MLmodel"))
    assert meta.signature.inputs.input_names() == ["image_bytes"]
    assert {"category", "subcategory", "attribute_names"} <= set(meta.signature.outputs.input_names())
    example = meta.load_input_example(source)
    assert example["image_bytes"][0][:2] == b"\xff\xd8" or example["image_bytes"][0][:4] == b"\x89PNG"

    photos = photo_bytes(3)
    import pandas as pd

    predicted = mlflow.pyfunc.load_model(source).predict(pd.DataFrame({"image_bytes": photos}))
    direct = serve_predictions(export_dir, photos)
    assert list(predicted["category"]) == [c.decode() for c in direct["category"]]


def test_export_is_made_when_the_export_folder_is_empty(trained, config, tmp_path, workdir):
    model_dir, _ = trained
    export_dir = tmp_path / "saved_model"
    export_dir.mkdir()  # what a kfp output path looks like before the step runs
    result = register_model(model_dir, make_eval_dir(tmp_path / "eval", 0.6), export_dir, config, "run-x",
                            workdir=workdir)  # fmt: skip
    assert (export_dir / "saved_model.pb").is_file()
    assert (export_dir / "assets.extra" / "tf_serving_warmup_requests").is_file()
    assert result.version == "1" and result.saved_model_dir == str(export_dir)


def test_same_pipeline_run_twice_makes_one_run_and_one_version(trained, config, tmp_path, workdir):
    model_dir, export_dir = trained
    args = (model_dir, make_eval_dir(tmp_path / "eval", 0.6), copy_export(export_dir, tmp_path / "export"), config)
    first = register_model(*args, "run-twice", workdir=workdir)
    second = register_model(*args, "run-twice", workdir=workdir)
    assert (second.version, second.run_id, second.model_id) == (first.version, first.run_id, first.model_id)
    assert second.created is False
    client = Registry(first.tracking_uri, config.registry.model_name).client
    assert len(client.search_model_versions(f"name = '{config.registry.model_name}'")) == 1
    assert len(client.search_runs([first.experiment_id])) == 1


def test_two_registrations_at_once_get_distinct_versions(trained, config, tmp_path, workdir):
    model_dir, export_dir = trained
    # The store exists before the race, as it does after the first pipeline run.
    register_model(model_dir, make_eval_dir(tmp_path / "eval-0", 0.6), copy_export(export_dir, tmp_path / "e0"),
                   config, "run-0", workdir=workdir)  # fmt: skip
    results, errors = {}, []

    def register(name: str) -> None:
        try:
            results[name] = register_model(
                model_dir, make_eval_dir(tmp_path / f"eval-{name}", 0.6),
                copy_export(export_dir, tmp_path / f"export-{name}"), config, name, workdir=workdir,
            )  # fmt: skip
        except Exception as err:  # collected and asserted on below
            errors.append(err)

    threads = [threading.Thread(target=register, args=(name,)) for name in ("run-1", "run-2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(r.version for r in results.values()) == ["2", "3"]
    registry = Registry(embedded_backend(workdir).tracking_uri, config.registry.model_name)
    assert registry.get_version("challenger") in ("2", "3")
    assert registry.find_version("run-1") == results["run-1"].version


def test_unblessed_model_is_tracked_but_not_registered(trained, config, tmp_path, workdir):
    model_dir, export_dir = trained
    result = register_model(
        model_dir, make_eval_dir(tmp_path / "eval", 0.1, blessed=False), copy_export(export_dir, tmp_path / "x"),
        config, "run-bad", workdir=workdir,
    )  # fmt: skip
    assert result.version is None and result.blessed is False
    registry = Registry(result.tracking_uri, config.registry.model_name)
    assert registry.client.get_run(result.run_id).data.tags["gate_blessed"] == "false"
    assert registry.get_version("challenger") is None


def test_unreachable_server_fails_naming_the_uri_before_anything_is_written(trained, config, tmp_path):
    model_dir, _ = trained
    uri = f"http://127.0.0.1:{free_port()}"
    config = dataclasses.replace(config, registry=dataclasses.replace(config.registry, tracking_uri=uri))
    export_dir = tmp_path / "export"
    with pytest.raises(StepError, match=uri):
        register_model(model_dir, make_eval_dir(tmp_path / "eval", 0.6), export_dir, config, "run-u")
    assert not export_dir.exists()
    with pytest.raises(StepError, match="cannot be reached"):
        Registry(uri, "fashion-classifier")


def test_missing_store_folder_fails_naming_the_uri(config):
    uri = "sqlite:////nonexistent-folder/mlflow.db"
    with pytest.raises(StepError, match="nonexistent-folder"):
        Registry(uri, "fashion-classifier")


def test_artifact_store_failure_mid_run_leaves_no_run_and_no_version(trained, config, tmp_path, workdir):
    model_dir, export_dir = trained
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the artifact root should be")
    registry_config = dataclasses.replace(config.registry, artifact_uri=str(blocker / "artifacts"))
    config = dataclasses.replace(config, registry=registry_config)
    with pytest.raises(StepError, match="not-a-folder/artifacts"):
        register_model(model_dir, make_eval_dir(tmp_path / "eval", 0.6), copy_export(export_dir, tmp_path / "e"),
                       config, "run-broken", workdir=workdir)  # fmt: skip
    registry = Registry(embedded_backend(workdir).tracking_uri, config.registry.model_name)
    experiment = registry.client.get_experiment_by_name(config.registry.experiment)
    assert registry.client.search_runs([experiment.experiment_id]) == []
    assert registry.find_version("run-broken") is None
    assert registry.get_version("challenger") is None


def test_rollback_without_a_previous_champion_is_a_clear_error(trained, config, tmp_path, workdir):
    model_dir, export_dir = trained
    result = register_model(model_dir, make_eval_dir(tmp_path / "eval", 0.6), copy_export(export_dir, tmp_path / "e"),
                            config, "run-r", workdir=workdir)  # fmt: skip
    registry = Registry(result.tracking_uri, config.registry.model_name)
    with pytest.raises(StepError, match="no champion"):
        registry.rollback()
    registry.promote(result.version)
    with pytest.raises(StepError, match="nothing to roll back"):
        registry.rollback()
    with pytest.raises(StepError, match="no version with the alias"):
        registry.download_export("staging", tmp_path / "dl")


def test_cli_register_prints_the_version_and_mlflow_ui_opens_the_same_store(trained, tmp_path, capsys, workdir):
    from pipeline.cli import main

    model_dir, export_dir = trained
    args = [
        "register", "--preset", "ci", "--model", str(model_dir), "--eval", str(make_eval_dir(tmp_path / "eval", 0.6)),
        "--export", str(copy_export(export_dir, tmp_path / "export")), "--run-id", "cli-run", "--workdir", str(workdir),
    ]  # fmt: skip
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["version"], first["alias"], first["model_uri"]) == ("1", "challenger", "models:/fashion-classifier/1")
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "1"

    assert main(["mlflow-ui", "--preset", "ci", "--workdir", str(workdir), "--print-command"]) == 0
    command = capsys.readouterr().out
    assert f"sqlite:///{workdir.resolve()}/mlflow/mlflow.db" in command
    assert first["tracking_uri"] in command


def test_cli_register_with_an_unreachable_server_exits_non_zero_naming_it(trained, tmp_path, capsys):
    from pipeline.cli import main

    model_dir, _ = trained
    uri = f"http://127.0.0.1:{free_port()}"
    code = main([
        "register", "--preset", "ci", "--model", str(model_dir), "--eval", str(make_eval_dir(tmp_path / "eval", 0.6)),
        "--export", str(tmp_path / "export"), "--run-id", "cli-down", "--tracking-uri", uri,
    ])  # fmt: skip
    assert code == 1
    assert uri in capsys.readouterr().err
