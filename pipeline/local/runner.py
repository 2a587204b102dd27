"""Run the whole DAG on this machine with kfp.local, in the project's own environment, under one work directory.

The same `@dsl.pipeline` that compiles for a cluster runs here through `kfp.local`'s
SubprocessRunner (no Docker, no pip installs). The work directory holds the pipeline root (with the
training checkpoints a re-run resumes from), the local step cache, the MLflow store, the model base
path the local server polls, and each live run's temporary folder. Progress is shown live
(`progress`), each step's output kept in its log file (`logs`); what each step did is read back from
kfp's files afterwards (`results`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from core import layouts, storage
from core.config import Config
from pipeline.console import PROGRESS_TO_RUNNER_ENV, Console
from pipeline.local import progress
from pipeline.local.logs import RunLogs
from pipeline.local.results import RunResult, find_cache_hits, read_steps
from pipeline.local.summary import step_note
from pipeline.params import pipeline_arguments

log = logging.getLogger(__name__)

# Under the work directory: one folder per live run, holding kfp's workspace and the steps' temporary files.
TEMP_DIR = "tmp"
RUN_TEMP_PREFIX = "run-"
# Held locked (flock) by the run that owns the folder; the kernel drops the lock when that process dies.
RUN_LOCK = ".lock"


def local_config(config: Config, workdir: str | Path) -> Config:
    """Fill the settings a local run keeps under `workdir` (MLflow store, model base path) when unset."""
    from components.register.backend import embedded_backend

    root = Path(workdir).resolve()
    registry = config.registry
    if not registry.tracking_uri:
        # The steps run in their own folders, so the embedded store is pinned to the work directory.
        embedded = embedded_backend(root)
        (root / "mlflow").mkdir(parents=True, exist_ok=True)
        registry = dataclasses.replace(
            registry,
            tracking_uri=embedded.tracking_uri,
            artifact_uri=registry.artifact_uri or embedded.artifact_uri,
        )
    serving = config.serving
    if not serving.model_base_path:
        serving = dataclasses.replace(serving, model_base_path=str(root / "models" / serving.model_name))
    return dataclasses.replace(config, registry=registry, serving=serving)


def pipeline_root_of(workdir: str | Path) -> Path:
    """The local pipeline root of a work directory: one folder per run, and the checkpoints."""
    return Path(workdir).resolve() / "pipeline"


def run_folders(pipeline_root: Path, before: set[str]) -> list[Path]:
    """The run folders kfp.local made under `pipeline_root` since `before` (its entries then), oldest first."""
    if not pipeline_root.is_dir():
        return []
    return sorted(
        p for p in pipeline_root.iterdir() if p.name not in before and p.name != layouts.CHECKPOINTS and p.is_dir()
    )


def run_logs(workdir: str | Path, log_dir: str | Path | None = None) -> RunLogs:
    """The log files of the next run in `workdir`: in its run folder's `logs/` (or `log_dir`, when given)."""
    pipeline_root = pipeline_root_of(workdir)
    before = {p.name for p in pipeline_root.iterdir()} if pipeline_root.is_dir() else set()

    def newest() -> Path | None:
        runs = run_folders(pipeline_root, before)
        return runs[-1] if runs else None

    return RunLogs(newest, Path(workdir).resolve() / "logs", folder=Path(log_dir) if log_dir else None)


def run_pipeline(
    config: Config,
    workdir: str | Path,
    use_cache: bool = True,
    console: Console | None = None,
    logs: RunLogs | None = None,
    verbose: bool = False,
) -> RunResult:
    """Run the whole DAG with kfp.local in this environment; never raises for a failed step.

    Args:
        config: the resolved run configuration (see `local_config` for what is filled in).
        workdir: where the pipeline root, cache, MLflow store and model base path live.
        use_cache: reuse the outputs of cached steps (ingest, preprocess) from earlier runs.
        console: where step lines and live progress go (default: this process's stdout).
        logs: the run's log files (default: none; each step's output is then only shown with `verbose`).
        verbose: show every line of every step as well.

    Returns:
        Every step's status, time and outputs; `ok` is False with `error` set when a step failed.
    """
    from kfp import local

    from pipeline.dag import build_pipeline

    console = console or Console(sys.stdout)
    workdir = Path(workdir).resolve()
    pipeline_root = pipeline_root_of(workdir)
    cache_root = workdir / "cache"
    pipeline_root.mkdir(parents=True, exist_ok=True)
    # Checkpoints sit beside the runs, named by the training inputs: a re-run after a kill resumes
    # there, and one with the same data and config reuses the finished training. `--no-cache` trains
    # afresh inside the model folder.
    checkpoint_root = str(pipeline_root / layouts.CHECKPOINTS) if use_cache else ""
    pipeline = build_pipeline(config, checkpoint_root=checkpoint_root)
    arguments = pipeline_arguments(config)
    before = {p.name for p in pipeline_root.iterdir()}
    started = time.monotonic()
    error = ""

    def headline(name: str, ok: bool) -> str:
        """What a step that just ended made (its artifacts' metadata), or the error it recorded."""
        runs = run_folders(pipeline_root, before)
        step = read_steps(runs[-1] if runs else None, names=[name])[name]
        return step_note(step) if ok else step.message or tee.error_message(name)

    tracked = progress.tracking(console.line, logs, console, verbose, headline)
    with run_temp(workdir) as temp, _progress_to_runner(), tracked as (tracker, tee), _quiet_local_warnings():
        local.init(
            runner=local.SubprocessRunner(use_venv=False),
            pipeline_root=str(pipeline_root),
            # Not a mkdtemp of kfp's own in the system temporary directory, which a kill would leave there.
            workspace_root=str(temp / "workspace"),
            raise_on_error=True,
            enable_caching=use_cache,
            cache_root=str(cache_root),
        )
        try:
            pipeline(**arguments)
        except RuntimeError as err:
            error = progress.plain(str(err))
    seconds = time.monotonic() - started
    runs = run_folders(pipeline_root, before)
    run_dir = runs[-1] if runs else None
    cached = find_cache_hits(pipeline.pipeline_spec, arguments, cache_root, run_dir) if use_cache else {}
    steps = read_steps(run_dir, cached)
    for step in steps.values():
        step.attempts = tracker.attempts.get(step.name, 0)
        if step.status != "cached":
            step.seconds = tracker.seconds.get(step.name)
        if step.status == "failed":
            # The step's own record (pipeline.metadata.recording_failure); its last printed error
            # line only when it died before it could write one (killed, or failed at import).
            step.message = step.message or tee.error_message(step.name) or "failed (see its log)"
    trained = steps["train-model"].outputs.get("model", {}).get("metadata", {}) if "train-model" in steps else {}
    if trained.get("unchanged"):
        console.line("==> not retrained (catalogue and settings unchanged): register and deploy skipped")
    elif any(step.status == "skipped (gate)" for step in steps.values()):
        console.line("==> gate not passed: register and deploy skipped, the champion keeps serving")
    failed = [s for s in steps.values() if s.status == "failed"]
    if failed:
        error = f"step {failed[0].name} failed: {failed[0].message}"
    result = RunResult(ok=not error, run_dir=str(run_dir or pipeline_root), seconds=seconds, steps=steps, error=error)
    if storage.is_gcs(config.pipeline.pipeline_root) and run_dir is not None:
        result.pipeline_root_uri = upload_run(run_dir, config.pipeline.pipeline_root)
    return result


