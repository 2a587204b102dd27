"""Routing and version lifecycle against real servers: unlabelled requests reach only the verified `stable` version.

TF Serving answers a request that names no version or label with the highest version the model's
entry has loaded, so these tests look at what such a request gets after a rollback, during a
deploy, after a deploy that died, and from a server that starts afresh from the models.config
alone (all the official image reads). Deploys run against a real MLflow registry (SQLite store).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from components.deploy import step
from components.deploy.step import DeployResult, deploy_model, rollback_model
from components.register.registry import Registry
from core.config import Config, load_config
from serving import model_config, store
from serving.client import PredictionClient
from serving.model_config import STABLE_LABEL
from tests.support import serving as testing

K8S_MODELS_CONFIG = Path(__file__).resolve().parents[1] / "infra" / "k8s" / "serving" / "models.config"


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Two different SavedModel exports (different random weights)."""
    return testing.two_exports(tmp_path_factory.mktemp("exports"))


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def _answer(target: str, model: str = "fashion", version: int | None = None, label: str | None = None) -> int | str:
    """The version that answers a Predict call, or the gRPC code it fails with."""
    photo = testing.sample_photos(1)[0].read_bytes()
    with PredictionClient(target, model, version=version, label=label) as client:
        try:
            return client.predict_raw([photo]).version
        except grpc.RpcError as err:
            return err.code().name


def _settle(server) -> None:
    """Make the server poll its base paths now and wait for the loads that started."""
    server.manager.sync()
    assert server.manager.wait_until_settled(120)


@dataclass
class Endpoint:
    """A local server on a models.config, its model base path, and a registered model to deploy from."""

    root: Path
    base: Path
    config_file: Path
    server: object
    registry: Registry
    config: Config
    exports: list[str]
    runs: list[str] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"

    def deploy(self, export_index: int) -> DeployResult:
        """Register an export as the challenger and run the deploy step on it."""
        experiment = self.registry.client.get_experiment_by_name("routing")
        experiment_id = experiment.experiment_id if experiment else self.registry.client.create_experiment("routing")
        run_name = f"run-{len(self.runs) + 1}"
        self.runs.append(run_name)
        run = self.registry.client.create_run(experiment_id, run_name=run_name)
        self.registry.register(
            run.info.run_id,
            pipeline_run_id=f"{self.registry.model_name}-{run_name}",
            export_dir=self.exports[export_index],
        )
        return deploy_model(
            self.registry,
            self.config,
            self.target,
            str(self.config_file),
            smoke_photos=testing.sample_photos(2),
            timeout_s=120,
        )

    def answer(self, model: str = "fashion", version: int | None = None, label: str | None = None) -> int | str:
        return _answer(self.target, model, version, label)


@pytest.fixture()
def endpoint(tmp_path, exports, tracking_uri, request):
    """A fresh endpoint whose models.config is the one `fashion run` writes before any deploy (a `latest` policy)."""
    base = tmp_path / "serving" / "fashion"
    base.mkdir(parents=True)
    config_file = tmp_path / "serving" / "models.config"
    model_config.write_model_server_config(str(config_file), model_config.single_model_config("fashion", str(base)))
    server = testing.start_local_server(config_file, file_system_poll_wait_seconds=0.2, max_num_load_retries=0)
    registry = Registry(tracking_uri, re.sub(r"\W", "-", request.node.name))
    config = load_config("ci", overrides={"serving": {"model_base_path": str(base), "model_name": "fashion"}})
    yield Endpoint(tmp_path, base, config_file, server, registry, config, exports)
    server.stop()


def _fresh_server_answers(config_file: Path, requests: dict[str, dict]) -> dict[str, int | str]:
    """What a server started afresh from `config_file` alone answers (the official image reads nothing else)."""
    server = testing.start_local_server(config_file, file_system_poll_wait_seconds=0.2, max_num_load_retries=0)
    try:
        return {key: _answer(f"127.0.0.1:{server.grpc_port}", **spec) for key, spec in requests.items()}
    finally:
        server.stop()


def _publish_broken(source: str, base: Path, version: int, staging: Path) -> None:
    """Publish a complete-looking version whose variables are damaged: its loads fail."""
    shutil.copytree(source, staging)
    for data in (staging / "variables").glob("variables.data-*"):
        data.write_bytes(b"broken")
    store.publish_version_dir(staging, store.version_uri(str(base), version))


def _failed_loads(caplog, version: int) -> int:
    marker = f"Loading servable: {{name: fashion version: {version}}} failed"
    return sum(marker in record.getMessage() for record in caplog.records)


