"""Settings a user can trust: `--set` on a map merges into it, and gate settings are checked as they are read."""

from __future__ import annotations

import pytest

from core.config import ConfigError, load_config, parse_overrides
from pipeline.cli import main


def test_set_on_a_map_merges_into_the_presets_map():
    config = load_config("cpu-full", overrides=parse_overrides(["evaluate.floors.category_accuracy=0.99"]))
    assert dict(config.evaluate.floors) == {"category_accuracy": 0.99, "subcategory_accuracy": 0.85}


def test_a_null_value_removes_a_map_entry():
    config = load_config("cpu-full", overrides=parse_overrides(["evaluate.tolerances.subcategory_accuracy=null"]))
    assert dict(config.evaluate.tolerances) == {"category_accuracy": 0.005}


def test_a_preset_map_replaces_the_defaults():
    # The ci preset gates on category accuracy only; the defaults' sub-category floor is not added.
    assert dict(load_config("ci").evaluate.floors) == {"category_accuracy": 0.0}


@pytest.mark.parametrize("value", ["1.5", "-0.1"])
def test_a_floor_outside_zero_one_is_refused(value):
    with pytest.raises(ConfigError, match=r"evaluate.floors.category_accuracy.*(<= 1|>= 0)"):
        load_config("ci", overrides=parse_overrides([f"evaluate.floors.category_accuracy={value}"]))


def test_an_unknown_metric_name_is_refused_with_the_known_ones(capsys):
    code = main(["compile", "--preset=ci", "--set", "evaluate.floors.category_acuracy=0.9", "--out=/dev/null"])
    err = capsys.readouterr().err
    assert code == 2
    assert "category_acuracy" in err and "category_accuracy" in err and "attributes_baseColour_accuracy" in err
