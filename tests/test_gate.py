"""The gate: floors on the first run, non-regression against the champion, missing metrics."""

from __future__ import annotations

import json

import pytest

from components.evaluate import decide
from core.config import load_config

FLOORS = {"category_accuracy": 0.90, "subcategory_accuracy": 0.80}
TOLERANCES = {"category_accuracy": 0.01, "subcategory_accuracy": 0.01}


def _checks(decision, kind):
    return {c.metric: c for c in decision.checks if c.kind == kind}


def test_first_run_without_a_champion_is_judged_on_the_floors_only():
    passed = decide({"category_accuracy": 0.95, "subcategory_accuracy": 0.85}, None, FLOORS, TOLERANCES)
    assert passed.blessed
    assert passed.reason.startswith("blessed: all 2 checks passed (no champion yet: floors only)")
    assert "category_accuracy 0.9500 >= floor 0.9000 (+0.0500)" in passed.reason
    assert not _checks(passed, "champion")

    failed = decide({"category_accuracy": 0.95, "subcategory_accuracy": 0.70}, None, FLOORS, TOLERANCES)
    assert not failed.blessed
    assert failed.reason.startswith("not blessed: 1 of 2 checks failed (subcategory_accuracy)")
    assert "subcategory_accuracy 0.7000 < floor 0.8000 (-0.1000)" in failed.reason


def test_better_than_the_champion_is_blessed():
    champion = {"category_accuracy": 0.93, "subcategory_accuracy": 0.84}
    decision = decide({"category_accuracy": 0.95, "subcategory_accuracy": 0.86}, champion, FLOORS, TOLERANCES)
    assert decision.blessed
    assert "category_accuracy 0.9500 better than champion 0.9300 (+0.0200, tolerance 0.0100)" in decision.reason
    assert len(decision.checks) == 4 and all(c.passed for c in decision.checks)


def test_worse_within_the_tolerance_is_blessed_and_says_by_how_much():
    champion = {"category_accuracy": 0.955, "subcategory_accuracy": 0.85}
    decision = decide({"category_accuracy": 0.95, "subcategory_accuracy": 0.85}, champion, FLOORS, TOLERANCES)
    assert decision.blessed
    assert "category_accuracy 0.9500 within tolerance of champion 0.9550 (-0.0050, tolerance 0.0100)" in decision.reason
    assert "subcategory_accuracy 0.8500 equal to champion 0.8500" in decision.reason
    check = _checks(decision, "champion")["category_accuracy"]
    assert check.bound == pytest.approx(0.945)


def test_worse_beyond_the_tolerance_is_not_blessed_even_above_the_floors():
    champion = {"category_accuracy": 0.97, "subcategory_accuracy": 0.85}
    decision = decide({"category_accuracy": 0.95, "subcategory_accuracy": 0.85}, champion, FLOORS, TOLERANCES)
    assert not decision.blessed
    assert decision.reason.startswith("not blessed: 1 of 4 checks failed (category_accuracy)")
    assert "category_accuracy 0.9500 worse than champion 0.9700 (-0.0200, tolerance 0.0100, 0.0100 beyond it)" in (
        decision.reason
    )
    assert _checks(decision, "floor")["category_accuracy"].passed


def test_a_metric_missing_from_the_candidate_fails_clearly():
    decision = decide({"category_accuracy": 0.95}, None, FLOORS, TOLERANCES)
    assert not decision.blessed
    missing = _checks(decision, "missing")["subcategory_accuracy"]
    assert not missing.passed and missing.value is None
    assert "subcategory_accuracy is missing from the candidate's metrics: it cannot be checked" in decision.reason


def test_a_metric_the_champion_lacks_is_compared_on_its_floor_only_and_said_so():
    champion = {"category_accuracy": 0.94}  # an older evaluation without sub-category accuracy
    decision = decide({"category_accuracy": 0.95, "subcategory_accuracy": 0.85}, champion, FLOORS, TOLERANCES)
    assert decision.blessed
    skipped = _checks(decision, "champion")["subcategory_accuracy"]
    assert skipped.skipped and skipped.passed
    assert "subcategory_accuracy: the champion has no such metric, so it is compared on its floor only" in (
        decision.reason
    )
    assert decision.reason.startswith("blessed: all 3 checks passed")


def test_a_nan_candidate_metric_fails():
    decision = decide({"category_accuracy": float("nan"), "subcategory_accuracy": 0.9}, None, FLOORS, TOLERANCES)
    assert not decision.blessed
    assert "category_accuracy is not a number in the candidate's metrics" in decision.reason


def test_the_decision_is_json_and_reads_the_presets_gate():
    config = load_config("cpu-full")
    decision = decide(
        {"category_accuracy": 0.97, "subcategory_accuracy": 0.80},
        None,
        config.evaluate.floors,
        config.evaluate.tolerances,
    )
    data = json.loads(json.dumps(decision.to_dict()))
    assert data["blessed"] is False
    assert [c["metric"] for c in data["checks"] if not c["passed"]] == ["subcategory_accuracy"]
    assert set(data["checks"][0]) == {"metric", "kind", "value", "reference", "bound", "passed", "skipped", "message"}


def test_a_misspelt_floor_suggests_the_metric_it_may_mean():
    decision = decide({"category_accuracy": 0.95}, None, {"category_acuracy": 0.9}, {})
    assert not decision.blessed
    assert "category_acuracy is missing from the candidate's metrics" in decision.reason
    assert "(did you mean category_accuracy?)" in decision.reason