@pytest.mark.server
@pytest.mark.slow
def test_rollback_sends_unlabelled_requests_to_the_rolled_back_version(endpoint):
    assert endpoint.deploy(0).serving_version == 1
    assert endpoint.deploy(1).serving_version == 2
    assert (endpoint.answer(), endpoint.answer(label=STABLE_LABEL)) == (2, 2)

    back = rollback_model(endpoint.registry, endpoint.config, endpoint.target, str(endpoint.config_file), timeout_s=120)

    assert (back.serving_version, endpoint.registry.get_version("champion")) == (1, "1")
    assert (endpoint.answer(), endpoint.answer(label=STABLE_LABEL)) == (1, 1)
    assert dict(PredictionClient(endpoint.target, "fashion").status()) == {2: "END", 1: "AVAILABLE"}
    assert _fresh_server_answers(endpoint.config_file, {"unlabelled": {}, "stable": {"label": STABLE_LABEL}}) == {
        "unlabelled": 1,
        "stable": 1,
    }


@pytest.mark.server
@pytest.mark.slow
def test_first_deploy_that_dies_after_publishing_serves_nothing_unverified(endpoint, monkeypatch):
    publish = store.publish_version_dir

    def publish_then_die(local_dir, version_uri):
        publish(local_dir, version_uri)
        raise testing.Killed

    monkeypatch.setattr(step.store, "publish_version_dir", publish_then_die)
    with pytest.raises(testing.Killed):
        endpoint.deploy(0)
    monkeypatch.undo()
    assert (endpoint.base / "1" / store.SAVED_MODEL_FILE).is_file()

    # The folder is complete and the server has polled it, but nothing verified it.
    _settle(endpoint.server)
    assert endpoint.answer() == "NOT_FOUND"

    # The next deploy skips the number the dead one took and serves its own, verified version.
    assert endpoint.deploy(0).serving_version == 2
    assert (endpoint.answer(), endpoint.answer(label=STABLE_LABEL)) == (2, 2)


@pytest.mark.server
@pytest.mark.slow
def test_deploy_that_dies_while_verifying_leaves_unlabelled_requests_on_stable(endpoint, monkeypatch):
    assert endpoint.deploy(0).serving_version == 1
    seen = {}

    def look_then_die(client, *args, **kwargs):
        seen.update(
            unlabelled=endpoint.answer(),
            stable=endpoint.answer(label=STABLE_LABEL),
            candidate=endpoint.answer(client.model_name, version=client.version),
        )
        raise testing.Killed

    monkeypatch.setattr(step, "smoke_check", look_then_die)
    with pytest.raises(testing.Killed):
        endpoint.deploy(1)
    monkeypatch.undo()

    # While verified, the candidate was reachable only by what names it: the canary model and its number.
    assert seen == {"unlabelled": 1, "stable": 1, "candidate": 2}
    _settle(endpoint.server)
    assert (endpoint.answer(), endpoint.answer(label=STABLE_LABEL)) == (1, 1)
    assert endpoint.answer(version=2) == "NOT_FOUND"
    assert _fresh_server_answers(
        endpoint.config_file,
        {"unlabelled": {}, "stable": {"label": STABLE_LABEL}, "canary": {"model": "fashion-canary"}},
    ) == {"unlabelled": 1, "stable": 1, "canary": 2}

    # The next deploy drops what the dead one left, then promotes its own version.
    assert endpoint.deploy(1).serving_version == 3
    assert (endpoint.answer(), endpoint.answer(label=STABLE_LABEL)) == (3, 3)
    assert endpoint.answer("fashion-canary") == "NOT_FOUND"
    assert not (endpoint.base / "2").exists()
    config = model_config.read_model_server_config(str(endpoint.config_file))
    assert [m.name for m in config.model_config_list.config] == ["fashion"]


@pytest.mark.server
@pytest.mark.slow
def test_failed_version_is_retried_as_configured_then_loads_afresh_when_its_folder_comes_back(
    exports, tmp_path, caplog
):
    caplog.set_level(logging.ERROR, logger="serving.server.manager")
    base = tmp_path / "fashion"
    store.publish_version_dir(exports[0], store.version_uri(str(base), 1))
    _publish_broken(exports[0], base, 2, tmp_path / "broken")
    config_file = testing.write_models_config(
        tmp_path / "models.config", [{"name": "fashion", "base_path": str(base), "all": True}]
    )
    server = testing.start_local_server(
        config_file, file_system_poll_wait_seconds=0.2, max_num_load_retries=2, load_retry_interval_micros=50_000
    )
    target = f"127.0.0.1:{server.grpc_port}"
    status = PredictionClient(target, "fashion")
    try:
        # One load and two retries, then it stays failed; version 1 keeps answering.
        assert status.status() == [(2, "END"), (1, "AVAILABLE")]
        assert list(status.version_errors()) == [2]
        assert _failed_loads(caplog, 2) == 3
        assert _answer(target) == 1

        # The folder leaves the base path and comes back complete: a new version 2, loaded afresh.
        store.remove_version_dir(store.version_uri(str(base), 2))
        _settle(server)
        store.publish_version_dir(exports[1], store.version_uri(str(base), 2))
        _settle(server)
        assert status.status() == [(2, "AVAILABLE"), (1, "AVAILABLE")]
        assert status.version_errors() == {}
        assert _answer(target) == 2
    finally:
        status.close()
        server.stop()


