"""Nothing lost to a kill: a re-run of the same inputs resumes training, and no temporary folder outlives its run."""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_train_shards import write_shards

from components.train.callbacks import resume_location
from core import storage
from core.config import load_config
from core.errors import StepError
from pipeline.cli import main
from pipeline.local.progress import StepTracker, Tee
from pipeline.local.runner import remove_stale_temp, run_temp
from pipeline.local.server import stop_server
from tests.support.catalogue import make_catalogue
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[1]
# Short epochs, enough of them that the kill lands between two checkpoints, not after the last one.
EPOCHS, STEPS = 6, 3


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards"), per_type=12)


def test_checkpoint_location_is_named_by_the_data_and_the_settings(shards, tmp_path):
    config = load_config("ci")
    here = resume_location("/ckpt", shards, config)
    assert Path(here).parent == Path("/ckpt")
    # The same shards elsewhere (a cache hit on another machine's mount) are the same data.
    moved = shutil.copytree(shards, tmp_path / "moved")
    assert resume_location("/ckpt", moved, config) == here
    assert resume_location("gs://b/root/checkpoints", shards, config) == f"gs://b/root/checkpoints/{Path(here).name}"
    # Epochs count: the learning-rate schedule spans them, so a longer run is another training.
    for overrides in ({"train": {"epochs": 3}}, {"train": {"seed": 7}}, {"model": {"branch_units": 16}}):
        assert resume_location("/ckpt", shards, load_config("ci", overrides=overrides)) != here, overrides
    stats = json.loads((moved / "stats.json").read_text())
    stats["manifest"] = "/another/catalogue/manifest.csv"
    (moved / "stats.json").write_text(json.dumps(stats))
    assert resume_location("/ckpt", moved, config) != here


def test_training_that_finished_is_reused_by_a_run_of_the_same_inputs(shards, tmp_path):
    from components.train.step import train_model

    config = load_config("ci", overrides={"train": {"epochs": 1, "steps_per_epoch": 2}})
    root = str(tmp_path / "checkpoints")
    first = train_model(str(shards), str(tmp_path / "run-1" / "model"), config, checkpoint_root=root)
    # Killed after training, in evaluate: the next run's train step has a new, empty output folder.
    again = train_model(str(shards), str(tmp_path / "run-2" / "model"), config, checkpoint_root=root)
    assert (again.resumed_from, again.epochs_run) == (1, 1)
    assert again.checkpoint_uri == first.checkpoint_uri == resume_location(root, shards, config)
    assert again.history == first.history and (tmp_path / "run-2" / "model" / "model.keras").is_file()


def test_a_checkpoint_of_other_settings_at_the_location_is_refused(shards, tmp_path):
    from components.train.step import train_model

    config = load_config("ci")
    location = Path(resume_location(str(tmp_path), shards, config))
    location.mkdir()
    (location / "last.keras").write_bytes(b"not read")
    (location / "state.json").write_text(json.dumps({"epochs_done": 1, "config": {"model": {}, "train": {}}}))
    with pytest.raises(StepError, match="different model/train settings"):
        train_model(str(shards), str(tmp_path / "model"), config, checkpoint_root=str(tmp_path))


def test_the_compiled_train_task_checkpoints_under_the_pipeline_root(tmp_path):
    def checkpoint_root(*flags: str) -> str:
        out = tmp_path / "pipeline.yaml"
        assert main(["compile", "--preset", "ci", "--out", str(out), *flags]) == 0
        train = yaml.safe_load(out.read_text())["root"]["dag"]["tasks"]["train-model"]
        return train["inputs"]["parameters"]["checkpoint_root"]["runtimeValue"]["constant"]

    assert checkpoint_root("--set", "pipeline.pipeline_root=gs://runs/fashion") == "gs://runs/fashion/checkpoints"
    # The cluster's default root cannot be named by a step: the run's own model folder keeps them.
    assert checkpoint_root() == ""


