"""MLflow as the record of every candidate, on the embedded store and a real `mlflow server`.

The run opens when training starts and takes each epoch as it ends (source, user, pipeline run id);
the evaluation and the gate's decision and reasons go to the same run; a rejected candidate's run
ends there, a blessed one's when its version is registered, linked to the run's logged model the way
the MLflow 3 UI reads it; `fashion mlflow-ui` prints links to the runs and the registered model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from test_train_shards import write_shards

from components.evaluate import evaluate_model
from components.register import Registry, register_model
from components.register.tracking import read_run_record
from components.train.live_tracking import LiveMetrics
from components.train.step import train_model
from core import layouts
from core.config import Config, load_config
from core.errors import StepError
from pipeline.cli import main
from tests.support.mlflow import make_store_template, mlflow_server, workdir_from
from tests.support.ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.server]

EPOCHS = 2
EXPERIMENT = "fashion-classifier"
MODEL_NAME = "fashion-classifier"


@dataclasses.dataclass
class Store:
    """One MLflow store the candidates are recorded in."""

    kind: str
    tracking_uri: str
    artifact_uri: str
    workdir: Path

    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def config(self, **evaluate: Any) -> Config:
        """The ci preset, two short epochs, this store; `evaluate` overrides the gate."""
        registry = {"tracking_uri": self.tracking_uri, "artifact_uri": self.artifact_uri}
        overrides = {"train": {"epochs": EPOCHS, "steps_per_epoch": 2}, "registry": registry}
        return load_config("ci", overrides={**overrides, "evaluate": evaluate} if evaluate else overrides)


@dataclasses.dataclass
class Candidate:
    """One pipeline run's training and evaluation (and registration when blessed), and its MLflow run."""

    pipeline_run_id: str
    model_dir: Path
    eval_dir: Path
    run_id: str
    status_after_training: str
    status_after_evaluation: str
    registration: Any = None


