"""The served (category, sub-category) pair is the joint decoding over the category tree inside the model.

The exported graph must pick the pair the evaluate step's numpy decoding picks, and a real
`fashion serve` must give that pair, with each level's own arg-max beside it, to a plain
tensorflow-serving-api client, to REST and to `fashion predict` alike.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_service_pb2_grpc

from components.evaluate import metrics
from components.register import export
from core.config import load_config
from serving import contract as sig
from serving.client import PredictionClient
from tests.support import serving as testing

# Probabilities of the crafted model, whatever the photo. Each level's own arg-max is Bags and
# Jeans, a pair the tree does not hold; the best allowed pair is (Bags, Backpacks): 0.5 * 0.3.
CRAFTED_CATEGORY = {"Bags": 0.5, "Bottomwear": 0.2, "Shoes": 0.2, "Topwear": 0.1}
CRAFTED_SUBCATEGORY = {
    "Backpacks": 0.3,
    "Casual Shoes": 0.05,
    "Handbags": 0.05,
    "Jeans": 0.4,
    "Shirts": 0.1,
    "Trousers": 0.05,
    "Tshirts": 0.05,
}


def _random_probabilities(rng, rows, classes, peak):
    """Softmax rows of random logits; a larger `peak` gives more confident rows."""
    logits = rng.normal(scale=peak, size=(rows, classes))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def _graph_decode(cat_p, sub_p, allowed):
    import tensorflow as tf

    cat, sub, score = export.joint_decode_tensor(tf.constant(cat_p), tf.constant(sub_p), tf.constant(allowed))
    return cat.numpy(), sub.numpy(), score.numpy()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("peak", [0.1, 1.0, 4.0])
def test_graph_decoding_picks_the_numpy_pair_on_random_probabilities(seed, peak):
    rng = np.random.default_rng(seed)
    num_cat, num_sub = int(rng.integers(2, 12)), int(rng.integers(2, 40))
    allowed = rng.random((num_cat, num_sub)) < 0.3
    allowed[0, 0] = True
    cat_p = _random_probabilities(rng, 500, num_cat, peak)
    sub_p = _random_probabilities(rng, 500, num_sub, peak)

    cat, sub, score = _graph_decode(cat_p, sub_p, allowed)
    want_cat, want_sub, want_score = metrics.joint_decode(cat_p, sub_p, allowed)

    np.testing.assert_array_equal(cat, want_cat)
    np.testing.assert_array_equal(sub, want_sub)
    np.testing.assert_allclose(score, want_score, rtol=1e-6)
    assert allowed[cat, sub].all()


def test_graph_decoding_breaks_ties_like_numpy_and_takes_empty_batches():
    allowed = np.array([[False, True, True], [True, True, False]])
    flat = np.full((1, 2), 0.5, np.float32), np.full((1, 3), 1 / 3, np.float32)
    want = metrics.joint_decode(*flat, allowed)
    got = _graph_decode(*flat, allowed)
    assert (got[0][0], got[1][0]) == (want[0][0], want[1][0]) == (0, 1)

    cat, sub, score = _graph_decode(np.zeros((0, 2), np.float32), np.zeros((0, 3), np.float32), allowed)
    assert cat.shape == sub.shape == score.shape == (0,)


def test_a_schema_without_a_tree_decodes_each_level_alone():
    schema = testing.tiny_schema()
    schema.tree = {}
    allowed = export.allowed_mask(schema)
    assert allowed.all()
    rng = np.random.default_rng(7)
    cat_p, sub_p = _random_probabilities(rng, 200, 4, 1.0), _random_probabilities(rng, 200, 7, 1.0)
    cat, sub, _ = _graph_decode(cat_p, sub_p, allowed)
    np.testing.assert_array_equal(cat, cat_p.argmax(1))
    np.testing.assert_array_equal(sub, sub_p.argmax(1))


def test_the_allowed_mask_is_the_schema_tree():
    schema = testing.tiny_schema()
    want = metrics.allowed_matrix(schema.allowed_pairs(), len(schema.categories), len(schema.subcategories))
    np.testing.assert_array_equal(export.allowed_mask(schema), want)


def crafted_model_dir(path: Path) -> Path:
    """A model folder whose heads answer CRAFTED_* for every photo (zero kernels, log-probability biases)."""
    import keras

    schema = testing.tiny_schema()
    cfg = load_config("ci")
    path.mkdir(parents=True, exist_ok=True)
    image = keras.Input((cfg.preprocess.image_height, cfg.preprocess.image_width, 3), dtype="uint8", name="image")
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(image))

    def head(name, probabilities, activation):
        bias = keras.initializers.Constant(np.log(np.asarray(probabilities, np.float64)))
        layer = keras.layers.Dense(
            len(probabilities), activation, kernel_initializer="zeros", bias_initializer=bias, name=name
        )
        return layer(features)

    outputs = {
        "category": head("category", [CRAFTED_CATEGORY[c] for c in schema.categories], "softmax"),
        "subcategory": head("subcategory", [CRAFTED_SUBCATEGORY[s] for s in schema.subcategories], "softmax"),
        "attributes": head("attributes", [0.5] * len(schema.attributes), "sigmoid"),
    }
    keras.Model(image, outputs).save(path / "model.keras")
    schema.save(path / "labels.json")
    cfg.save(path / "config.yaml")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`fashion serve` with two models: `fashion` (random weights, as trained) and `crafted`."""
    root = tmp_path_factory.mktemp("joint")
    export.export_model(testing.make_model_dir(root / "model"), str(root / "fashion" / "1"))
    export.export_model(crafted_model_dir(root / "crafted-model"), str(root / "crafted" / "1"))
    config = testing.write_models_config(
        root / "models.config",
        [
            {"name": "fashion", "base_path": str(root / "fashion"), "labels": {"stable": 1}},
            {"name": "crafted", "base_path": str(root / "crafted"), "labels": {"stable": 1}},
        ],
    )
    args = ["--preset=ci", f"--model_config_file={config}", "--enable_batching=true"]
    with testing.ServerProcess(args, log_path=root / "server.log") as proc:
        yield proc


