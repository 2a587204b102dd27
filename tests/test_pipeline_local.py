"""The whole DAG under kfp.local on real photos, ending in a real gRPC prediction; a failed run keeps the champion."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.register import Registry
from core.config import load_config
from pipeline.cli import main
from pipeline.local import format_summary, run_and_serve, stop_server
from tests.support.catalogue import CLASSES, PER_CLASS, make_catalogue
from tests.support.ports import free_port


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory, demo_dir):
    return make_catalogue(demo_dir, tmp_path_factory.mktemp("catalogue"))


@pytest.mark.slow
@pytest.mark.server
def test_local_run_serves_a_prediction_and_a_failing_run_keeps_the_champion(tmp_path, catalogue, samples_dir, capsys):
    grpc_port, rest_port = free_port(), free_port()
    ports = {"grpc_port": grpc_port, "rest_port": rest_port}
    workdir = tmp_path / "work"
    config = load_config("ci", overrides={"data": {"source_uri": str(catalogue)}, "serving": ports})
    try:
        result = run_and_serve(config, workdir, samples_dir)
        assert result.ok, result.error
        assert {name: step.status for name, step in result.steps.items()} == {
            "ingest-images": "succeeded",
            "resize-images": "succeeded",
            "train-model": "succeeded",
            "evaluate-model": "succeeded",
            "register-model": "succeeded",
            "deploy-model": "succeeded",
        }
        manifest = result.artifact("ingest-images", "manifest")["metadata"]
        assert manifest["usable"] == len(CLASSES) * PER_CLASS
        assert sorted(manifest["subcategories"]) == sorted(CLASSES)
        assert result.artifact("resize-images", "examples")["metadata"]["image_height"] == 80
        assert result.steps["evaluate-model"].parameters["Output"] is True  # the gate's decision
        metrics = result.artifact("evaluate-model", "metrics")["metadata"]
        assert 0.0 <= metrics["category_accuracy"] <= 1.0
        assert Path(result.artifact("evaluate-model", "report")["uri"]).read_text().lstrip().startswith("<")
        version = str(result.artifact("register-model", "saved_model")["metadata"]["version"])
        deployed = result.artifact("deploy-model", "deployment")["metadata"]
        assert str(deployed["registry_version"]) == version
        serving_version = int(deployed["serving_version"])
        assert deployed["smoke"]["agreement"] >= 0.9

        # A real gRPC answer from the served champion, for a photo that is in no catalogue.
        prediction = result.prediction
        assert prediction is not None
        assert Path(prediction["photo"]).parent == samples_dir
        assert Path(prediction["photo"]).name.startswith(("tshirts", "jeans", "watches", "casual-shoes"))
        assert prediction["subcategory"] in CLASSES
        assert 0.0 < prediction["subcategory_score"] <= 1.0
        assert prediction["model_version"] == serving_version
        registry = Registry(config_tracking_uri(workdir), config.registry.model_name)
        assert registry.get_version("champion") == version

        summary = format_summary(result)
        expected = ("Gate: PASSED", f"registry version {version}", f"127.0.0.1:{grpc_port}", "Prediction over gRPC")
        assert all(text in summary for text in expected), summary

        # A corrupt source fails the run at ingest with ingest's own message, after its retries...
        corrupt = tmp_path / "corrupt.zip"
        corrupt.write_bytes((catalogue / "styles.csv").read_bytes()[:200])
        capsys.readouterr()
        code = main(
            [
                "run",
                "--preset",
                "ci",
                "--source",
                str(corrupt),
                "--workdir",
                str(workdir),
                "--set",
                f"serving.grpc_port={grpc_port}",
                "--set",
                f"serving.rest_port={rest_port}",
            ]
        )
        out, err = capsys.readouterr()
        assert code == 1
        assert "ingest-images failed" in err and str(corrupt) in err
        assert "(attempt 3)" in out  # the storage step was retried twice before the run gave up
        assert "The serving champion was left untouched." in out
        assert f"Prediction over gRPC (stable = version {serving_version})" in out
        # ...and the same server keeps serving the same champion.
        assert "reused" in out and f"pid {result.server.pid}" in out
        assert registry.get_version("champion") == version
        from serving.client import PredictionClient

        with PredictionClient(f"127.0.0.1:{grpc_port}", config.serving.model_name, label="stable") as client:
            again = client.predict([Path(prediction["photo"]).read_bytes()])[0]
        assert again["model_version"] == serving_version
        assert again["subcategory"] == prediction["subcategory"]
    finally:
        stop_server(workdir)


def config_tracking_uri(workdir: Path) -> str:
    """The embedded MLflow store `fashion run` keeps in its work directory."""
    from components.register.backend import embedded_backend

    return embedded_backend(workdir).tracking_uri
