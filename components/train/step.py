"""Training the unified model on the preprocess shards, resumable after a crash.

`train_model` is the step: it reads the shards and statistics, builds the model under a
distribution strategy chosen from the devices present, trains with the class-weighted losses,
checkpoints every epoch, and writes one model folder (docs/ARTIFACTS.md). Running it again after
a crash resumes from the last completed epoch: on the same output folder (`fashion train`), or,
given a checkpoint root (a pipeline run, whose output folder is new every run), on the same data
and settings.

Before training it compares the catalogue and the settings with those the registry's champion was
trained on (`retrain`): unchanged, it trains nothing and says so; changed, it says what changed.
Training starts where `train.init` says (`warm_start`): from scratch, or from the champion's or
another model's weights, its heads resized to the new catalogue's classes.

The callbacks live in `callbacks`, the device and precision choice in `devices`, the model
folder's writing in `model_folder`; this module holds the step and its training loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from components.train import data as train_data
from components.train import retrain, warm_start
from components.train.callbacks import (
    BatchNormRecalibration,
    EpochCheckpoint,
    ScalarLogger,
    TrainingProgress,
    restore_checkpoint,
    resume_location,
    resume_state,
)
from components.train.devices import choose_precision, choose_strategy, strategy_scope
from components.train.live_tracking import training_run
from components.train.losses import build_losses
from components.train.model import build_model
from components.train.model_folder import write_model_folder
from components.train.optim import make_optimizer
from core import layouts, records, storage
from core.catalogue import CatalogueSnapshot
from core.config import Config, TrainConfig
from core.errors import StepError
from core.labels import LabelSchema
from core.retry import call_with_retries

log = logging.getLogger(__name__)

# Batch-norm statistics are re-estimated on this many clean training photos before each validation.
RECALIBRATION_BATCH = 256
RECALIBRATION_BATCHES = 24


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        model_dir: the model folder.
        model_path: the saved `.keras` model (best validation epoch's weights).
        epochs_run: epochs completed in total, including those before a resume.
        best_epoch: 1-based epoch with the lowest validation loss.
        resumed_from: epochs already completed when this call started (0 for a fresh run).
        history: per-epoch metrics, keyed by metric name.
        final_metrics: the best epoch's metrics.
        checkpoint_uri: where the checkpoints are kept (a local folder or a gs:// URI).
        mlflow_run_id: the MLflow run that received the epochs live ('' when not tracked).
        unchanged: why nothing was trained (the catalogue and settings are the champion's); '' when trained.
        changes: what changed since the champion was trained ('' when there is no champion to compare with).
        warm_start: what a warm start copied (`warm_start.WarmStart.to_dict()`); {} from scratch.
    """

    model_dir: Path
    model_path: Path
    epochs_run: int
    best_epoch: int
    resumed_from: int
    history: dict[str, list[float]] = field(default_factory=dict)
    final_metrics: dict[str, float] = field(default_factory=dict)
    checkpoint_uri: str = ""
    mlflow_run_id: str = ""
    unchanged: str = ""
    changes: str = ""
    warm_start: dict[str, Any] = field(default_factory=dict)


def set_seeds(seed: int) -> None:
    """Seed Python, NumPy and the Keras backend: the one place seeds are set."""
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)


def compile_model(model: keras.Model, train_cfg: TrainConfig, losses: Mapping[str, Any], steps_per_epoch: int) -> None:
    """Compile with the configured optimiser, the weighted losses and accuracy metrics."""
    model.compile(
        optimizer=make_optimizer(train_cfg, steps_per_epoch),
        loss=dict(losses),
        metrics={
            "category": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            "subcategory": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            "attributes": [keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.5)],
        },
    )


def build_training_state(model: keras.Model, dataset: Any) -> None:
    """Create the optimiser's, the losses' and the metrics' variables before `fit` traces its step.

    Without a distribution strategy of its own, Keras's TensorFlow trainer creates them inside the
    first trace of the train step, and TensorFlow then traces it a second time: 4-5 s of the demo
    training on 2 cores. One eager forward pass on a batch of `dataset` builds them here instead.
    """
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    images, labels = next(iter(dataset.take(1)))
    predicted = model(images, training=False)
    model.compute_loss(x=images, y=labels, y_pred=predicted)
    model.compute_metrics(images, labels, predicted)
    model.reset_metrics()


def _image_size(stats: Mapping[str, Any]) -> tuple[int, int]:
    try:
        return int(stats["image_height"]), int(stats["image_width"])
    except (KeyError, TypeError, ValueError) as err:
        raise StepError("stats.json has no image_height/image_width: re-run `fashion preprocess`") from err


