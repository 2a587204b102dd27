"""Training the unified model on the preprocess shards, resumable after a crash.

`train_model` is the step: it reads the shards and statistics, builds the model under a
distribution strategy chosen from the devices present, trains with the class-weighted losses,
checkpoints every epoch, and writes one model folder (docs/ARTIFACTS.md). Running it again on
the same output folder after a crash resumes from the last completed epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from components.train import data as train_data
from components.train.losses import build_losses
from components.train.model import OUTPUTS, build_model
from components.train.optim import make_optimizer
from core import layouts, records
from core.config import Config, TrainConfig, config_from_dict
from core.errors import StepError
from core.labels import LabelSchema

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
    """

    model_dir: Path
    model_path: Path
    epochs_run: int
    best_epoch: int
    resumed_from: int
    history: dict[str, list[float]] = field(default_factory=dict)
    final_metrics: dict[str, float] = field(default_factory=dict)


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


def choose_strategy() -> Any:
    """A `tf.distribute` strategy for the devices present: mirrored over several GPUs, one GPU, or CPU.

    Under a non-TensorFlow Keras backend there is no strategy: a null context is returned.
    """
    if keras.backend.backend() != "tensorflow":
        return contextlib.nullcontext()
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    if len(gpus) == 1:
        return tf.distribute.OneDeviceStrategy("/gpu:0")
    return tf.distribute.get_strategy()


def choose_precision(setting: str) -> str:
    """The Keras dtype policy: `auto` means mixed precision on GPUs (bf16 where supported), float32 on CPU."""
    if setting == "off":
        return "float32"
    if setting != "auto":
        return setting
    if keras.backend.backend() != "tensorflow":
        return "float32"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "float32"
    details = tf.config.experimental.get_device_details(gpus[0])
    major = (details.get("compute_capability") or (0, 0))[0]
    return "mixed_bfloat16" if major >= 8 else "mixed_float16"


def _scope(strategy: Any) -> Any:
    return strategy.scope() if hasattr(strategy, "scope") else strategy


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves the whole model (weights and optimiser) after every epoch, tracks the best epoch and stops early.

    `state.json` records completed epochs, the history so far and the early-stopping counters,
    written after the model file, so a crash mid-save leaves the previous checkpoint usable.
    """

    def __init__(self, checkpoint_dir: Path, patience: int, state: dict[str, Any], log_every: bool = True):
        super().__init__()
        self.dir = checkpoint_dir
        self.patience = patience
        self.state = state
        self.log_every = log_every
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        """Remember when the epoch started, for the progress line."""
        self._start = time.time()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        """Checkpoint, update the best epoch and the early-stopping counter."""
        logs = {k: float(v) for k, v in (logs or {}).items()}
        state = self.state
        for key, value in logs.items():
            state["history"].setdefault(key, []).append(value)
        monitor = logs.get("val_loss", logs.get("loss", float("inf")))
        if monitor < state["best"]:
            state["best"], state["best_epoch"], state["wait"] = monitor, epoch + 1, 0
            self.model.save_weights(self.dir / layouts.BEST_WEIGHTS)
        else:
            state["wait"] += 1
        state["epochs_done"] = epoch + 1
        _atomic_save_model(self.model, self.dir / layouts.LAST_CHECKPOINT)
        _atomic_write(self.dir / layouts.TRAIN_STATE, json.dumps(state, indent=1))
        if self.log_every:
            shown = ", ".join(
                f"{k}={logs[k]:.4f}"
                for k in ("loss", "val_loss", "val_category_accuracy", "val_subcategory_accuracy")
                if k in logs
            )
            log.info(
                "epoch %d/%d done in %.0fs: %s (best epoch %d)",
                epoch + 1,
                self.params.get("epochs", 0),
                time.time() - self._start,
                shown,
                state["best_epoch"],
            )
        if self.patience > 0 and state["wait"] >= self.patience:
            log.info("early stopping: val_loss has not improved for %d epochs", self.patience)
            state["stopped_early"] = True
            _atomic_write(self.dir / layouts.TRAIN_STATE, json.dumps(state, indent=1))
            self.model.stop_training = True


def _batchnorm_layers(layer: Any) -> list[Any]:
    """Every BatchNormalization layer of a model, including those inside nested backbones."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return [layer]
    return [bn for sub in getattr(layer, "layers", []) for bn in _batchnorm_layers(sub)]


