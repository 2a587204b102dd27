import dataclasses

import keras
import numpy as np
import pytest

from components.train.model import build_model
from core.config import ModelConfig, load_config
from core.errors import StepError

SIZES = {"category": 5, "subcategory": 9, "attributes": 7}
CI_MODEL = load_config("ci").model


def _photos(n: int = 2, height: int = 80, width: int = 60) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def test_paper_parameter_count_resnet50_224():
    """ResNet-50 at 224x224 with heads summing to 234 units: exactly the paper's 46,915,690 parameters."""
    cfg = ModelConfig(backbone="resnet50", weights=None, input_height=224, input_width=224, branch_units=1024)
    model = build_model(cfg, {"category": 40, "subcategory": 140, "attributes": 54}, (80, 60))
    assert model.count_params() == 46_915_690


def test_message_passing_has_sixteen_dense_layers_of_branch_width():
    cfg = dataclasses.replace(CI_MODEL, branch_units=48)
    model = build_model(cfg, SIZES, (80, 60))
    inner = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.Dense) and not layer.name.startswith(("x_", "category", "sub", "attr"))
    ]
    assert len(inner) == 16
    assert all(layer.units == 48 for layer in inner)
    assert sum(isinstance(layer, keras.layers.Dropout) for layer in model.layers) == 6


@pytest.mark.parametrize("head", ["unified", "independent"])
def test_outputs_are_named_probabilities_of_the_right_width(head):
    model = build_model(dataclasses.replace(CI_MODEL, head=head), SIZES, (80, 60))
    assert model.input.name == "image" or model.inputs[0].name == "image"
    out = model(_photos(3), training=False)
    assert set(out) == {"category", "subcategory", "attributes"}
    for level, units in SIZES.items():
        values = np.asarray(out[level])
        assert values.shape == (3, units) and values.dtype == np.float32
    np.testing.assert_allclose(np.asarray(out["category"]).sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out["subcategory"]).sum(1), 1.0, rtol=1e-5)
    attrs = np.asarray(out["attributes"])
    assert ((attrs > 0) & (attrs < 1)).all()


def test_unified_head_is_larger_than_independent_heads_on_the_same_backbone():
    unified = build_model(dataclasses.replace(CI_MODEL, head="unified"), SIZES, (80, 60))
    independent = build_model(dataclasses.replace(CI_MODEL, head="independent"), SIZES, (80, 60))
    assert unified.count_params() > independent.count_params()


def test_model_resizes_stored_photos_itself_and_accepts_floats():
    cfg = dataclasses.replace(CI_MODEL, input_height=40, input_width=32)
    model = build_model(cfg, SIZES, (80, 60))
    as_uint8 = model(_photos(2), training=False)
    as_float = model(_photos(2).astype("float32"), training=False)
    np.testing.assert_allclose(np.asarray(as_uint8["category"]), np.asarray(as_float["category"]), rtol=1e-5)


def test_outputs_stay_float32_under_mixed_precision():
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        model = build_model(CI_MODEL, SIZES, (80, 60))
        out = model(_photos(2), training=False)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert all(np.asarray(out[k]).dtype == np.float32 for k in SIZES)


def test_saved_model_file_round_trips(tmp_path):
    from components.train.model_folder import load_model

    model = build_model(
        dataclasses.replace(CI_MODEL, backbone="resnet50", input_height=32, input_width=32), SIZES, (80, 60)
    )
    model.save(tmp_path / "model.keras")
    loaded = load_model(tmp_path)
    photos = _photos(2)
    np.testing.assert_allclose(
        np.asarray(model(photos)["subcategory"]), np.asarray(loaded(photos)["subcategory"]), rtol=1e-4, atol=1e-6
    )


def test_backbone_weights_from_a_file(tmp_path):
    cfg = dataclasses.replace(CI_MODEL, backbone="resnet50", input_height=32, input_width=32)
    donor = build_model(cfg, SIZES, (80, 60))
    backbone = donor.get_layer("resnet50")
    path = tmp_path / "backbone.weights.h5"
    backbone.save_weights(path)
    model = build_model(dataclasses.replace(cfg, weights=str(path)), SIZES, (80, 60))
    for a, b in zip(model.get_layer("resnet50").weights, backbone.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_unusable_weights_file_is_a_clear_error(tmp_path):
    cfg = dataclasses.replace(
        CI_MODEL, backbone="resnet50", input_height=32, input_width=32, weights=str(tmp_path / "no.h5")
    )
    with pytest.raises(StepError, match="weights"):
        build_model(cfg, SIZES, (80, 60))


def test_empty_label_level_is_a_clear_error():
    with pytest.raises(StepError, match="subcategory"):
        build_model(CI_MODEL, {"category": 3, "subcategory": 0, "attributes": 2}, (80, 60))


def test_model_module_uses_only_keras_ops():
    """The builder must run under the JAX and PyTorch backends too: no TensorFlow inside the model."""
    import components.train.model as model_module

    source = open(model_module.__file__).read()
    assert "tensorflow" not in source and "import tf" not in source


@pytest.mark.slow
def test_model_builds_trains_and_predicts_under_the_jax_backend():
    import os
    import subprocess
    import sys

    script = (
        "import numpy as np, keras;"
        "from core.config import load_config;"
        "from components.train.model import build_model;"
        "m = build_model(load_config('ci').model, {'category': 3, 'subcategory': 4, 'attributes': 5}, (80, 60));"
        "m.compile('adam', {'category': 'sparse_categorical_crossentropy',"
        " 'subcategory': 'sparse_categorical_crossentropy', 'attributes': 'binary_crossentropy'});"
        "x = np.zeros((4, 80, 60, 3), 'uint8');"
        "m.fit(x, {'category': np.zeros(4), 'subcategory': np.zeros(4), 'attributes': np.zeros((4, 5))}, verbose=0);"
        "print(keras.backend.backend(), m.predict(x, verbose=0)['subcategory'].shape)"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "jax (4, 4)" in done.stdout


@pytest.mark.parametrize("head", ["unified", "independent"])
def test_head_normalisation_adds_no_parameters_and_keeps_outputs_valid(head):
    plain = build_model(dataclasses.replace(CI_MODEL, head=head), SIZES, (80, 60))
    normed = build_model(dataclasses.replace(CI_MODEL, head=head, head_norm=True), SIZES, (80, 60))
    assert normed.count_params() == plain.count_params()
    assert any(isinstance(layer, keras.layers.LayerNormalization) for layer in normed.layers)
    out = normed(_photos(2), training=False)
    np.testing.assert_allclose(np.asarray(out["subcategory"]).sum(1), 1.0, rtol=1e-5)
