"""From a model's test-split predictions to every metric: flat scalars for the gate plus per-class details.

`evaluate_predictions` is the evaluation core: it takes the arrays `predict_split` returns and the
label schema, and knows nothing about files or models, so it runs on any predictions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from components.evaluate import metrics as m
from components.evaluate.scalars import DECODED_SCALARS, group_key
from core.errors import StepError
from core.labels import LabelSchema

LEVELS = ("category", "subcategory")
PREDICTION_KEYS = (
    "ids",
    "category",
    "subcategory",
    "attributes",
    "true_category",
    "true_subcategory",
    "true_attributes",
)
WORST_MIN_SUPPORT = 5


@dataclass
class Decoded:
    """Predicted classes of the two levels under one decoding, with their scores."""

    category: np.ndarray
    subcategory: np.ndarray
    category_score: np.ndarray
    subcategory_score: np.ndarray
    levels: dict[str, m.ClassMetrics] = field(default_factory=dict)
    consistency: float = 0.0


@dataclass
class Evaluation:
    """Everything measured on one set of predictions.

    Attributes:
        scalars: flat metric name -> value (see `components.evaluate.scalars`).
        details: JSON-ready per-class, per-label, per-group and hierarchy details.
        decoding: `joint` or `independent`: the decoding the unprefixed scalars use.
        decoded: `independent` and `joint` Decoded predictions.
        attributes: per-label threshold metrics and AP (arrays), for figures.
        predictions: the input arrays.
        schema: the label schema.
        threshold: the attribute decision threshold.

    """

    scalars: dict[str, float]
    details: dict[str, Any]
    decoding: str
    decoded: dict[str, Decoded]
    attributes: dict[str, Any]
    predictions: Mapping[str, np.ndarray]
    schema: LabelSchema
    threshold: float

    @property
    def chosen(self) -> Decoded:
        """The Decoded predictions of the configured decoding."""
        return self.decoded[self.decoding]


def check_predictions(predictions: Mapping[str, np.ndarray], schema: LabelSchema) -> int:
    """Validate the arrays against the schema; returns the number of products.

    Raises:
        StepError: a key is missing, the arrays disagree in length, or their widths are not the
            schema's vocabulary sizes (the model and the data were labelled differently).

    """
    missing = [k for k in PREDICTION_KEYS if k not in predictions]
    if missing:
        raise StepError(f"predictions lack {', '.join(missing)}: expected the arrays of predict_split")
    n = len(predictions["ids"])
    if n == 0:
        raise StepError("no test products to evaluate: the test split is empty")
    for key in PREDICTION_KEYS:
        if len(predictions[key]) != n:
            raise StepError(f"predictions[{key!r}] has {len(predictions[key])} rows, ids has {n}")
    widths = {**schema.sizes, "true_attributes": schema.sizes["attributes"]}
    for key, width in widths.items():
        if np.asarray(predictions[key]).shape[1:] != (width,):
            level = key.removeprefix("true_")
            raise StepError(
                f"predictions[{key!r}] has shape {np.asarray(predictions[key]).shape}, the label schema has "
                f"{width} {level}: the model was trained on a different label vocabulary than the data's"
            )
    for level in LEVELS:
        true = np.asarray(predictions[f"true_{level}"])
        if true.min() < 0 or true.max() >= schema.sizes[level]:
            raise StepError(f"true_{level} holds indices outside the {schema.sizes[level]} classes of the schema")
    return n


def _per_class(names: list[str], values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One JSON-ready record per class or label, from the per-class arrays of ClassMetrics or threshold_metrics."""
    return [
        {
            "name": name,
            **{key: float(values[key][i]) for key in ("precision", "recall", "f1")},
            **{key: int(values[key][i]) for key in ("support", "predicted")},
        }
        for i, name in enumerate(names)
    ]


def worst_classes(rows: list[dict[str, Any]], limit: int = 10, min_support: int = WORST_MIN_SUPPORT) -> list[dict]:
    """The classes with the lowest F1 among those with at least `min_support` test products."""
    pool = [r for r in rows if r["support"] >= min_support] or [r for r in rows if r["support"] > 0]
    return sorted(pool, key=lambda r: (r["f1"], -r["support"], r["name"]))[:limit]


