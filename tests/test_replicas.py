"""Two `fashion serve` replicas on one model base path and one models.config, as the Kubernetes Deployment runs them.

Each replica re-reads the models.config that deploy writes (`--model_config_file_poll_wait_seconds`)
and deploy pushes every change to both; it verifies the candidate on every replica before `stable`
and the MLflow `champion` move. These tests look at what each replica answers to requests that name
no version or label after a two-replica deploy, a rollback, a deploy that one replica fails and a
deploy that dies midway. Deploys run against a real MLflow registry (SQLite store).
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from components.deploy import step
from components.deploy.step import DeployResult, deploy_model, rollback_model
from components.register.registry import Registry
from core.config import Config, load_config
from core.errors import StepError
from serving import model_config
from serving.admin import replica_targets
from serving.client import PredictionClient
from serving.model_config import STABLE_LABEL
from tests.support import serving as testing
from tests.support.ports import free_port


def test_replica_targets_reads_lists_and_resolves_dns_names():
    assert replica_targets("10.0.0.1:8500") == ["10.0.0.1:8500"]
    assert replica_targets("10.0.0.1:8500, 10.0.0.2:8500,10.0.0.1:8500") == ["10.0.0.1:8500", "10.0.0.2:8500"]
    # A headless service's name resolves to one address per pod; localhost stands in for it here.
    assert "127.0.0.1:8500" in replica_targets("dns:///localhost:8500")
    with pytest.raises(StepError, match="cannot resolve no-such-service.invalid"):
        replica_targets("dns:///no-such-service.invalid:8500")
    with pytest.raises(StepError, match="expected dns:///<name>:<port>"):
        replica_targets("dns:///fashion-serving-headless")
    with pytest.raises(StepError, match="no serving replica"):
        replica_targets(" , ")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Two different SavedModel exports (different random weights)."""
    return testing.two_exports(tmp_path_factory.mktemp("exports"))


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """Two `fashion serve` processes reading one models.config, which they re-read every half second."""
    root = tmp_path_factory.mktemp("replicas")
    config_file = root / "models.config"
    (root / "idle").mkdir()
    model_config.write_model_server_config(
        str(config_file), model_config.single_model_config("idle", str(root / "idle"))
    )
    flags = [
        f"--model_config_file={config_file}",
        "--model_config_file_poll_wait_seconds=0.5",
        "--file_system_poll_wait_seconds=0.2",
        "--max_num_load_retries=0",
    ]
    servers = [testing.ServerProcess(flags, log_path=root / f"replica{i}.log") for i in range(2)]
    try:
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(lambda server: server.start(), servers))
        yield config_file, servers
    finally:
        for server in servers:
            server.stop()


def _answer(target: str, model: str, version: int | None = None, label: str | None = None) -> int | str:
    """The version that answers a Predict call, or the gRPC code it fails with."""
    photo = testing.sample_photos(1)[0].read_bytes()
    with PredictionClient(target, model, version=version, label=label) as client:
        try:
            return client.predict_raw([photo]).version
        except grpc.RpcError as err:
            return err.code().name


@dataclass
class Cluster:
    """The two replicas serving one model of their own, its base path, and a registry to deploy from."""

    name: str
    base: Path
    config_file: Path
    servers: list[testing.ServerProcess]
    registry: Registry
    config: Config
    exports: list[str]

    @property
    def endpoint(self) -> str:
        return ",".join(server.target for server in self.servers)

    def deploy(self, export_index: int, endpoint: str | None = None) -> DeployResult:
        """Register an export as the challenger and deploy it to every replica."""
        experiment = self.registry.client.get_experiment_by_name("replicas")
        experiment_id = experiment.experiment_id if experiment else self.registry.client.create_experiment("replicas")
        run = self.registry.client.create_run(experiment_id)
        self.registry.register(run.info.run_id, pipeline_run_id=run.info.run_id, export_dir=self.exports[export_index])
        return deploy_model(
            self.registry,
            self.config,
            endpoint or self.endpoint,
            str(self.config_file),
            smoke_photos=testing.sample_photos(2),
            timeout_s=120,
        )

    def answers(self, model: str | None = None, **spec: object) -> list[int | str]:
        """What each replica answers (see `_answer`)."""
        return [_answer(server.target, model or self.name, **spec) for server in self.servers]

    def routing(self) -> dict[str, list[int | str]]:
        """Per replica, the version that answers requests that name nothing, and those that name `stable`."""
        return {"unlabelled": self.answers(), "stable": self.answers(label=STABLE_LABEL)}