def upload_run(run_dir: str | Path, pipeline_root: str) -> str:
    """Copy a local run's outputs to `<pipeline_root>/<run name>/`, as KFP's launcher does on a cluster.

    kfp.local keeps its pipeline root on the local disk (steps write through `artifact.path`);
    on a cluster the launcher uploads each step's outputs to the gs:// pipeline root. Mirroring
    the finished run gives a local run the same place in the bucket.

    Returns:
        The run's URI under the pipeline root.
    """
    target = storage.join(pipeline_root, Path(run_dir).name)
    count = storage.copy_tree(str(run_dir), target)
    log.info("uploaded %d files of the run to %s", count, target)
    return target


def remove_stale_temp(workdir: str | Path) -> list[Path]:
    """Remove the temporary folders that earlier runs in `workdir` left behind when they were killed.

    A folder is removed only when it is provably this project's and dead: it sits in the work
    directory's `tmp/`, has a run folder's name and lock file, and no process holds that lock any
    more (the run that made it has exited). The folder of a run still going on is kept.

    Returns:
        The folders removed.
    """
    removed = []
    root = Path(workdir) / TEMP_DIR
    for folder in sorted(root.glob(f"{RUN_TEMP_PREFIX}*")) if root.is_dir() else []:
        try:
            with open(folder / RUN_LOCK, "rb") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # Still locked while it goes: another run cleaning up at the same time skips it.
                shutil.rmtree(folder, ignore_errors=True)
        except (BlockingIOError, FileNotFoundError, NotADirectoryError):
            continue  # a live run's folder, one another run just removed, or no run folder
        removed.append(folder)
    if removed:
        log.info("removed %d temporary folders of killed runs in %s", len(removed), root)
    return removed


@contextlib.contextmanager
def run_temp(workdir: str | Path) -> Iterator[Path]:
    """A temporary folder for one run, under the work directory: the steps' `TMPDIR` while the run lasts.

    kfp.local leaves its workspace (`kfp-workspace-*`) and one `mktemp -d` folder per step in the
    system temporary directory, even after a run that succeeds, and a killed step its own temporary
    files. Here they all land in one folder, removed when the run ends, or by the next run when
    this one was killed (`remove_stale_temp`). The steps inherit `TMPDIR` from this process, so it
    is set for the run's duration and restored after.

    Yields:
        The folder, whose lock this process holds until the run ends.
    """
    root = Path(workdir) / TEMP_DIR
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temp(workdir)
    # Python caches its temporary directory on first use: pin this process's to the usual one first,
    # or a first use during the run would keep pointing at the folder after it is gone.
    tempfile.gettempdir()
    # Made and locked under a hidden name, then renamed: `remove_stale_temp` never sees it unlocked.
    starting = Path(tempfile.mkdtemp(prefix=f".{RUN_TEMP_PREFIX}", dir=root))
    folder = starting.with_name(starting.name[1:])
    saved = os.environ.get("TMPDIR")
    with open(starting / RUN_LOCK, "wb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        starting.rename(folder)
        os.environ["TMPDIR"] = str(folder)
        try:
            yield folder
        finally:
            if saved is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = saved
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _progress_to_runner() -> Iterator[None]:
    """Ask the step processes (which inherit this environment) to send their progress here as lines."""
    saved = os.environ.get(PROGRESS_TO_RUNNER_ENV)
    os.environ[PROGRESS_TO_RUNNER_ENV] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(PROGRESS_TO_RUNNER_ENV, None)
        else:
            os.environ[PROGRESS_TO_RUNNER_ENV] = saved


@contextlib.contextmanager
def _quiet_local_warnings() -> Iterator[None]:
    """kfp.local warns that images, resources and display names have no local effect; that is expected here."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*have no effect in the current local runner.*")
        warnings.filterwarnings("ignore", message=r".*custom or non-Python base image.*")
        yield
