"""One candidate's record in MLflow: config, per-epoch history, test metrics, the gate, reports, both model formats.

One pipeline run is one MLflow run, tagged with its `pipeline_run_id`. In a pipeline the record is
written as the candidate goes: the train step opens the run (`open_training_run`) and logs every
epoch as it ends, and names it in the model folder (`mlflow_run.json`, `RunRecord`); the evaluate
step adds the test metrics and the gate's decision and reasons (`record_evaluation`), and ends the
run when the gate rejects the candidate; the register step adds the model files and the logged
SavedModel (`continue_training_run`) and ends it once the version is registered. A model folder
that names no run (`fashion train`, then `fashion register`) is logged in one go after the fact
(`log_training_run`): logging the same pipeline run twice, one after the other or at once, returns
the run logged first (`claim_run`), and such a run that fails half-way is deleted, so the UI never
shows a run with half its metrics or artifacts.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import io
import json
import logging
import random
import re
import subprocess
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components.register import model_package
from components.register.backend import (
    backend_errors,
    backend_exceptions,
    is_already_exists,
    is_not_found,
    make_client,
)
from components.register.coordination import HEARTBEAT_TAG, REGISTRATION_WAIT_S, Heartbeat, StaleWatch, now_ms
from core import layouts, storage
from core.config import Config
from core.errors import StepError
from core.secrets import redact

log = logging.getLogger(__name__)

# Run tags (plain names: they are columns in the MLflow UI).
TAG_PIPELINE_RUN = "pipeline_run_id"
TAG_GIT_COMMIT = "git_commit"
TAG_MANIFEST_SHA = "data_manifest_sha256"
TAG_IMAGE_SIZE = "image_size"
TAG_BACKBONE = "backbone"
TAG_BLESSED = "gate_blessed"
TAG_GATE = "gate_decision"  # `blessed` or `rejected`
TAG_GATE_REASON = "gate_reason"
TAG_NOTE = "mlflow.note.content"  # the run's description on its page
# Who and what made the run, in MLflow's own tags (the UI's User and Source columns).
TAG_USER = "mlflow.user"
TAG_SOURCE_NAME = "mlflow.source.name"
TAG_SOURCE_TYPE = "mlflow.source.type"
SOURCE_PIPELINE = "JOB"
SOURCE_COMMAND = "LOCAL"
# The experiment tag the MLflow 3 UI reads to open an experiment in its model-training view, not GenAI.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
GATE_METRIC = "gate.blessed"
# Metric name prefixes: per-epoch history on the training and validation splits, scalars on test.
TRAIN_PREFIX = "train."
VAL_PREFIX = "val."
TEST_PREFIX = "test."

DATASET_NAME = "fashion-catalogue"
# Under MLflow's limit on a tag's value (8,000 characters).
MAX_TAG_CHARS = 5000
_PIPELINE_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,249}$")
_BAD_NAME_CHARS = re.compile(r"[^\w\-. :/]")


@dataclass(frozen=True)
class TrainingOutputs:
    """Everything a training run left on disk, read and checked before anything is logged.

    Attributes:
        model_dir: the trainer's folder (`model.keras`, `history.json`, `labels.json`, `config.yaml`).
        eval_dir: the evaluator's folder (`metrics.json`, `gate.json`, reports, PNGs).
        export_dir: the TF Serving SavedModel (or None when there is none to log).
        config: the resolved config the model was trained with, as a nested dict.
        history: metric name -> one value per epoch.
        history_summary: scalars from `history.json` besides the history (epochs run, best epoch).
        scalars: the evaluation's flat test metrics.
        blessed: the gate's decision, None when `gate.json` is absent.
        gate: `gate.json` itself (decision, reason, checks), None when absent.
        manifest_uri: the ingest manifest (`manifest.csv`) the data came from, if known.
        manifest_sha256: its content hash, "unknown" without a manifest.
    """

    model_dir: Path
    eval_dir: Path
    export_dir: Path | None
    config: dict[str, Any]
    history: dict[str, list[float]]
    history_summary: dict[str, float]
    scalars: dict[str, float]
    blessed: bool | None
    manifest_uri: str | None = None
    manifest_sha256: str = "unknown"
    manifest_bytes: bytes = field(default=b"", repr=False)
    gate: dict[str, Any] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class TrackedRun:
    """The MLflow run of one pipeline run.

    Attributes:
        run_id: the MLflow run id.
        experiment_id: its experiment.
        model_id: the logged SavedModel model (None when no export was logged).
        created: False when the pipeline run had been logged before and was reused.
        open: the run is still RUNNING and the caller ends it (`end_run`) once the version is registered.
    """

    run_id: str
    experiment_id: str
    model_id: str | None
    created: bool
    open: bool = False


@dataclass(frozen=True)
class RunRecord:
    """The MLflow run a model folder belongs to, as `mlflow_run.json` holds it: training opened it.

    Attributes:
        run_id: the MLflow run.
        experiment_id: its experiment.
        pipeline_run_id: the pipeline run it records.
    """

    run_id: str
    experiment_id: str
    pipeline_run_id: str


def write_run_record(model_dir: str | Path, record: RunRecord) -> Path:
    """Name the MLflow run in the model folder, so evaluate and register continue the same run."""
    path = Path(model_dir) / layouts.MLFLOW_RUN
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2) + "\n")
    tmp.replace(path)
    return path


def read_run_record(model_dir: str | Path) -> RunRecord | None:
    """The MLflow run the model folder names, None when training opened none (`fashion train`).

    Raises:
        StepError: the file is there but is not a run record.
    """
    path = Path(model_dir) / layouts.MLFLOW_RUN
    if not path.is_file():
        return None
    data = layouts.read_json(path, "the MLflow run the train step opened")
    try:
        return RunRecord(str(data["run_id"]), str(data["experiment_id"]), str(data["pipeline_run_id"]))
    except (KeyError, TypeError) as err:
        raise StepError(f"{path}: not an MLflow run record (run_id, experiment_id, pipeline_run_id)") from err


def check_pipeline_run_id(pipeline_run_id: str) -> str:
    """Validate a pipeline run id (it goes into search filters and tags).

    Raises:
        StepError: empty, too long or with characters other than letters, digits and `._:@+-`.
    """
    if not isinstance(pipeline_run_id, str) or not _PIPELINE_RUN_ID.match(pipeline_run_id):
        raise StepError(
            f"pipeline run id {pipeline_run_id!r} is not usable: use 1-250 letters, digits or ._:@+- "
            "(kfp passes its job id)"
        )
    return pipeline_run_id


def metric_name(name: str) -> str:
    """A metric/param name MLflow accepts: characters it rejects become `_`."""
    return _BAD_NAME_CHARS.sub("_", str(name)).strip("/") or "_"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config dict -> `section.field` strings (lists as comma-separated values, URI passwords redacted)."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list | tuple):
            out[metric_name(name)] = redact(",".join(str(v) for v in value))
        else:
            out[metric_name(name)] = "" if value is None else redact(str(value))
    return out


def _numbers(values: Any) -> list[float] | None:
    if not isinstance(values, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return None
    return [float(v) for v in values]


def read_history(model_dir: Path) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Per-epoch metrics and summary scalars from the trainer's `history.json`.

    Accepts the trainer's layout (`{"history": {...}, "epochs_run": ..., ...}`) and a bare Keras
    `History.history` dict. Entries that are not lists of numbers are skipped with a warning.
    """
    data = layouts.read_json(model_dir / layouts.HISTORY, "the model folder must hold the training history")
    if not isinstance(data, Mapping):
        raise StepError(f"{model_dir / layouts.HISTORY}: expected a JSON object")
    nested = data.get("history")
    raw = nested if isinstance(nested, Mapping) else data
    history: dict[str, list[float]] = {}
    for key, values in raw.items():
        numbers = _numbers(values)
        if numbers is not None:
            history[str(key)] = numbers
    skipped = sorted(set(map(str, raw)) - set(history))
    if skipped:
        log.warning("history.json: %d entries are not per-epoch numbers and are not logged: %s", len(skipped), skipped)
    summary: dict[str, float] = {}
    if raw is nested:
        summary = {str(k): float(v) for k, v in data.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return history, summary


def read_scalars(eval_dir: Path) -> dict[str, float]:
    """The evaluation's flat test metrics (`metrics.json` -> `scalars`)."""
    data = layouts.read_json(eval_dir / layouts.METRICS, "the evaluation folder must hold the test metrics")
    scalars = data.get("scalars") if isinstance(data, Mapping) else None
    if not isinstance(scalars, Mapping):
        raise StepError(f"{eval_dir / layouts.METRICS}: no 'scalars' object of test metrics")
    out, bad = {}, []
    for key, value in scalars.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[str(key)] = float(value)
        else:
            bad.append(key)
    if bad:
        log.warning("metrics.json: %d scalars are not numbers and are not logged: %s", len(bad), bad)
    return out


def read_gate_decision(eval_dir: str | Path) -> dict[str, Any] | None:
    """The gate's `gate.json` (`blessed`, `reason`, `checks`), None when the evaluation wrote none."""
    path = Path(eval_dir) / layouts.GATE
    if not path.is_file():
        return None
    data = layouts.read_json(path, "the gate decision")
    return dict(data) if isinstance(data, Mapping) else None


def read_gate(eval_dir: Path) -> bool | None:
    """The gate's `blessed` decision, None when the evaluation wrote no `gate.json`."""
    decision = read_gate_decision(eval_dir)
    return None if decision is None else bool(decision.get("blessed"))


def _clip(text: str, limit: int = MAX_TAG_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def gate_tags(decision: Mapping[str, Any]) -> dict[str, str]:
    """The gate's decision as run tags: `gate_blessed`, `gate_decision`, `gate_reason` and the run's note.

    `gate_reason` is the verdict with every failed check (the columns a person sorts and filters by);
    the note, shown at the top of the run's page, lists every check, passed or failed.
    """
    blessed = bool(decision.get("blessed"))
    checks = [c for c in decision.get("checks") or [] if isinstance(c, Mapping)]
    reason = str(decision.get("reason") or "")
    verdict = reason.split("; ", 1)[0] or ("blessed" if blessed else "not blessed")
    failed = [str(c.get("message", "")) for c in checks if not c.get("passed", True)]
    lines = [f"- {'passed' if c.get('passed', True) else 'FAILED'}: {c.get('message', '')}" for c in checks]
    note = f"**Gate: {'blessed' if blessed else 'rejected'}** ({verdict})\n\n" + "\n".join(lines or [reason])
    return {
        TAG_BLESSED: str(blessed).lower(),
        TAG_GATE: "blessed" if blessed else "rejected",
        TAG_GATE_REASON: _clip("; ".join([verdict, *failed])),
        TAG_NOTE: _clip(note, 7500),
    }


def read_manifest(manifest_uri: str) -> tuple[str, bytes]:
    """(URI of `manifest.csv`, its bytes) for a manifest file or an ingest folder holding one."""
    uri = str(manifest_uri)
    if not uri.endswith(".csv"):
        uri = storage.join(uri, layouts.MANIFEST)
    try:
        return uri, storage.read_bytes(uri)
    except storage.StorageError as err:
        raise StepError(f"data manifest {uri} cannot be read: {err}") from err


def read_training_outputs(
    model_dir: str | Path,
    eval_dir: str | Path,
    export_dir: str | Path | None,
    config: Config,
    manifest_uri: str | None = None,
) -> TrainingOutputs:
    """Read and check a run's folders (docs/ARTIFACTS.md) before anything is written to MLflow.

    The params come from the `config.yaml` the model was trained with (falling back on `config`),
    so a later `fashion register` with other settings cannot misreport how the model was made.

    Raises:
        StepError: a folder or a required file is missing or unreadable.
    """
    model_dir, eval_dir = Path(model_dir), Path(eval_dir)
    for folder, what in ((model_dir, "model"), (eval_dir, "evaluation")):
        if not folder.is_dir():
            raise StepError(f"{what} folder {folder} does not exist")
    if not (model_dir / layouts.MODEL).is_file():
        raise StepError(f"{model_dir / layouts.MODEL} not found: is {model_dir} a trained model folder?")
    trained = config.to_dict()
    config_path = model_dir / layouts.CONFIG
    if config_path.is_file():
        try:
            trained = yaml.safe_load(config_path.read_text()) or trained
        except yaml.YAMLError as err:
            raise StepError(f"{config_path} is not valid YAML: {err}") from err
    history, summary = read_history(model_dir)
    uri, data = read_manifest(manifest_uri) if manifest_uri else (None, b"")
    gate = read_gate_decision(eval_dir)
    return TrainingOutputs(
        model_dir=model_dir,
        eval_dir=eval_dir,
        export_dir=model_package.find_saved_model(export_dir) if export_dir else None,
        config=trained,
        history=history,
        history_summary=summary,
        scalars=read_scalars(eval_dir),
        blessed=None if gate is None else bool(gate.get("blessed")),
        manifest_uri=uri,
        manifest_sha256=hashlib.sha256(data).hexdigest() if uri else "unknown",
        manifest_bytes=data,
        gate=gate,
    )


def git_commit(repo_dir: str | Path | None = None) -> str:
    """The commit the code was built from (with `-dirty` when there were uncommitted changes), or "unknown".

    An image has no repository to ask: `make images` bakes the commit into it as
    `FASHION_GIT_COMMIT`, which wins when set. Elsewhere git answers for the checkout.
    """
    import os

    baked = os.environ.get("FASHION_GIT_COMMIT", "").strip()
    if baked:
        return baked
    cwd = Path(repo_dir) if repo_dir else Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha or "unknown"


def run_user() -> str:
    """Who runs this process (the UI's User column), "unknown" where the system cannot say (a bare container)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def source_tags(source_name: str, source_type: str, commit: str) -> dict[str, str]:
    """MLflow's own tags for what made a run and who: source name and type, git commit, user."""
    return {
        TAG_SOURCE_NAME: source_name,
        TAG_SOURCE_TYPE: source_type,
        "mlflow.source.git.commit": commit.removesuffix("-dirty"),
        TAG_USER: run_user(),
    }


def _config_tags(config: Mapping[str, Any], pipeline_run_id: str, commit: str, manifest_sha256: str) -> dict[str, str]:
    model = config.get("model", {}) if isinstance(config.get("model"), Mapping) else {}
    return {
        TAG_PIPELINE_RUN: pipeline_run_id,
        TAG_GIT_COMMIT: commit,
        TAG_MANIFEST_SHA: manifest_sha256,
        TAG_IMAGE_SIZE: f"{model.get('input_height', '?')}x{model.get('input_width', '?')}",
        TAG_BACKBONE: str(model.get("backbone", "unknown")),
        "mlflow.runName": f"train-{pipeline_run_id}"[:250],
    }


def run_tags(outputs: TrainingOutputs, pipeline_run_id: str, commit: str) -> dict[str, str]:
    """The tags that make a run findable: pipeline run, code, data, image size, backbone, source, user, gate."""
    tags = {
        **_config_tags(outputs.config, pipeline_run_id, commit, outputs.manifest_sha256),
        **source_tags("fashion register", SOURCE_COMMAND, commit),
    }
    if outputs.gate is not None:
        tags.update(gate_tags(outputs.gate))
    return tags


def history_metric_name(key: str) -> str:
    """The MLflow name of a Keras history key: `val_loss` -> `val.loss`, `loss` -> `train.loss`."""
    return metric_name(VAL_PREFIX + key[4:] if key.startswith("val_") else TRAIN_PREFIX + key)


def epoch_metrics(logs: Mapping[str, Any], step: int, timestamp: int) -> list[Any]:
    """One epoch's Keras logs as MLflow metrics at `step` (the 0-based epoch), leaving out what is no number."""
    from mlflow.entities import Metric

    metrics = []
    for key, value in logs.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        metrics.append(Metric(history_metric_name(str(key)), number, timestamp, step))
    return metrics


def summary_metrics(summary: Mapping[str, Any], timestamp: int) -> list[Any]:
    """The training outcome's scalars (epochs run, best epoch, resumed from) as `train.*` metrics."""
    from mlflow.entities import Metric

    return [
        Metric(metric_name(TRAIN_PREFIX + str(k)), float(v), timestamp, 0)
        for k, v in summary.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]


def _test_metrics(scalars: Mapping[str, float], timestamp: int) -> list[Any]:
    from mlflow.entities import Metric

    return [Metric(metric_name(TEST_PREFIX + k), v, timestamp, 0) for k, v in scalars.items()]


def _history_metrics(outputs: TrainingOutputs, timestamp: int) -> list[Any]:
    metrics = []
    for key, values in outputs.history.items():
        for step, value in enumerate(values):
            metrics += epoch_metrics({key: value}, step, timestamp)
    return metrics + summary_metrics(outputs.history_summary, timestamp) + _test_metrics(outputs.scalars, timestamp)


def _log_dataset(client: Any, run_id: str, manifest_uri: str | None, data: bytes, sha256: str) -> None:
    import mlflow.data
    import pandas as pd
    from mlflow.entities import DatasetInput, InputTag

    if not manifest_uri:
        return
    frame = pd.read_csv(io.BytesIO(data))
    with warnings.catch_warnings():
        # MLflow warns that a local path matches two equivalent source types, and about int columns.
        warnings.simplefilter("ignore", UserWarning)
        entity = mlflow.data.from_pandas(frame, source=manifest_uri, name=DATASET_NAME, digest=sha256[:16])
        entity = entity._to_mlflow_entity()
    client.log_inputs(run_id, [DatasetInput(entity, tags=[InputTag("mlflow.data.context", "training")])])


def _log_artifacts(client: Any, run_id: str, outputs: TrainingOutputs) -> None:
    client.log_artifacts(run_id, str(outputs.eval_dir), "evaluation")
    _log_model_files(client, run_id, outputs.model_dir)


def _log_model_files(client: Any, run_id: str, model_dir: Path) -> None:
    """The Keras model folder's files under `model/`, its labels and config at the top."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mlflow-run-") as tmp:
        staged = Path(tmp) / "model"
        staged.mkdir()
        for name in layouts.MODEL_FOLDER_FILES:
            if (model_dir / name).is_file():
                (staged / name).symlink_to((model_dir / name).resolve())
        client.log_artifacts(run_id, str(staged), "model")
    for name in (layouts.LABELS, layouts.CONFIG):
        if (model_dir / name).is_file():
            client.log_artifact(run_id, str(model_dir / name))


def ensure_experiment(client: Any, name: str, artifact_uri: str = "") -> str:
    """The id of experiment `name`, created (with `artifact_uri`/`name` as its artifact root) if missing.

    The experiment is tagged as model training (`mlflow.experimentKind`), so the MLflow 3 UI opens its
    runs table rather than its GenAI view.
    """
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        if TAG_EXPERIMENT_KIND not in experiment.tags:
            # Made before the tag was set, or by hand: the UI would open it in its GenAI view.
            client.set_experiment_tag(experiment.experiment_id, TAG_EXPERIMENT_KIND, MODEL_TRAINING_KIND)
        return experiment.experiment_id
    location = storage.join(artifact_uri, metric_name(name).replace(" ", "_")) if artifact_uri else None
    try:
        return client.create_experiment(
            name, artifact_location=location, tags={TAG_EXPERIMENT_KIND: MODEL_TRAINING_KIND}
        )
    except MlflowException as err:
        if not is_already_exists(err):  # another registration created it a moment ago
            raise
        return client.get_experiment_by_name(name).experiment_id


def runs_of(client: Any, experiment_id: str, pipeline_run_id: str) -> list[Any]:
    """The (not deleted) MLflow runs tagged with `pipeline_run_id`, earliest first."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.{TAG_PIPELINE_RUN} = '{pipeline_run_id}'", max_results=50
    )
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def claim_run(
    client: Any,
    experiment_id: str,
    pipeline_run_id: str,
    tags: Mapping[str, str],
    *,
    exclusive: bool = False,
    wait_s: float = REGISTRATION_WAIT_S,
) -> tuple[Any, bool]:
    """The run of a pipeline run: the finished one, or a new one that this caller alone goes on to log.

    A finished run is returned as it is (the earliest, should there be several). An unfinished run
    is another caller logging it, whom this one waits for, or a crashed attempt's leftover, which is
    deleted: with `exclusive` every unfinished run is a leftover, otherwise one is when it failed or
    its heartbeat stopped (`coordination.StaleWatch`). With none left, a new run is created; a caller
    that then finds another new run beside its own deletes its own and looks again. So at most one
    caller logs a pipeline run, and the others adopt its run once it is finished (or claim the
    pipeline run anew when that caller failed and deleted its run).

    Args:
        client: the MlflowClient.
        experiment_id: the experiment.
        pipeline_run_id: the pipeline run.
        tags: the tags of a new run (with the `pipeline_run_id` tag).
        exclusive: the caller holds a lock that keeps every other caller of this pipeline run away.
        wait_s: how long to wait for another caller to finish logging.

    Returns:
        (run, created): the MLflow Run, and True when it was just created and is for this caller to log.

    Raises:
        StepError: another caller kept logging for longer than `wait_s`.
    """
    watch = StaleWatch()
    deadline = time.monotonic() + wait_s
    waited_for = None
    while True:
        runs = runs_of(client, experiment_id, pipeline_run_id)
        finished = [r for r in runs if r.info.status == "FINISHED"]
        if finished:
            return finished[0], False
        live = [r for r in runs if not _is_leftover(r, watch, exclusive)]
        for run in runs:
            if run not in live:
                log.warning("deleting MLflow run %s left unfinished by an earlier attempt", run.info.run_id)
                _delete_run_quietly(client, run.info.run_id)
        if not live:
            # The first heartbeat is the creation: a run waited on before its logging starts is live.
            run = client.create_run(
                experiment_id, tags=dict(tags) if exclusive else {**tags, HEARTBEAT_TAG: str(now_ms())}
            )
            if exclusive:
                return run, True
            live = [
                r
                for r in runs_of(client, experiment_id, pipeline_run_id)
                if r.info.run_id != run.info.run_id and not _is_leftover(r, watch, exclusive)
            ]
            if not live:
                return run, True
            # Others created a run at the same moment: all step back, and the pause of random length
            # below lets one of them claim the pipeline run while the rest wait for it.
            log.info("pipeline run %s: another registration began at the same moment; stepping back", pipeline_run_id)
            _delete_run_quietly(client, run.info.run_id)
        if time.monotonic() > deadline:
            raise StepError(
                f"pipeline run {pipeline_run_id} has been logged by another registration (MLflow run "
                f"{live[0].info.run_id}) for over {wait_s:.0f}s; wait for it, or delete that run and register again"
            )
        if live[0].info.run_id != waited_for:
            waited_for = live[0].info.run_id
            log.info("pipeline run %s is being logged as MLflow run %s; waiting for it", pipeline_run_id, waited_for)
        time.sleep(random.uniform(0.3, 1.0))


def _is_leftover(run: Any, watch: StaleWatch, exclusive: bool) -> bool:
    if run.info.status == "FINISHED":
        return False
    return exclusive or run.info.status in ("FAILED", "KILLED") or watch.is_stale(run)


def logged_model_of(client: Any, run: Any) -> str | None:
    """The id of the (last) READY model logged by `run`, if any."""
    from mlflow.exceptions import MlflowException

    outputs = getattr(run, "outputs", None)
    model_ids = [o.model_id for o in (outputs.model_outputs if outputs else [])]
    for model_id in reversed(model_ids):
        try:
            model = client.get_logged_model(model_id)
        except MlflowException as err:
            if is_not_found(err):  # deleted after a failed attempt
                continue
            raise
        if str(model.status).rsplit(".", 1)[-1] == "READY":
            return model_id
    return None


def log_training_run(
    client: Any,
    experiment_id: str,
    outputs: TrainingOutputs,
    pipeline_run_id: str,
    commit: str,
    photos: Sequence[bytes | str | Path] = (),
    *,
    exclusive: bool = False,
) -> TrackedRun:
    """Log one pipeline run's training and evaluation as an MLflow run (or return the one logged before).

    The run is found or claimed by `claim_run` (`exclusive` when the caller holds the pipeline run's
    lock). If anything fails while logging, the new run is deleted again.
    """
    from mlflow.entities import Param

    tags = run_tags(outputs, pipeline_run_id, commit)
    run, created = claim_run(client, experiment_id, pipeline_run_id, tags, exclusive=exclusive)
    run_id = run.info.run_id
    if not created:
        log.info("pipeline run %s was logged before as MLflow run %s", pipeline_run_id, run_id)
        return TrackedRun(run_id, experiment_id, logged_model_of(client, run), created=False)

    try:
        # Callers waiting for this run watch its heartbeat; with the lock held, nobody waits on it.
        with contextlib.nullcontext() if exclusive else Heartbeat(client, run_id):
            client.log_batch(
                run_id,
                metrics=_history_metrics(outputs, run.info.start_time),
                params=[Param(k, v[:6000]) for k, v in flatten(outputs.config).items()],
            )
            _log_dataset(client, run_id, outputs.manifest_uri, outputs.manifest_bytes, outputs.manifest_sha256)
            _log_artifacts(client, run_id, outputs)
            model_id = None
            if outputs.export_dir is not None:
                model = model_package.log_serving_model(
                    client, experiment_id, run_id, outputs.export_dir, photos, tags={TAG_PIPELINE_RUN: pipeline_run_id}
                )
                model_id = model.model_id
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        _delete_run_quietly(client, run_id)
        raise
    if not exclusive:
        _forget_heartbeat(client, run_id)
    log.info("logged pipeline run %s as MLflow run %s", pipeline_run_id, run_id)
    return TrackedRun(run_id, experiment_id, model_id, created=True)


def _forget_heartbeat(client: Any, run_id: str) -> None:
    try:
        client.delete_tag(run_id, HEARTBEAT_TAG)
    except Exception as err:  # the run is finished and complete: the tag is only clutter on its page
        log.debug("could not remove the heartbeat tag of run %s: %s", run_id, err)


def _delete_run_quietly(client: Any, run_id: str) -> None:
    try:
        client.set_terminated(run_id, "FAILED")
        client.delete_run(run_id)
    except Exception as err:  # cleanup after a failure must not hide the original error
        log.warning("could not delete the unfinished MLflow run %s: %s", run_id, err)


def end_run(client: Any, run_id: str, status: str = "FINISHED") -> None:
    """End a run as `FINISHED`, `FAILED` or `KILLED`."""
    client.set_terminated(run_id, status)


def end_run_quietly(client: Any, run_id: str, status: str) -> None:
    """End a run after a failure; a store that fails again is only logged, so the original error is the one raised."""
    try:
        client.set_terminated(run_id, status)
    except backend_exceptions() as err:
        log.warning("could not mark MLflow run %s as %s: %s", run_id, status, err)


def open_training_run(
    tracking_uri: str,
    experiment: str,
    config: Config,
    pipeline_run_id: str,
    *,
    artifact_uri: str = "",
    manifest_uri: str | None = None,
    commit: str | None = None,
) -> tuple[Any, RunRecord]:
    """Open the MLflow run of a pipeline run as its training starts: tags, the config as params, the dataset.

    Runs of the same pipeline run that an earlier attempt of the train step left unfinished are
    deleted: the new attempt logs again the epochs it resumes from, so one run holds the whole history.

    Args:
        tracking_uri: the MLflow store.
        experiment: the experiment (created on first use with `artifact_uri` as its artifact root).
        config: the resolved config, logged as the run's params.
        pipeline_run_id: the pipeline run (the run's `pipeline_run_id` tag).
        artifact_uri: artifact root for a new experiment; empty: the server's.
        manifest_uri: the ingest `manifest.csv` (or its folder), logged as the run's dataset when readable.
        commit: the code version; default: the git commit of this checkout (or the image's).

    Returns:
        (the MlflowClient, the RunRecord that names the run in the model folder).

    Raises:
        StepError: the pipeline run id is unusable, or the store cannot be reached or fails (the
            message names it; no run is left half-made).
    """
    from mlflow.entities import Param

    check_pipeline_run_id(pipeline_run_id)
    commit = commit or git_commit()
    uri, data, sha256 = None, b"", "unknown"
    if manifest_uri:
        try:
            uri, data = read_manifest(manifest_uri)
            sha256 = hashlib.sha256(data).hexdigest()
        except StepError as err:
            log.warning("the MLflow run gets no dataset: %s", err)
    client = make_client(tracking_uri)
    where = f"{tracking_uri} (artifacts: {artifact_uri})" if artifact_uri else tracking_uri
    with backend_errors(where, f"open the MLflow run of pipeline run {pipeline_run_id}"):
        experiment_id = ensure_experiment(client, experiment, artifact_uri)
        for earlier in runs_of(client, experiment_id, pipeline_run_id):
            if earlier.info.status != "FINISHED":
                log.warning("deleting MLflow run %s, left unfinished by an earlier attempt", earlier.info.run_id)
                _delete_run_quietly(client, earlier.info.run_id)
        plain = config.to_dict()
        tags = {
            **_config_tags(plain, pipeline_run_id, commit, sha256),
            **source_tags(f"{config.pipeline.name} pipeline", SOURCE_PIPELINE, commit),
        }
        run = client.create_run(experiment_id, tags=tags)
        run_id = run.info.run_id
        try:
            client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in flatten(plain).items()])
            _log_dataset(client, run_id, uri, data, sha256)
        except BaseException:
            _delete_run_quietly(client, run_id)
            raise
    log.info("pipeline run %s: MLflow run %s opened in experiment %s", pipeline_run_id, run_id, experiment_id)
    return client, RunRecord(run_id, experiment_id, pipeline_run_id)


