"""The paired unified-vs-independent comparison (bench/compare_heads.py): its statistics on known answers."""

import numpy as np
import pytest
from scipy import stats

from bench.compare_heads import bootstrap_interval, compare, correct_per_photo, macro_f1_per_level, mcnemar_exact
from components.evaluate import metrics as m


@pytest.mark.parametrize("only_a, only_b", [(0, 5), (1, 9), (3, 3), (80, 81), (12, 30), (7, 0)])
def test_mcnemar_exact_matches_the_two_sided_binomial_test(only_a, only_b):
    expected = stats.binomtest(only_a, only_a + only_b, 0.5).pvalue
    assert mcnemar_exact(only_a, only_b) == pytest.approx(expected, rel=1e-9)


def test_mcnemar_exact_without_discordant_photos_is_one():
    assert mcnemar_exact(0, 0) == 1.0


def test_bootstrap_interval_brackets_the_observed_difference():
    rng = np.random.default_rng(3)
    a = rng.random(2000) < 0.9
    b = rng.random(2000) < 0.8
    lo, hi = bootstrap_interval(a, b)
    observed = a.mean() - b.mean()
    assert lo < observed < hi
    assert lo > 0  # ten points apart at 2,000 photos is far outside the noise
    same_lo, same_hi = bootstrap_interval(a, a)
    assert same_lo == same_hi == 0.0


def test_compare_counts_photos_only_one_model_gets_right_at_each_decoding():
    # Two categories; sub-categories 0, 1 under category 0 and 2 under category 1.
    allowed = m.allowed_matrix([(0, 0), (0, 1), (1, 2)], 2, 3)
    truth = {"true_category": np.array([0, 0, 1, 1]), "true_subcategory": np.array([0, 1, 2, 2])}
    unified = {
        **truth,
        "category": np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.3, 0.7]]),
        "subcategory": np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.1, 0.1, 0.8]]),
    }
    independent = {
        **truth,
        # Photo 1: category 1 by a hair while sub-category 1 is sure, a pair the tree does not have;
        # joint decoding repairs it. Photo 3: wrong at both levels whatever the decoding.
        "category": np.array([[0.9, 0.1], [0.45, 0.55], [0.2, 0.8], [0.9, 0.1]]),
        "subcategory": np.array([[0.8, 0.1, 0.1], [0.05, 0.9, 0.05], [0.1, 0.1, 0.8], [0.8, 0.1, 0.1]]),
    }
    rows = compare(correct_per_photo(unified, allowed), correct_per_photo(independent, allowed))
    assert rows["category"]["unified"] == 1.0 and rows["category"]["independent"] == 0.5
    assert (rows["category"]["only_unified"], rows["category"]["only_independent"]) == (2, 0)
    assert rows["category_joint"]["independent"] == 0.75
    assert (rows["category_joint"]["only_unified"], rows["category_joint"]["only_independent"]) == (1, 0)
    assert rows["subcategory"]["independent"] == 0.75
    assert rows["subcategory_joint"]["only_unified"] == 1
    assert rows["category"]["mcnemar_p"] == pytest.approx(0.5)


def test_macro_f1_weighs_a_rare_class_as_much_as_a_common_one():
    allowed = m.allowed_matrix([(0, 0), (0, 1), (1, 2)], 2, 3)
    # Nine photos of category 0, one of category 1; the model calls all ten category 0.
    truth = {"true_category": np.array([0] * 9 + [1]), "true_subcategory": np.array([0] * 9 + [2])}
    pred = {
        **truth,
        "category": np.tile([[0.9, 0.1]], (10, 1)),
        "subcategory": np.tile([[0.8, 0.1, 0.1]], (10, 1)),
    }
    f1 = macro_f1_per_level(pred, allowed)
    # Category 0: precision 0.9, recall 1 -> F1 18/19; category 1: F1 0. Accuracy would say 0.9.
    assert f1["category"] == pytest.approx((18 / 19) / 2, abs=1e-4)
    assert f1["category_joint"] == f1["category"]
    assert set(f1) == {"category", "category_joint", "subcategory", "subcategory_joint"}