def test_stale_temporary_folders_go_and_a_live_runs_stays(tmp_path):
    temp = tmp_path / "tmp"
    for name in ("run-dead", "run-live", ".run-starting", "notes"):
        (temp / name).mkdir(parents=True)
        (temp / name / ".lock").touch()
    (temp / "run-dead" / "tmp.X1" / "ephemeral_component.py").parent.mkdir()
    (temp / "run-nolock").mkdir()
    with open(temp / "run-live" / ".lock", "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert remove_stale_temp(tmp_path) == [temp / "run-dead"]
    assert sorted(p.name for p in temp.iterdir()) == [".run-starting", "notes", "run-live", "run-nolock"]


def test_steps_make_their_temporary_folders_in_the_runs_own_which_goes_with_it(tmp_path):
    before = os.environ.get("TMPDIR")
    with run_temp(tmp_path) as folder:
        assert folder.parent == tmp_path / "tmp" and folder.name.startswith("run-")
        # What kfp's step command does first: `program_path=$(mktemp -d)`.
        made = Path(subprocess.run(["mktemp", "-d"], capture_output=True, text=True, check=True).stdout.strip())
        assert made.parent == folder
        assert remove_stale_temp(tmp_path) == [], "a live run's folder was taken for a stale one"
    assert not folder.exists() and os.environ.get("TMPDIR") == before


def test_progress_says_when_training_resumes_from_an_earlier_checkpoint():
    echoed: list[str] = []
    tracker = StepTracker(echoed.append)
    tracker.current = "train-model"
    tee = Tee(io.StringIO(), tracker)
    tee.write("    [KFP Executor 2026-01-01 10:00:00,000 INFO]: resuming training from epoch 4 of 12: ")
    assert echoed == [], "a progress line in the middle of a step's line"
    tee.write("checkpoint /work/pipeline/checkpoints/0a1b\n")
    assert echoed == ["==> train-model: resuming training from epoch 4 of 12 (checkpoint of an earlier run)"]
    tee.write("    [KFP Executor 2026-01-01 10:00:01,000 INFO]: epoch 5/12 done in 1s: loss=1.0\n")
    assert len(echoed) == 1


@pytest.mark.slow
def test_resumed_training_starts_from_the_checkpoints_weights_and_optimizer_state(shards, tmp_path, monkeypatch):
    import keras
    import numpy as np

    from components.train import callbacks
    from components.train.step import train_model

    config = load_config("ci", overrides={"train": {"epochs": 4, "steps_per_epoch": 2}})
    root = str(tmp_path / "checkpoints")
    location = Path(resume_location(root, shards, config))

    def crash_after_epoch_two(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("the pod was evicted")

    with monkeypatch.context() as patch:
        patch.setattr(callbacks.ScalarLogger, "on_epoch_end", crash_after_epoch_two)
        with pytest.raises(RuntimeError, match="evicted"):
            train_model(str(shards), str(tmp_path / "first"), config, checkpoint_root=root)
    saved = keras.models.load_model(location / "last.keras")
    saved_weights = [w.numpy().copy() for w in saved.trainable_weights]
    saved_optimizer = {v.path: v.numpy().copy() for v in saved.optimizer.variables}
    assert int(saved.optimizer.iterations) == 2 * 2

    # What the resumed fit starts from, read before its first step.
    seen: dict = {}
    original = callbacks.ScalarLogger.on_train_begin

    def record(self, logs=None):
        seen["weights"] = [w.numpy().copy() for w in self.model.trainable_weights]
        seen["optimizer"] = {v.path: v.numpy().copy() for v in self.model.optimizer.variables}
        return original(self, logs)

    with monkeypatch.context() as patch:
        patch.setattr(callbacks.ScalarLogger, "on_train_begin", record)
        result = train_model(str(shards), str(tmp_path / "second"), config, checkpoint_root=root)
    assert (result.resumed_from, result.epochs_run) == (2, 4)
    assert len(seen["weights"]) == len(saved_weights)
    for got, want in zip(seen["weights"], saved_weights, strict=True):
        np.testing.assert_array_equal(got, want)
    # Moments and the step count: a fresh optimizer would restart the learning-rate schedule.
    assert seen["optimizer"].keys() == saved_optimizer.keys()
    for path, want in saved_optimizer.items():
        np.testing.assert_array_equal(seen["optimizer"][path], want, err_msg=path)
    finished = keras.models.load_model(location / "last.keras")
    assert int(finished.optimizer.iterations) == 4 * 2


@pytest.mark.slow
@pytest.mark.gcs
def test_a_checkpoint_in_a_bucket_is_mirrored_every_epoch_and_resumed_after_a_crash(
    gcs_emulator, shards, tmp_path, monkeypatch
):
    from components.train import callbacks
    from components.train.step import train_model

    if gcs_emulator.lookup_bucket("fashion-runs") is None:
        gcs_emulator.create_bucket("fashion-runs")
    root = "gs://fashion-runs/root/checkpoints"
    config = load_config("ci", overrides={"train": {"epochs": 3, "steps_per_epoch": 2}})
    location = resume_location(root, shards, config)

    def crash_after_epoch_two(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("the pod was evicted")

    # The scalar logger runs after the checkpointer: the crash comes once epoch 2 is mirrored.
    with monkeypatch.context() as patch:
        patch.setattr(callbacks.ScalarLogger, "on_epoch_end", crash_after_epoch_two)
        with pytest.raises(RuntimeError, match="evicted"):
            train_model(str(shards), str(tmp_path / "first"), config, checkpoint_root=root)
    state = json.loads(storage.read_bytes(f"{location}/state.json"))
    assert state["epochs_done"] == 2 and state["mirror_slot"] == "slot-0"
    assert storage.exists(f"{location}/slot-0/last.keras") and storage.exists(f"{location}/slot-1/last.keras")

    # A new pod: a new output folder and no local files, only the bucket.
    result = train_model(str(shards), str(tmp_path / "second"), config, checkpoint_root=root)
    assert result.resumed_from == 2 and result.epochs_run == 3
    assert result.checkpoint_uri == location
    assert len(result.history["loss"]) == 3
    assert json.loads(storage.read_bytes(f"{location}/state.json"))["epochs_done"] == 3
    assert not (tmp_path / "second" / "checkpoints").exists(), "the checkpoints belong in the bucket"


def _temp_folders(*roots: Path) -> set[Path]:
    """The folders in temporary directories: kfp's workspace, the steps' `mktemp -d` folders, run folders."""
    return {p for root in roots if root.is_dir() for p in root.iterdir() if p.is_dir()}


def _checkpoint_states(workdir: Path) -> list[dict]:
    states = []
    for path in (workdir / "pipeline").rglob("state.json"):
        try:
            states.append(json.loads(path.read_text()))
        except ValueError:  # caught mid-write
            continue
    return states


@pytest.mark.slow
@pytest.mark.server
def test_a_killed_fashion_run_resumes_training_and_leaves_no_temporary_folders(tmp_path, demo_dir):
    catalogue = make_catalogue(demo_dir, tmp_path / "catalogue")
    workdir, temp = tmp_path / "work", tmp_path / "tmp"
    temp.mkdir()
    grpc_port, rest_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "pipeline.cli", "run", "--preset", "ci", "--source", str(catalogue),
        "--workdir", str(workdir), "--set", f"train.epochs={EPOCHS}", "--set", f"train.steps_per_epoch={STEPS}",
        "--set", f"serving.grpc_port={grpc_port}", "--set", f"serving.rest_port={rest_port}",
    ]  # fmt: skip
    # A private temporary directory: whatever the run leaves there is its own.
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "TMPDIR": str(temp)}
    try:
        with open(tmp_path / "first.log", "wb") as log:
            first = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip
            deadline = time.time() + 240
            while time.time() < deadline and first.poll() is None:
                if any(2 <= s["epochs_done"] < EPOCHS - 2 for s in _checkpoint_states(workdir)):
                    break
                time.sleep(0.1)
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            # The whole process group, as a closed terminal or an OOM kill of the session would.
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        killed_at = max(s["epochs_done"] for s in _checkpoint_states(workdir))
        assert killed_at < EPOCHS, "the first run finished training before it was killed"
        left = _temp_folders(temp, workdir / "tmp")
        assert left, "the killed run left no temporary folder: the test would prove nothing"

        second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        (tmp_path / "second.log").write_text(second.stdout + second.stderr)
        assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    finally:
        stop_server(workdir)

    assert f"==> train-model: resuming training from epoch {killed_at} of {EPOCHS}" in second.stdout
    runs = sorted(p for p in (workdir / "pipeline").iterdir() if p.name.startswith("fashion-classifier"))
    history = json.loads((runs[-1] / "train-model" / "model" / "history.json").read_text())
    assert history["resumed_from"] == killed_at
    assert history["epochs_run"] == EPOCHS and len(history["history"]["loss"]) == EPOCHS
    assert not left & _temp_folders(temp, workdir / "tmp"), "the killed run's temporary folders are still there"
    kfp_made = [p for p in _temp_folders(temp) if p.name.startswith(("kfp-workspace-", "tmp."))]
    assert not kfp_made, "the runs left kfp's workspace or step folders in the temporary directory"

    # The checkpoint the second run finished holds all the steps: the optimizer went on, it did not restart.
    (state_file,) = (workdir / "pipeline").rglob("state.json")
    assert json.loads(state_file.read_text())["epochs_done"] == EPOCHS
    import keras

    import components.train.model  # noqa: F401  (registers the model's layers)

    last = keras.models.load_model(state_file.parent / "last.keras")
    assert int(last.optimizer.iterations) == EPOCHS * STEPS