def _count_split(data_dir: str | Path, split: str) -> int:
    """Examples in one split: from the statistics, else by reading the shards once (no decoding)."""
    n = train_data.split_size(data_dir, split)
    if n:
        return n
    return int(records.read_split(data_dir, split, decode=False).reduce(0, lambda c, _: c + 1).numpy())


def _summary(state: Mapping[str, Any], resumed_from: int) -> dict[str, Any]:
    """The training outcome (history.json) from the final checkpoint state."""
    history = state["history"]
    # Without any improvement recorded the last epoch's weights are the ones kept.
    best = int(state["best_epoch"]) or int(state["epochs_done"])
    return {
        "epochs_run": int(state["epochs_done"]),
        "best_epoch": best,
        "stopped_early": bool(state.get("stopped_early")),
        "resumed_from": resumed_from,
        "history": history,
        "best_metrics": {k: v[best - 1] for k, v in history.items() if len(v) >= best > 0},
    }


def _checkpoint_folder(
    stack: contextlib.ExitStack, out: Path, data_dir: str, config: Config, checkpoint_root: str
) -> tuple[Path, str]:
    """The local folder this call checkpoints in, and the gs:// URI it mirrors that folder to ('' for none).

    Without a checkpoint root the folder is the model folder's `checkpoints/`. With one, it is the
    run's `resume_location` there; a gs:// location gets a local working copy (Keras saves to
    files), restored from the bucket first and removed when training ends.
    """
    if not checkpoint_root:
        return out / layouts.CHECKPOINTS, ""
    location = resume_location(checkpoint_root, data_dir, config)
    if storage.is_gcs(location):
        local = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="checkpoints-")))
        restore_checkpoint(location, local)
        return local, location
    if "://" in location:
        log.warning("%s: checkpoints can live on a local disk or gs:// only; a crash restarts training", location)
        return out / layouts.CHECKPOINTS, ""
    return Path(location), ""