def _recorded_run(client: Any, record: RunRecord, where: str) -> Any:
    """The run a model folder names, which must exist (not deleted) in this store."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(record.run_id)
    except MlflowException as err:
        if not is_not_found(err):
            raise
        run = None
    if run is None or run.info.lifecycle_stage == "deleted":
        raise StepError(
            f"MLflow run {record.run_id}, which the model folder's {layouts.MLFLOW_RUN} names, is not in {where}: "
            "use the tracking URI the model was trained with (registry.tracking_uri)"
        )
    return run


def _reopen(client: Any, run: Any) -> None:
    """Show a run that a step continues as running again (an evaluation retried, a rejected model registered)."""
    if run.info.status != "RUNNING":
        client.update_run(run.info.run_id, status="RUNNING")


def log_evaluation(client: Any, run_id: str, eval_dir: str | Path) -> bool:
    """Log an evaluation to a run: `test.*` metrics, the gate's decision and reasons, the evaluation folder.

    Returns:
        The gate's decision.

    Raises:
        StepError: the folder holds no test metrics or no gate decision.
    """
    from mlflow.entities import Metric, RunTag

    eval_dir = Path(eval_dir)
    scalars = read_scalars(eval_dir)
    decision = read_gate_decision(eval_dir)
    if decision is None:
        raise StepError(f"{eval_dir / layouts.GATE} not found: the evaluation decided no gate")
    blessed = bool(decision.get("blessed"))
    timestamp = now_ms()
    client.log_batch(
        run_id,
        metrics=[*_test_metrics(scalars, timestamp), Metric(GATE_METRIC, float(blessed), timestamp, 0)],
        tags=[RunTag(k, v) for k, v in gate_tags(decision).items()],
    )
    client.log_artifacts(run_id, str(eval_dir), "evaluation")
    return blessed


def record_evaluation(
    tracking_uri: str, model_dir: str | Path, eval_dir: str | Path, *, end_rejected: bool = True
) -> RunRecord | None:
    """Log an evaluation and the gate's decision to the run the model folder names; end the run when rejected.

    A blessed candidate's run stays open for the register step, which ends it once its version is
    registered; a rejected one's ends here, FINISHED, with the reasons on it (`gate_reason`, the note).

    Args:
        tracking_uri: the MLflow store the model was trained against.
        model_dir: the trainer's folder (its `mlflow_run.json` names the run).
        eval_dir: the evaluator's folder (`metrics.json`, `gate.json`, reports).
        end_rejected: end the run when the gate rejected the candidate.

    Returns:
        The run's record; None when the model folder names no run (training was not tracked).

    Raises:
        StepError: the store cannot be reached, fails, or does not hold the run.
    """
    record = read_run_record(model_dir)
    if record is None:
        log.info("%s names no MLflow run: the evaluation is not logged", model_dir)
        return None
    client = make_client(tracking_uri)
    with backend_errors(tracking_uri, f"log the evaluation to MLflow run {record.run_id}"):
        _reopen(client, _recorded_run(client, record, tracking_uri))
        blessed = log_evaluation(client, record.run_id, eval_dir)
        if not blessed and end_rejected:
            end_run(client, record.run_id, "FINISHED")
    log.info(
        "MLflow run %s: evaluation logged, gate %s%s",
        record.run_id,
        "blessed" if blessed else "rejected",
        "" if blessed or not end_rejected else "; the run is finished",
    )
    return record


def end_recorded_run(tracking_uri: str, model_dir: str | Path, status: str) -> None:
    """End the run a model folder names after a step failed with it; a failure to do so is only logged."""
    try:
        record = read_run_record(model_dir)
        if record is not None:
            end_run_quietly(make_client(tracking_uri), record.run_id, status)
    except StepError as err:
        log.warning("could not mark the MLflow run of %s as %s: %s", model_dir, status, err)


def _backfill_history(client: Any, run_id: str, history: Mapping[str, Sequence[float]]) -> None:
    """Log the epochs a run lacks: those its live logging could not send, for good."""
    from mlflow.entities import Metric

    timestamp, missing = now_ms(), []
    for key, values in history.items():
        name = history_metric_name(key)
        logged = {m.step for m in client.get_metric_history(run_id, name)}
        missing += [Metric(name, v, timestamp, step) for step, v in enumerate(values) if step not in logged]
    if missing:
        log.warning("MLflow run %s lacked %d epoch metrics; logged them now", run_id, len(missing))
        client.log_batch(run_id, metrics=missing)


def continue_training_run(
    client: Any,
    record: RunRecord,
    outputs: TrainingOutputs,
    photos: Sequence[bytes | str | Path] = (),
    *,
    where: str = "the MLflow store",
) -> TrackedRun:
    """Complete the run training opened with what registration adds: the model files and the logged SavedModel.

    Also logs what an earlier step could not: the evaluation (when evaluate did not log it), epochs
    missing from the history, the dataset. The run is left RUNNING (`TrackedRun.open`) for the caller
    to end once the version is registered; a run already finished with its model is returned as it is.
    If anything fails, the run is marked FAILED (not deleted: it holds the training), and a later
    attempt continues it.
    """
    run = _recorded_run(client, record, where)
    run_id, experiment_id = run.info.run_id, run.info.experiment_id
    model_id = logged_model_of(client, run)
    if run.info.status == "FINISHED" and model_id is not None:
        log.info("MLflow run %s is complete with model %s", run_id, model_id)
        return TrackedRun(run_id, experiment_id, model_id, created=False)
    _reopen(client, run)
    try:
        if TAG_GATE not in run.data.tags and outputs.gate is not None:
            log_evaluation(client, run_id, outputs.eval_dir)
        _backfill_history(client, run_id, outputs.history)
        if f"{TRAIN_PREFIX}epochs_run" not in run.data.metrics:
            client.log_batch(run_id, metrics=summary_metrics(outputs.history_summary, now_ms()))
        if outputs.manifest_uri and not run.inputs.dataset_inputs:
            _log_dataset(client, run_id, outputs.manifest_uri, outputs.manifest_bytes, outputs.manifest_sha256)
            client.set_tag(run_id, TAG_MANIFEST_SHA, outputs.manifest_sha256)
        _log_model_files(client, run_id, outputs.model_dir)
        if model_id is None and outputs.export_dir is not None:
            model = model_package.log_serving_model(
                client,
                experiment_id,
                run_id,
                outputs.export_dir,
                photos,
                tags={TAG_PIPELINE_RUN: record.pipeline_run_id},
            )
            model_id = model.model_id
    except BaseException:
        end_run_quietly(client, run_id, "FAILED")
        raise
    log.info("MLflow run %s: model files and SavedModel %s logged", run_id, model_id)
    return TrackedRun(run_id, experiment_id, model_id, created=True, open=True)


def track_training_run(
    tracking_uri: str,
    experiment: str,
    model_dir: str | Path,
    eval_dir: str | Path,
    export_dir: str | Path | None,
    config: Config,
    pipeline_run_id: str,
    *,
    artifact_uri: str = "",
    manifest_uri: str | None = None,
    commit: str | None = None,
    photos: Sequence[bytes | str | Path] = (),
    exclusive: bool = False,
) -> TrackedRun:
    """Record a training run in MLflow: the step function behind every pipeline run's MLflow page.

    When the model folder names the run training opened for this pipeline run (`mlflow_run.json`),
    that run is continued and left open (`TrackedRun.open`) for the caller to end once registered;
    otherwise the whole run is logged now, and finished.

    Args:
        tracking_uri: the MLflow store (`sqlite:///...`, `http://host:port`).
        experiment: experiment name (created on first use with `artifact_uri` as its artifact root).
        model_dir: the trainer's folder.
        eval_dir: the evaluator's folder.
        export_dir: the TF Serving SavedModel to log as the run's model (None: none).
        config: the resolved config (used when the model folder holds no `config.yaml`).
        pipeline_run_id: the pipeline run; logging the same id twice returns the first run.
        artifact_uri: artifact root for a new experiment (folder or `gs://`); empty: the server's.
        manifest_uri: the ingest `manifest.csv` (or its folder), logged as the run's dataset.
        commit: the code version; default: the git commit of this checkout.
        photos: encoded photos for the model's input example.
        exclusive: the caller holds `coordination.pipeline_run_lock`: nobody else logs this pipeline
            run meanwhile, so an unfinished run of it is a crashed attempt's leftover.

    Returns:
        The TrackedRun.

    Raises:
        StepError: an input is missing, or the backend cannot be reached or fails (nothing is left
            half-written).
    """
    check_pipeline_run_id(pipeline_run_id)
    outputs = read_training_outputs(model_dir, eval_dir, export_dir, config, manifest_uri)
    record = read_run_record(model_dir)
    if record is not None and record.pipeline_run_id != pipeline_run_id:
        log.warning(
            "%s was trained in pipeline run %s, not %s: it is logged as an MLflow run of its own",
            model_dir,
            record.pipeline_run_id,
            pipeline_run_id,
        )
        record = None
    client = make_client(tracking_uri)
    where = f"{tracking_uri} (artifacts: {artifact_uri})" if artifact_uri else tracking_uri
    with backend_errors(where, f"log pipeline run {pipeline_run_id}"):
        if record is not None:
            return continue_training_run(client, record, outputs, photos, where=tracking_uri)
        experiment_id = ensure_experiment(client, experiment, artifact_uri)
        return log_training_run(
            client, experiment_id, outputs, pipeline_run_id, commit or git_commit(), photos, exclusive=exclusive
        )
