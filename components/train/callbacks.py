"""The Keras callbacks of training: per-epoch checkpoints and resume state, batch-norm recalibration, scalars, progress.

A checkpoint folder holds `last.keras` (model and optimiser after the last completed epoch),
`best.weights.h5` (the best validation epoch's weights) and `state.json` (completed epochs, history,
early-stopping counters and the settings it belongs to). `fashion train` keeps it in the model
folder (`checkpoints/`); a pipeline run keeps it at `resume_location`, a place named by the run's
inputs, so the next run of the same inputs finds it. A checkpoint in object storage is mirrored
from a local working copy after every epoch (`mirror_checkpoint`) and restored from it at the start
(`restore_checkpoint`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np

from components.train.model_folder import save_model_atomically, write_text_atomically
from core import layouts, storage
from core.config import Config
from core.errors import StepError
from core.labels import SPLITS
from core.progress import Progress

log = logging.getLogger(__name__)


def resume_key(config: Config) -> dict[str, Any]:
    """The settings that must match for a checkpoint to be resumed (epochs may grow)."""
    plain = config.to_dict()
    train = {k: v for k, v in plain["train"].items() if k not in ("epochs", "early_stopping_patience")}
    return {"model": plain["model"], "train": train}


def resume_state(checkpoint_dir: Path, config: Config) -> dict[str, Any]:
    """The training state to continue from: the saved one of an unfinished run, else a fresh one.

    Args:
        checkpoint_dir: the model folder's checkpoint folder.
        config: the resolved run configuration.

    Returns:
        The state `EpochCheckpoint` keeps; `epochs_done` is 0 for a fresh run.

    Raises:
        StepError: the folder holds checkpoints of a run with other model/train settings.
    """
    state_path, model_path = checkpoint_dir / layouts.TRAIN_STATE, checkpoint_dir / layouts.LAST_CHECKPOINT
    if not (state_path.is_file() and model_path.is_file()):
        return {
            "epochs_done": 0,
            "best": float("inf"),
            "best_epoch": 0,
            "wait": 0,
            "history": {},
            "stopped_early": False,
            "config": resume_key(config),
        }
    state = json.loads(state_path.read_text())
    if state.get("config") != resume_key(config):
        raise StepError(
            f"{checkpoint_dir} holds checkpoints of a run with different model/train settings: "
            "use a new --out folder, or delete the checkpoints to start over"
        )
    return state


def _data_identity(data_dir: str | Path) -> dict[str, Any]:
    """What names a preprocess output: its stats and labels (which name the manifest they came from) and its shards.

    Hashing the few small files and the shards' names and sizes, not their bytes, keeps this cheap for
    a full catalogue; a different catalogue or preprocessing changes the stats, the labels or the shards.
    """
    root = Path(data_dir)
    digest = hashlib.sha256()
    for name in (layouts.STATS, layouts.LABELS):
        digest.update(name.encode() + b"\0" + (root / name).read_bytes())
    compression = layouts.read_stats(root).get("compression", "none")
    shards = sorted(p for split in SPLITS for p in root.glob(layouts.shard_pattern(split, compression)))
    return {"files": digest.hexdigest(), "shards": [[p.name, p.stat().st_size] for p in shards]}


def resume_location(checkpoint_root: str, data_dir: str | Path, config: Config) -> str:
    """The checkpoint folder of training on `data_dir` with `config`: `<checkpoint_root>/<key>`.

    The key hashes the training data's identity and the whole `model` and `train` sections, so a
    re-run with the same inputs finds the checkpoint a killed run left, and a run with other data
    or settings (epochs included: the learning-rate schedule spans them) gets a folder of its own.

    Args:
        checkpoint_root: a local folder or gs:// URI holding every run's checkpoint folders.
        data_dir: the preprocess output folder training reads.
        config: the resolved run configuration.

    Returns:
        The folder's path or URI.
    """
    plain = config.to_dict()
    identity = {"data": _data_identity(data_dir), "model": plain["model"], "train": plain["train"]}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return storage.join(checkpoint_root, key)


def mirror_checkpoint(checkpoint_dir: Path, uri: str, state: Mapping[str, Any]) -> None:
    """Copy the checkpoint folder to `uri`: the model files into this epoch's slot, then `state.json` naming it.

    The slots alternate by epoch, and the state is written last, so a kill mid-upload leaves the
    previous epoch's slot and the state that names it intact.
    """
    slot = layouts.CHECKPOINT_SLOTS[int(state["epochs_done"]) % len(layouts.CHECKPOINT_SLOTS)]
    for name in (layouts.LAST_CHECKPOINT, layouts.BEST_WEIGHTS):
        if (checkpoint_dir / name).is_file():
            storage.write_bytes(storage.join(uri, slot, name), (checkpoint_dir / name).read_bytes())
    mirrored = {**state, "mirror_slot": slot}
    storage.write_bytes(storage.join(uri, layouts.TRAIN_STATE), json.dumps(mirrored, indent=1).encode())


def restore_checkpoint(uri: str, checkpoint_dir: Path) -> bool:
    """Copy a checkpoint mirrored at `uri` into the local `checkpoint_dir`; False when there is none.

    Raises:
        StorageError: the mirror cannot be read.
    """
    state_uri = storage.join(uri, layouts.TRAIN_STATE)
    if not storage.exists(state_uri):
        return False
    state = json.loads(storage.read_bytes(state_uri))
    slot = state.pop("mirror_slot", layouts.CHECKPOINT_SLOTS[0])
    names = [layouts.LAST_CHECKPOINT] + ([layouts.BEST_WEIGHTS] if state.get("best_epoch") else [])
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        (checkpoint_dir / name).write_bytes(storage.read_bytes(storage.join(uri, slot, name)))
    write_text_atomically(checkpoint_dir / layouts.TRAIN_STATE, json.dumps(state, indent=1))
    return True


def _mirror_errors() -> tuple[type[BaseException], ...]:
    """What a failed upload raises: storage's and the OS's errors, the Google API's and its auth's."""
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import GoogleAuthError

    return OSError, GoogleAPIError, GoogleAuthError


# The library's callbacks were read (keras 3.15 src/callbacks/) and each breaks a guarantee this one keeps:
# Not BackupAndRestore: its metadata holds only the epoch, so another configuration's backup is resumed unasked.
# Not ModelCheckpoint: it saves over last.keras in place (opened "wb"), so a kill mid-save loses the only checkpoint.
# Not EarlyStopping: on_train_begin resets wait and best, and best weights live in memory: a resume loses both.
class EpochCheckpoint(keras.callbacks.Callback):
    """Saves the whole model (weights and optimiser) after every epoch, tracks the best epoch and stops early.

    `state.json` records completed epochs, the history so far and the early-stopping counters,
    written after the model file, so a crash mid-save leaves the previous checkpoint usable. With
    `mirror_uri` the folder is then copied there (`mirror_checkpoint`).
    """

    def __init__(
        self,
        checkpoint_dir: Path,
        patience: int,
        state: dict[str, Any],
        log_every: bool = True,
        mirror_uri: str = "",
    ):
        super().__init__()
        self.dir = checkpoint_dir
        self.patience = patience
        self.state = state
        self.log_every = log_every
        self.mirror_uri = mirror_uri
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
        save_model_atomically(self.model, self.dir / layouts.LAST_CHECKPOINT)
        write_text_atomically(self.dir / layouts.TRAIN_STATE, json.dumps(state, indent=1))
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
            write_text_atomically(self.dir / layouts.TRAIN_STATE, json.dumps(state, indent=1))
            self.model.stop_training = True
        if self.mirror_uri:
            self._mirror()

    def _mirror(self) -> None:
        """Mirror the checkpoint; a failed upload costs only the resume point, so training goes on."""
        try:
            mirror_checkpoint(self.dir, self.mirror_uri, self.state)
        except _mirror_errors() as err:
            log.warning(
                "could not mirror the checkpoint to %s (%s): a crash now resumes from epoch %d or earlier",
                self.mirror_uri,
                err,
                self.state["epochs_done"] - 1,
            )


class TrainingProgress(keras.callbacks.Callback):
    """Live progress of training as `core.progress` updates: batches done of all epochs left, the epoch, the loss.

    One task over every batch this `fit` runs, so the time left is the whole training's (the rate
    includes validation and checkpointing). The note names the epoch, the running loss and the last
    epoch's validation accuracy. It replaces Keras's own progress output (`fit(verbose=0)`), which
    would show every epoch a second time next to `EpochCheckpoint`'s line in the log.
    """

    def __init__(self) -> None:
        super().__init__()
        self._progress: Progress | None = None
        self._epoch = 0
        self._done = 0
        self._last = ""

    def on_train_begin(self, logs: Mapping[str, float] | None = None) -> None:
        """Start the task: (epochs left) x (steps per epoch) batches."""
        self._done = 0
        self._last = ""
        self._progress = None

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        """Note the epoch; the first one of this `fit` sizes the task (a resumed fit starts past 0)."""
        self._epoch = epoch
        if self._progress is None:
            steps, epochs = self.params.get("steps") or 0, self.params.get("epochs") or 0
            self._progress = Progress("training", (epochs - epoch) * steps or None, "batches")

    def on_train_batch_end(self, batch: int, logs: Mapping[str, float] | None = None) -> None:
        """Count the batch and show the running loss."""
        self._done += 1
        if self._progress is not None:
            self._progress.update(self._done, self._note(logs))

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        """Keep the epoch's validation accuracy for the next epochs' notes."""
        logs = logs or {}
        shown = [f"{k} {float(logs[k]):.3f}" for k in ("val_loss", "val_category_accuracy") if k in logs]
        self._last = f"epoch {epoch + 1}: " + ", ".join(shown) if shown else ""

    def on_train_end(self, logs: Mapping[str, float] | None = None) -> None:
        """End the task (also after early stopping: the batches not run are not waited for)."""
        if self._progress is not None:
            self._progress.total = self._done
            self._progress.finish(self._last)

    def _note(self, logs: Mapping[str, float] | None) -> str:
        parts = [f"epoch {self._epoch + 1}/{self.params.get('epochs', '?')}"]
        if logs and "loss" in logs:
            parts.append(f"loss {float(logs['loss']):.3f}")
        if self._last:
            parts.append(f"last {self._last}")
        return ", ".join(parts)


def _batchnorm_layers(layer: Any) -> list[Any]:
    """Every BatchNormalization layer of a model, including those inside nested backbones."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return [layer]
    return [bn for sub in getattr(layer, "layers", []) for bn in _batchnorm_layers(sub)]


