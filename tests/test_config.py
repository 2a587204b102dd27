from pathlib import Path

import pytest

from core.config import PRESETS, Config, ConfigError, config_from_dict, load_config, parse_overrides


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_resolves(preset):
    config = load_config(preset)
    assert config.preset == preset
    assert config.train.epochs >= 1


def test_layers_apply_in_order(tmp_path: Path):
    run_file = tmp_path / "run.yaml"
    run_file.write_text("preset: ci\ntrain:\n  epochs: 5\n  batch_size: 4\n")
    config = load_config(config_path=run_file, overrides=parse_overrides(["train.epochs=7"]))
    assert config.preset == "ci"  # taken from the run file
    assert config.train.batch_size == 4  # run file beats preset
    assert config.train.epochs == 7  # CLI beats run file
    assert config.model.width_multiplier == 0.25  # preset beats defaults


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"train": {"epochs": "many"}}, "train.epochs: got 'many', expected an integer"),
        ({"train": {"epochs": 0}}, "train.epochs: got 0, must be >= 1"),
        ({"model": {"backbone": "vgg"}}, "model.backbone: got 'vgg', allowed: 'small_cnn'"),
        ({"labels": {"rare_policy": "drop"}}, "labels.rare_policy: got 'drop', allowed: 'exclude', 'other'"),
        ({"train": {"epcohs": 3}}, "train.epcohs: unknown setting; allowed:"),
        ({"preprocess": {"pad_color": [1, 2]}}, "preprocess.pad_color: got [1, 2], expected a list of 3 values"),
    ],
)
def test_invalid_values_name_field_value_and_allowed(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("ci", overrides=override)
    assert message in str(err.value)


def test_unknown_preset_is_rejected():
    with pytest.raises(ConfigError, match="preset: got 'huge'"):
        load_config("huge")


def test_saved_config_round_trips(tmp_path: Path):
    config = load_config("demo", overrides={"labels": {"attributes": ["season", "usage"]}})
    path = config.save(tmp_path / "config.yaml")
    import yaml

    again = config_from_dict(yaml.safe_load(path.read_text()))
    assert again == config
    assert isinstance(again, Config)
    assert again.labels.attributes == ("season", "usage")


def test_cli_overrides_parse_yaml_scalars():
    overrides = parse_overrides(["train.learning_rate=3e-4", "train.augment=false", "model.weights=none"])
    config = load_config("ci", overrides=overrides)
    assert config.train.learning_rate == 3e-4
    assert config.train.augment is False
    assert config.model.weights is None
    with pytest.raises(ConfigError, match="expected section.field=value"):
        parse_overrides(["train.epochs"])


def test_an_unquoted_off_on_the_command_line_is_the_word_off():
    """YAML reads `off` as false; a string setting whose choices include "off" still gets it."""
    config = load_config("ci", overrides=parse_overrides(["train.mixed_precision=off"]))
    assert config.train.mixed_precision == "off"
    with pytest.raises(ConfigError, match="serving.model_name|model.backbone"):
        load_config("ci", overrides=parse_overrides(["model.backbone=off"]))