def recalibrate_batchnorm(model: keras.Model, dataset: Any, batches: int) -> int:
    """Replace batch-norm moving statistics by their average over `batches` clean batches.

    The moving averages are collected on augmented batches while the weights move fast, and
    under a high learning rate they can lag far behind: a network scoring 80% with batch
    statistics scored under 50% with its moving ones. Averaging fresh batch statistics of
    non-augmented training photos makes inference match training. Returns the batches used.
    """
    layers = _batchnorm_layers(model)
    if not layers:
        return 0
    saved = [bn.momentum for bn in layers]
    used = 0
    try:
        for images, _ in dataset.take(batches):
            used += 1
            # momentum (k-1)/k turns the moving average into the plain mean of the k batches seen.
            for bn in layers:
                bn.momentum = (used - 1) / used
            model(images, training=True)
    finally:
        for bn, momentum in zip(layers, saved, strict=True):
            bn.momentum = momentum
    return used


class BatchNormRecalibration(keras.callbacks.Callback):
    """Recalibrates batch-norm statistics (`recalibrate_batchnorm`) before every validation in `fit`."""

    def __init__(self, dataset: Any, batches: int):
        super().__init__()
        self.dataset = dataset
        self.batches = batches
        self._fitting = False

    def on_train_begin(self, logs: Mapping[str, float] | None = None) -> None:
        """Validation runs from now on belong to `fit`."""
        self._fitting = True

    def on_train_end(self, logs: Mapping[str, float] | None = None) -> None:
        """Stop recalibrating."""
        self._fitting = False

    def on_test_begin(self, logs: Mapping[str, float] | None = None) -> None:
        """Recalibrate just before the epoch's validation, so checkpoints carry the new statistics."""
        if self._fitting:
            recalibrate_batchnorm(self.model, self.dataset, self.batches)


class ScalarLogger(keras.callbacks.Callback):
    """Per-epoch metrics as TensorBoard event files (`logs/train`, `logs/validation`).

    Written with TensorFlow's own summary op and the scalars plugin's metadata, so TensorBoard
    shows them as charts without the tensorboard package being installed in the training image.
    """

    def __init__(self, log_dir: Path):
        super().__init__()
        self.log_dir = log_dir
        self._writers: dict[str, Any] = {}

    def _writer(self, name: str) -> Any:
        import tensorflow as tf

        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(str(self.log_dir / name))
        return self._writers[name]

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        """Write every metric of the epoch; `val_` metrics go to the validation run."""
        if keras.backend.backend() != "tensorflow":
            return
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        metadata = summary_pb2.SummaryMetadata()
        metadata.plugin_data.plugin_name = "scalars"
        lr = self.model.optimizer.learning_rate
        logs = {**(logs or {}), "learning_rate": float(np.asarray(lr))}
        for key, value in logs.items():
            run, tag = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            with self._writer(run).as_default():
                tf.summary.write(f"epoch_{tag}", tf.constant(float(value), tf.float32), step=epoch, metadata=metadata)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs: Mapping[str, float] | None = None) -> None:
        """Close the event files."""
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_save_model(model: keras.Model, path: Path) -> None:
    tmp = path.with_name(f"tmp-{path.name}")
    model.save(tmp)
    os.replace(tmp, path)


def _fresh_state() -> dict[str, Any]:
    return {"epochs_done": 0, "best": float("inf"), "best_epoch": 0, "wait": 0, "history": {}, "stopped_early": False}


def _load_state(checkpoint_dir: Path, config: Config) -> dict[str, Any] | None:
    """The saved training state when the folder holds a resumable run of the same configuration."""
    state_path, model_path = checkpoint_dir / layouts.TRAIN_STATE, checkpoint_dir / layouts.LAST_CHECKPOINT
    if not (state_path.is_file() and model_path.is_file()):
        return None
    state = json.loads(state_path.read_text())
    if state.get("config") != _resume_key(config):
        raise StepError(
            f"{checkpoint_dir} holds checkpoints of a run with different model/train settings: "
            "use a new --out folder, or delete the checkpoints to start over"
        )
    return state


def _resume_key(config: Config) -> dict[str, Any]:
    """The settings that must match for a checkpoint to be resumed (epochs may grow)."""
    plain = config.to_dict()
    train = {k: v for k, v in plain["train"].items() if k not in ("epochs", "early_stopping_patience")}
    return {"model": plain["model"], "train": train}


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


def _progress_verbosity() -> int | str:
    """A live progress bar on a terminal, one line per epoch in logs."""
    return 1 if sys.stdout.isatty() else 2


