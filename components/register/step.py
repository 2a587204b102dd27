"""The register step: export the SavedModel, complete the run's MLflow record, make it the `challenger` version.

The MLflow run is the one the train step opened (the model folder's `mlflow_run.json`), ended here
once the version is registered; a model folder that names none is logged as a whole run now.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from components.deploy import smoke
from components.register import model_package
from components.register.backend import backend_errors, check_reachable, resolve_backend, sqlite_path
from components.register.coordination import pipeline_run_lock, retry_store_race
from components.register.registry import CHALLENGER, Registry
from components.register.tracking import (
    TrackedRun,
    check_pipeline_run_id,
    end_run,
    end_run_quietly,
    read_gate,
    track_training_run,
)
from core import layouts, storage
from core.config import Config
from core.errors import StepError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistrationResult:
    """What the register step did.

    Attributes:
        model_name: the registered model.
        version: the version made (or found) for this pipeline run; None when the gate did not bless it.
        alias: `challenger` when a version was registered.
        model_uri: `models:/<name>/<version>`.
        run_id: the MLflow run holding params, metrics, reports and both model formats.
        experiment_id: its experiment.
        model_id: the logged SavedModel model behind the version.
        tracking_uri: the MLflow store used.
        saved_model_dir: the exported SavedModel folder.
        blessed: the gate's decision.
        created: False when this pipeline run had been registered before (nothing new was written).
    """

    model_name: str
    version: str | None
    alias: str | None
    model_uri: str | None
    run_id: str
    experiment_id: str
    model_id: str | None
    tracking_uri: str
    saved_model_dir: str
    blessed: bool | None
    created: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        return asdict(self)


def ensure_export(model_dir: str | Path, export_dir: str | Path, config: Config) -> Path:
    """The SavedModel in `export_dir`, exported from `model_dir` first when it holds none yet."""
    export_dir = Path(export_dir)
    try:
        return model_package.find_saved_model(export_dir)
    except StepError:
        pass
    if export_dir.is_dir():
        if any(export_dir.iterdir()):
            raise StepError(f"{export_dir} holds files but no SavedModel; give an empty or new export folder")
        export_dir.rmdir()  # the exporter creates the folder itself, atomically
    from components.register.export import export_model

    export_model(model_dir, str(export_dir), config)
    return model_package.find_saved_model(export_dir)


def keep_smoke_reference(saved_model_dir: Path, predictions_path: Path) -> None:
    """Keep the SavedModel's answers for deploy's smoke photos in it (`smoke.REFERENCE_FILE`), once.

    Deploy then checks the replicas against them without loading TensorFlow itself. An evaluation
    without predictions.jsonl, or whose records name no readable photo, leaves the SavedModel as it
    is (deploy runs it in-process instead, and reports what is wrong with the photos).
    """
    if (saved_model_dir / smoke.REFERENCE_FILE).is_file() or not predictions_path.is_file():
        return
    try:
        photos = smoke.expected_photos(smoke.load_expected(predictions_path, smoke.SMOKE_PHOTOS))
    except (StepError, storage.StorageError) as err:
        # Not registration's concern: deploy reports it, with these same photos, if it is deployed.
        log.warning("no smoke reference kept in the SavedModel: %s", err)
        return
    smoke.write_reference(saved_model_dir, photos)
    log.info("kept the SavedModel's answers for %d smoke photos in %s", len(photos), smoke.REFERENCE_FILE)


def register_model(
    model_dir: str | Path,
    eval_dir: str | Path,
    export_dir: str | Path,
    config: Config,
    pipeline_run_id: str,
    *,
    workdir: str | Path | None = None,
    manifest_uri: str | None = None,
    commit: str | None = None,
    photos: Sequence[bytes | str | Path] = (),
    require_blessed: bool = True,
) -> RegistrationResult:
    """Complete a trained, evaluated model's MLflow run and register its SavedModel as the `challenger`.

    Args:
        model_dir: the trainer's folder (docs/ARTIFACTS.md).
        eval_dir: the evaluator's folder (`metrics.json`, `gate.json`, reports).
        export_dir: the SavedModel folder; exported from `model_dir` when it holds none yet.
        config: the resolved config (registry settings: URI, artifact root, experiment, model name).
        pipeline_run_id: the pipeline run; registering the same run again, or several times at once,
            returns the same MLflow run and version to every caller.
        workdir: the work directory of the embedded store, used when `registry.tracking_uri` is empty
            (`<workdir>/mlflow/mlflow.db`, artifacts in `<workdir>/mlflow/artifacts`).
        manifest_uri: the ingest `manifest.csv` (or its folder), logged as the run's dataset.
        commit: code version for the run's tags (default: this checkout's git commit).
        photos: encoded photos for the version's input example (default: from the warmup requests).
        require_blessed: register only when `gate.json` says `blessed` (the run is tracked anyway).

    Returns:
        The RegistrationResult (`version` None when the gate did not bless the model).

    Raises:
        StepError: a folder is incomplete, the gate decision is missing, or MLflow cannot be reached
            or fails (the message names the URI; nothing is left half-written).
    """
    check_pipeline_run_id(pipeline_run_id)
    backend = resolve_backend(config.registry, workdir)
    if backend.tracking_uri.startswith("sqlite:///") and workdir is not None and not config.registry.tracking_uri:
        Path(workdir, "mlflow").mkdir(parents=True, exist_ok=True)
    check_reachable(backend.tracking_uri)
    saved_model_dir = ensure_export(model_dir, export_dir, config)
    blessed = read_gate(Path(eval_dir))
    if blessed is None and require_blessed:
        raise StepError(
            f"{Path(eval_dir) / 'gate.json'} not found: evaluate the model first (or register with --force)"
        )
    name = config.registry.model_name
    register = blessed or not require_blessed
    if register:
        keep_smoke_reference(saved_model_dir, Path(eval_dir) / layouts.PREDICTIONS)
    # Opened (and a new store created) before the lock below is waited for: that takes seconds,
    # which callers of the same pipeline run spend side by side rather than in turn.
    registry = Registry(backend.tracking_uri, name)

    def track_and_register() -> tuple[TrackedRun, str | None, bool]:
        # On an embedded store the lock makes callers of one pipeline run take turns; a server has
        # no shared file system, and there track_training_run and find_or_register converge instead.
        with pipeline_run_lock(sqlite_path(backend.tracking_uri), pipeline_run_id) as exclusive:
            tracked = track_training_run(
                backend.tracking_uri,
                config.registry.experiment,
                model_dir,
                eval_dir,
                saved_model_dir,
                config,
                pipeline_run_id,
                artifact_uri=backend.artifact_uri,
                manifest_uri=manifest_uri,
                commit=commit,
                photos=photos,
                exclusive=exclusive,
            )
            version, made = None, False
            try:
                if register:
                    version, made = registry.find_or_register(
                        tracked.run_id,
                        pipeline_run_id=pipeline_run_id,
                        model_id=tracked.model_id,
                        export_dir=saved_model_dir,
                    )
                if tracked.open:  # the run training opened ends with its registration
                    with backend_errors(backend.tracking_uri, f"end MLflow run {tracked.run_id}"):
                        end_run(registry.client, tracked.run_id, "FINISHED")
            except BaseException:
                if tracked.open:
                    end_run_quietly(registry.client, tracked.run_id, "FAILED")
                raise
            return tracked, version, tracked.created or made

    # Safe to repeat: an attempt that failed left nothing behind (or the run training opened, marked
    # FAILED, which the next attempt continues), and one that got far finds its own work.
    tracked, version, created = retry_store_race(track_and_register, f"register pipeline run {pipeline_run_id}")
    if not register:
        log.warning(
            "gate did not bless pipeline run %s: tracked as run %s, not registered", pipeline_run_id, tracked.run_id
        )
    return RegistrationResult(
        model_name=name,
        version=version,
        alias=CHALLENGER if version else None,
        model_uri=f"models:/{name}/{version}" if version else None,
        run_id=tracked.run_id,
        experiment_id=tracked.experiment_id,
        model_id=tracked.model_id,
        tracking_uri=backend.tracking_uri,
        saved_model_dir=str(saved_model_dir),
        blessed=blessed,
        created=created,
    )
