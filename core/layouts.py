"""The artifact layouts: the file names of every step's output folder, and typed readers for them.

Every step writes one folder (docs/ARTIFACTS.md); this module is the only place those names are
spelt, so a writer and its readers cannot drift apart. Readers raise `StepError` with a hint
naming the command that writes the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.config import Config, config_from_dict
from core.errors import StepError
from core.labels import LabelSchema

# In every step's folder.
CONFIG = "config.yaml"
LABELS = "labels.json"

# ingest
STYLES = "styles.csv"
MANIFEST = "manifest.csv"
INGEST_REPORT = "ingest_report.json"
EXTRACTED_IMAGES = "images"

# preprocess
STATS = "stats.json"
REJECTS = "rejects.jsonl"

# train (the model folder)
MODEL = "model.keras"
MODEL_CONFIG = "model_config.json"
HISTORY = "history.json"
CHECKPOINTS = "checkpoints"
TRAIN_LOGS = "logs"
LAST_CHECKPOINT = "last.keras"
BEST_WEIGHTS = "best.weights.h5"
TRAIN_STATE = "state.json"
# A checkpoint mirrored to object storage: the model files alternate between two folders, so the
# one `state.json` names stays whole while the next epoch's upload is under way.
CHECKPOINT_SLOTS = ("slot-0", "slot-1")
# The catalogue the model learnt from (`core.catalogue`: ids, labels, the training fingerprint), how its
# training started (`warm_start.json`), and, in place of a model, why training was skipped (`unchanged.json`).
CATALOGUE = "catalogue.json"
WARM_START = "warm_start.json"
UNCHANGED = "unchanged.json"
MODEL_FOLDER_FILES = (MODEL, MODEL_CONFIG, LABELS, HISTORY, CONFIG, CATALOGUE, WARM_START)
# The MLflow run training opened (its id, experiment and pipeline run); evaluate and register continue it.
MLFLOW_RUN = "mlflow_run.json"

# evaluate
METRICS = "metrics.json"
GATE = "gate.json"
PREDICTIONS = "predictions.jsonl"
CLASSIFICATION_METRICS = "classification_metrics.json"
REPORT_HTML = "report.html"
REPORT_MD = "report.md"

# deploy
DEPLOYMENT = "deployment.json"

# any step's output folder, when the step failed: its exception type and message
STEP_ERROR = "step_error.json"

# a local `fashion run`'s serving state
SERVER_STATE = "server.json"


def shard_pattern(split: str, compression: str = "none") -> str:
    """Glob of one split's shard files inside the preprocess output folder."""
    return f"{split}-*.tfrecord" + (".gz" if compression == "gzip" else "")


def read_json(path: str | Path, hint: str) -> Any:
    """A JSON file of a step folder; `hint` says what the folder must be.

    Raises:
        StepError: the file is missing or not valid JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise StepError(f"{path} not found: {hint}")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise StepError(f"{path} is not valid JSON ({err}): {hint}") from err


def read_stats(data_dir: str | Path) -> dict[str, Any]:
    """`stats.json` of a preprocess output folder."""
    return read_json(Path(data_dir) / STATS, "point --data at the output folder of `fashion preprocess`")


def read_labels(folder: str | Path) -> LabelSchema:
    """The label schema stored in a step folder (ingest, preprocess, model or evaluation)."""
    path = Path(folder) / LABELS
    if not path.is_file():
        raise StepError(f"{path} not found: the folder is not a preprocess output or model folder")
    return LabelSchema.load(path)


def read_config(folder: str | Path) -> Config:
    """The resolved configuration a step folder was made with."""
    import yaml

    path = Path(folder) / CONFIG
    if not path.is_file():
        raise StepError(f"{path} not found: the folder holds no resolved configuration")
    try:
        return config_from_dict(yaml.safe_load(path.read_text()) or {})
    except yaml.YAMLError as err:
        raise StepError(f"{path} is not valid YAML: {err}") from err