def _confusions(names: list[str], cm: np.ndarray, limit: int = 10) -> list[dict[str, Any]]:
    """The most frequent (true, predicted) mistakes."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:limit]
    rows, cols = np.unravel_index(flat, off.shape)
    return [
        {"true": names[t], "predicted": names[p], "count": int(off[t, p])}
        for t, p in zip(rows, cols, strict=True)
        if off[t, p] > 0
    ]


def _decode(predictions: Mapping[str, np.ndarray], allowed: np.ndarray, joint: bool) -> Decoded:
    cat_p = np.asarray(predictions["category"], dtype=np.float64)
    sub_p = np.asarray(predictions["subcategory"], dtype=np.float64)
    if joint:
        cat, sub, _ = m.joint_decode(cat_p, sub_p, allowed)
    else:
        cat, sub = cat_p.argmax(axis=1), sub_p.argmax(axis=1)
    rows = np.arange(len(cat_p))
    decoded = Decoded(cat, sub, cat_p[rows, cat], sub_p[rows, sub])
    for level, pred in (("category", cat), ("subcategory", sub)):
        decoded.levels[level] = m.class_metrics(predictions[f"true_{level}"], pred, predictions[level])
    decoded.consistency = m.hierarchy_consistency(cat, sub, allowed)
    return decoded


def evaluate_predictions(
    predictions: Mapping[str, np.ndarray],
    schema: LabelSchema,
    threshold: float = 0.75,
    hierarchical_decoding: bool = False,
) -> Evaluation:
    """Every metric of the paper on one split's predictions.

    Args:
        predictions: `ids`, probabilities `category`, `subcategory`, `attributes` and true labels
            `true_category`, `true_subcategory` (indices), `true_attributes` (multi-hot), as
            `components.train.model_folder.predict_split` returns them.
        schema: the label schema the indices refer to.
        threshold: an attribute is predicted when its score is above this.
        hierarchical_decoding: the unprefixed category/sub-category scalars use joint decoding
            (best pair the tree allows) instead of each level's arg-max; both are reported.

    Returns:
        The Evaluation.

    Raises:
        StepError: the predictions do not fit the schema.

    """
    n = check_predictions(predictions, schema)
    allowed = m.allowed_matrix(schema.allowed_pairs(), len(schema.categories), len(schema.subcategories))
    decoded = {"independent": _decode(predictions, allowed, False), "joint": _decode(predictions, allowed, True)}
    decoding = "joint" if hierarchical_decoding else "independent"
    chosen = decoded[decoding]

    scalars: dict[str, float] = {}
    for level in LEVELS:
        cm = chosen.levels[level]
        values = {
            "accuracy": cm.accuracy,
            "top5_accuracy": cm.top5_accuracy,
            "op": cm.op,
            "or": cm.or_,
            "of1": cm.of1,
            "macro_f1": cm.macro_f1,
        }
        scalars.update({f"{level}_{k}": v for k, v in values.items()})
    scalars["hierarchy_consistency"] = chosen.consistency
    for prefix, dec in decoded.items():
        for level in LEVELS:
            cm = dec.levels[level]
            values = {"accuracy": cm.accuracy, "of1": cm.of1, "macro_f1": cm.macro_f1}
            scalars.update({f"{prefix}_{level}_{k}": values[k] for k in DECODED_SCALARS})
        scalars[f"{prefix}_hierarchy_consistency"] = dec.consistency

    true_attr = np.asarray(predictions["true_attributes"]).astype(bool)
    attr_scores = np.asarray(predictions["attributes"], dtype=np.float64)
    at_threshold = m.threshold_metrics(true_attr, attr_scores, threshold)
    at_k = m.metrics_at_k(true_attr, attr_scores)
    ap = m.average_precision(true_attr, attr_scores)
    groups = m.group_accuracy(true_attr, attr_scores, schema.attribute_groups)
    scalars.update({f"attributes_{k}": at_threshold[k] for k in ("op", "or", "of1", "cp", "cr", "cf1", "macro_f1")})
    scalars.update({f"attributes_{k}": at_k[k] for k in ("precision_at_k", "recall_at_k", "f1_at_k")})
    with_ap = ~np.isnan(ap)
    scalars["attributes_map"] = float(ap[with_ap].mean()) if with_ap.any() else 0.0
    scored = [g["accuracy"] for g in groups.values() if g["evaluated"]]
    scalars["attributes_group_accuracy"] = float(np.mean(scored)) if scored else 0.0
    scalars.update({group_key(g): v["accuracy"] for g, v in groups.items()})
    scalars["num_test_examples"] = float(n)

    details: dict[str, Any] = {"decoding": decoding, "attribute_threshold": threshold, "num_test_examples": n}
    names = {"category": schema.categories, "subcategory": schema.subcategories}
    for level in LEVELS:
        cm = chosen.levels[level]
        rows = _per_class(names[level], vars(cm))
        details[level] = {
            "per_class": rows,
            "worst": worst_classes(rows),
            "top_confusions": _confusions(names[level], cm.confusion),
            "classes_in_test": int((cm.support > 0).sum()),
            "classes": len(names[level]),
        }
    ind = decoded["independent"]
    inconsistent = ~allowed[ind.category, ind.subcategory]
    pairs: dict[tuple[int, int], int] = {}
    for c, s in zip(ind.category[inconsistent], ind.subcategory[inconsistent], strict=True):
        pairs[(int(c), int(s))] = pairs.get((int(c), int(s)), 0) + 1
    details["hierarchy"] = {
        "allowed_pairs": int(allowed.sum()),
        "independent_consistency": decoded["independent"].consistency,
        "joint_consistency": decoded["joint"].consistency,
        "independent_inconsistent_products": int(inconsistent.sum()),
        "joint_changed_products": int(
            (
                (decoded["joint"].category != decoded["independent"].category)
                | (decoded["joint"].subcategory != decoded["independent"].subcategory)
            ).sum()
        ),
        "top_inconsistent_pairs": [
            {"category": schema.categories[c], "subcategory": schema.subcategories[s], "count": k}
            for (c, s), k in sorted(pairs.items(), key=lambda item: (-item[1], item[0]))[:10]
        ],
    }
    details["attributes"] = {
        "per_label": [
            {**row, "ap": None if np.isnan(ap[i]) else float(ap[i])}
            for i, row in enumerate(_per_class(schema.attributes, at_threshold))
        ],
        "groups": groups,
        "at_k": {"evaluated": at_k["evaluated"], "skipped_without_labels": at_k["skipped"]},
        "labels_without_test_positives": [schema.attributes[i] for i in np.flatnonzero(~with_ap)],
    }
    return Evaluation(
        scalars=scalars,
        details=details,
        decoding=decoding,
        decoded=decoded,
        attributes={**at_threshold, "ap": ap, "true": true_attr, "scores": attr_scores},
        predictions=predictions,
        schema=schema,
        threshold=threshold,
    )