def _grpc_outputs(target, model_name, photos):
    """A plain tensorflow-serving-api client: nothing of this project but the names."""
    import tensorflow as tf

    channel = grpc.insecure_channel(target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name="serving_default")
    )
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(photos, dtype=tf.string))
    response = stub.Predict(request, timeout=60)
    channel.close()
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def _rest_rows(rest_url, model_name, photos):
    body = {"instances": [{"b64": base64.b64encode(p).decode()} for p in photos]}
    request = urllib.request.Request(
        f"{rest_url}/v1/models/{model_name}:predict", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())["predictions"]


def _fashion_predict(target, model_name, paths):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "predict",
            "--server",
            target,
            "--model_name",
            model_name,
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=testing.REPO,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.strip().splitlines()]


def _names(values):
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def test_every_front_end_serves_the_tree_consistent_pair_of_the_numpy_decoding(server):
    schema = testing.tiny_schema()
    allowed = export.allowed_mask(schema)
    paths = testing.sample_photos(8)  # the ci preset's largest batch
    photos = [p.read_bytes() for p in paths]

    out = _grpc_outputs(server.target, "fashion", photos)
    cat, sub, joint = metrics.joint_decode(out[sig.CATEGORY_PROBABILITIES], out[sig.SUBCATEGORY_PROBABILITIES], allowed)
    pairs = list(zip(_names(out[sig.CATEGORY]), _names(out[sig.SUBCATEGORY]), strict=True))
    assert pairs == [(schema.categories[c], schema.subcategories[s]) for c, s in zip(cat, sub, strict=True)]
    assert all(s in schema.tree[c] for c, s in pairs)
    rows = np.arange(len(photos))
    np.testing.assert_allclose(out[sig.CATEGORY_SCORE], out[sig.CATEGORY_PROBABILITIES][rows, cat], atol=1e-7)
    np.testing.assert_allclose(out[sig.SUBCATEGORY_SCORE], out[sig.SUBCATEGORY_PROBABILITIES][rows, sub], atol=1e-7)
    np.testing.assert_allclose(out[sig.JOINT_SCORE], joint, rtol=1e-6)
    # Each level's own arg-max stays under its own names.
    independent = [schema.categories[i] for i in out[sig.CATEGORY_PROBABILITIES].argmax(1)]
    assert _names(out[sig.CATEGORY_INDEPENDENT]) == independent
    assert _names(out[sig.SUBCATEGORY_INDEPENDENT]) == [
        schema.subcategories[i] for i in out[sig.SUBCATEGORY_PROBABILITIES].argmax(1)
    ]
    np.testing.assert_allclose(out[sig.CATEGORY_INDEPENDENT_SCORE], out[sig.CATEGORY_PROBABILITIES].max(1), atol=1e-7)

    rest = _rest_rows(server.rest_url, "fashion", photos)
    printed = _fashion_predict(server.target, "fashion", paths)
    for i, (row, line) in enumerate(zip(rest, printed, strict=True)):
        for key in (sig.CATEGORY, sig.SUBCATEGORY, sig.CATEGORY_INDEPENDENT, sig.SUBCATEGORY_INDEPENDENT):
            assert row[key] == line[key] == _names(out[key])[i], key
        for key in (sig.CATEGORY_SCORE, sig.SUBCATEGORY_SCORE, sig.JOINT_SCORE, sig.SUBCATEGORY_INDEPENDENT_SCORE):
            assert row[key] == pytest.approx(float(out[key][i]), abs=1e-6)
            assert line[key] == pytest.approx(float(out[key][i]), abs=1e-6)


