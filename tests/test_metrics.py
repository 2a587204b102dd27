"""The evaluation core: each metric against scikit-learn, or against small cases worked by hand."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from components.evaluate import evaluate_predictions
from components.evaluate import metrics as m
from core.errors import StepError
from tests.support.serving import tiny_schema


def _random_multiclass(seed: int, n: int = 300, k: int = 7):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[true] * rng.random((n, 1))
    scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return true, scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multiclass_metrics_match_scikit_learn(seed):
    true, scores = _random_multiclass(seed)
    pred = scores.argmax(axis=1)
    pred[:5] = 6  # a class predicted more often than it occurs
    got = m.class_metrics(true, pred, scores)

    assert got.accuracy == pytest.approx(skm.accuracy_score(true, pred))
    assert got.top5_accuracy == pytest.approx(skm.top_k_accuracy_score(true, scores, k=5, labels=np.arange(7)))
    p, r, f, s = skm.precision_recall_fscore_support(true, pred, labels=np.arange(7), zero_division=0)
    np.testing.assert_allclose(got.precision, p)
    np.testing.assert_allclose(got.recall, r)
    np.testing.assert_allclose(got.f1, f)
    np.testing.assert_array_equal(got.support, s)
    op, or_, of1, _ = skm.precision_recall_fscore_support(true, pred, average="weighted", zero_division=0)
    assert (got.op, got.or_, got.of1) == pytest.approx((op, or_, of1))
    assert got.macro_f1 == pytest.approx(skm.f1_score(true, pred, average="macro", zero_division=0))
    np.testing.assert_array_equal(got.confusion, skm.confusion_matrix(true, pred, labels=np.arange(7)))


def test_multiclass_metrics_with_absent_classes_match_scikit_learn():
    # Class 3 never occurs and is never predicted; class 4 is only predicted.
    true = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    pred = np.array([0, 4, 1, 0, 2, 2, 1, 0])
    scores = np.eye(5)[pred] * 0.6 + 0.08
    got = m.class_metrics(true, pred, scores)
    assert got.macro_f1 == pytest.approx(skm.f1_score(true, pred, average="macro", zero_division=0))
    op, or_, of1, _ = skm.precision_recall_fscore_support(true, pred, average="weighted", zero_division=0)
    assert (got.op, got.or_, got.of1) == pytest.approx((op, or_, of1))
    assert got.support.tolist() == [3, 2, 3, 0, 0]


def test_top5_counts_the_true_class_among_the_five_highest_scores():
    scores = np.array([[0.30, 0.25, 0.15, 0.12, 0.10, 0.05, 0.03], [0.03, 0.05, 0.10, 0.12, 0.15, 0.25, 0.30]])
    # Row 0: class 4 is 5th (in), class 5 is 6th (out). Row 1: class 2 is 5th.
    assert m.top_k_accuracy(np.array([4, 2]), scores) == 1.0
    assert m.top_k_accuracy(np.array([5, 1]), scores) == 0.0
    assert m.top_k_accuracy(np.array([5, 1]), scores[:, :5]) == 1.0  # five classes or fewer: always in


def test_top5_counts_a_tie_with_the_true_class_for_it_unlike_scikit_learn():
    # Five classes tie behind class 0; scikit-learn keeps the highest indices, so class 1 falls out.
    scores = np.array([[0.5, 0.1, 0.1, 0.1, 0.1, 0.1]])
    assert m.top_k_accuracy(np.array([1]), scores) == 1.0
    assert skm.top_k_accuracy_score(np.array([1]), scores, k=5, labels=np.arange(6)) == 0.0


def test_a_one_class_vocabulary_is_scored_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = m.class_metrics(np.zeros(3, dtype=int), np.zeros(3, dtype=int), np.ones((3, 1)))
    assert (got.accuracy, got.macro_f1, got.of1) == (1.0, 1.0, 1.0)
    assert got.confusion.tolist() == [[3]]


@pytest.mark.parametrize("threshold", [0.5, 0.75])
def test_attribute_threshold_metrics_match_scikit_learn(threshold):
    rng = np.random.default_rng(3)
    true = rng.random((200, 9)) < 0.3
    scores = np.clip(true * 0.5 + rng.random((200, 9)) * 0.6, 0, 1)
    decided = scores > threshold
    got = m.threshold_metrics(true, scores, threshold)
    p, r, f, _ = skm.precision_recall_fscore_support(true, decided, average="micro", zero_division=0)
    assert (got["op"], got["or"], got["of1"]) == pytest.approx((p, r, f))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(true, decided, average="macro", zero_division=0))
    cp, cr, _, _ = skm.precision_recall_fscore_support(true, decided, average="macro", zero_division=0)
    assert (got["cp"], got["cr"]) == pytest.approx((cp, cr))
    assert got["cf1"] == pytest.approx(2 * cp * cr / (cp + cr))


def test_one_attribute_label_is_scored_as_a_label_and_none_scores_zero():
    # scikit-learn reads a single column as a binary target with two classes; the metrics keep it one label.
    one = m.threshold_metrics(np.array([[1], [0], [1], [0]]), np.array([[0.9], [0.8], [0.1], [0.2]]), 0.75)
    assert one["precision"].tolist() == [0.5] and one["support"].tolist() == [2]
    assert (one["op"], one["or"], one["cp"], one["macro_f1"]) == (0.5, 0.5, 0.5, 0.5)
    none = m.threshold_metrics(np.zeros((4, 0)), np.zeros((4, 0)), 0.75)
    assert none["precision"].shape == (0,)
    assert (none["op"], none["of1"], none["cp"], none["cf1"], none["macro_f1"]) == (0.0, 0.0, 0.0, 0.0, 0.0)


def test_a_score_equal_to_the_threshold_is_not_a_positive():
    got = m.threshold_metrics(np.array([[1, 1]]), np.array([[0.75, 0.76]]), 0.75)
    assert got["predicted"].tolist() == [0, 1]
    assert (got["op"], got["or"]) == (1.0, 0.5)


def test_precision_at_k_uses_each_products_own_k_worked_by_hand():
    true = np.array(
        [
            [1, 0, 0, 0],  # k=1: top-1 is label 0 -> 1 hit
            [1, 1, 0, 0],  # k=2: top-2 are labels 2, 0 -> 1 hit
            [0, 1, 1, 1],  # k=3: top-3 are labels 1, 2, 0 -> 2 hits
            [0, 0, 0, 0],  # k=0: not scored
        ]
    )
    scores = np.array(
        [
            [0.9, 0.8, 0.1, 0.1],
            [0.7, 0.1, 0.9, 0.2],
            [0.5, 0.9, 0.8, 0.1],
            [0.9, 0.9, 0.9, 0.9],
        ]
    )
    got = m.metrics_at_k(true, scores)
    assert got["k"].tolist() == [1, 2, 3, 0]
    assert got["hits"].tolist() == [1, 1, 2, 0]
    expected = (1 / 1 + 1 / 2 + 2 / 3) / 3
    assert got["precision_at_k"] == pytest.approx(expected)
    assert got["recall_at_k"] == pytest.approx(expected)  # with k = true labels, R@k = P@k
    assert got["f1_at_k"] == pytest.approx(expected)
    assert (got["evaluated"], got["skipped"]) == (3, 1)


def test_average_precision_matches_scikit_learn_with_and_without_ties():
    rng = np.random.default_rng(5)
    true = rng.random((150, 6)) < 0.25
    true[0] = True  # every label has a positive
    scores = rng.random((150, 6))
    scores[:, 3] = np.round(scores[:, 3], 1)  # many ties
    scores[:, 4] = 0.5  # all tied
    got = m.average_precision(true, scores)
    expected = [skm.average_precision_score(true[:, j], scores[:, j]) for j in range(6)]
    np.testing.assert_allclose(got, expected)
    assert np.nanmean(got) == pytest.approx(skm.average_precision_score(true, scores, average="macro"))


def test_average_precision_of_a_label_without_positives_is_undefined():
    got = m.average_precision(np.array([[1, 0], [0, 0], [1, 0]]), np.array([[0.9, 0.2], [0.1, 0.8], [0.8, 0.4]]))
    assert got[0] == pytest.approx(1.0)
    assert np.isnan(got[1])


def test_precision_recall_curve_matches_scikit_learn():
    rng = np.random.default_rng(8)
    true = rng.random(80) < 0.4
    scores = np.round(rng.random(80), 2)
    precision, recall = m.precision_recall_curve(true, scores)
    sk_p, sk_r, _ = skm.precision_recall_curve(true, scores)
    # scikit-learn lists thresholds from low to high and appends the (1, 0) end point.
    np.testing.assert_allclose(precision, sk_p[:-1][::-1])
    np.testing.assert_allclose(recall, sk_r[:-1][::-1])


def test_group_accuracy_scores_the_arg_max_value_and_skips_products_without_one():
    groups = {"colour": [0, 1, 2], "season": [3, 4]}
    true = np.array([[1, 0, 0, 1, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 1, 0, 1]])
    scores = np.array(
        [
            [0.6, 0.3, 0.1, 0.1, 0.2],  # colour right, season wrong
            [0.6, 0.3, 0.1, 0.5, 0.4],  # colour wrong, no season
            [0.1, 0.1, 0.1, 0.1, 0.9],  # no colour, season right
            [0.1, 0.2, 0.7, 0.3, 0.6],  # both right
        ]
    )
    got = m.group_accuracy(true, scores, groups)
    assert got["colour"] == {"accuracy": pytest.approx(2 / 3), "evaluated": 3, "skipped": 1}
    assert got["season"] == {"accuracy": pytest.approx(2 / 3), "evaluated": 3, "skipped": 1}


def test_hierarchy_consistency_and_joint_decoding_worked_by_hand():
    # Tree: category 0 -> sub 0, 1; category 1 -> sub 2.
    allowed = m.allowed_matrix([(0, 0), (0, 1), (1, 2)], 2, 3)
    cat = np.array([[0.6, 0.4], [0.9, 0.1], [0.45, 0.55]])
    sub = np.array([[0.1, 0.2, 0.7], [0.5, 0.3, 0.2], [0.5, 0.1, 0.4]])
    independent = (cat.argmax(1), sub.argmax(1))  # (0,2) no, (0,0) yes, (1,0) no
    assert m.hierarchy_consistency(*independent, allowed) == pytest.approx(1 / 3)
    c, s, score = m.joint_decode(cat, sub, allowed)
    # Row 0: (0,0)=.06 (0,1)=.12 (1,2)=.28 -> (1,2). Row 1: (0,0)=.45. Row 2: (0,0)=.225 (1,2)=.22 -> (0,0).
    assert c.tolist() == [1, 0, 0]
    assert s.tolist() == [2, 0, 0]
    np.testing.assert_allclose(score, [0.28, 0.45, 0.225])
    assert m.hierarchy_consistency(c, s, allowed) == 1.0


def test_joint_decoding_without_a_tree_is_the_independent_arg_max():
    cat = np.array([[0.2, 0.8]])
    sub = np.array([[0.7, 0.3]])
    c, s, _ = m.joint_decode(cat, sub, np.zeros((2, 2), dtype=bool))
    assert (c.tolist(), s.tolist()) == ([1], [0])


def _predictions(n: int = 60, seed: int = 0) -> dict[str, np.ndarray]:
    schema = tiny_schema()
    rng = np.random.default_rng(seed)
    pairs = np.array(schema.allowed_pairs())
    chosen = pairs[rng.integers(0, len(pairs), n)]
    true_attr = np.zeros((n, len(schema.attributes)), dtype=np.int64)
    for idx in schema.attribute_groups.values():
        true_attr[np.arange(n), rng.choice(idx, n)] = 1

    def soft(true, k, strength):
        logits = rng.normal(size=(n, k)) + strength * np.eye(k)[true]
        return (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)

    return {
        "ids": np.array([str(1000 + i) for i in range(n)]),
        "category": soft(chosen[:, 0], 4, 2.0),
        "subcategory": soft(chosen[:, 1], 7, 1.5),
        "attributes": np.clip(true_attr * 0.5 + rng.random(true_attr.shape) * 0.6, 0, 1).astype(np.float32),
        "true_category": chosen[:, 0],
        "true_subcategory": chosen[:, 1],
        "true_attributes": true_attr,
    }


def test_evaluation_scalars_follow_the_configured_decoding_and_report_both():
    schema = tiny_schema()
    preds = _predictions()
    independent = evaluate_predictions(preds, schema, 0.75, hierarchical_decoding=False)
    joint = evaluate_predictions(preds, schema, 0.75, hierarchical_decoding=True)
    s, j = independent.scalars, joint.scalars
    assert s["category_accuracy"] == s["independent_category_accuracy"]
    assert j["category_accuracy"] == j["joint_category_accuracy"]
    assert s["joint_subcategory_accuracy"] == j["joint_subcategory_accuracy"]
    assert j["hierarchy_consistency"] == 1.0
    assert s["hierarchy_consistency"] == s["independent_hierarchy_consistency"] < 1.0
    assert s["subcategory_accuracy"] == pytest.approx(
        skm.accuracy_score(preds["true_subcategory"], preds["subcategory"].argmax(1))
    )
    assert s["attributes_map"] == pytest.approx(
        skm.average_precision_score(preds["true_attributes"], preds["attributes"], average="macro")
    )
    assert {"attributes_baseColour_accuracy", "attributes_gender_accuracy", "num_test_examples"} <= set(s)
    assert all(0.0 <= v <= 1.0 for k, v in s.items() if k != "num_test_examples")
    worst = independent.details["subcategory"]["worst"]
    assert [w["f1"] for w in worst] == sorted(w["f1"] for w in worst)


def test_predictions_of_another_vocabulary_fail_clearly():
    preds = _predictions()
    preds["subcategory"] = preds["subcategory"][:, :5]
    with pytest.raises(StepError, match="subcategory.*different label vocabulary"):
        evaluate_predictions(preds, tiny_schema())
