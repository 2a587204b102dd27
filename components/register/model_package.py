"""The MLflow model a registered version points at: the TF Serving SavedModel, its signature and an example.

MLflow's TensorFlow flavour stores `model.keras` (TensorFlow >= 2.16), which TF Serving cannot
load. So a version is a pyfunc model whose data folder *is* the exported SavedModel, byte for byte
(warmup requests included), with a loader that lets `mlflow.pyfunc` call it, a signature derived
from a real prediction and an input example that is a real encoded photo.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components.register import savedmodel_pyfunc
from core.errors import StepError

log = logging.getLogger(__name__)

SAVED_MODEL_SUBDIR = "saved_model"
# Path of the SavedModel inside a version's artifacts (pyfunc puts `data_path` under `data/`).
SAVED_MODEL_ARTIFACT_PATH = f"data/{SAVED_MODEL_SUBDIR}"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
LOGGED_MODEL_NAME = "tf-serving"
MODEL_TYPE = "tf-serving-savedmodel"


def find_saved_model(export_dir: str | Path) -> Path:
    """The SavedModel folder in `export_dir`: itself, or its highest numeric version subfolder.

    Raises:
        StepError: no `saved_model.pb` is there.
    """
    root = Path(export_dir)
    if (root / "saved_model.pb").is_file():
        return root
    versions = (
        sorted(
            (p for p in root.iterdir() if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file()),
            key=lambda p: int(p.name),
        )
        if root.is_dir()
        else []
    )
    if versions:
        return versions[-1]
    raise StepError(
        f"{root}: no SavedModel (saved_model.pb) here or in a numeric version folder; export the model first"
    )


def warmup_photos(saved_model_dir: str | Path, limit: int = 1) -> list[bytes]:
    """Encoded photos from the export's TF Serving warmup requests (the exporter puts real ones first)."""
    path = Path(saved_model_dir) / WARMUP_FILE
    if not path.is_file():
        return []
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    photos: list[bytes] = []
    for record in tf.data.TFRecordDataset(str(path)).take(limit):
        entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        inputs = entry.predict_log.request.inputs
        if savedmodel_pyfunc.INPUT_NAME in inputs:
            photos.extend(inputs[savedmodel_pyfunc.INPUT_NAME].string_val[: limit - len(photos)])
        if len(photos) >= limit:
            break
    return photos


def synthetic_photo(height: int = 80, width: int = 60) -> bytes:
    """A plain grey JPEG: a valid input when neither photos nor warmup requests are available."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 200, 200)).save(buf, "JPEG")
    return buf.getvalue()


def example_photos(saved_model_dir: Path, photos: Sequence[bytes | str | Path] = ()) -> list[bytes]:
    """The input example's photos: the given ones, else the first warmup photo, else a synthetic one."""
    if photos:
        return [p if isinstance(p, bytes) else Path(p).read_bytes() for p in photos]
    return warmup_photos(saved_model_dir) or [synthetic_photo()]


def signature_and_example(saved_model_dir: Path, photos: Sequence[bytes]) -> tuple[Any, Any]:
    """Run the SavedModel on the example photos; return (ModelSignature, input example DataFrame).

    Raises:
        StepError: the SavedModel cannot be loaded or fails on the example.
    """
    import pandas as pd
    from mlflow.models import infer_signature

    example = pd.DataFrame({savedmodel_pyfunc.INPUT_NAME: list(photos)})
    try:
        predictions = savedmodel_pyfunc.SavedModelPredictor(str(saved_model_dir)).predict(example)
    except Exception as err:  # TF raises many unrelated types; any of them means the export is unusable
        raise StepError(
            f"{saved_model_dir}: the SavedModel's {savedmodel_pyfunc.SIGNATURE_KEY!r} signature failed on the "
            f"input example ({type(err).__name__}: {err}); re-export the model"
        ) from err
    return infer_signature(example, predictions), example


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    # Pinned to this environment: listing them avoids MLflow's slow requirement inference, which
    # would load the model in a subprocess.
    return [f"{name}=={version(name)}" for name in ("tensorflow", "pandas", "numpy")]


def log_serving_model(
    client: Any,
    experiment_id: str,
    run_id: str,
    export_dir: str | Path,
    photos: Sequence[bytes | str | Path] = (),
    tags: dict[str, str] | None = None,
) -> Any:
    """Log the SavedModel as an MLflow model of run `run_id` (shown on the run's page).

    Args:
        client: an MlflowClient bound to the backend.
        experiment_id: the run's experiment.
        run_id: the training run the model comes from.
        export_dir: the SavedModel folder (or a base folder of numeric versions).
        photos: encoded photos for the input example (default: from the warmup requests).
        tags: tags for the logged model.

    Returns:
        The READY `LoggedModel`. On any failure the half-made model is deleted before raising.
    """
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model
    from mlflow.pyfunc import save_model

    saved_model_dir = find_saved_model(export_dir)
    signature, example = signature_and_example(saved_model_dir, example_photos(saved_model_dir, photos))
    logged = client.create_logged_model(
        experiment_id, name=LOGGED_MODEL_NAME, source_run_id=run_id, tags=tags, model_type=MODEL_TYPE
    )
    try:
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        with tempfile.TemporaryDirectory(prefix="mlflow-model-") as tmp:
            # A link named `saved_model` gives the data folder a stable name without copying it twice.
            link = Path(tmp) / SAVED_MODEL_SUBDIR
            os.symlink(saved_model_dir.resolve(), link, target_is_directory=True)
            local = Path(tmp) / "model"
            save_model(
                str(local),
                loader_module=savedmodel_pyfunc.__name__.rsplit(".", 1)[-1],
                data_path=str(link),
                code_paths=[savedmodel_pyfunc.__file__],
                mlflow_model=Model(
                    artifact_path=logged.artifact_location,
                    run_id=run_id,
                    model_id=logged.model_id,
                    model_uuid=logged.model_id,
                ),
                signature=signature,
                input_example=example,
                pip_requirements=_pip_requirements(),
            )
            client.log_model_artifacts(logged.model_id, str(local))
        return client.finalize_logged_model(logged.model_id, "READY")
    except BaseException:
        _delete_quietly(client, logged.model_id)
        raise


def _delete_quietly(client: Any, model_id: str) -> None:
    try:
        client.delete_logged_model(model_id)
    except Exception as err:  # cleanup after a failure must not hide the original error
        log.warning("could not delete the unfinished MLflow model %s: %s", model_id, err)