@pytest.mark.server
@pytest.mark.slow
def test_load_retries_pick_up_a_repaired_folder_and_stop_when_it_leaves(exports, tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="serving.server.manager")
    base = tmp_path / "fashion"
    store.publish_version_dir(exports[0], store.version_uri(str(base), 1))
    config_file = testing.write_models_config(tmp_path / "models.config", [{"name": "fashion", "base_path": str(base)}])
    server = testing.start_local_server(
        config_file, file_system_poll_wait_seconds=0.2, max_num_load_retries=1000, load_retry_interval_micros=100_000
    )
    target = f"127.0.0.1:{server.grpc_port}"
    status = PredictionClient(target, "fashion")
    try:
        # A version whose load fails is retried; once its files are repaired, a retry loads it.
        _publish_broken(exports[0], base, 2, tmp_path / "broken2")
        assert testing.wait_for(lambda: _failed_loads(caplog, 2) >= 1)
        assert dict(status.status())[2] == "LOADING"
        for data in Path(exports[0], "variables").glob("variables.data-*"):
            repaired = base / "2" / "variables" / f".{data.name}"
            shutil.copyfile(data, repaired)
            os.replace(repaired, base / "2" / "variables" / data.name)
        assert testing.wait_for(lambda: status.status() == [(2, "AVAILABLE"), (1, "END")])

        # A version that leaves the base path while its loads are retried stops being retried...
        _publish_broken(exports[0], base, 3, tmp_path / "broken3")
        assert testing.wait_for(lambda: _failed_loads(caplog, 3) >= 1)
        store.remove_version_dir(store.version_uri(str(base), 3))
        assert testing.wait_for(lambda: dict(status.status())[3] == "END", timeout_s=20)
        retries = _failed_loads(caplog, 3)
        time.sleep(0.5)
        assert _failed_loads(caplog, 3) == retries
        assert _answer(target) == 2

        # ...and when it comes back complete, it is loaded afresh.
        store.publish_version_dir(exports[1], store.version_uri(str(base), 3))
        assert testing.wait_for(lambda: dict(status.status()).get(3) == "AVAILABLE")
        assert _answer(target) == 3
    finally:
        status.close()
        server.stop()


def test_routing_configs_keep_unlabelled_requests_on_stable():
    base = "gs://fashion-models/serving/fashion"
    bootstrap = model_config.single_model_config("fashion", base)

    def entries(config):
        return {
            m.name: (list(m.model_version_policy.specific.versions), dict(m.version_labels))
            for m in config.model_config_list.config
        }

    stable = model_config.with_routing(bootstrap, "fashion", serving={1, 2}, stable=2)
    assert entries(stable) == {"fashion": ([1, 2], {STABLE_LABEL: 2})}
    verifying = model_config.with_routing(stable, "fashion", serving={1, 2}, stable=2, candidate=3)
    assert entries(verifying) == {"fashion": ([1, 2], {STABLE_LABEL: 2}), "fashion-canary": ([3], {})}
    assert model_config.find_model(verifying, "fashion-canary").base_path == base
    assert model_config.canary_versions(verifying, "fashion") == {3}
    assert model_config.named_versions(verifying, "fashion") == {1, 2, 3}
    promoted = model_config.with_routing(verifying, "fashion", serving={2, 3}, stable=3)
    assert entries(promoted) == {"fashion": ([2, 3], {STABLE_LABEL: 3})}
    # Before any deploy nothing is verified: an empty `specific` policy, which loads nothing (no policy means latest).
    empty = model_config.with_routing(bootstrap, "fashion", serving=(), stable=None)
    policy = model_config.find_model(empty, "fashion").model_version_policy
    assert policy.WhichOneof("policy_choice") == "specific" and not policy.specific.versions
    reparsed = model_config.parse_model_server_config(model_config.format_model_server_config(empty))
    assert model_config.find_model(reparsed, "fashion").model_version_policy.WhichOneof("policy_choice") == "specific"
    with pytest.raises(ValueError, match="stable version 3"):
        model_config.with_routing(bootstrap, "fashion", serving={1, 2}, stable=3)

    # The manifests' models.config keeps the same promise for the official image.
    (main,) = model_config.read_model_server_config(str(K8S_MODELS_CONFIG)).model_config_list.config
    assert main.model_version_policy.WhichOneof("policy_choice") == "specific"
    assert main.version_labels[STABLE_LABEL] == max(main.model_version_policy.specific.versions)
