"""Warm start: `train.init` is validated, weights are copied layer by layer and the heads by label string."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from components.train.model import build_model
from components.train.warm_start import HEAD_LAYERS, InitSource, resolve_init, transfer_weights
from core.config import ConfigError, load_config
from core.errors import StepError
from tests.support.serving import make_model_dir, tiny_schema

SIZE = (16, 12)


@pytest.mark.parametrize(
    "value", ["scratch", "champion", "models:/fashion-classifier/3", "models:/fashion-classifier@champion",
              "runs/ci/model", "/abs/model", "gs://bucket/models/7"],
)  # fmt: skip
def test_train_init_takes_scratch_champion_or_a_model_uri(value):
    assert load_config("ci", overrides={"train": {"init": value}}).train.init == value


@pytest.mark.parametrize("value", ["scrach", "", "models:/fashion-classifier", "models:/a/b", "latest"])
def test_train_init_refuses_anything_else_and_says_what_is_allowed(value):
    with pytest.raises(ConfigError, match=r"train.init: got .*'scratch', 'champion' or a model URI \(models:/"):
        load_config("ci", overrides={"train": {"init": value}})


def grown_schema():
    """The tiny schema a week later: Shirts gone, Sandals and Polos new, a new colour; known ones reordered."""
    schema = tiny_schema()
    return dataclasses.replace(
        schema,
        subcategories=["Sandals", "Tshirts", "Jeans", "Backpacks", "Casual Shoes", "Handbags", "Trousers", "Polos"],
        attributes=[*schema.attributes[:3], "baseColour=Red", *schema.attributes[3:]],
        tree={**schema.tree, "Shoes": ["Casual Shoes", "Sandals"], "Topwear": ["Polos", "Tshirts"]},
    )


def _models(config):
    import keras

    keras.utils.set_random_seed(1)
    source = build_model(config.model, tiny_schema().sizes, SIZE)
    keras.utils.set_random_seed(2)
    target = build_model(config.model, grown_schema().sizes, SIZE)
    return source, target


def test_known_classes_keep_their_weights_new_ones_start_fresh_and_the_rest_is_copied():
    config = load_config("ci")
    source, target = _models(config)
    fresh = {layer.name: [np.array(w) for w in layer.get_weights()] for layer in target.layers}
    old, new = tiny_schema(), grown_schema()
    copied = transfer_weights(target, source, old, new, InitSource("models:/m/1", None, "champion version 1"))

    heads = set(HEAD_LAYERS.values())
    by_name = {layer.name: layer for layer in source.layers}
    for layer in target.layers:
        if layer.weights and layer.name not in heads:
            for mine, theirs in zip(layer.get_weights(), by_name[layer.name].get_weights(), strict=True):
                np.testing.assert_array_equal(mine, theirs)
    kernel, bias = target.get_layer("subcategory_logits").get_weights()
    src_kernel, src_bias = source.get_layer("subcategory_logits").get_weights()
    fresh_kernel, fresh_bias = fresh["subcategory_logits"]
    for j, label in enumerate(new.subcategories):
        if label in old.subcategories:
            i = old.subcategories.index(label)
            np.testing.assert_array_equal(kernel[:, j], src_kernel[:, i])
            assert bias[j] == src_bias[i]
        else:
            np.testing.assert_array_equal(kernel[:, j], fresh_kernel[:, j])
            assert bias[j] == fresh_bias[j]
    red = new.attributes.index("baseColour=Red")
    np.testing.assert_array_equal(
        target.get_layer("attributes_logits").get_weights()[0][:, red], fresh["attributes_logits"][0][:, red]
    )

    assert copied.heads["subcategory"].kept == 6
    assert copied.heads["subcategory"].new == ["Sandals", "Polos"]
    assert copied.heads["subcategory"].dropped == ["Shirts"]
    assert copied.heads["category"].kept == 4 and not copied.heads["category"].new
    assert copied.heads["attributes"].new == ["baseColour=Red"]
    assert copied.copied_layers == sum(1 for layer in target.layers if layer.weights) - 3
    assert "sub-category 6 kept, 2 new (Sandals, Polos), 1 dropped" in copied.summary()


def test_a_source_of_another_architecture_is_refused_with_the_layers_that_differ():
    config = load_config("ci")
    source = build_model(dataclasses.replace(config.model, branch_units=16), tiny_schema().sizes, SIZE)
    target = build_model(config.model, grown_schema().sizes, SIZE)
    with pytest.raises(StepError, match=r"cannot warm-start from v1: its architecture differs .* x_cat"):
        transfer_weights(target, source, tiny_schema(), grown_schema(), InitSource("x/y", None, "v1"))


def test_scratch_and_champion_without_a_registry_start_from_scratch(tmp_path):
    assert resolve_init(load_config("ci", overrides={"train": {"init": "scratch"}}), tmp_path) is None
    # `fashion train` on its own has no registry: there is no champion to start from.
    assert resolve_init(load_config("ci"), tmp_path) is None


def test_a_model_folder_uri_is_used_as_it_is_and_a_wrong_one_fails_clearly(tmp_path):
    folder = make_model_dir(tmp_path / "model")
    source = resolve_init(load_config("ci", overrides={"train": {"init": str(folder)}}), tmp_path / "dl")
    assert source.uri == str(folder) and source.model_dir == folder and not source.champion
    missing = tmp_path / "not-a-model"
    missing.mkdir()
    with pytest.raises(StepError, match=r"model.keras not found; name a model folder written by `fashion train`"):
        resolve_init(load_config("ci", overrides={"train": {"init": str(missing)}}), tmp_path / "dl2")
    registry_uri = load_config("ci", overrides={"train": {"init": "models:/fashion-classifier/2"}})
    with pytest.raises(StepError, match="a registry URI needs the MLflow store"):
        resolve_init(registry_uri, tmp_path / "dl3")
