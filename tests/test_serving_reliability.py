"""A real `fashion serve` process against bad requests, big photos, and a version swap under load."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from PIL import Image
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from components.register import export
from serving import contract as sig
from serving.client import PredictionClient
from tests.support import serving as testing

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return testing.make_model_dir(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def base_path(tmp_path_factory, model_dir):
    base = tmp_path_factory.mktemp("base")
    export.export_model(model_dir, str(base / "1"), warmup_photos=testing.sample_photos(2))
    return base


@pytest.fixture(scope="module")
def server(base_path, tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "server.log"
    args = [
        "--preset=ci",
        f"--model_base_path={base_path}",
        "--model_name=fashion",
        "--enable_batching=true",
        "--file_system_poll_wait_seconds=0.2",
        "--max_message_mb=2",
    ]
    with testing.ServerProcess(args, log_path=log) as proc:
        yield proc


@pytest.fixture()
def stub(server):
    channel = grpc.insecure_channel(
        server.target,
        options=[("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)],
    )
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


def _request(values, dtype=None, name="fashion", version=None, label=None, alias=sig.INPUT_KEY, signature=None):
    import tensorflow as tf

    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=name))
    request.model_spec.signature_name = signature if signature is not None else sig.SIGNATURE_NAME
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs[alias].CopyFrom(tf.make_tensor_proto(values, dtype=dtype))
    return request


def _photo(name="jeans-24204.jpg"):
    return (testing.SAMPLES_DIR / name).read_bytes()


def _assert_serves(stub):
    import tensorflow as tf

    response = stub.Predict(_request([_photo()], tf.string), timeout=30)
    assert tf.make_ndarray(response.outputs[sig.CATEGORY]).shape == (1,)


def _code(stub, request, method="Predict"):
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, method)(request, timeout=30)
    return info.value.code(), info.value.details()


def test_corrupt_bytes_are_invalid_argument_and_the_server_keeps_serving(stub):
    import tensorflow as tf

    code, details = _code(stub, _request([b"not an image at all"], tf.string))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "image" in details.lower()
    truncated = _photo()[:200]
    assert _code(stub, _request([truncated], tf.string))[0] == grpc.StatusCode.INVALID_ARGUMENT
    _assert_serves(stub)


def test_empty_batch_gets_an_empty_answer(stub):
    import tensorflow as tf

    response = stub.Predict(_request(np.array([], dtype=object), tf.string), timeout=30)
    assert tf.make_ndarray(response.outputs[sig.CATEGORY_PROBABILITIES]).shape == (0, 4)
    _assert_serves(stub)


def test_wrong_dtype_shape_and_alias_are_invalid_argument(stub):
    import tensorflow as tf

    code, details = _code(stub, _request([1.0, 2.0], tf.float32))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Expects arg[0] to be string but float is provided" in details
    code, details = _code(stub, _request([[_photo()]], tf.string))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "shape" in details
    code, details = _code(stub, _request([_photo()], tf.string, alias="images"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Signature input alias: image_bytes" in details
    code, details = _code(stub, _request([_photo()], tf.string, signature="nope"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and 'Serving signature key "nope" not found.' in details
    _assert_serves(stub)


def test_unknown_model_version_and_label(stub):
    import tensorflow as tf

    code, details = _code(stub, _request([_photo()], tf.string, name="nope"))
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)")
    code, details = _code(stub, _request([_photo()], tf.string, version=99))
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(fashion, 99)")
    code, details = _code(stub, _request([_photo()], tf.string, label="canary"))
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: canary")
    _assert_serves(stub)


def test_request_over_the_size_limit_is_refused_and_a_huge_photo_within_it_is_served(stub):
    import tensorflow as tf

    big = np.random.default_rng(0).bytes(3 << 20)
    code, _ = _code(stub, _request([big], tf.string))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # A 4000x3000 photo (smooth, so its JPEG stays under the 2 MB limit) is decoded and fitted.
    gradient = np.linspace(0, 255, 4000 * 3000 * 3, dtype=np.float32).reshape(4000, 3000, 3).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(gradient).save(buf, "JPEG", quality=70)
    assert len(buf.getvalue()) < 2 << 20
    response = stub.Predict(_request([buf.getvalue()], tf.string), timeout=60)
    assert tf.make_ndarray(response.outputs[sig.CATEGORY]).shape == (1,)
    _assert_serves(stub)


def test_batch_over_max_batch_size_is_invalid_argument(stub):
    import tensorflow as tf

    code, details = _code(stub, _request([_photo()] * 9, tf.string))  # ci preset: max_batch_size 8
    assert (
        code == grpc.StatusCode.INVALID_ARGUMENT and "Task size 9 is larger than maximum input batch size 8" in details
    )
    _assert_serves(stub)


def test_metadata_and_predict_only_methods(stub):
    from tensorflow_serving.apis import classification_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=model_pb2.ModelSpec(name="fashion"))
    code, details = _code(stub, request, "GetModelMetadata")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "metadata_field" in details
    request.metadata_field.append("signature_def")
    response = stub.GetModelMetadata(request, timeout=30)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sig_map)
    serving_default = sig_map.signature_def[sig.SIGNATURE_NAME]
    assert set(serving_default.inputs) == {sig.INPUT_KEY}
    assert set(serving_default.outputs) == set(sig.OUTPUT_KEYS)
    classify = classification_pb2.ClassificationRequest(model_spec=model_pb2.ModelSpec(name="fashion"))
    code, details = _code(stub, classify, "Classify")
    # TF Serving checks no method name by default: the signature's tensors do not fit a classification.
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Expected one or two output Tensors" in details


def _http(method, url, body=None):
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_rest_status_metadata_predict_and_errors(server, stub):
    import base64

    import tensorflow as tf

    url = f"{server.rest_url}/v1/models/fashion"
    status, body = _http("GET", url)
    assert status == 200
    assert {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}} in body[
        "model_version_status"
    ]
    status, body = _http("GET", f"{url}/versions/1/metadata")
    assert status == 200 and body["model_spec"]["version"] == "1"
    assert sig.INPUT_KEY in body["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]

    b64 = base64.b64encode(_photo()).decode()
    status, rows = _http("POST", f"{url}:predict", {"instances": [{"b64": b64}, {sig.INPUT_KEY: {"b64": b64}}]})
    assert status == 200 and len(rows["predictions"]) == 2
    status, cols = _http("POST", f"{url}/versions/1:predict", {"inputs": {sig.INPUT_KEY: [{"b64": b64}]}})
    assert status == 200
    grpc_out = stub.Predict(_request([_photo()], tf.string), timeout=30).outputs
    assert rows["predictions"][0][sig.CATEGORY] == cols["outputs"][sig.CATEGORY][0]
    assert rows["predictions"][0][sig.CATEGORY] == tf.make_ndarray(grpc_out[sig.CATEGORY])[0].decode()
    np.testing.assert_allclose(
        rows["predictions"][0][sig.CATEGORY_PROBABILITIES],
        tf.make_ndarray(grpc_out[sig.CATEGORY_PROBABILITIES])[0],
        rtol=1e-6,
    )

    assert _http("POST", f"{url}/versions/7:predict", {"instances": [{"b64": b64}]})[0] == 404
    status, body = _http("POST", f"{url}/labels/nope:predict", {"instances": [{"b64": b64}]})
    assert (status, body["error"]) == (400, "Unrecognized servable version label: nope")
    assert _http("POST", f"{server.rest_url}/v1/models/nope:predict", {"instances": [{"b64": b64}]})[0] == 404
    status, body = _http("POST", f"{url}:predict", b"instances = [1]")
    assert status == 400 and "JSON Parse error" in body["error"]
    status, body = _http("POST", f"{url}:predict", {"instances": [{"b64": base64.b64encode(b"junk").decode()}]})
    assert status == 400
    status, body = _http("POST", f"{url}:predict", {"signature_name": 100, "instances": []})
    assert status == 400 and "'signature_name' key must be a string value." in body["error"]
    assert _http("GET", f"{server.rest_url}/v1/foo")[0] == 400
    _assert_serves(stub)


def test_version_swap_under_concurrent_load_fails_no_request(server, base_path, stub):
    import tensorflow as tf

    failures, versions, stop = [], [], threading.Event()
    photo = _photo()

    def hammer():
        client = PredictionClient(server.target, "fashion", timeout_s=60)
        while not stop.is_set():
            try:
                versions.append(client.predict_raw([photo]).version)
            except grpc.RpcError as err:
                failures.append(f"{err.code().name}: {err.details()}")
        client.close()

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        staging = base_path / ".tmp-2"
        shutil.copytree(base_path / "1", staging)
        staging.rename(base_path / "2")  # the default latest policy: 2 loads, then 1 is retired
        with PredictionClient(server.target, "fashion") as client:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and client.status() != [(2, "AVAILABLE"), (1, "END")]:
                time.sleep(0.2)
            assert client.status() == [(2, "AVAILABLE"), (1, "END")]
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert versions[0] == 1 and versions[-1] == 2 and len(versions) > 20
    response = stub.Predict(_request([photo], tf.string), timeout=30)
    assert response.model_spec.version.value == 2
