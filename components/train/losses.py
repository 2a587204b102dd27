"""Class-weighted losses per output level, from the preprocess statistics.

Keras does not accept `class_weight` for multi-output models, so the weights live in the losses:
each example's cross-entropy is scaled by the weight of its true class (categorical levels), and
each attribute's binary cross-entropy by that label's positive or negative weight.
Pure Keras ops, so the losses run under every backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from core.errors import StepError

_EPS = 1e-7


def soften(weights: Sequence[float], power: float, counts: Sequence[float] | None = None) -> np.ndarray:
    """Raise inverse-frequency weights to `power` and normalise them to mean 1 per example.

    Power 1 keeps the full inverse-frequency weighting, 0 turns it off; values in between trade
    rare-class recall against overall accuracy. With `counts` (training examples per class) the
    weights average to 1 over the training examples, so the loss keeps its usual scale.
    """
    w = np.asarray(weights, dtype="float64")
    w = np.where(w > 0, w, 0.0) ** power if power > 0 else np.ones_like(w)
    if counts is not None and np.sum(counts) > 0:
        c = np.asarray(counts, dtype="float64")
        mean = float(np.sum(w * c) / np.sum(c))
    else:
        mean = float(np.mean(w)) if w.size else 1.0
    return (w / mean if mean > 0 else w).astype("float32")


def soften_binary(positive: Sequence[float], negative: Sequence[float], power: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-label positive/negative weights raised to `power`, each label's expected weight 1.

    Inverse-frequency weights imply each label's positive rate, `neg / (pos + neg)`; scaling
    both weights so that `rate * pos + (1 - rate) * neg = 1` keeps every label's loss on the
    scale of a plain binary cross-entropy.
    """
    pos = np.maximum(np.asarray(positive, dtype="float64"), 1e-12)
    neg = np.maximum(np.asarray(negative, dtype="float64"), 1e-12)
    rate = neg / (pos + neg)
    pos, neg = pos**power, neg**power
    scale = rate * pos + (1.0 - rate) * neg
    return (pos / scale).astype("float32"), (neg / scale).astype("float32")


@keras.saving.register_keras_serializable(package="fashion")
class WeightedSparseCategoricalCrossentropy(keras.losses.Loss):
    """Cross-entropy on probabilities, each example scaled by the weight of its true class."""

    def __init__(
        self,
        class_weights: Sequence[float],
        label_smoothing: float = 0.0,
        name: str = "weighted_sparse_categorical_crossentropy",
        **kwargs: Any,
    ):
        super().__init__(name=name, **kwargs)
        self.class_weights = [float(w) for w in class_weights]
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """Per-example weighted loss."""
        num_classes = len(self.class_weights)
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        one_hot = ops.one_hot(labels, num_classes, dtype=y_pred.dtype)
        if self.label_smoothing > 0:
            one_hot = one_hot * (1.0 - self.label_smoothing) + self.label_smoothing / num_classes
        probs = ops.clip(y_pred, _EPS, 1.0 - _EPS)
        ce = -ops.sum(one_hot * ops.log(probs), axis=-1)
        weights = ops.take(ops.convert_to_tensor(self.class_weights, dtype=y_pred.dtype), labels)
        return ce * weights

    def get_config(self) -> dict[str, Any]:
        """Serialisable settings."""
        return {**super().get_config(), "class_weights": self.class_weights, "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="fashion")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy per label on probabilities, with per-label positive/negative weights."""

    def __init__(
        self,
        positive_weights: Sequence[float],
        negative_weights: Sequence[float],
        name: str = "weighted_binary_crossentropy",
        **kwargs: Any,
    ):
        super().__init__(name=name, **kwargs)
        self.positive_weights = [float(w) for w in positive_weights]
        self.negative_weights = [float(w) for w in negative_weights]

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """Per-example loss: the weighted binary cross-entropy averaged over labels."""
        y_true = ops.cast(y_true, y_pred.dtype)
        probs = ops.clip(y_pred, _EPS, 1.0 - _EPS)
        pos = ops.convert_to_tensor(self.positive_weights, dtype=y_pred.dtype)
        neg = ops.convert_to_tensor(self.negative_weights, dtype=y_pred.dtype)
        bce = -(pos * y_true * ops.log(probs) + neg * (1.0 - y_true) * ops.log(1.0 - probs))
        return ops.mean(bce, axis=-1)

    def get_config(self) -> dict[str, Any]:
        """Serialisable settings."""
        return {
            **super().get_config(),
            "positive_weights": self.positive_weights,
            "negative_weights": self.negative_weights,
        }


def build_losses(
    stats: Mapping[str, Any], sizes: Mapping[str, int], power: float = 1.0, label_smoothing: float = 0.0
) -> dict[str, keras.losses.Loss]:
    """The three weighted losses from `stats.json`'s class weights (and train counts when present).

    Raises:
        StepError: the statistics lack weights or their lengths disagree with the label schema.
    """
    weights = stats.get("class_weights")
    if not isinstance(weights, Mapping):
        raise StepError("stats.json has no class_weights: re-run `fashion preprocess` with this version")
    counts = _train_counts(stats)
    losses: dict[str, keras.losses.Loss] = {}
    for level in ("category", "subcategory"):
        w = list(weights.get(level) or [])
        if len(w) != int(sizes[level]):
            raise StepError(
                f"stats.json class_weights.{level} has {len(w)} entries but the schema has {sizes[level]} classes: "
                "re-run `fashion preprocess`"
            )
        level_counts = counts.get(level)
        if level_counts is not None and len(level_counts) != len(w):
            level_counts = None
        losses[level] = WeightedSparseCategoricalCrossentropy(
            soften(w, power, level_counts), label_smoothing=label_smoothing, name=f"{level}_loss"
        )
    attrs = weights.get("attributes") or {}
    pos, neg = list(attrs.get("positive") or []), list(attrs.get("negative") or [])
    if len(pos) != int(sizes["attributes"]) or len(neg) != len(pos):
        raise StepError(
            f"stats.json class_weights.attributes has {len(pos)} positive / {len(neg)} negative weights but the "
            f"schema has {sizes['attributes']} attributes: re-run `fashion preprocess`"
        )
    pos_w, neg_w = soften_binary(pos, neg, power)
    losses["attributes"] = WeightedBinaryCrossentropy(pos_w.tolist(), neg_w.tolist(), name="attributes_loss")
    return losses


def _train_counts(stats: Mapping[str, Any]) -> dict[str, list[float]]:
    """Training-split examples per class and level, when the statistics carry them as lists."""
    out: dict[str, list[float]] = {}
    class_counts = stats.get("class_counts") or {}
    for level in ("category", "subcategory"):
        node = class_counts.get(level)
        if isinstance(node, Mapping):
            node = node.get("train")
        if isinstance(node, Sequence) and not isinstance(node, str):
            out[level] = [float(c) for c in node]
    return out
