"""The whole local pipeline on gs:// (source, pipeline root, MLflow artifacts, model base path) via the GCS emulator."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.register import Registry
from components.register.backend import embedded_backend
from core import storage
from core.config import load_config
from pipeline.local.run import run_and_serve
from pipeline.local.server import stop_server
from tests.support.catalogue import make_catalogue
from tests.support.ports import free_port

BUCKETS = ("fashion-source", "fashion-pipeline", "fashion-mlflow", "fashion-models")


@pytest.mark.slow
@pytest.mark.gcs
@pytest.mark.server
def test_whole_pipeline_on_gcs(gcs_emulator, tmp_path, demo_dir, samples_dir):
    for name in BUCKETS:
        if gcs_emulator.lookup_bucket(name) is None:
            gcs_emulator.create_bucket(name)
    local = make_catalogue(demo_dir, tmp_path / "catalogue")
    source = "gs://fashion-source/catalogue"
    assert storage.copy_tree(str(local), source) == len(list(local.rglob("*.jpg"))) + 1
    config = load_config(
        "ci",
        overrides={
            "data": {"source_uri": source},
            "pipeline": {"pipeline_root": "gs://fashion-pipeline/root"},
            "registry": {"artifact_uri": "gs://fashion-mlflow/artifacts"},
            "serving": {
                "model_base_path": "gs://fashion-models/fashion",
                "grpc_port": free_port(),
                "rest_port": free_port(),
            },
        },
    )
    workdir = tmp_path / "work"
    try:
        result = run_and_serve(config, workdir, samples_dir)
        assert result.ok, result.error
        manifest = result.artifact("ingest-images", "manifest")["metadata"]
        assert manifest["source"] == source

        # The model base path the server polls is in the bucket, one folder per version.
        version = str(result.artifact("register-model", "saved_model")["metadata"]["version"])
        serving_version = int(result.artifact("deploy-model", "deployment")["metadata"]["serving_version"])
        published = list(storage.list_files(f"gs://fashion-models/fashion/{serving_version}"))
        assert any(uri.endswith("/saved_model.pb") for uri in published)
        assert storage.exists("gs://fashion-models/models.config")
        assert result.prediction["model_version"] == serving_version
        assert result.prediction["subcategory"]

        # MLflow keeps runs in the work directory's store and their artifacts in the bucket.
        registry = Registry(embedded_backend(workdir).tracking_uri, config.registry.model_name)
        assert registry.get_version("champion") == version
        assert any(True for _ in storage.list_files("gs://fashion-mlflow/artifacts"))

        # The run's step outputs are under the gs:// pipeline root, as on a cluster.
        assert result.pipeline_root_uri.startswith("gs://fashion-pipeline/root/")
        uploaded = list(storage.list_files(result.pipeline_root_uri))
        assert any(uri.endswith("/train-model/model/model.keras") for uri in uploaded)
        assert any(uri.endswith("/ingest-images/manifest/manifest.csv") for uri in uploaded)
        assert Path(result.run_dir).name in result.pipeline_root_uri
    finally:
        stop_server(workdir)
