"""Per-product outputs of the evaluation: predictions.jsonl records, sample photos, the kfp confusion data."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from components.evaluate.evaluation import Evaluation
from core import storage

log = logging.getLogger(__name__)


def _round(x: float) -> float:
    return round(float(x), 5)


def prediction_records(evaluation: Evaluation, image_uris: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """One JSON-ready record per test product, in the order of the test split.

    `pred_category`/`pred_subcategory` are each level's arg-max (the served `*_independent`
    outputs); `joint_category`/`joint_subcategory` the hierarchy-aware pair, what the served
    `category`/`subcategory` answer. `correct` follows the
    configured decoding. `attribute_scores` holds the true, the predicted and each group's
    highest-scoring values.
    """
    p = evaluation.predictions
    schema = evaluation.schema
    ind, joint = evaluation.decoded["independent"], evaluation.decoded["joint"]
    chosen = evaluation.chosen
    true_cat, true_sub = np.asarray(p["true_category"]), np.asarray(p["true_subcategory"])
    true_attr = evaluation.attributes["true"]
    scores = evaluation.attributes["scores"]
    decided = scores > evaluation.threshold
    best = [np.asarray(idx)[scores[:, idx].argmax(axis=1)] for idx in schema.attribute_groups.values() if idx]
    group_best = np.stack(best, axis=1) if best else np.zeros((len(scores), 0), dtype=np.int64)
    correct = (chosen.category == true_cat) & (chosen.subcategory == true_sub)
    uris = image_uris or {}
    for i, item_id in enumerate(np.asarray(p["ids"]).astype(str)):
        shown = sorted(set(np.flatnonzero(true_attr[i])) | set(np.flatnonzero(decided[i])) | set(group_best[i]))
        record: dict[str, Any] = {"id": item_id}
        if item_id in uris:
            record["image_uri"] = uris[item_id]
        record.update(
            {
                "true_category": schema.categories[true_cat[i]],
                "true_subcategory": schema.subcategories[true_sub[i]],
                "pred_category": schema.categories[ind.category[i]],
                "pred_subcategory": schema.subcategories[ind.subcategory[i]],
                "category_score": _round(ind.category_score[i]),
                "subcategory_score": _round(ind.subcategory_score[i]),
                "joint_category": schema.categories[joint.category[i]],
                "joint_subcategory": schema.subcategories[joint.subcategory[i]],
                "true_attributes": [schema.attributes[j] for j in np.flatnonzero(true_attr[i])],
                "pred_attributes": [schema.attributes[j] for j in np.flatnonzero(decided[i])],
                "attribute_scores": {schema.attributes[j]: _round(scores[i, j]) for j in shown},
                "correct": bool(correct[i]),
            }
        )
        yield record


def select_samples(evaluation: Evaluation, size: int, per_class: int = 2, max_error_share: float = 2 / 3) -> list[int]:
    """Row indices for the sample grid: mistakes first (most confident first), then correct answers.

    At most `per_class` photos of one true sub-category in each part, while others are left, so the
    grid shows many classes rather than one class's many mistakes; mistakes fill at most
    `max_error_share` of the grid when there are correct answers to show too.
    """
    if size <= 0:
        return []
    p = evaluation.predictions
    chosen = evaluation.chosen
    true_sub = np.asarray(p["true_subcategory"])
    wrong = (chosen.category != np.asarray(p["true_category"])) | (chosen.subcategory != true_sub)

    def spread(rows: np.ndarray) -> list[int]:
        picked: list[int] = []
        seen: dict[int, int] = {}
        later: list[int] = []
        for r in rows:
            cls = int(true_sub[r])
            if seen.get(cls, 0) < per_class:
                seen[cls] = seen.get(cls, 0) + 1
                picked.append(int(r))
            else:
                later.append(int(r))
        return picked + later

    errors = np.flatnonzero(wrong)
    errors = errors[np.argsort(-chosen.subcategory_score[errors], kind="stable")]
    right = np.flatnonzero(~wrong)
    right = right[np.argsort(-chosen.subcategory_score[right], kind="stable")]
    shown_errors = min(len(errors), max(size - len(right), int(round(size * max_error_share))))
    return (spread(errors)[:shown_errors] + spread(right))[:size]


def read_photos(data_dir: str | Path, split: str, ids: Sequence[str]) -> dict[str, bytes]:
    """Encoded photos of the given ids from a split's shards (one pass, no decoding)."""
    from core import records

    wanted = set(ids)
    found: dict[str, bytes] = {}
    if not wanted:
        return found
    for example in records.read_split(data_dir, split, decode=False).as_numpy_iterator():
        item_id = example["id"].decode()
        if item_id in wanted:
            found[item_id] = bytes(example["image"])
            if len(found) == len(wanted):
                break
    return found


def decode_photo(data: bytes) -> np.ndarray:
    """RGB uint8 array of one encoded photo."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def manifest_uris(manifest_uri: str | None) -> dict[str, str]:
    """Id -> image_uri from the ingest manifest the shards were made from; empty when unreadable."""
    if not manifest_uri:
        return {}
    try:
        text = storage.read_bytes(str(manifest_uri)).decode("utf-8")
    except (OSError, ValueError) as err:
        log.warning(
            "manifest %s is not readable (%s): predictions.jsonl photos come from the shards", manifest_uri, err
        )
        return {}
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {"id", "image_uri"} <= set(reader.fieldnames):
        log.warning("manifest %s has no id/image_uri columns: photos come from the shards", manifest_uri)
        return {}
    return {row["id"]: row["image_uri"] for row in reader if row.get("image_uri")}


def classification_metrics(evaluation: Evaluation) -> dict[str, Any]:
    """The category confusion matrix in the shape of kfp's `ClassificationMetrics.log_confusion_matrix`."""
    cm = evaluation.chosen.levels["category"].confusion
    return {
        "level": "category",
        "decoding": evaluation.decoding,
        "labels": list(evaluation.schema.categories),
        "matrix": cm.astype(int).tolist(),
    }
