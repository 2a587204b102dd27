"""Cluster commands against a local stand-in for the Kubeflow Pipelines v2beta1 API: submit, schedule, list, delete."""

from __future__ import annotations

import pytest

from core.errors import StepError
from pipeline.cli import main
from pipeline.cluster import kfp_cron
from tests.support.kfp_api_stub import KfpApiStub


@pytest.fixture
def kfp_api():
    stub = KfpApiStub().start()
    try:
        yield stub
    finally:
        stub.stop()


def _root_params(spec):
    return spec["root"]["inputDefinitions"]["parameters"]


def test_submit_creates_a_run_with_the_spec_and_parameters_in_the_experiment(kfp_api, capsys):
    code = main(
        [
            "submit",
            "--host",
            kfp_api.url,
            "--preset",
            "demo",
            "--experiment",
            "nightly",
            "--run-name",
            "try-1",
            "--source",
            "gs://catalogue/fashion",
            "--mlflow-uri",
            "http://mlflow.mlflow:5000",
            "--model-base-path",
            "gs://models/fashion",
            "--pipeline-root",
            "gs://pipeline-root/fashion",
            "--set",
            "train.epochs=3",
            "--beam-args",
            "--runner=DataflowRunner --project=shop --region=europe-west1 --temp_location=gs://tmp-bucket/beam",
        ]
    )
    assert code == 0
    created = kfp_api.requests_to("POST", "/experiments")
    assert [r.body["display_name"] for r in created] == ["nightly"]
    (run,) = kfp_api.requests_to("POST", "/runs")
    body = run.body
    assert body["display_name"] == "try-1"
    assert body["experiment_id"] == next(iter(kfp_api.experiments))
    spec = body["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "fashion-classifier"
    assert {"ingest-images", "resize-images", "train-model", "evaluate-model"} <= set(spec["root"]["dag"]["tasks"])
    assert set(_root_params(spec)) >= {"source_uri", "preset", "overrides", "gate_floors"}
    runtime = body["runtime_config"]
    assert runtime["pipeline_root"] == "gs://pipeline-root/fashion"
    params = runtime["parameters"]
    assert params["source_uri"] == "gs://catalogue/fashion"
    assert params["preset"] == "demo"
    assert params["mlflow_tracking_uri"] == "http://mlflow.mlflow:5000"
    assert params["model_base_path"] == "gs://models/fashion"
    assert params["overrides"] == {"train": {"epochs": 3}}
    assert params["gate_floors"] == {"category_accuracy": 0.4, "subcategory_accuracy": 0.2}
    assert params["beam_args"] == [
        "--runner=DataflowRunner",
        "--project=shop",
        "--region=europe-west1",
        "--temp_location=gs://tmp-bucket/beam",
    ]
    out, err = capsys.readouterr()
    assert body["display_name"] in out and f"{kfp_api.url}/#/runs/details/" in out
    # The demo preset's images name no registry: the package it just compiled cannot be pulled.
    assert "fashion-classifier:latest (pipeline.base_image) names no registry" in err


def test_submit_reuses_an_existing_experiment_and_a_compiled_package(kfp_api, tmp_path):
    package = tmp_path / "pipeline.yaml"
    assert main(["compile", "--preset", "ci", "--out", str(package)]) == 0
    for _ in range(2):
        assert main(["submit", "--host", kfp_api.url, "--package", str(package), "--preset", "ci"]) == 0
    assert len(kfp_api.requests_to("POST", "/experiments")) == 1
    runs = kfp_api.requests_to("POST", "/runs")
    assert len(runs) == 2
    assert {r.body["experiment_id"] for r in runs} == set(kfp_api.experiments)
    assert _root_params(runs[0].body["pipeline_spec"])["preset"]["defaultValue"] == "ci"


def test_schedule_creates_a_recurring_run_one_at_a_time_without_catchup(kfp_api, capsys):
    code = main(
        [
            "schedule",
            "--host",
            kfp_api.url,
            "--cron",
            "0 3 * * 1",
            "--name",
            "weekly-retrain",
            "--experiment",
            "retraining",
            "--preset",
            "paper",
            "--source",
            "gs://catalogue/fashion",
        ]
    )
    assert code == 0
    (request,) = kfp_api.requests_to("POST", "/recurringruns")
    body = request.body
    assert body["display_name"] == "weekly-retrain"
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 1"
    assert int(body["max_concurrency"]) == 1
    assert body["no_catchup"] is True
    assert body["mode"] == "ENABLE"
    experiment = next(iter(kfp_api.experiments.values()))
    assert experiment["display_name"] == "retraining" and body["experiment_id"] == experiment["experiment_id"]
    spec = body["pipeline_spec"]
    train = spec["deploymentSpec"]["executors"]["exec-train-model"]["container"]
    assert train["resources"]["accelerator"]["resourceCount"] == "1"
    assert body["runtime_config"]["parameters"]["source_uri"] == "gs://catalogue/fashion"
    assert "cron '0 0 3 * * 1'" in capsys.readouterr().out


def test_schedule_list_and_delete_by_name(kfp_api, capsys):
    for name, cron in (("nightly", "0 2 * * *"), ("weekly", "0 4 * * 0")):
        assert main(["schedule", "--host", kfp_api.url, "--cron", cron, "--name", name, "--preset", "ci"]) == 0
    capsys.readouterr()
    assert main(["schedule", "--host", kfp_api.url, "--list"]) == 0
    listed = capsys.readouterr().out
    assert "nightly" in listed and "weekly" in listed and "0 0 2 * * *" in listed
    assert main(["schedule", "--host", kfp_api.url, "--delete", "nightly"]) == 0
    (deleted,) = [r for r in kfp_api.requests if r.method == "DELETE"]
    remaining = list(kfp_api.recurring_runs.values())
    assert [r["display_name"] for r in remaining] == ["weekly"]
    assert deleted.path.endswith("/recurringruns/" + capsys.readouterr().out.split()[3])
    assert main(["schedule", "--host", kfp_api.url, "--delete", "nightly"]) == 1


def test_schedule_list_of_an_unknown_experiment_is_empty(kfp_api, capsys):
    assert main(["schedule", "--host", kfp_api.url, "--list", "--experiment", "nothing-here"]) == 0
    assert "no recurring runs" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("given", "sent"),
    [("0 3 * * *", "0 0 3 * * *"), ("*/15 * * * *", "0 */15 * * * *"), ("30 0 3 * * MON-FRI", "30 0 3 * * MON-FRI")],
)
def test_cron_is_sent_in_the_schedulers_six_field_form(given, sent):
    assert kfp_cron(given) == sent


@pytest.mark.parametrize("bad", ["", "every day", "0 3 * *", "0 0 0 3 * * * *"])
def test_a_malformed_cron_is_refused_before_any_request(kfp_api, bad, capsys):
    with pytest.raises(StepError, match="expected 5 fields"):
        kfp_cron(bad)
    assert main(["schedule", "--host", kfp_api.url, "--cron", bad or "x"]) == 1
    assert "expected 5 fields" in capsys.readouterr().err
    assert not kfp_api.requests_to("POST", "/recurringruns")


def test_submit_without_a_host_says_how_to_give_one(monkeypatch, capsys):
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    assert main(["submit"]) == 1
    assert "--host" in capsys.readouterr().err
