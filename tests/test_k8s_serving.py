"""The Kubernetes manifests: rendered from the kustomization, and serving the models.config `fashion deploy` writes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from components.register import export
from core.config import ServingConfig
from serving import model_config
from serving.client import PredictionClient
from serving.server import config as server_config
from tests.support import serving as testing

K8S = Path(__file__).resolve().parents[1] / "infra" / "k8s" / "serving"


def render(root: Path = K8S) -> list[dict]:
    """What `kustomize build` produces for this kustomization (resources plus generated ConfigMaps)."""
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    docs = [d for name in kustomization["resources"] for d in yaml.safe_load_all((root / name).read_text()) if d]
    labels = {k: v for entry in kustomization.get("labels", []) for k, v in entry["pairs"].items()}
    for generator in kustomization.get("configMapGenerator", []):
        data = {Path(f).name: (root / f).read_text() for f in generator["files"]}
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})
    for doc in docs:
        doc["metadata"].setdefault("labels", {}).update(labels)
    return docs


def _one(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def _args(container) -> dict[str, str]:
    return dict(a.removeprefix("--").split("=", 1) for a in container["args"])


def _serving_pod(docs) -> tuple[dict, dict]:
    pod = _one(docs, "Deployment", "fashion-serving")["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def test_manifests_run_the_official_image_on_the_models_config_deploy_writes():
    docs = render()
    deployment = _one(docs, "Deployment", "fashion-serving")
    pod, container = _serving_pod(docs)
    assert container["image"].startswith("tensorflow/serving:")
    args = _args(container)
    serving = ServingConfig()
    assert (int(args["port"]), int(args["rest_api_port"])) == (serving.grpc_port, serving.rest_port)

    # Every pod reads the one models.config `fashion deploy` writes next to the model base path
    # (the seed here is copied there once), and re-reads it, so all replicas converge on it.
    models = model_config.read_model_server_config(str(K8S / "models.config"))
    (model,) = models.model_config_list.config
    assert model.name == serving.model_name and model.base_path.startswith("gs://")
    assert args["model_config_file"] == model_config.model_config_uri(model.base_path)
    assert float(args["model_config_file_poll_wait_seconds"]) > 0

    # The batching file is the kustomization's ConfigMap, mounted where the args point, and is
    # exactly the file the local server parses.
    config_map = _one(docs, "ConfigMap")
    assert "models.config" not in config_map["data"]  # a second copy would undo what deploy writes
    volume = next(v for v in pod["volumes"] if v.get("configMap", {}).get("name") == config_map["metadata"]["name"])
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert args["batching_parameters_file"] == f"{mount['mountPath']}/batching_parameters.txt"
    assert args["enable_batching"] == "true"
    batching = server_config.parse_batching_parameters(config_map["data"]["batching_parameters.txt"])
    assert (batching.max_batch_size, batching.batch_timeout_micros, batching.max_enqueued_batches) == (
        serving.max_batch_size,
        serving.batch_timeout_micros,
        serving.max_enqueued_batches,
    )

    # Readiness from the REST status of that model; resources requested; autoscaled.
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == f"/v1/models/{model.name}" and probe["port"] == "http"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"grpc": 8500, "http": 8501}
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    hpa = _one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fashion-serving"}
    assert hpa["spec"]["minReplicas"] >= 2
    service = _one(docs, "Service", "fashion-serving")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_every_replica_is_addressable_hardened_and_kept_available():
    docs = render()
    deployment = _one(docs, "Deployment", "fashion-serving")
    pods = deployment["spec"]["selector"]["matchLabels"]
    pod, container = _serving_pod(docs)

    # The headless service gives one address per pod: what `fashion deploy --server dns:///...` verifies.
    headless = _one(docs, "Service", "fashion-serving-headless")
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["selector"] == pods
    assert {p["name"]: p["port"] for p in headless["spec"]["ports"]}["grpc"] == 8500

    # The service account the pods run as is part of the manifests (Workload Identity reads the bucket).
    account = _one(docs, "ServiceAccount", pod["serviceAccountName"])
    assert account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].startswith("fashion-serving@")

    # Non-root, no privilege escalation, no capabilities, read-only root, the runtime's seccomp filter.
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])

    # A drain never takes every replica at once.
    budget = _one(docs, "PodDisruptionBudget", "fashion-serving")
    assert budget["spec"]["selector"]["matchLabels"] == pods
    minimum = min(deployment["spec"]["replicas"], _one(docs, "HorizontalPodAutoscaler")["spec"]["minReplicas"])
    assert 1 <= budget["spec"]["minAvailable"] < minimum


def _kustomize() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return ["kubectl", "kustomize"] if shutil.which("kubectl") else None


@pytest.mark.skipif(_kustomize() is None, reason="neither kustomize nor kubectl is installed")
def test_kustomize_build_agrees_with_the_python_rendering():
    built = [d for d in yaml.safe_load_all(subprocess.check_output([*_kustomize(), str(K8S)], text=True)) if d]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in built) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in render()
    )


@pytest.mark.gcs
@pytest.mark.server
@pytest.mark.slow
def test_local_server_serves_the_manifests_config_from_gcs(gcs_emulator, tmp_path):
    from core import storage

    models = model_config.read_model_server_config(str(K8S / "models.config"))
    base_path = models.model_config_list.config[0].base_path
    bucket, _ = base_path[5:].split("/", 1)
    gcs_emulator.create_bucket(bucket)
    export.export_model(testing.make_model_dir(tmp_path / "model"), f"{base_path}/1")
    # The seed copied where the Deployment's args point, read from there with the mounted batching file.
    _, container = _serving_pod(render())
    args = _args(container)
    storage.write_bytes(args["model_config_file"], (K8S / "models.config").read_bytes())
    server = testing.start_local_server(
        args["model_config_file"],
        model_config_file_poll_wait_seconds=float(args["model_config_file_poll_wait_seconds"]),
        enable_batching=True,
        batching_parameters_file=str(K8S / "batching_parameters.txt"),
    )
    try:
        with PredictionClient(f"127.0.0.1:{server.grpc_port}", models.model_config_list.config[0].name) as client:
            assert client.status() == [(1, "AVAILABLE")]
            assert client.predict([testing.sample_photos(1)[0].read_bytes()])[0]["model_version"] == 1
    finally:
        server.stop()
