"""Training's live MLflow record: the run opens as training starts and takes each epoch's metrics as it ends.

`training_run` opens the pipeline run's MLflow run (`components.register.tracking.open_training_run`:
source, user, pipeline run id, git commit, the config as params, the dataset) and names it in the
model folder (`mlflow_run.json`), where the evaluate and register steps find it. `LiveMetrics`
logs every epoch the moment Keras ends it, so the MLflow UI charts a training while it runs.

Training is worth more than its chart: an epoch's metrics that MLflow does not take are sent again
with the next epoch's, and registration logs whatever is still missing. Only a store that cannot be
reached when training starts fails the step (after the step's retries), before an epoch is spent:
that run could be neither gated against the champion nor registered.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras

from components.register import tracking
from components.register.backend import backend_exceptions
from components.register.coordination import now_ms
from core import layouts
from core.config import Config
from core.retry import call_with_retries

log = logging.getLogger(__name__)


class LiveMetrics(keras.callbacks.Callback):
    """Logs each epoch's metrics to an MLflow run as the epoch ends: `train.*`, `val.*`, step = the 0-based epoch.

    Args:
        client: an MlflowClient bound to the run's store.
        run_id: the run.
    """

    def __init__(self, client: Any, run_id: str) -> None:
        super().__init__()
        self.client = client
        self.run_id = run_id
        self.pending: list[Any] = []

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        """Send the epoch's metrics (and any an earlier epoch could not send)."""
        self.pending += tracking.epoch_metrics(logs or {}, epoch, now_ms())
        self.flush()

    def on_train_end(self, logs: Mapping[str, float] | None = None) -> None:
        """One last try for metrics still unsent."""
        if not self.flush():
            log.warning("%d epoch metrics are not in MLflow yet: the register step logs them", len(self.pending))

    def flush(self) -> bool:
        """Send the metrics not sent yet; True when none is left to send."""
        if not self.pending:
            return True
        try:
            self.client.log_batch(self.run_id, metrics=self.pending)
        except backend_exceptions() as err:
            log.warning(
                "MLflow run %s did not take %d metrics (%s); they are sent again with the next epoch's",
                self.run_id,
                len(self.pending),
                str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__,
            )
            return False
        self.pending = []
        return True


class TrainingRun:
    """The MLflow run of one training, as a context: a training that raises ends it FAILED (KILLED on Ctrl-C).

    Without a run (`run_id` empty: the training is not tracked) every method does nothing.

    Args:
        client: an MlflowClient bound to the run's store.
        run_id: the run.
    """

    def __init__(self, client: Any = None, run_id: str = "") -> None:
        self.client = client
        self.run_id = run_id
        self._live = LiveMetrics(client, run_id) if run_id else None

    def callbacks(self) -> list[keras.callbacks.Callback]:
        """The Keras callbacks that log each epoch to the run."""
        return [self._live] if self._live is not None else []

    def log_history(self, history: Mapping[str, Sequence[float]]) -> None:
        """Log the epochs done before this training started (it resumes from a checkpoint), at their own steps."""
        if self._live is None or not history:
            return
        timestamp = now_ms()
        for key, values in history.items():
            for step, value in enumerate(values):
                self._live.pending += tracking.epoch_metrics({key: value}, step, timestamp)
        self._live.flush()

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Log the training's outcome (epochs run, best epoch, resumed from); the run stays open for evaluation."""
        if self._live is None:
            return
        self._live.pending += tracking.summary_metrics(summary, now_ms())
        if not self._live.flush():
            log.warning("the training's outcome is not in MLflow yet: the register step logs it")

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if self.run_id and exc_type is not None:
            status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
            tracking.end_run_quietly(self.client, self.run_id, status)


def training_run(model_dir: str | Path, data_dir: str | Path, config: Config, pipeline_run_id: str = "") -> TrainingRun:
    """Open the MLflow run of a pipeline run's training and name it in the model folder.

    Without a pipeline run id or a tracking URI (`fashion train` on its own) nothing is tracked, and
    `fashion register` logs the run after the fact. Opening is retried after transient failures
    (`config.pipeline.retries`).

    Args:
        model_dir: the model folder; it gets `mlflow_run.json`.
        data_dir: the preprocess folder (its `stats.json` names the manifest, logged as the dataset).
        config: the resolved config (`registry`: the store, the experiment and its artifact root).
        pipeline_run_id: the pipeline run; empty: not tracked.

    Returns:
        The TrainingRun, to enter as a context around the training.

    Raises:
        StepError: the store cannot be reached or fails (the message names it).
    """
    registry = config.registry
    if not pipeline_run_id or not registry.tracking_uri:
        if pipeline_run_id:
            log.info("registry.tracking_uri is empty: this training is not tracked in MLflow")
        return TrainingRun()
    manifest = layouts.read_stats(data_dir).get("manifest")
    client, record = call_with_retries(
        lambda: tracking.open_training_run(
            registry.tracking_uri,
            registry.experiment,
            config,
            pipeline_run_id,
            artifact_uri=registry.artifact_uri,
            manifest_uri=str(manifest) if manifest else None,
        ),
        config.pipeline.retries,
        config.pipeline.retry_backoff_s,
        "open the MLflow run",
    )
    tracking.write_run_record(model_dir, record)
    return TrainingRun(client, record.run_id)
