"""The paper's metrics, vectorised in numpy: multi-class levels, multi-label attributes, the hierarchy.

Every function takes true labels and predicted scores as arrays (one row per product) and returns
plain numbers or arrays; nothing here knows about files, models or TensorFlow. Conventions follow
scikit-learn where it has the metric (0 where a ratio has an empty denominator, weighted averages
weighted by true support, macro averages over the classes present in the truth or the
predictions), so results can be checked against it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Num / den elementwise, 0 where den is 0 (scikit-learn's zero_division=0)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _f1(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    return _ratio(2 * precision * recall, precision + recall)


# -- multi-class levels (category, sub-category) --------------------------------------------------


def confusion_matrix(true: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts[t, p] of products with true class t predicted as p (int64, num_classes x num_classes)."""
    true = np.asarray(true, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    flat = np.bincount(true * num_classes + pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def top_k_accuracy(true: np.ndarray, scores: np.ndarray, k: int = 5) -> float:
    """Share of products whose true class is among the k highest scores (all of them when k >= classes)."""
    scores = np.asarray(scores, dtype=np.float64)
    if k >= scores.shape[1]:
        return 1.0
    true = np.asarray(true, dtype=np.int64)
    true_score = np.take_along_axis(scores, true[:, None], axis=1)
    # Rank = classes scoring strictly higher, so a tie with the true class counts in its favour.
    higher = (scores > true_score).sum(axis=1)
    return float((higher < k).mean())


@dataclass(frozen=True)
class ClassMetrics:
    """Per-class and averaged results of one multi-class level.

    Attributes:
        precision, recall, f1, support: per class (support = true products of that class).
        predicted: products predicted as each class.
        confusion: the full confusion matrix (true x predicted).
        accuracy: share of products whose predicted class is the true one.
        top5_accuracy: share whose true class is among the five highest scores.
        op, or_, of1: precision, recall and F1 averaged over classes weighted by support.
        macro_f1: unweighted mean F1 over the classes present in the truth or the predictions.

    """

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    predicted: np.ndarray
    confusion: np.ndarray
    accuracy: float
    top5_accuracy: float
    op: float
    or_: float
    of1: float
    macro_f1: float


def class_metrics(true: np.ndarray, pred: np.ndarray, scores: np.ndarray) -> ClassMetrics:
    """All metrics of one multi-class level.

    Args:
        true: true class index per product.
        pred: predicted class index per product (the arg-max of `scores`, or a decoded choice).
        scores: class probabilities per product (for top-5 accuracy).

    Returns:
        The level's ClassMetrics.

    """
    true = np.asarray(true, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    num_classes = np.asarray(scores).shape[1]
    cm = confusion_matrix(true, pred, num_classes)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = _f1(precision, recall)
    total = support.sum()
    weights = _ratio(support, total)
    present = (support > 0) | (predicted > 0)
    return ClassMetrics(
        precision=precision,
        recall=recall,
        f1=f1,
        support=support,
        predicted=predicted,
        confusion=cm,
        accuracy=float(_ratio(tp.sum(), total)),
        top5_accuracy=top_k_accuracy(true, scores, 5),
        op=float((weights * precision).sum()),
        or_=float((weights * recall).sum()),
        of1=float((weights * f1).sum()),
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
    )


# -- multi-label attributes -----------------------------------------------------------------------


def threshold_metrics(true: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Label decisions at `threshold` (a label is predicted when its score is above it).

    Returns:
        `op`, `or`, `of1`: micro precision, recall and F1 over every (product, label) decision;
        `cp`, `cr`: per-label precision and recall averaged over labels, `cf1` their harmonic mean;
        `macro_f1`: the mean of the per-label F1 (scikit-learn's macro average);
        per-label arrays `precision`, `recall`, `f1`, `support`, `predicted`.

    """
    true = np.asarray(true).astype(bool)
    decided = np.asarray(scores) > threshold
    tp = (true & decided).sum(axis=0)
    support = true.sum(axis=0)
    predicted = decided.sum(axis=0)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = _f1(precision, recall)
    op = float(_ratio(tp.sum(), predicted.sum()))
    or_ = float(_ratio(tp.sum(), support.sum()))
    cp = float(precision.mean()) if precision.size else 0.0
    cr = float(recall.mean()) if recall.size else 0.0
    return {
        "op": op,
        "or": or_,
        "of1": float(_f1(np.float64(op), np.float64(or_))),
        "cp": cp,
        "cr": cr,
        "cf1": float(_f1(np.float64(cp), np.float64(cr))),
        "macro_f1": float(f1.mean()) if f1.size else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
        "predicted": predicted,
    }


def metrics_at_k(true: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """P@k, R@k and F1@k where k is each product's own number of true labels.

    Each product's k highest-scoring labels are its prediction (ties broken by label order).
    Products without any true label have no k and are left out (counted in `skipped`).

    Returns:
        `precision_at_k`, `recall_at_k`, `f1_at_k` (means over the products that have labels),
        `evaluated` and `skipped` product counts, and per-product `hits` and `k`.

    """
    true = np.asarray(true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    k = true.sum(axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    rank = np.argsort(order, axis=1, kind="stable")
    hits = (true & (rank < k[:, None])).sum(axis=1)
    has = k > 0
    precision = _ratio(hits, k)  # k labels predicted per product
    recall = _ratio(hits, k)  # of k true labels
    f1 = _f1(precision, recall)
    return {
        "precision_at_k": float(precision[has].mean()) if has.any() else 0.0,
        "recall_at_k": float(recall[has].mean()) if has.any() else 0.0,
        "f1_at_k": float(f1[has].mean()) if has.any() else 0.0,
        "evaluated": int(has.sum()),
        "skipped": int((~has).sum()),
        "hits": hits,
        "k": k,
    }


def _sorted_columns(true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per label (column): truth and scores sorted by descending score, and the end of each tie group."""
    order = np.argsort(-scores, axis=0, kind="stable")
    s = np.take_along_axis(scores, order, axis=0)
    y = np.take_along_axis(true, order, axis=0)
    # A threshold sits after the last of tied scores: positions where the next score differs.
    end = np.ones_like(s, dtype=bool)
    end[:-1] = s[:-1] != s[1:]
    return y, s, end


def average_precision(true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Non-interpolated average precision of every label (column), as scikit-learn computes it.

    AP = sum over score thresholds of (recall step) x (precision at that threshold); tied scores
    form one threshold. Labels with no positive product have no AP: NaN.
    """
    true = np.asarray(true).astype(np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    n = true.shape[0]
    if n == 0:
        return np.full(true.shape[1], np.nan)
    y, _, end = _sorted_columns(true, scores)
    tp = np.cumsum(y, axis=0)
    precision = tp / np.arange(1, n + 1)[:, None]
    # Each positive contributes the precision at the end of its tie group.
    next_end = np.where(end, np.arange(n)[:, None], n - 1)
    next_end = np.minimum.accumulate(next_end[::-1], axis=0)[::-1]
    at_end = np.take_along_axis(precision, next_end, axis=0)
    positives = y.sum(axis=0)
    ap = np.full(true.shape[1], np.nan)
    has = positives > 0
    ap[has] = (y * at_end).sum(axis=0)[has] / positives[has]
    return ap


def precision_recall_curve(true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of one label at every distinct score threshold, from the highest down.

    Returns:
        (precision, recall), each starting at the highest threshold; empty when there are no
        positives.

    """
    true = np.asarray(true).astype(np.float64)[:, None]
    scores = np.asarray(scores, dtype=np.float64)[:, None]
    positives = true.sum()
    if positives == 0 or len(true) == 0:
        return np.empty(0), np.empty(0)
    y, _, end = _sorted_columns(true, scores)
    tp = np.cumsum(y[:, 0])
    idx = np.flatnonzero(end[:, 0])
    return tp[idx] / (idx + 1), tp[idx] / positives


def group_accuracy(true: np.ndarray, scores: np.ndarray, groups: Mapping[str, Sequence[int]]) -> dict[str, dict]:
    """Per attribute group, the share of products whose highest-scoring value in the group is true.

    Products with no true value in a group (the column was empty) are not scored for it.

    Returns:
        group -> {"accuracy", "evaluated", "skipped"}.

    """
    true = np.asarray(true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    out: dict[str, dict] = {}
    for group, indices in groups.items():
        idx = np.asarray(list(indices), dtype=np.int64)
        if idx.size == 0:
            out[group] = {"accuracy": 0.0, "evaluated": 0, "skipped": int(len(true))}
            continue
        t = true[:, idx]
        has = t.any(axis=1)
        best = scores[:, idx].argmax(axis=1)
        correct = t[np.arange(len(t)), best]
        out[group] = {
            "accuracy": float(correct[has].mean()) if has.any() else 0.0,
            "evaluated": int(has.sum()),
            "skipped": int((~has).sum()),
        }
    return out


# -- the hierarchy --------------------------------------------------------------------------------


def allowed_matrix(pairs: Sequence[tuple[int, int]], num_categories: int, num_subcategories: int) -> np.ndarray:
    """Boolean matrix [category, sub-category] of the pairs the category tree allows."""
    allowed = np.zeros((num_categories, num_subcategories), dtype=bool)
    if pairs:
        cats, subs = np.asarray(pairs, dtype=np.int64).T
        allowed[cats, subs] = True
    return allowed


def hierarchy_consistency(category: np.ndarray, subcategory: np.ndarray, allowed: np.ndarray) -> float:
    """Share of predicted (category, sub-category) pairs that occur in the category tree."""
    category = np.asarray(category, dtype=np.int64)
    if category.size == 0:
        return 0.0
    return float(allowed[category, np.asarray(subcategory, dtype=np.int64)].mean())


def joint_decode(
    category_scores: np.ndarray, subcategory_scores: np.ndarray, allowed: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The allowed (category, sub-category) pair with the highest joint score, per product.

    The joint score of a pair is the product of the two levels' probabilities. Without any
    allowed pair (no tree), this is the independent arg-max of each level.

    Returns:
        (category, sub-category, joint score) per product.

    """
    cat_p = np.asarray(category_scores, dtype=np.float64)
    sub_p = np.asarray(subcategory_scores, dtype=np.float64)
    cats, subs = np.nonzero(allowed)
    if cats.size == 0:
        c, s = cat_p.argmax(axis=1), sub_p.argmax(axis=1)
        rows = np.arange(len(cat_p))
        return c, s, cat_p[rows, c] * sub_p[rows, s]
    joint = cat_p[:, cats] * sub_p[:, subs]
    best = joint.argmax(axis=1)
    return cats[best], subs[best], joint[np.arange(len(joint)), best]
