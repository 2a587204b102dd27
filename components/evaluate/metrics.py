"""The paper's metrics: scikit-learn where it has the metric, the project's own numpy where it has none.

Every function takes true labels and predicted scores as arrays (one row per product) and returns
plain numbers or arrays; nothing here knows about files, models or TensorFlow. scikit-learn
computes the generic figures (accuracy, precision, recall and F1 per class and averaged, the
confusion matrix, average precision, precision-recall curves) with `zero_division=0`: 0 where a
ratio has an empty denominator. What it lacks is written here, each piece saying why it is kept.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn import metrics as skm


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


def top_k_accuracy(true: np.ndarray, scores: np.ndarray, k: int = 5) -> float:
    """Share of products whose true class is among the k highest scores (all of them when k >= classes)."""
    # Kept: scikit-learn's top_k_accuracy_score breaks ties by class index; here a tie counts for the true class.
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
    # Every class of the model, so the arrays line up with the vocabulary even where the test split lacks one.
    labels = np.arange(np.asarray(scores).shape[1])
    with warnings.catch_warnings():
        # A one-class vocabulary gives a 1 x 1 matrix, and scikit-learn warns even though `labels` is passed.
        warnings.filterwarnings("ignore", "A single label was found", UserWarning)
        confusion = skm.confusion_matrix(true, pred, labels=labels)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        true, pred, labels=labels, average=None, zero_division=0
    )
    op, or_, of1, _ = skm.precision_recall_fscore_support(
        true, pred, labels=labels, average="weighted", zero_division=0
    )
    return ClassMetrics(
        precision=precision,
        recall=recall,
        f1=f1,
        support=support,
        predicted=confusion.sum(axis=0),
        confusion=confusion,
        accuracy=float(skm.accuracy_score(true, pred)),
        top5_accuracy=top_k_accuracy(true, scores, 5),
        op=float(op),
        or_=float(or_),
        of1=float(of1),
        # Without `labels`, scikit-learn averages over the classes in the truth or the predictions only.
        macro_f1=float(skm.f1_score(true, pred, average="macro", zero_division=0)),
    )


# -- multi-label attributes -----------------------------------------------------------------------


def _label_scores(true: np.ndarray, decided: np.ndarray, average: str | None) -> tuple:
    """scikit-learn's precision, recall, F1 and support over label columns, for any number of labels."""
    width = true.shape[1]
    if width == 0:
        # scikit-learn refuses a target without columns; an empty vocabulary scores 0.
        return (np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0, np.int64)) if average is None else (0.0,) * 4
    if width == 1:
        # scikit-learn reads one column as a binary target (classes 0 and 1): score its positive class alone.
        true, decided, labels = true[:, 0], decided[:, 0], [True]
    else:
        labels = None
    return skm.precision_recall_fscore_support(true, decided, labels=labels, average=average, zero_division=0)


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
    precision, recall, f1, support = _label_scores(true, decided, None)
    op, or_, of1, _ = _label_scores(true, decided, "micro")
    cp, cr, macro_f1, _ = _label_scores(true, decided, "macro")
    return {
        "op": float(op),
        "or": float(or_),
        "of1": float(of1),
        "cp": float(cp),
        "cr": float(cr),
        # Kept: CF1 is the harmonic mean of CP and CR, which scikit-learn's macro F1 (mean per-label F1) is not.
        "cf1": float(_f1(np.float64(cp), np.float64(cr))),
        "macro_f1": float(macro_f1),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
        "predicted": decided.sum(axis=0),
    }


def metrics_at_k(true: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """P@k, R@k and F1@k where k is each product's own number of true labels.

    Each product's k highest-scoring labels are its prediction (ties broken by label order).
    Products without any true label have no k and are left out (counted in `skipped`).

    Returns:
        `precision_at_k`, `recall_at_k`, `f1_at_k` (means over the products that have labels),
        `evaluated` and `skipped` product counts, and per-product `hits` and `k`.

    """
    # Kept: scikit-learn's ranking metrics take one k for all products, not each product's own count of true labels.
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


def average_precision(true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Non-interpolated average precision of every label (column), by scikit-learn.

    Labels with no positive product have no AP: NaN (scikit-learn would warn and give 0).
    """
    true = np.asarray(true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    ap = np.full(true.shape[1], np.nan)
    for j in np.flatnonzero(true.any(axis=0)):
        ap[j] = skm.average_precision_score(true[:, j], scores[:, j])
    return ap


def precision_recall_curve(true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of one label at every distinct score threshold, from the highest down.

    Returns:
        (precision, recall), each starting at the highest threshold; empty when there are no
        positives.

    """
    true = np.asarray(true).astype(bool)
    if not true.any():
        return np.empty(0), np.empty(0)
    precision, recall, _ = skm.precision_recall_curve(true, np.asarray(scores, dtype=np.float64))
    # scikit-learn lists thresholds from low to high and appends the (precision 1, recall 0) end point.
    return precision[-2::-1], recall[-2::-1]


def group_accuracy(true: np.ndarray, scores: np.ndarray, groups: Mapping[str, Sequence[int]]) -> dict[str, dict]:
    """Per attribute group, the share of products whose highest-scoring value in the group is true.

    Products with no true value in a group (the column was empty) are not scored for it.

    Returns:
        group -> {"accuracy", "evaluated", "skipped"}.

    """
    # Kept: scikit-learn has no arg-max accuracy over a subset of multi-hot columns that skips empty rows.
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
    # Kept: the category tree is this project's; scikit-learn has no notion of allowed label pairs.
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
    # Kept: scikit-learn decodes each target alone; choosing the best pair of two levels is this project's.
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
