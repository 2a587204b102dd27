"""MLflow pyfunc loader for a TF Serving SavedModel: lets `mlflow.pyfunc` call the exported model.

This file is copied into every registered model version (`code/`), and MLflow imports it by its
bare module name when the version is loaded, so it imports nothing from this project.
"""

from __future__ import annotations

from typing import Any

SIGNATURE_KEY = "serving_default"
INPUT_NAME = "image_bytes"


class SavedModelPredictor:
    """Calls the SavedModel's `serving_default` signature on a column of encoded images."""

    def __init__(self, export_dir: str) -> None:
        import tensorflow as tf

        self._model = tf.saved_model.load(export_dir)
        self._fn = self._model.signatures[SIGNATURE_KEY]

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        """Predict for a DataFrame (or mapping) with an `image_bytes` column of JPEG/PNG bytes.

        Args:
            data: a pandas DataFrame or a mapping with the column `image_bytes`.
            params: unused; accepted because MLflow passes it.

        Returns:
            A pandas DataFrame, one row per image, one column per signature output: scalars as
            values, vectors as lists, strings decoded as UTF-8.
        """
        import numpy as np
        import pandas as pd
        import tensorflow as tf

        column = data[INPUT_NAME]
        images = [bytes(v) if not isinstance(v, str) else v.encode("latin-1") for v in list(column)]
        outputs = self._fn(**{INPUT_NAME: tf.constant(images, dtype=tf.string)})
        frame: dict[str, list[Any]] = {}
        for name in sorted(outputs):
            value = outputs[name].numpy()
            if value.dtype == object:
                value = np.vectorize(lambda b: b.decode("utf-8") if isinstance(b, bytes) else b, otypes=[object])(value)
            frame[name] = [row.tolist() if isinstance(row, np.ndarray) else row for row in value]
        return pd.DataFrame(frame)


def _load_pyfunc(data_path: str) -> SavedModelPredictor:
    """Entry point MLflow calls with the version's `data/saved_model` folder."""
    return SavedModelPredictor(data_path)
