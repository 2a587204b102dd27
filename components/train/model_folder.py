"""A trained model folder: the one Keras model loader of the project, and running a model over a split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core import layouts, records
from core.errors import StepError


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
    for batch in ds.as_numpy_iterator():
        out = model(batch["image"], training=False)
        for key in probs:
            probs[key].append(np.asarray(out[key], dtype=np.float32))
            truth[key].append(np.asarray(batch[key], dtype=np.int64))
        ids.append(np.asarray([i.decode() for i in batch["id"]], dtype=object))
    if not ids:
        raise StepError(f"the {split} split in {data_dir} is empty: nothing to predict")
    result: dict[str, np.ndarray] = {"ids": np.concatenate(ids).astype(str)}
    for key in probs:
        result[key] = np.concatenate(probs[key])
        result[f"true_{key}"] = np.concatenate(truth[key])
    return result