def train_model(data_dir: str, out_dir: str, config: Config) -> TrainResult:
    """Train the configured model on a preprocess output folder and write the model folder.

    Args:
        data_dir: output folder of `fashion preprocess` (shards, stats.json, labels.json).
        out_dir: the model folder; if it holds checkpoints of an unfinished run with the same
            settings, training resumes from the last completed epoch.
        config: the resolved run configuration (`model` and `train` sections are used).

    Returns:
        The model folder, epochs run, best epoch and history.

    Raises:
        StepError: the data folder is incomplete, or the output folder holds another run's checkpoints.
    """
    tc, mc = config.train, config.model
    stats = layouts.read_stats(data_dir)
    schema = layouts.read_labels(data_dir)
    sizes = schema.sizes
    image_size = _image_size(stats)
    out = Path(out_dir)
    checkpoint_dir = out / layouts.CHECKPOINTS
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    state = _load_state(checkpoint_dir, config)
    resumed_from = int(state["epochs_done"]) if state else 0
    if state is None:
        state = {**_fresh_state(), "config": _resume_key(config)}

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
        with _scope(strategy):
            if resumed_from:
                log.info("resuming from %s after epoch %d", checkpoint_dir / layouts.LAST_CHECKPOINT, resumed_from)
                model = keras.models.load_model(checkpoint_dir / layouts.LAST_CHECKPOINT)
            else:
                model = build_model(mc, sizes, image_size)
                losses = build_losses(stats, sizes, tc.class_weight_power, tc.label_smoothing)
                compile_model(model, tc, losses, steps)
        train_ds = train_data.make_dataset(data_dir, "train", tc.batch_size, True, tc, repeat=True)
        val_ds = train_data.make_dataset(data_dir, "validation", tc.batch_size, False, tc)
        done = state.get("stopped_early") or resumed_from >= tc.epochs
        if not done:
            recal_batch = min(RECALIBRATION_BATCH, n_train)
            clean = train_data.make_dataset(
                data_dir, "train", recal_batch, True, dataclasses.replace(tc, augment=False), True
            )
            # At most one pass over a small training split.
            recal_batches = max(1, min(RECALIBRATION_BATCHES, n_train // recal_batch))
            callbacks = [
                BatchNormRecalibration(clean, recal_batches),
                EpochCheckpoint(checkpoint_dir, tc.early_stopping_patience, state),
                ScalarLogger(out / layouts.TRAIN_LOGS),
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
                    verbose=_progress_verbosity(),
                    shuffle=False,  # the training dataset shuffles itself (train.shuffle_buffer)
                )
        if (checkpoint_dir / layouts.BEST_WEIGHTS).is_file():
            model.load_weights(checkpoint_dir / layouts.BEST_WEIGHTS)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    return _write_model_dir(out, model, config, schema, stats, image_size, state, resumed_from)


def _write_model_dir(
    out: Path,
    model: keras.Model,
    config: Config,
    schema: LabelSchema,
    stats: Mapping[str, Any],
    image_size: tuple[int, int],
    state: dict[str, Any],
    resumed_from: int,
) -> TrainResult:
    """Write model.keras, model_config.json, labels.json, history.json and config.yaml."""
    model_path = out / layouts.MODEL
    # The shipped model is inference-only: float32 and without optimiser state (a third of the size).
    export = build_model(config.model, schema.sizes, image_size)
    export.set_weights(model.get_weights())
    _atomic_save_model(export, model_path)
    schema.save(out / layouts.LABELS)
    config.save(out / layouts.CONFIG)
    history = state["history"]
    best = int(state["best_epoch"]) or int(state["epochs_done"])
    final = {k: v[best - 1] for k, v in history.items() if len(v) >= best > 0}
    model_config = {
        "model": config.to_dict()["model"],
        "sizes": schema.sizes,
        "image_size": list(image_size),
        "input": {"name": "image", "dtype": "uint8", "shape": [*image_size, 3]},
        "outputs": list(OUTPUTS),
        "params": int(model.count_params()),
        "keras_backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "data": {"image_format": stats.get("image_format"), "resize_mode": stats.get("resize_mode")},
    }
    (out / layouts.MODEL_CONFIG).write_text(json.dumps(model_config, indent=2))
    summary = {
        "epochs_run": int(state["epochs_done"]),
        "best_epoch": best,
        "stopped_early": bool(state.get("stopped_early")),
        "resumed_from": resumed_from,
        "history": history,
        "best_metrics": final,
    }
    (out / layouts.HISTORY).write_text(json.dumps(summary, indent=2))
    log.info("model folder written to %s (best epoch %d of %d)", out, best, state["epochs_done"])
    return TrainResult(
        model_dir=out,
        model_path=model_path,
        epochs_run=int(state["epochs_done"]),
        best_epoch=best,
        resumed_from=resumed_from,
        history=history,
        final_metrics=final,
    )


def load_config_of(model_dir: str | Path) -> Config:
    """The resolved configuration a model folder was trained with."""
    import yaml

    return config_from_dict(yaml.safe_load((Path(model_dir) / layouts.CONFIG).read_text()))