@pytest.fixture()
def cluster(replicas, exports, tmp_path, request):
    """A model of its own on the two replicas, with nothing verified yet (an empty `specific` policy)."""
    config_file, servers = replicas
    name = re.sub(r"\W", "-", request.node.name)
    base = tmp_path / name
    base.mkdir()
    nothing = model_config.with_routing(model_config.single_model_config(name, str(base)), name, (), stable=None)
    model_config.write_model_server_config(str(config_file), nothing)
    registry = Registry(f"sqlite:///{tmp_path}/mlflow.db", name)
    config = load_config("ci", overrides={"serving": {"model_base_path": str(base), "model_name": name}})
    return Cluster(name, base, config_file, servers, registry, config, exports)


@pytest.mark.server
@pytest.mark.slow
def test_two_replica_deploy_and_rollback_move_every_replica(cluster, monkeypatch):
    verified = []
    smoke_check = step.smoke_check

    def recording(client, *args, **kwargs):
        verified.append((client.target, client.model_name, client.version))
        return smoke_check(client, *args, **kwargs)

    monkeypatch.setattr(step, "smoke_check", recording)
    first = cluster.deploy(0)
    second = cluster.deploy(1)

    targets = [server.target for server in cluster.servers]
    canary = model_config.canary_model_name(cluster.name)
    assert first.replicas == second.replicas == targets
    assert verified == [(t, canary, v) for v in (1, 2) for t in targets]
    assert cluster.routing() == {"unlabelled": [2, 2], "stable": [2, 2]}
    assert cluster.registry.get_version("champion") == "2"

    back = rollback_model(cluster.registry, cluster.config, cluster.endpoint, str(cluster.config_file), timeout_s=120)

    assert (back.serving_version, back.replicas, cluster.registry.get_version("champion")) == (1, targets, "1")
    assert cluster.routing() == {"unlabelled": [1, 1], "stable": [1, 1]}
    for target in targets:
        with PredictionClient(target, cluster.name) as client:
            assert dict(client.status()) == {2: "END", 1: "AVAILABLE"}


@pytest.mark.server
@pytest.mark.slow
def test_deploy_that_a_replica_fails_promotes_nothing_on_any(cluster, monkeypatch):
    assert cluster.deploy(0).serving_version == 1
    config_text = cluster.config_file.read_text()

    # A replica the endpoint names but that does not answer: nothing starts.
    dead = f"127.0.0.1:{free_port()}"
    with pytest.raises(StepError, match=f"GetModelStatus failed at {dead}"):
        cluster.deploy(1, endpoint=f"{cluster.endpoint},{dead}")
    assert cluster.config_file.read_text() == config_text

    # The second replica answers differently from the registered SavedModel (a broken node, say).
    smoke_check, second = step.smoke_check, cluster.servers[1].target

    def second_differs(client, *args, **kwargs):
        if client.target == second:
            raise StepError(f"version {client.version} on {client.target} answers differently")
        return smoke_check(client, *args, **kwargs)

    monkeypatch.setattr(step, "smoke_check", second_differs)
    with pytest.raises(StepError, match=f"version 1 still serves: version 2 on {second} answers differently"):
        cluster.deploy(1)

    assert cluster.routing() == {"unlabelled": [1, 1], "stable": [1, 1]}
    assert cluster.answers(model_config.canary_model_name(cluster.name)) == ["NOT_FOUND", "NOT_FOUND"]
    assert cluster.registry.get_version("champion") == "1"
    assert cluster.config_file.read_text() == config_text
    assert not (cluster.base / "2").exists()


@pytest.mark.server
@pytest.mark.slow
def test_deploy_that_dies_while_verifying_leaves_every_replica_on_stable(cluster, monkeypatch):
    assert cluster.deploy(0).serving_version == 1
    smoke_check, second = step.smoke_check, cluster.servers[1].target

    def die_on_second(client, *args, **kwargs):
        if client.target == second:
            raise testing.Killed
        return smoke_check(client, *args, **kwargs)

    # It dies once the candidate's config is written and pushed, and one replica has verified it.
    monkeypatch.setattr(step, "smoke_check", die_on_second)
    with pytest.raises(testing.Killed):
        cluster.deploy(1)
    monkeypatch.undo()

    assert cluster.routing() == {"unlabelled": [1, 1], "stable": [1, 1]}
    assert cluster.answers(model_config.canary_model_name(cluster.name)) == [2, 2]
    assert cluster.registry.get_version("champion") == "1"
    # The file the replicas re-read says the same: a replica that restarts from it serves `stable`.
    written = model_config.find_model(model_config.read_model_server_config(str(cluster.config_file)), cluster.name)
    assert (list(written.model_version_policy.specific.versions), dict(written.version_labels)) == ([1], {"stable": 1})

    # The next deploy drops what the dead one left and promotes its own version on both.
    assert cluster.deploy(1).serving_version == 3
    assert cluster.routing() == {"unlabelled": [3, 3], "stable": [3, 3]}
    assert cluster.answers(model_config.canary_model_name(cluster.name)) == ["NOT_FOUND", "NOT_FOUND"]
    assert not (cluster.base / "2").exists()
