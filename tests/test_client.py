"""`fashion predict` and the Python client answer exactly what a plain tensorflow-serving-api client gets."""

from __future__ import annotations

import json

import grpc
import pytest
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_service_pb2_grpc

from components.register import export
from pipeline.cli import main
from serving import contract as sig
from serving.client import PredictionClient, format_predictions
from tests.support import serving as testing

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("client")
    base = root / "fashion"
    export.export_model(testing.make_model_dir(root / "model"), str(base / "1"))
    config = testing.write_models_config(
        root / "models.config", [{"name": "fashion", "base_path": str(base), "labels": {"stable": 1}}]
    )
    server = testing.start_local_server(config, enable_batching=True)
    yield f"127.0.0.1:{server.grpc_port}"
    server.stop()


def _plain_predict(target, photos):
    """What any TF Serving client does, with nothing from this project but the names."""
    import tensorflow as tf

    channel = grpc.insecure_channel(target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name="fashion", signature_name="serving_default")
    )
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(photos, dtype=tf.string))
    response = stub.Predict(request, timeout=30)
    channel.close()
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def test_fashion_predict_prints_one_json_object_per_photo_matching_a_plain_client(server, capsys):
    paths = testing.sample_photos(3)
    code = main(
        ["predict", "--preset", "ci", "--server", server, "--label", "stable", "--threshold", "0.4", *map(str, paths)]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(lines) == 3
    printed = [json.loads(line) for line in lines]
    expected = format_predictions(_plain_predict(server, [p.read_bytes() for p in paths]), 0.4)
    for path, got, want in zip(paths, printed, expected, strict=True):
        assert got["image"] == str(path) and got["model_version"] == 1
        assert got["category"] == want["category"] and got["subcategory"] == want["subcategory"]
        assert got["category_score"] == pytest.approx(want["category_score"], abs=1e-6)
        assert got["attributes"] == want["attributes"]
        assert set(got["attribute_groups"]) == {"baseColour", "season", "usage", "gender"}


def test_fashion_predict_reports_bad_photos_and_unknown_versions(server, capsys, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    good = testing.sample_photos(1)[0]
    code = main(
        ["predict", "--server", server, "--model_name", "fashion", str(bad), str(tmp_path / "missing.jpg"), str(good)]
    )
    results = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert code == 1
    assert results[0]["error"].startswith("INVALID_ARGUMENT")
    assert "cannot read" in results[1]["error"]
    assert results[2]["category"]
    assert main(["predict", "--server", server, "--model_name", "fashion", "--version", "9", str(good)]) == 1
    assert json.loads(capsys.readouterr().out)["error"].startswith("NOT_FOUND")


def test_python_client_sets_signature_deadline_and_limits(server):
    with PredictionClient(server, "fashion", label="stable", timeout_s=5, max_message_bytes=1 << 20) as client:
        spec = client.model_spec()
        assert spec.signature_name == sig.SIGNATURE_NAME and spec.version_label == "stable"
        assert client.status() == [(1, "AVAILABLE")]
        assert set(client.metadata().signature_def[sig.SIGNATURE_NAME].outputs) == set(sig.OUTPUT_KEYS)
        result = client.predict([testing.sample_photos(1)[0].read_bytes()])[0]
        assert result["model_version"] == 1
        with pytest.raises(grpc.RpcError) as info:
            client.predict_raw([b"x" * (2 << 20)])  # over the client's own 1 MB send limit
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_fashion_predict_imports_no_tensorflow_and_prints_nothing_of_it(tmp_path, samples_dir):
    import subprocess
    import sys

    from tests.support.ports import free_port

    photo = sorted(samples_dir.glob("*.jpg"))[0]
    code = (
        "import sys\n"
        "from pipeline.cli import main\n"
        f"rc = main(['predict', '--server', '127.0.0.1:{free_port()}', '--timeout', '1', {str(photo)!r}])\n"
        "print('TF' if 'tensorflow' in sys.modules else 'no TF', rc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    # Nothing listens there: the request is sent and fails, and TensorFlow was never imported.
    assert done.stdout.strip().splitlines()[-1] == "no TF 1"
    assert "UNAVAILABLE" in done.stdout
    assert "tensorflow" not in done.stderr.lower() and "cuda" not in done.stderr.lower()


def test_the_shipped_descriptors_match_the_installed_serving_api():
    from serving import protos

    shipped = protos.DESCRIPTOR_SET.read_bytes()
    assert shipped == protos.build_descriptor_set().SerializeToString(deterministic=True), (
        "serving/tfs_api.binpb is stale: run `make protos` after upgrading tensorflow-serving-api"
    )