def train_model(
    data_dir: str,
    out_dir: str,
    config: Config,
    checkpoint_root: str = "",
    pipeline_run_id: str = "",
    manifest_uri: str = "",
) -> TrainResult:
    """Train the configured model on a preprocess output folder and write the model folder.

    Args:
        data_dir: output folder of `fashion preprocess` (shards, stats.json, labels.json).
        out_dir: the model folder; without `checkpoint_root`, if it holds checkpoints of an
            unfinished run with the same settings, training resumes from the last completed epoch.
        config: the resolved run configuration (`model` and `train` sections are used).
        checkpoint_root: a local folder or gs:// URI to keep checkpoints under, in a folder named by
            the data and the settings (`resume_location`): training resumes from a checkpoint an
            earlier call on the same inputs left there, whatever its output folder.
        pipeline_run_id: the pipeline run this training belongs to: its MLflow run opens now (in
            `config.registry`'s store), takes every epoch's metrics as the epoch ends, and is named
            in the model folder for the evaluate and register steps. Empty: not tracked.
        manifest_uri: the ingest manifest the shards were made from (default: the one `stats.json`
            names): its ids and labels are compared with the champion's training catalogue and
            stored with the model (`catalogue.json`).

    Returns:
        The model folder, epochs run, best epoch and history; `unchanged` says why nothing was
        trained when the catalogue and settings are the champion's (`train.skip_unchanged`).

    Raises:
        StepError: the data folder is incomplete, the checkpoint folder holds another run's
            checkpoints, or `train.init` names a model that cannot be used.
    """
    stats = layouts.read_stats(data_dir)
    schema = layouts.read_labels(data_dir)
    image_size = _image_size(stats)
    out = Path(out_dir)
    # Made here, not by the checkpoints or the logs: they may live elsewhere, or training be over already.
    out.mkdir(parents=True, exist_ok=True)
    snapshot = _snapshot(manifest_uri or stats.get("manifest") or "", config)
    check = None
    if snapshot is not None:
        check = call_with_retries(
            lambda: retrain.check_against_champion(config, snapshot),
            config.pipeline.retries,
            config.pipeline.retry_backoff_s,
            "compare the catalogue with the champion's",
        )
    if check is not None:
        log.info("%s", check.message)
        if check.unchanged and config.train.skip_unchanged:
            retrain.write_unchanged(out, check, snapshot, config)
            log.warning("not retrained: %s; `fashion run --force` retrains anyway", check.message)
            return TrainResult(out, out / layouts.UNCHANGED, 0, 0, 0, unchanged=check.message, changes=check.message)
    with contextlib.ExitStack() as stack:
        source, trained = _start(config, Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="init-"))))
        tc = trained.train
        tracked = stack.enter_context(training_run(out, data_dir, trained, pipeline_run_id))
        _tag_run(tracked, source, check)
        checkpoint_dir, mirror_uri = _checkpoint_folder(stack, out, data_dir, trained, checkpoint_root)
        checkpoint_uri = mirror_uri or str(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        state = resume_state(checkpoint_dir, trained)
        resumed_from = int(state["epochs_done"])
        if resumed_from and not _finished(state, tc):
            log.info("resuming training from epoch %d of %d: checkpoint %s", resumed_from, tc.epochs, checkpoint_uri)
        elif resumed_from:
            log.info("training finished earlier, after epoch %d: reusing checkpoint %s", resumed_from, checkpoint_uri)
        tracked.log_history(state["history"])  # the epochs a resumed training starts after
        checkpointer = EpochCheckpoint(checkpoint_dir, tc.early_stopping_patience, state, mirror_uri=mirror_uri)
        model, warm = _fit(data_dir, out, trained, stats, schema, image_size, checkpointer, tracked.callbacks(), source)
        summary = _summary(state, resumed_from)
        model_path = write_model_folder(out, model, trained, schema, stats, image_size, summary)
        if snapshot is not None:
            # The requested settings, not those of this start: the next run compares its own with them.
            retrain.write_catalogue(out, snapshot, config)
        if warm:
            (out / layouts.WARM_START).write_text(json.dumps(warm, indent=2) + "\n")
        tracked.finish(summary)
    log.info("model folder written to %s (best epoch %d of %d)", out, summary["best_epoch"], summary["epochs_run"])
    return TrainResult(
        model_dir=out,
        model_path=model_path,
        epochs_run=summary["epochs_run"],
        best_epoch=summary["best_epoch"],
        resumed_from=resumed_from,
        history=summary["history"],
        final_metrics=summary["best_metrics"],
        checkpoint_uri=checkpoint_uri,
        mlflow_run_id=tracked.run_id,
        changes=check.message if check is not None else "",
        warm_start=warm,
    )


def _snapshot(manifest_uri: str, config: Config) -> CatalogueSnapshot | None:
    """The ids and labels of the training catalogue, None (with a warning) when its manifest is out of reach."""
    if not manifest_uri:
        log.warning("no ingest manifest known: the catalogue is not compared with the champion's, nor stored")
        return None
    try:
        return CatalogueSnapshot.from_manifest(str(manifest_uri), config.labels.attributes)
    except StepError as err:
        log.warning("%s: the catalogue is not compared with the champion's, nor stored", err)
        return None


def _start(config: Config, init_dir: Path) -> tuple[warm_start.InitSource | None, Config]:
    """Where training starts (`train.init`) and the settings it trains with.

    A warm start's settings name its source for good (`train.init` becomes the source's
    `models:/<name>/<version>` or folder) and its epochs (`train.warm_start_epochs`), so the
    checkpoints of a warm start from one champion are never resumed from another's. From scratch
    the settings are the run's own.
    """
    source = warm_start.resolve_init(config, init_dir)
    if source is not None:
        changed = warm_start.architecture_changes(config, source)
        if changed and source.champion:
            log.warning(
                "not warm-starting from %s: its %s differ from this run's; training from scratch",
                source.description,
                ", ".join(changed),
            )
            source = None
        elif changed:
            raise StepError(
                f"train.init={config.train.init}: {source.description} was trained with other {', '.join(changed)}; "
                "use the same model settings or train.init=scratch"
            )
    if source is None:
        return None, config
    epochs = warm_start.epochs_of(config)
    log.info("warm start from %s: %d epochs (train.warm_start_epochs)", source.description, epochs)
    train = dataclasses.replace(config.train, init=source.uri, epochs=epochs)
    return source, dataclasses.replace(config, train=train)


def _tag_run(tracked: Any, source: warm_start.InitSource | None, check: retrain.RetrainCheck | None) -> None:
    """Name the training's start and what changed since the champion on its MLflow run."""
    if not tracked.run_id:
        return
    from components.register.backend import backend_exceptions

    tags = {"train_init": source.uri if source else "scratch"}
    if check is not None:
        tags["catalogue_changes"] = check.message[:5000]
    try:
        for key, value in tags.items():
            tracked.client.set_tag(tracked.run_id, key, value)
    except backend_exceptions() as err:
        log.warning("MLflow run %s did not take the tags %s: %s", tracked.run_id, sorted(tags), err)


def _finished(state: Mapping[str, Any], tc: TrainConfig) -> bool:
    """Whether a checkpoint's training is over: stopped early, or all epochs done."""
    return bool(state.get("stopped_early")) or int(state["epochs_done"]) >= tc.epochs


def _fit(
    data_dir: str,
    out: Path,
    config: Config,
    stats: Mapping[str, Any],
    schema: LabelSchema,
    image_size: tuple[int, int],
    checkpointer: EpochCheckpoint,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
    source: warm_start.InitSource | None = None,
) -> tuple[keras.Model, dict[str, Any]]:
    """Build the model (from `source`'s weights when given) or load `checkpointer`'s, train the epochs left.

    Returns:
        The model with the best epoch's weights, and what the warm start copied ({} from scratch).
    """
    tc, mc = config.train, config.model
    sizes = schema.sizes
    warm: dict[str, Any] = {}
    checkpoint_dir, resumed_from = checkpointer.dir, int(checkpointer.state["epochs_done"])
    set_seeds(tc.seed + resumed_from)
    n_train = _count_split(data_dir, "train")
    if n_train < tc.batch_size:
        raise StepError(
            f"the train split has {n_train} examples, fewer than one batch of {tc.batch_size}: "
            "lower train.batch_size or add data"
        )
    steps = tc.steps_per_epoch or n_train // tc.batch_size
    policy = choose_precision(tc.mixed_precision)
    keras.mixed_precision.set_dtype_policy(policy)
    strategy = choose_strategy()
    log.info(
        "training %s/%s on %d examples: %d epochs x %d steps, batch %d, precision %s, strategy %s",
        mc.head,
        mc.backbone,
        n_train,
        tc.epochs,
        steps,
        tc.batch_size,
        policy,
        type(strategy).__name__,
    )
    try:
        with strategy_scope(strategy):
            if resumed_from:
                model = keras.models.load_model(checkpoint_dir / layouts.LAST_CHECKPOINT)
                if source is not None:
                    warm = {"source": source.uri, "description": source.description, "resumed_from": resumed_from}
            else:
                model = build_model(mc, sizes, image_size)
                if source is not None:
                    warm = _warm_start(model, source, schema, tc.epochs)
                losses = build_losses(stats, sizes, tc.class_weight_power, tc.label_smoothing)
                compile_model(model, tc, losses, steps)
        train_ds = train_data.make_dataset(data_dir, "train", tc.batch_size, True, tc, repeat=True)
        val_ds = train_data.make_dataset(data_dir, "validation", tc.batch_size, False, tc)
        with strategy_scope(strategy):
            build_training_state(model, train_ds)
        if not _finished(checkpointer.state, tc):
            recal_batch = min(RECALIBRATION_BATCH, n_train)
            clean = train_data.make_dataset(
                data_dir, "train", recal_batch, True, dataclasses.replace(tc, augment=False), True
            )
            # At most one pass over a small training split.
            recal_batches = max(1, min(RECALIBRATION_BATCHES, n_train // recal_batch))
            callbacks = [
                BatchNormRecalibration(clean, recal_batches),
                checkpointer,
                ScalarLogger(out / layouts.TRAIN_LOGS),
                TrainingProgress(),
                *extra_callbacks,
            ]
            with warnings.catch_warnings():
                # The validation split is finite by design: Keras learns its length at the end of
                # the first validation and warns as if training data had run out.
                warnings.filterwarnings("ignore", message="Your input ran out of data")
                model.fit(
                    train_ds,
                    validation_data=val_ds,
                    epochs=tc.epochs,
                    initial_epoch=resumed_from,
                    steps_per_epoch=steps,
                    callbacks=callbacks,
                    verbose=0,  # progress is TrainingProgress's; Keras's own would repeat each epoch's line
                    shuffle=False,  # the training dataset shuffles itself (train.shuffle_buffer)
                )
        if (checkpoint_dir / layouts.BEST_WEIGHTS).is_file():
            model.load_weights(checkpoint_dir / layouts.BEST_WEIGHTS)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    return model, warm


def _warm_start(model: keras.Model, source: warm_start.InitSource, schema: LabelSchema, epochs: int) -> dict[str, Any]:
    """Copy `source`'s weights into the freshly built `model` (heads by label string); what was copied."""
    from components.train.model_folder import load_model

    source_model = load_model(source.model_dir)
    try:
        copied = warm_start.transfer_weights(model, source_model, layouts.read_labels(source.model_dir), schema, source)
    finally:
        del source_model
    copied.epochs = epochs
    log.info("warm start %s", copied.summary())
    return copied.to_dict()
