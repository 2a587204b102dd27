"""`fashion run` as a newcomer sees it: at most 40 lines, a start and an end per step, the summary; logs for the rest.

The run is a process of its own with its output piped, as `make run | tee run.log` has it: no
terminal, so no colour and no redrawn progress line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.local.results import STEP_ORDER
from pipeline.local.server import stop_server
from tests.support.catalogue import make_catalogue
from tests.support.ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.server]

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 40
CHATTER = ("I0000", "E0000", "oneDNN", "absl::InitializeLog", "cuInit", "KFP Executor", "Converting string literal",
           "Worker: severity", "Executing task", "Streamed logs", "metadata={")  # fmt: skip


def fashion_run(catalogue: Path, workdir: Path, ports: tuple[int, int], *extra: str) -> subprocess.CompletedProcess:
    """`fashion [extra before run] run --preset ci` in a process of its own, stdout and stderr piped."""
    globals_, flags = [a for a in extra if a == "-v"], [a for a in extra if a != "-v"]
    command = [
        sys.executable, "-m", "pipeline.cli", *globals_, "run", "--preset=ci", f"--source={catalogue}",
        f"--workdir={workdir}", f"--set=serving.grpc_port={ports[0]}", f"--set=serving.rest_port={ports[1]}", *flags,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the console must be quiet without it
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_dir):
    """A first, quiet run that deploys; then a verbose one whose gate says no (register and deploy skipped)."""
    root = tmp_path_factory.mktemp("console-run")
    catalogue = make_catalogue(demo_dir, root / "catalogue")
    workdir, ports = root / "work", (free_port(), free_port())
    try:
        quiet = fashion_run(catalogue, workdir, ports)
        # --force: the same catalogue and settings would otherwise not be trained again (exit 4).
        verbose = fashion_run(catalogue, workdir, ports, "-v", "--set=evaluate.floors.attributes_map=1.0", "--force")
        yield quiet, verbose
    finally:
        stop_server(workdir)


def test_a_run_prints_at_most_40_plain_lines_a_start_and_an_end_per_step(runs):
    # Whether deploy's smoke check passes is the pipeline tests' concern (test_pipeline_local); the
    # console is the same either way: a failed step's end line says why, and so does the summary.
    quiet, _ = runs
    text = quiet.stdout + quiet.stderr
    assert quiet.returncode in (0, 1), text[-3000:]
    assert len(text.splitlines()) <= MAX_LINES, text
    assert "\x1b" not in text, "colour codes off a terminal"
    assert not [marker for marker in CHATTER if marker in text], text
    assert max(len(line) for line in text.splitlines()) < 400
    for number, step in enumerate(STEP_ORDER, 1):
        assert f"==> [{number}/{len(STEP_ORDER)}] {step}\n" in quiet.stdout
        assert re.search(rf"^==> {step} (succeeded|failed) in \d+\.\ds", quiet.stdout, re.MULTILINE), step
    # The end lines carry the step's headline figures.
    assert re.search(r"^==> ingest-images succeeded in .*: 48 usable of 48 rows", quiet.stdout, re.MULTILINE)
    assert re.search(r"^==> train-model succeeded in .*: small_cnn, 2 epochs, best epoch", quiet.stdout, re.MULTILINE)
    assert re.search(r"^==> evaluate-model succeeded in .*: blessed$", quiet.stdout, re.MULTILINE)
    assert "Pipeline run " in quiet.stdout and "Logs: " in quiet.stdout


def logs_folder(stdout: str) -> Path:
    """The folder the summary's `Logs:` line names."""
    (line,) = [line for line in stdout.splitlines() if line.startswith("Logs: ")]
    return Path(line.split()[1].rstrip("/"))


def test_each_step_that_ran_has_a_log_with_everything_the_console_left_out(runs):
    quiet, _ = runs
    folder = logs_folder(quiet.stdout)
    assert folder.parent.parent.name == "pipeline" and folder.name == "logs"  # <run folder>/logs
    for step in STEP_ORDER:
        log = (folder / f"{step}.log").read_text()
        assert "[KFP Executor" in log and f"Task '{step}' finished with status " in log, step
        assert "\x1b" not in log
    assert "epoch 1/2 done" in (folder / "train-model.log").read_text()
    assert "training: " in (folder / "train-model.log").read_text()  # its progress, sparsely
    assert (folder / "run.log").is_file()


def test_verbose_shows_every_steps_output_live_and_a_rejected_gate_exits_3(runs):
    quiet, verbose = runs
    assert verbose.returncode == 3, verbose.stdout[-3000:] + verbose.stderr[-2000:]
    assert "[KFP Executor" in verbose.stdout
    assert len(verbose.stdout.splitlines()) > len(quiet.stdout.splitlines())
    # `--force` is a parameter of the train step alone: ingest and preprocess come from the cache.
    assert "==> ingest-images reused from the step cache" in verbose.stdout
    # The gate's verdict still ends the run's summary, and its logs are named there too.
    assert "Gate: NOT PASSED" in verbose.stdout and logs_folder(verbose.stdout).is_dir()