def _store(kind: str, root: Path, template: Path) -> Store:
    workdir = workdir_from(template, root / "work")
    uri = f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}"
    return Store(kind, uri, str(workdir / "mlflow" / "artifacts"), workdir)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return make_store_template(tmp_path_factory.mktemp("template"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    """Where every training of the module keeps its checkpoints: only the first one trains."""
    return tmp_path_factory.mktemp("checkpoints")


def _train(store: Store, shards: Path, root: Path, checkpoints: Path, pipeline_run_id: str) -> tuple[Any, str]:
    result = train_model(
        str(shards),
        str(root / "model"),
        store.config(),
        checkpoint_root=str(checkpoints),
        pipeline_run_id=pipeline_run_id,
    )
    return result, store.client().get_run(result.mlflow_run_id).info.status


@pytest.fixture(scope="module")
def live(tmp_path_factory, shards, template, checkpoints) -> dict[str, Any]:
    """The module's one real training, recorded live in an embedded store."""
    root = tmp_path_factory.mktemp("live")
    store = _store("embedded", root, template)
    result, status = _train(store, shards, root, checkpoints, "pr-live")
    return {"store": store, "result": result, "status": status}


@pytest.fixture(scope="module", params=["embedded", "server"])
def store(request, tmp_path_factory, template):
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "embedded":
        yield _store("embedded", root, template)
        return
    with mlflow_server(root / "server") as url:
        yield Store("server", url, "", root)


def _candidate(store: Store, shards: Path, checkpoints: Path, name: str, register: bool, **gate: Any) -> Candidate:
    root = store.workdir / name
    result, trained = _train(store, shards, root, checkpoints, name)
    config = store.config(**gate)
    evaluated = evaluate_model(
        str(result.model_dir), str(shards), str(root / "eval"), config, tracking_uri=store.tracking_uri
    )
    assert evaluated.mlflow_run_id == result.mlflow_run_id
    status = store.client().get_run(result.mlflow_run_id).info.status
    candidate = Candidate(name, result.model_dir, root / "eval", result.mlflow_run_id, trained, status)
    if register:
        candidate.registration = register_model(
            result.model_dir, root / "eval", root / "export", config, name, workdir=store.workdir
        )
    return candidate


@pytest.fixture(scope="module")
def candidates(live, store, shards, checkpoints) -> dict[str, Candidate]:
    """A rejected and a blessed candidate in `store`, each a pipeline run that trains (from the module's checkpoint)."""
    return {
        "rejected": _candidate(
            store, shards, checkpoints, f"pr-rejected-{store.kind}", False, floors={"attributes_map": 1.0}
        ),
        "blessed": _candidate(store, shards, checkpoints, f"pr-blessed-{store.kind}", True),
    }


def _steps(client: Any, run_id: str, metric: str) -> list[int]:
    """The steps a run's metric was logged at, every entry counted."""
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


class _Probe(keras.callbacks.Callback):
    """After each epoch (and after LiveMetrics), what the store holds of the run's loss history."""

    def __init__(self, client: Any, run_id: str) -> None:
        super().__init__()
        self.client, self.run_id, self.seen = client, run_id, []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append(sorted(m.step for m in self.client.get_metric_history(self.run_id, "train.loss")))


class _FailingOnce:
    """A client whose first `log_batch` fails as a store that is down for a moment does."""

    def __init__(self, client: Any) -> None:
        self.client, self.failed = client, False

    def log_batch(self, run_id: str, **kwargs: Any) -> None:
        from mlflow.exceptions import MlflowException

        if not self.failed:
            self.failed = True
            raise MlflowException("API request failed: connection reset")
        self.client.log_batch(run_id, **kwargs)


def test_each_epoch_reaches_the_run_as_it_ends_and_a_missed_one_goes_with_the_next(store):
    client = store.client()
    experiment = client.create_experiment(f"live-{store.kind}", artifact_location=str(store.workdir / "live-art"))
    steady, flaky = (client.create_run(experiment).info.run_id for _ in range(2))
    x, y = np.random.default_rng(0).normal(size=(32, 3)), np.zeros((32, 1))
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    probes = [_Probe(client, steady), _Probe(client, flaky)]
    callbacks = [LiveMetrics(client, steady), probes[0], LiveMetrics(_FailingOnce(client), flaky), probes[1]]
    model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=callbacks)
    assert probes[0].seen == [[0], [0, 1], [0, 1, 2]]
    assert probes[1].seen == [[], [0, 1], [0, 1, 2]]


def test_training_opens_the_run_with_source_user_and_pipeline_run_and_logs_every_epoch_live(live):
    store, result = live["store"], live["result"]
    client = store.client()
    run = client.get_run(result.mlflow_run_id)
    assert live["status"] == "RUNNING"  # open for the evaluation
    assert read_run_record(result.model_dir).run_id == run.info.run_id
    assert json.loads((result.model_dir / layouts.MLFLOW_RUN).read_text())["pipeline_run_id"] == "pr-live"
    tags = run.data.tags
    assert tags["pipeline_run_id"] == "pr-live"
    assert (tags["mlflow.source.type"], tags["mlflow.source.name"]) == ("JOB", "fashion-classifier pipeline")
    assert tags["mlflow.user"] and tags["mlflow.user"] == run.info.user_id
    assert tags["git_commit"] and tags["backbone"] == "small_cnn"
    assert run.data.params["model.backbone"] == "small_cnn" and run.data.params["train.epochs"] == str(EPOCHS)
    for name in ("train.loss", "val.loss", "val.category_accuracy"):
        assert _steps(client, run.info.run_id, name) == list(range(EPOCHS)), name
    losses = sorted(client.get_metric_history(run.info.run_id, "train.loss"), key=lambda m: m.step)
    assert losses[0].timestamp < losses[1].timestamp  # sent as each epoch ended, not at the end
    assert [m.value for m in losses] == pytest.approx(result.history["loss"])
    assert run.data.metrics["train.epochs_run"] == EPOCHS
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_gate_rejected_candidate_ends_as_a_finished_run_with_its_evaluation_and_reasons(candidates, store):
    rejected = candidates["rejected"]
    client = store.client()
    run = client.get_run(rejected.run_id)
    assert (rejected.status_after_training, rejected.status_after_evaluation) == ("RUNNING", "FINISHED")
    assert run.info.status == "FINISHED" and run.info.end_time
    tags = run.data.tags
    assert (tags["gate_decision"], tags["gate_blessed"]) == ("rejected", "false")
    assert (
        tags["gate_reason"].startswith("not blessed: 1 of ") and "checks failed (attributes_map)" in tags["gate_reason"]
    )
    assert "attributes_map" in tags["gate_reason"] and "< floor 1.0000" in tags["gate_reason"]
    note = tags["mlflow.note.content"]  # the run's description
    assert "**Gate: rejected**" in note and "FAILED: attributes_map" in note
    assert run.data.metrics["gate.blessed"] == 0.0
    assert 0.0 <= run.data.metrics["test.attributes_map"] < 1.0
    # It resumed the module's finished training: the history is logged all the same, once.
    assert _steps(client, run.info.run_id, "train.loss") == list(range(EPOCHS))
    files = {f.path for f in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/gate.json", "evaluation/metrics.json", "evaluation/report.html"} <= files
    assert Registry(store.tracking_uri, MODEL_NAME).find_version(rejected.pipeline_run_id) is None


def test_a_blessed_candidate_ends_once_registered_and_its_version_is_linked_to_its_logged_model(
    candidates, store, tmp_path
):
    blessed = candidates["blessed"]
    registration = blessed.registration
    client = store.client()
    assert (blessed.status_after_training, blessed.status_after_evaluation) == ("RUNNING", "RUNNING")
    assert registration.run_id == blessed.run_id and registration.version == "1"
    run = client.get_run(blessed.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["gate_decision"] == "blessed" and run.data.metrics["gate.blessed"] == 1.0
    assert _steps(client, run.info.run_id, "train.loss") == list(range(EPOCHS))  # registering added none
    assert [o.model_id for o in run.outputs.model_outputs] == [registration.model_id]

    logged = client.get_logged_model(registration.model_id)
    assert logged.source_run_id == blessed.run_id
    assert json.loads(logged.tags["mlflow.modelVersions"]) == [{"name": MODEL_NAME, "version": 1}]
    version = client.get_model_version(MODEL_NAME, registration.version)
    assert version.run_id == blessed.run_id
    assert version.tags["model_id"] == logged.model_id
    if store.kind == "server":
        assert version.source == f"models:/{logged.model_id}"  # the version's page links its source model
    registry = Registry(store.tracking_uri, MODEL_NAME)
    assert registry.get_version("challenger") == "1"
    assert (registry.download_export("challenger", tmp_path / "download") / "saved_model.pb").is_file()

    again = register_model(
        blessed.model_dir, blessed.eval_dir, store.workdir / blessed.pipeline_run_id / "export", store.config(),
        blessed.pipeline_run_id, workdir=store.workdir,
    )  # fmt: skip
    assert (again.version, again.run_id, again.model_id, again.created) == ("1", blessed.run_id, logged.model_id, False)
    assert json.loads(client.get_logged_model(logged.model_id).tags["mlflow.modelVersions"]) == [
        {"name": MODEL_NAME, "version": 1}
    ]


def test_mlflow_ui_prints_links_to_the_runs_in_the_training_view_and_to_the_registered_model(candidates, store, capsys):
    experiment = store.client().get_experiment_by_name(EXPERIMENT).experiment_id
    args = ["mlflow-ui", "--preset", "ci", f"--set=registry.tracking_uri={store.tracking_uri}"]
    if store.kind == "embedded":
        assert main([*args, "--workdir", str(store.workdir), "--port", "5077", "--print-command"]) == 0
        captured = capsys.readouterr()
        assert store.tracking_uri in captured.out
        ui, printed = "http://127.0.0.1:5077", captured.err
    else:
        assert main(args) == 0
        ui, printed = store.tracking_uri, capsys.readouterr().out
    assert f"{ui}/#/experiments/{experiment}/runs?compareRunsMode=TABLE&workflowType=machine_learning" in printed
    assert f"{ui}/#/models/{MODEL_NAME}?workflowType=machine_learning" in printed


def test_an_unreachable_tracking_server_fails_training_before_an_epoch(shards, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    config = load_config("ci", overrides={"registry": {"tracking_uri": uri}, "pipeline": {"retries": 1}})
    with pytest.raises(StepError, match=uri):
        train_model(str(shards), str(tmp_path / "model"), config, pipeline_run_id="pr-down")
    assert not (tmp_path / "model" / layouts.CHECKPOINTS / layouts.TRAIN_STATE).exists()
    assert not (tmp_path / "model" / layouts.MLFLOW_RUN).exists()
