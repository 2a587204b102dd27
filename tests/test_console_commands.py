"""Every `fashion` command on its own, as a user runs it: at most 40 lines, no library chatter, a log with the rest.

Each command runs in its own process with its stdout and stderr piped (so nothing is a terminal
and no colour is allowed), from ingest to rollback on a small real catalogue, the outputs of one
feeding the next. Lines are counted on both streams together, as a terminal would show them.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.catalogue import make_catalogue
from tests.support.serving import ServerProcess, write_models_config

pytestmark = [pytest.mark.slow, pytest.mark.server]

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 40
# What the libraries print when they are let through: TensorFlow's and absl's C++ start-up lines,
# kfp's executor, Beam's type-hint notes and workers, MLflow's store set-up.
CHATTER = ("I0000", "E0000", "oneDNN", "absl::InitializeLog", "cuInit", "KFP Executor", "Converting string literal",
           "Worker: severity", "mlflow.store", "Creating initial MLflow database")  # fmt: skip
LOGGED = ("ingest", "preprocess", "train", "evaluate", "register", "deploy", "rollback")


@dataclasses.dataclass
class Ran:
    """One command's exit code and what it printed."""

    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return (self.out + self.err).splitlines()

    @property
    def log(self) -> Path:
        """The log file the command named on its last stderr line."""
        last = self.err.strip().splitlines()[-1]
        assert last.startswith("log: ") or "(log: " in last, self.err
        return Path(last.split("log: ", 1)[1].rstrip(")"))


def fashion(*args: str, log_dir: Path) -> Ran:
    """`fashion --log-dir=<log_dir> <args>` in a process of its own, its output piped."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the console must be quiet without it
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", f"--log-dir={log_dir}", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return Ran(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def commands(tmp_path_factory, demo_dir, samples_dir):
    """Each command run once, in pipeline order, on the outputs of the ones before."""
    root = tmp_path_factory.mktemp("commands")
    logs, work = root / "logs", root / "work"
    catalogue = make_catalogue(demo_dir, root / "catalogue")
    manifest, examples, model, evaluation = root / "manifest", root / "examples", root / "model", root / "evaluation"
    ran: dict[str, Ran] = {}
    ran["ingest"] = fashion("ingest", "--preset=ci", f"--source={catalogue}", f"--out={manifest}", log_dir=logs)
    ran["-v ingest"] = fashion(
        "-v", "ingest", "--preset=ci", f"--source={catalogue}", f"--out={root / 'again'}", log_dir=logs
    )
    ran["preprocess"] = fashion(
        "preprocess", "--preset=ci", f"--manifest={manifest}", f"--out={examples}", log_dir=logs
    )
    ran["train"] = fashion("train", "--preset=ci", f"--data={examples}", f"--out={model}", log_dir=logs)
    ran["evaluate"] = fashion(
        "evaluate", "--preset=ci", f"--model={model}", f"--data={examples}", f"--out={evaluation}", log_dir=logs
    )
    ran["register"] = fashion(
        "register", "--preset=ci", f"--model={model}", f"--eval={evaluation}", f"--export={root / 'export'}",
        "--run-id=console-1", f"--workdir={work}", log_dir=logs,
    )  # fmt: skip
    ran["compile"] = fashion("compile", "--preset=ci", f"--out={root / 'pipeline.yaml'}", log_dir=logs)
    ran["mlflow-ui"] = fashion("mlflow-ui", "--preset=ci", f"--workdir={work}", "--print-command", log_dir=logs)
    ran["schedule"] = fashion("schedule", "--list", f"--workdir={work}", log_dir=logs)
    base = root / "models" / "fashion"
    base.mkdir(parents=True)
    config_file = write_models_config(root / "models.config", [{"name": "fashion", "base_path": str(base)}])
    server_log = root / "server.log"
    server = ServerProcess(
        [f"--model_config_file={config_file}", "--file_system_poll_wait_seconds=0.2"], log_path=server_log
    ).start()
    try:
        ran["serve"] = Ran(0, server_log.read_text(), "")  # its start-up, until its ports accept connections
        endpoint = [
            "--preset=ci", f"--server={server.target}", f"--model_config_file={config_file}",
            f"--model_base_path={base}", "--model_name=fashion", f"--workdir={work}",
        ]  # fmt: skip
        # How the served model must agree with the evaluation is deploy's own test; here only what it prints.
        predictions = evaluation / "predictions.jsonl"
        ran["deploy"] = fashion("deploy", *endpoint, f"--predictions={predictions}", "--min-agreement=0", log_dir=logs)
        photo = sorted(samples_dir.glob("*.jpg"))[0]
        ran["predict"] = fashion(
            "predict", f"--server={server.target}", "--model_name=fashion", str(photo), log_dir=logs
        )
        # The first deploy replaced nothing: rollback has nowhere to go and says so, in one line.
        ran["rollback"] = fashion("rollback", *endpoint, log_dir=logs)
    finally:
        server.stop()
    return ran


@pytest.mark.parametrize(
    "name",
    [
        "ingest", "preprocess", "train", "evaluate", "register", "compile", "mlflow-ui", "schedule", "serve",
        "deploy", "predict", "rollback",
    ],
)  # fmt: skip
def test_each_command_prints_at_most_40_plain_lines_without_library_chatter(commands, name):
    ran = commands[name]
    expected = 1 if name == "rollback" else 0
    assert ran.code == expected, ran.out + ran.err
    text = ran.out + ran.err
    assert len(ran.lines) <= MAX_LINES, text
    assert "\x1b" not in text, "colour codes off a terminal"
    shown = [marker for marker in CHATTER if marker in text]
    assert not shown, text
    if name in LOGGED:
        assert ran.log.is_file() and ran.log.parent.name == "logs"


@pytest.mark.parametrize("name", ["train", "evaluate", "register"])
def test_a_commands_log_holds_what_its_console_left_out(commands, name):
    ran = commands[name]
    log = ran.log.read_text()
    assert f"INFO components.{name}." in log  # the step's own records
    # The libraries' records and their C-level start-up lines are there too.
    assert "INFO tensorflow" in log or "INFO absl" in log or "I0000" in log or "tensorflow" in log.lower()
    if name == "train":
        assert "epoch 1/2 done" in log and "epoch 1/2 done" not in ran.out + ran.err
        assert "trained 2 epochs" in ran.out
        assert "training: " in log  # the live progress, sparsely


def test_verbose_shows_the_records_live(commands):
    quiet, verbose = commands["ingest"], commands["-v ingest"]
    assert verbose.code == 0
    assert len(verbose.lines) > len(quiet.lines)
    assert "INFO components.ingest.step" in verbose.err and "INFO components.ingest.step" not in quiet.err
