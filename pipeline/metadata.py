"""What each step's output says about itself: artifact metadata read from the files a step wrote.

The step functions write their outputs as documented in docs/ARTIFACTS.md; these helpers read the
small summary files back (never the data) so the Kubeflow UI, `fashion run`'s summary and the
next step see image size, label vocabularies, counts, metrics and versions on the artifact.
No kfp import: the artifacts arrive as duck-typed objects with `metadata`, `path` and the
`log_*` methods of kfp's Metrics and ClassificationMetrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from core import layouts
from core.errors import StepError
from core.secrets import redact


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _labels(folder: Path) -> dict[str, Any]:
    labels = _read_json(folder / layouts.LABELS) or {}
    out: dict[str, Any] = {}
    for level in ("categories", "subcategories", "attributes"):
        values = labels.get(level)
        if isinstance(values, list):
            out[f"num_{level}"] = len(values)
            out[level] = values
    return out


def describe_manifest(result: Any) -> dict[str, Any]:
    """Counts, splits and label vocabularies of an ingest run (its `IngestResult`)."""
    report = result.report
    accounting = report.get("accounting") or {}
    meta: dict[str, Any] = {"format": layouts.MANIFEST, "source": report.get("source", "")}
    meta.update(_labels(Path(result.out_dir)))
    meta.update({k: accounting[k] for k in ("rows", "images", "usable") if k in accounting})
    usable = report.get("usable") or {}
    if isinstance(usable.get("splits"), Mapping):
        meta["splits"] = dict(usable["splits"])
    excluded = {
        k: v["count"]
        for k, v in report.items()
        if isinstance(v, Mapping) and v.get("count") and k not in ("rows", "images", "usable")
    }
    if excluded:
        meta["excluded"] = excluded
    return meta


def describe_examples(result: Any) -> dict[str, Any]:
    """Image size, shard layout and per-split counts of a preprocess run (its `PreprocessResult`)."""
    stats = result.stats
    meta: dict[str, Any] = {"format": "tfrecord", **_labels(Path(result.out_dir))}
    meta.update({k: stats[k] for k in ("image_height", "image_width", "image_format", "compression") if k in stats})
    meta.update({"splits": dict(result.splits), "records": result.records, "rejected": result.rejected})
    return meta


def describe_model(result: Any, config: Any) -> dict[str, Any]:
    """Framework, backbone, input size, training outcome and code version of a training run (its `TrainResult`)."""
    from components.register.tracking import git_commit

    folder = Path(result.model_dir)
    model_config = _read_json(folder / layouts.MODEL_CONFIG) or {}
    meta: dict[str, Any] = {
        "framework": "keras",
        "file": layouts.MODEL,
        "backbone": config.model.backbone,
        "head": config.model.head,
        "epochs": result.epochs_run,
        "best_epoch": result.best_epoch,
        "resumed_from": result.resumed_from,
        "git_commit": git_commit(),
        **_labels(folder),
    }
    if "params" in model_config:
        meta["params"] = model_config["params"]
    if "image_size" in model_config:
        meta["image_size"] = model_config["image_size"]
    meta.update({k: float(v) for k, v in result.final_metrics.items() if k.startswith("val_")})
    return meta


def _scalars(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[prefix + key] = float(value)
    return out


def _confusion(evaluation: Path) -> tuple[list[str], list[list[int]]] | None:
    data = _read_json(evaluation / layouts.CLASSIFICATION_METRICS)
    if isinstance(data, Mapping) and data.get("labels") and data.get("matrix"):
        return [str(x) for x in data["labels"]], [[int(v) for v in row] for row in data["matrix"]]
    return None


def record_evaluation(result: Any, evaluation, metrics, confusion, report, summary) -> bool:
    """Turn an evaluate run (its `EvaluationResult`) into kfp artifacts; returns the gate's decision.

    Args:
        result: what `evaluate_model` returned (its folder holds the reports and the confusion data).
        evaluation: the folder's own artifact (gets the gate decision, reason and metrics as metadata).
        metrics: a kfp `Metrics` artifact: one logged value per flat scalar metric.
        confusion: a kfp `ClassificationMetrics` artifact: the category confusion matrix.
        report: a kfp `HTML` artifact: the self-contained report page.
        summary: a kfp `Markdown` artifact: the Markdown summary.

    Returns:
        True when the gate blessed the model.
    """
    folder = Path(result.out_dir)
    values = _scalars(result.scalars)
    for name, value in sorted(values.items()):
        metrics.log_metric(name, value)
    matrix = _confusion(folder)
    if matrix is not None:
        labels, rows = matrix
        confusion.log_confusion_matrix(labels, rows)
    for src, artifact in ((layouts.REPORT_HTML, report), (layouts.REPORT_MD, summary)):
        if not (folder / src).is_file():
            raise StepError(f"{folder / src}: the evaluate step wrote no {src}")
        Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / src, artifact.path)
    evaluation.metadata.update({"blessed": bool(result.blessed), "reason": str(result.reason), **values})
    # What the gate compared with (the champion on the same photos) and how the catalogue drifted.
    evaluation.metadata["unchanged"] = bool(getattr(result, "unchanged", False))
    evaluation.metadata["drift"] = str(getattr(result, "drift", ""))
    champion = getattr(result, "champion", None) or {}
    if champion:
        evaluation.metadata["champion"] = str(champion.get("model", ""))
        for name, value in sorted((champion.get("scalars") or {}).items()):
            evaluation.metadata[f"champion_{name}"] = float(value)
            metrics.log_metric(f"champion_{name}", float(value))
    return bool(result.blessed)


def _as_dict(result: Any) -> dict[str, Any]:
    if result is None:
        return {}
    if dataclasses.is_dataclass(result):
        return {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    if isinstance(result, Mapping):
        return dict(result)
    return {k: v for k, v in vars(result).items() if not k.startswith("_")}


def _plain(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Only JSON-friendly values (kfp stores metadata as a protobuf Struct)."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, str | int | float | bool) or value is None:
            out[key] = value
        elif isinstance(value, list | tuple) and all(isinstance(v, str | int | float | bool) for v in value):
            out[key] = list(value)
        elif isinstance(value, Mapping):
            out[key] = json.loads(json.dumps(value, default=str))
    return out


def describe_registration(result: Any) -> dict[str, Any]:
    """Registered model name, version, MLflow run and alias of a register step (its `RegistrationResult`)."""
    return {"framework": "tensorflow", "format": "saved_model", **_plain(_as_dict(result))}


def describe_deployment(result: Any, config: Any, deployment_dir: str | Path) -> dict[str, Any]:
    """Served version, registry version, endpoint and smoke check of a deploy step, also written to its folder."""
    serving = config.serving
    meta = {
        "model_name": serving.model_name,
        "endpoint": f"{serving.host}:{serving.grpc_port}",
        "model_base_path": serving.model_base_path,
        **_plain(result.to_dict()),
    }
    folder = Path(deployment_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / layouts.DEPLOYMENT).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return meta


@contextlib.contextmanager
def recording_failure(artifact: Any) -> Iterator[None]:
    """Run a step's body; when it raises, write the error into the step's output folder, then re-raise.

    The file (`core.layouts.STEP_ERROR`: exception type and message, passwords redacted) is how
    `fashion run` reports a failed step's own message without reading the step's log text.
    """
    try:
        yield
    except Exception as err:
        folder = Path(artifact.path)
        with contextlib.suppress(OSError):
            folder.mkdir(parents=True, exist_ok=True)
            record = {"type": type(err).__name__, "message": redact(str(err))}
            (folder / layouts.STEP_ERROR).write_text(json.dumps(record))
        raise