def training_forward(model: keras.Model) -> Any:
    """`model(images, training=True)`, compiled as one graph under the TensorFlow backend (eager elsewhere).

    Called eagerly, a forward pass dispatches every layer's ops from Python: on 2 CPU cores that
    made the recalibration before each validation cost 2 s of a 6 s demo epoch.
    """
    if keras.backend.backend() != "tensorflow":
        return lambda images: model(images, training=True)
    import tensorflow as tf

    return tf.function(lambda images: model(images, training=True), reduce_retracing=True)


def recalibrate_batchnorm(model: keras.Model, batches_of: Any, batches: int, forward: Any = None) -> int:
    """Replace batch-norm moving statistics by their average over `batches` clean batches.

    The moving averages are collected on augmented batches while the weights move fast, and
    under a high learning rate they can lag far behind: a network scoring 80% with batch
    statistics scored under 50% with its moving ones. Averaging fresh batch statistics of
    non-augmented training photos makes inference match training. `batches_of` gives (images,
    labels) batches: a dataset (each call starts it again) or an iterator over one (each call
    takes the next batches, without filling a shuffle buffer again). `forward` is `training_forward(model)`, made once
    for repeated calls (made here when None). Returns the batches used.
    """
    layers = _batchnorm_layers(model)
    if not layers:
        return 0
    forward = forward or training_forward(model)
    saved = [bn.momentum for bn in layers]
    sums = [[np.zeros(bn.moving_mean.shape, "float64"), np.zeros(bn.moving_variance.shape, "float64")] for bn in layers]
    used = 0
    try:
        # Momentum 0 makes each forward pass leave that batch's own statistics in the moving
        # variables (a compiled forward keeps the momentum it was traced with, so it stays 0).
        for bn in layers:
            bn.momentum = 0.0
        for images, _ in itertools.islice(batches_of, batches):
            forward(images)
            used += 1
            for (mean_sum, var_sum), bn in zip(sums, layers, strict=True):
                mean_sum += keras.ops.convert_to_numpy(bn.moving_mean)
                var_sum += keras.ops.convert_to_numpy(bn.moving_variance)
    finally:
        for bn, momentum in zip(layers, saved, strict=True):
            bn.momentum = momentum
    if used:
        for (mean_sum, var_sum), bn in zip(sums, layers, strict=True):
            bn.moving_mean.assign((mean_sum / used).astype(bn.moving_mean.dtype))
            bn.moving_variance.assign((var_sum / used).astype(bn.moving_variance.dtype))
    return used


class BatchNormRecalibration(keras.callbacks.Callback):
    """Recalibrates batch norm (`recalibrate_batchnorm`) before each validation of `fit`; `dataset` repeats."""

    def __init__(self, dataset: Any, batches: int):
        super().__init__()
        self.dataset = dataset
        self.batches = batches
        self._fitting = False
        self._forward = None
        self._batches = None

    def on_train_begin(self, logs: Mapping[str, float] | None = None) -> None:
        """Validation runs from now on belong to `fit`."""
        self._fitting = True

    def on_train_end(self, logs: Mapping[str, float] | None = None) -> None:
        """Stop recalibrating."""
        self._fitting = False

    def on_test_begin(self, logs: Mapping[str, float] | None = None) -> None:
        """Recalibrate just before the epoch's validation, so checkpoints carry the new statistics."""
        if self._fitting:
            if self._forward is None:
                # One iterator for the whole fit: its shuffle buffer is filled once, and each
                # validation gets fresh batches (the dataset repeats).
                self._forward, self._batches = training_forward(self.model), iter(self.dataset)
            recalibrate_batchnorm(self.model, self._batches, self.batches, self._forward)


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
