"""A trained model folder: writing it, the one Keras model loader of the project, and running a model over a split.

The folder's files are listed in docs/ARTIFACTS.md; their names are `core.layouts`'.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from components.train.data import split_size
from core import layouts, records
from core.config import Config
from core.errors import StepError
from core.labels import LabelSchema
from core.progress import Progress


def write_text_atomically(path: Path, text: str) -> None:
    """Write a text file through a temporary file, so a reader never sees it half written."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_model_atomically(model: Any, path: Path) -> None:
    """Save a `.keras` model through a temporary file, so a crash mid-save leaves the previous file intact."""
    tmp = path.with_name(f"tmp-{path.name}")
    model.save(tmp)
    os.replace(tmp, path)


def write_model_folder(
    model_dir: str | Path,
    model: Any,
    config: Config,
    schema: LabelSchema,
    stats: Mapping[str, Any],
    image_size: tuple[int, int],
    summary: Mapping[str, Any],
) -> Path:
    """Write model.keras, labels.json, config.yaml, model_config.json and history.json.

    Args:
        model_dir: the model folder.
        model: the trained model, with the weights to ship.
        config: the resolved run configuration.
        schema: the label vocabularies the model predicts.
        stats: `stats.json` of the preprocess folder it was trained on.
        image_size: height and width of the stored photos.
        summary: the training outcome written as history.json (epochs, best epoch, per-epoch metrics).

    Returns:
        The path of model.keras.
    """
    import keras

    from components.train.model import OUTPUTS, build_model

    out = Path(model_dir)
    model_path = out / layouts.MODEL
    # The shipped model is inference-only: float32 and without optimiser state (a third of the size).
    export = build_model(config.model, schema.sizes, image_size)
    export.set_weights(model.get_weights())
    save_model_atomically(export, model_path)
    schema.save(out / layouts.LABELS)
    config.save(out / layouts.CONFIG)
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
    (out / layouts.HISTORY).write_text(json.dumps(dict(summary), indent=2))
    return model_path


def load_model(model_dir: str | Path) -> Any:
    """The `.keras` model of a model folder written by `train_model` (inference only, not compiled).

    Raises:
        StepError: the folder has no model.keras.
    """
    import keras

    # Importing these modules registers the custom layer, losses and schedule for deserialisation.
    from components.train import losses, model, optim  # noqa: F401

    path = Path(model_dir) / layouts.MODEL
    if not path.is_file():
        raise StepError(f"{path} not found: point at the output folder of `fashion train`")
    return keras.models.load_model(path, compile=False)


class FlipAveraged:
    """A model whose answers are averaged over each photo and its mirror image (`serving.flip_tta`).

    The exported SavedModel does the same in its graph (`components.register.export`), so the
    evaluation scores exactly what serving answers.
    """

    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self, images: Any, training: bool = False) -> dict[str, Any]:
        """The mean of the model's outputs on `images` and on `images` flipped left to right."""
        from keras import ops

        plain = self.model(images, training=training)
        mirrored = self.model(ops.flip(ops.convert_to_tensor(images), axis=2), training=training)
        return {key: (plain[key] + mirrored[key]) / 2.0 for key in plain}


def answering_model(model: Any, config: Config) -> Any:
    """`model` as the served model answers under `config`: with flip averaging where `serving.flip_tta` is on."""
    return FlipAveraged(model) if config.serving.flip_tta else model


def predict_split(model: Any, data_dir: str | Path, split: str, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Run a model over one split of the shards, in file order.

    Args:
        model: a model from `build_model` or `load_model`.
        data_dir: preprocess output folder.
        split: `train`, `validation` or `test`.
        batch_size: examples per inference batch.

    Returns:
        `ids` (str), `category`, `subcategory`, `attributes` (float32 probabilities, one row per
        example), and `true_category`, `true_subcategory` (int64), `true_attributes` (int64 multi-hot).
    """
    ds = records.read_split(data_dir, split).batch(batch_size)
    ids: list[np.ndarray] = []
    truth: dict[str, list[np.ndarray]] = {"category": [], "subcategory": [], "attributes": []}
    probs: dict[str, list[np.ndarray]] = {"category": [], "subcategory": [], "attributes": []}
    predicting = Progress(f"predicting the {split} split", split_size(data_dir, split) or None, "products")
    for batch in ds.as_numpy_iterator():
        out = model(batch["image"], training=False)
        for key in probs:
            probs[key].append(np.asarray(out[key], dtype=np.float32))
            truth[key].append(np.asarray(batch[key], dtype=np.int64))
        ids.append(np.asarray([i.decode() for i in batch["id"]], dtype=object))
        predicting.advance(len(ids[-1]))
    predicting.finish()
    if not ids:
        raise StepError(f"the {split} split in {data_dir} is empty: nothing to predict")
    result: dict[str, np.ndarray] = {"ids": np.concatenate(ids).astype(str)}
    for key in probs:
        result[key] = np.concatenate(probs[key])
        result[f"true_{key}"] = np.concatenate(truth[key])
    return result