def test_an_impossible_independent_pair_is_served_as_the_best_allowed_pair(server):
    schema = testing.tiny_schema()
    paths = testing.sample_photos(2)
    photos = [p.read_bytes() for p in paths]
    assert "Jeans" not in schema.tree["Bags"]

    out = _grpc_outputs(server.target, "crafted", photos)
    rest = _rest_rows(server.rest_url, "crafted", photos)
    printed = _fashion_predict(server.target, "crafted", paths)
    for answer in (
        {
            k: _names(out[k])[0]
            for k in (sig.CATEGORY, sig.SUBCATEGORY, sig.CATEGORY_INDEPENDENT, sig.SUBCATEGORY_INDEPENDENT)
        },
        rest[0],
        printed[0],
    ):
        assert (answer[sig.CATEGORY], answer[sig.SUBCATEGORY]) == ("Bags", "Backpacks")
        assert (answer[sig.CATEGORY_INDEPENDENT], answer[sig.SUBCATEGORY_INDEPENDENT]) == ("Bags", "Jeans")
    for answer in (rest[1], printed[1]):
        assert answer[sig.JOINT_SCORE] == pytest.approx(0.5 * 0.3, abs=1e-5)
        assert answer[sig.SUBCATEGORY_SCORE] == pytest.approx(0.3, abs=1e-5)
        assert answer[sig.SUBCATEGORY_INDEPENDENT_SCORE] == pytest.approx(0.4, abs=1e-5)


def test_the_signature_keeps_the_old_outputs_and_names_the_new_ones(server):
    from tensorflow.core.framework import types_pb2

    with PredictionClient(server.target, "fashion", label="stable") as client:
        outputs = client.metadata().signature_def[sig.SIGNATURE_NAME].outputs
    assert set(outputs) == set(sig.OUTPUT_KEYS)
    strings = {
        sig.CATEGORY,
        sig.SUBCATEGORY,
        sig.CATEGORY_INDEPENDENT,
        sig.SUBCATEGORY_INDEPENDENT,
        sig.ATTRIBUTE_NAMES,
    }
    for name, info in outputs.items():
        assert info.dtype == (types_pb2.DT_STRING if name in strings else types_pb2.DT_FLOAT), name
        assert len(info.tensor_shape.dim) == (2 if name.endswith(("probabilities", "names", "scores")) else 1), name
