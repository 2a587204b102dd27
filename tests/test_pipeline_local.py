"""The whole DAG under kfp.local on real photos, ending in a real gRPC prediction; a failed run keeps the champion."""

from __future__ import annotations

import contextlib
import dataclasses
import io
from pathlib import Path

import pytest

from components.register import Registry
from core.config import Config, load_config
from pipeline.cli import main
from pipeline.local.results import RunResult
from pipeline.local.run import run_and_serve
from pipeline.local.server import stop_server
from pipeline.local.summary import format_summary
from tests.support.catalogue import CLASSES, PER_CLASS, make_catalogue
from tests.support.ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.server]


@dataclasses.dataclass
class LocalRun:
    """A finished `run_and_serve` in its work directory, with the server it left up."""

    result: RunResult
    config: Config
    workdir: Path
    grpc_port: int
    rest_port: int

    @property
    def registry(self) -> Registry:
        return Registry(config_tracking_uri(self.workdir), self.config.registry.model_name)

    @property
    def version(self) -> str:
        """The registry version this run registered."""
        return str(self.result.artifact("register-model", "saved_model")["metadata"]["version"])

    @property
    def serving_version(self) -> int:
        """The version the server serves it as."""
        return int(self.result.artifact("deploy-model", "deployment")["metadata"]["serving_version"])


@dataclasses.dataclass
class FailedRun:
    """`fashion run` on a corrupt source, in the same work directory: its exit code and console output."""

    source: Path
    code: int
    out: str
    err: str


def fashion_run(source: Path, workdir: Path, grpc_port: int, rest_port: int, *extra: str) -> int:
    """`fashion run --preset ci` on `source` in `workdir`, serving on the given loopback ports."""
    args = [f"--source={source}", f"--workdir={workdir}", f"--set=serving.grpc_port={grpc_port}"]
    return main(["run", "--preset=ci", *args, f"--set=serving.rest_port={rest_port}", *extra])


def unusable_catalogue(catalogue: Path, folder: Path) -> Path:
    """A real styles.csv cut short, and no photos: it passes the pre-flight check and ingest rejects it."""
    folder.mkdir(parents=True)
    (folder / "styles.csv").write_bytes((catalogue / "styles.csv").read_bytes()[:400])
    return folder


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory, demo_dir):
    return make_catalogue(demo_dir, tmp_path_factory.mktemp("catalogue"))


@pytest.fixture(scope="module")
def run(tmp_path_factory, catalogue, samples_dir):
    """One successful run of the whole DAG on the catalogue; its server is stopped after the module."""
    grpc_port, rest_port = free_port(), free_port()
    ports = {"grpc_port": grpc_port, "rest_port": rest_port}
    workdir = tmp_path_factory.mktemp("local") / "work"
    config = load_config("ci", overrides={"data": {"source_uri": str(catalogue)}, "serving": ports})
    try:
        result = run_and_serve(config, workdir, samples_dir)
        yield LocalRun(result, config, workdir, grpc_port, rest_port)
    finally:
        stop_server(workdir)


@pytest.fixture(scope="module")
def failed_run(run, catalogue, tmp_path_factory):
    """A catalogue with no usable photo run through the CLI after `run`, against the same work directory and server."""
    corrupt = unusable_catalogue(catalogue, tmp_path_factory.mktemp("corrupt") / "catalogue")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = fashion_run(corrupt, run.workdir, run.grpc_port, run.rest_port)
    return FailedRun(corrupt, code, out.getvalue(), err.getvalue())


def test_every_step_succeeds_and_records_its_artifacts(run):
    result = run.result
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
    deployed = result.artifact("deploy-model", "deployment")["metadata"]
    assert str(deployed["registry_version"]) == run.version
    assert deployed["smoke"]["agreement"] >= run.config.serving.smoke_min_agreement == 0.75


def test_only_training_evaluation_and_export_load_tensorflow(run):
    # Each step's last log line says whether its process loaded TensorFlow; deploy checks the
    # replicas against the answers registration kept, so it needs none.
    logs = Path(run.result.logs_dir)
    ends = {}
    for step in run.result.steps:
        lines = [line for line in (logs / f"{step}.log").read_text().splitlines() if "step process ends" in line]
        assert len(lines) == 1, f"{step}: {lines}"
        ends[step] = "with TensorFlow loaded" in lines[0]
    assert ends == {
        "ingest-images": False,
        "resize-images": False,
        "train-model": True,
        "evaluate-model": True,
        "register-model": True,
        "deploy-model": False,
    }
    saved_model = Path(run.result.artifact("register-model", "saved_model")["uri"])
    assert list(saved_model.rglob("smoke_reference.json")), "registration kept no smoke reference"


