"""Cluster infrastructure as shipped: the MLflow kustomization renders, and the images carry what the steps import."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from core.config import PipelineConfig

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "infra" / "docker"


@pytest.fixture(scope="module")
def mlflow_objects():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(REPO / "infra" / "k8s" / "mlflow")], check=True, capture_output=True, text=True
    ).stdout
    return {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(rendered) if o}


def _container(objects, kind, name):
    return objects[(kind, name)]["spec"]["template"]["spec"]["containers"][0]


def _env(container):
    return {e["name"]: e.get("valueFrom", e.get("value")) for e in container.get("env", [])}


def test_mlflow_server_uses_postgres_and_gcs_artifacts(mlflow_objects):
    server = _container(mlflow_objects, "Deployment", "mlflow")
    args = server["args"]
    # The database password reaches MLflow through the environment, never the command line.
    assert not any("POSTGRES_PASSWORD" in a or a.startswith("--backend-store-uri") for a in args)
    assert "--serve-artifacts" in args
    config = next(o for (kind, name), o in mlflow_objects.items() if kind == "ConfigMap")
    assert config["data"]["artifacts-destination"].startswith("gs://")
    env = _env(server)
    assert env["POSTGRES_PASSWORD"] == {"secretKeyRef": {"name": "mlflow-postgres", "key": "password"}}
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://$(POSTGRES_USER):$(POSTGRES_PASSWORD)@")
    names = [e["name"] for e in server["env"]]
    # Kubernetes expands $(VAR) only from variables defined earlier in the list.
    assert names.index("POSTGRES_PASSWORD") < names.index("MLFLOW_BACKEND_STORE_URI")
    assert env["ARTIFACTS_DESTINATION"]["configMapKeyRef"]["name"] == config["metadata"]["name"]
    assert server["readinessProbe"]["httpGet"]["path"] == "/health"
    assert server["resources"]["requests"]


def test_mlflow_is_reachable_under_the_names_the_pipeline_uses(mlflow_objects):
    service = mlflow_objects[("Service", "mlflow")]
    assert service["metadata"]["namespace"] == "mlflow"
    assert service["spec"]["ports"][0]["port"] == 5000
    config = next(o for (kind, _), o in mlflow_objects.items() if kind == "ConfigMap")
    allowed = config["data"]["allowed-hosts"].split(",")
    host = "mlflow.mlflow.svc.cluster.local:5000"
    assert any(re.fullmatch(a.replace(".", r"\.").replace("*", ".*"), host) for a in allowed)


def test_postgres_keeps_its_data_on_a_volume(mlflow_objects):
    postgres = mlflow_objects[("StatefulSet", "mlflow-postgres")]
    claim = postgres["spec"]["volumeClaimTemplates"][0]
    mount = postgres["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]
    assert mount["name"] == claim["metadata"]["name"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    backend = _env(_container(mlflow_objects, "Deployment", "mlflow"))["MLFLOW_BACKEND_STORE_URI"]
    service = mlflow_objects[("Service", "mlflow-postgres")]
    assert service["spec"]["ports"][0]["port"] == 5432 and ":5432/" in backend


@pytest.mark.parametrize("dockerfile", ["component.Dockerfile", "gpu.Dockerfile"])
def test_step_images_hold_every_package_and_the_presets(dockerfile):
    text = (DOCKER / dockerfile).read_text()
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in packages:
        assert f"COPY {package.rstrip('*')} " in text, f"{dockerfile} does not copy {package}"
    assert "COPY configs " in text  # the presets the steps resolve their Config from
    # The runtime pins only: the test tools (requirements-test.lock) stay out of production images.
    instructions = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "pip install -r requirements.lock" in instructions and "requirements-test.lock" not in instructions
    ignore = (DOCKER / f"{dockerfile}.dockerignore").read_text()
    assert "!requirements.lock" in ignore and "!configs/**" in ignore and "requirements-test" not in ignore


@pytest.mark.parametrize("dockerfile", ["component.Dockerfile", "gpu.Dockerfile"])
def test_step_images_carry_the_commit_they_were_built_from(dockerfile):
    lines = [line.strip() for line in (DOCKER / dockerfile).read_text().splitlines()]
    # git_commit() reads FASHION_GIT_COMMIT; `make images` passes GIT_COMMIT.
    baked = lines.index("ENV FASHION_GIT_COMMIT=${GIT_COMMIT}")
    assert lines[baked - 1].startswith("ARG GIT_COMMIT")
    # After every install, so that a new commit rebuilds no dependency or code layer.
    assert all(not line.startswith(("RUN", "COPY")) for line in lines[baked:])


def test_default_image_names_are_the_ones_the_dockerfiles_document():
    defaults = PipelineConfig()
    assert f"-t {defaults.base_image} ." in (DOCKER / "component.Dockerfile").read_text()
    assert f"-t {defaults.gpu_image} ." in (DOCKER / "gpu.Dockerfile").read_text()


def test_mlflow_image_matches_the_pipelines_mlflow_version():
    lock = (REPO / "requirements.lock").read_text()
    assert re.search(r"^mlflow==", lock, re.M)
    text = (DOCKER / "mlflow.Dockerfile").read_text()
    assert "requirements.lock" in text and "mlflow|" in text and "psycopg2" in text