def test_the_deployed_champion_answers_a_grpc_prediction(run, samples_dir):
    # A real gRPC answer from the served champion, for a photo that is in no catalogue.
    prediction = run.result.prediction
    assert prediction is not None
    assert Path(prediction["photo"]).parent == samples_dir
    assert Path(prediction["photo"]).name.startswith(("tshirts", "jeans", "watches", "casual-shoes"))
    assert prediction["subcategory"] in CLASSES
    assert 0.0 < prediction["subcategory_score"] <= 1.0
    assert prediction["model_version"] == run.serving_version
    assert run.registry.get_version("champion") == run.version


def test_the_summary_shows_gate_version_endpoint_and_prediction(run):
    summary = format_summary(run.result)
    expected = ("Gate: PASSED", f"registry version {run.version}", f"127.0.0.1:{run.grpc_port}", "Prediction over gRPC")
    assert all(text in summary for text in expected), summary


def test_a_failing_run_reports_its_steps_error_and_keeps_the_champion(run, failed_run):
    # A catalogue without usable photos fails the run at ingest with ingest's own message, once...
    out, err = failed_run.out, failed_run.err
    assert failed_run.code == 1
    assert "ingest-images failed" in err and "usable" in err
    assert "(attempt" not in out  # a permanent error is not retried
    assert "The serving champion was left untouched." in out
    assert f"Prediction over gRPC (stable = version {run.serving_version})" in out
    # ...and the same server keeps serving the same champion.
    assert "reused" in out and f"pid {run.result.server.pid}" in out
    assert run.registry.get_version("champion") == run.version
    from serving.client import PredictionClient

    prediction = run.result.prediction
    with PredictionClient(f"127.0.0.1:{run.grpc_port}", run.config.serving.model_name, label="stable") as client:
        again = client.predict([Path(prediction["photo"]).read_bytes()])[0]
    assert again["model_version"] == run.serving_version
    assert again["subcategory"] == prediction["subcategory"]


def config_tracking_uri(workdir: Path) -> str:
    """The embedded MLflow store `fashion run` keeps in its work directory."""
    from components.register.backend import embedded_backend

    return embedded_backend(workdir).tracking_uri


def test_a_missing_source_fails_before_anything_starts(tmp_path, capsys):
    workdir = tmp_path / "work"
    grpc_port, rest_port = free_port(), free_port()
    code = fashion_run(tmp_path / "no-such-catalogue", workdir, grpc_port, rest_port)
    out, err = capsys.readouterr()
    assert code == 1
    assert "does not exist" in err and len(err.strip().splitlines()) == 1
    # No step ran and no server was started for it.
    assert "==> [1/6]" not in out and "serving" not in out
    assert not (workdir / "serving" / "server.json").exists()


def test_a_failed_first_run_stops_the_server_it_started(tmp_path, catalogue, capsys):
    import socket

    bad = unusable_catalogue(catalogue, tmp_path / "bad")
    workdir, grpc_port, rest_port = tmp_path / "work", free_port(), free_port()
    code = fashion_run(bad, workdir, grpc_port, rest_port)
    out, err = capsys.readouterr()
    assert code == 1 and "ingest-images failed" in err
    assert "stopped the server this run started" in out
    assert not (workdir / "serving" / "server.json").exists()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", grpc_port)) != 0


def test_a_gate_rejected_run_exits_with_its_own_code_and_keeps_the_champion(run, catalogue, capsys):
    # No model reaches a mAP of 1.0: the gate rejects this candidate, the run itself succeeds. --force:
    # the catalogue and settings are the champion's, which would otherwise not be trained again (exit 4).
    floor = "--set=evaluate.floors.attributes_map=1.0"
    code = fashion_run(catalogue, run.workdir, run.grpc_port, run.rest_port, floor, "--force")
    out = capsys.readouterr().out
    assert code == 3
    assert "Gate: NOT PASSED" in out and "attributes_map" in out
    assert run.registry.get_version("champion") == run.version
