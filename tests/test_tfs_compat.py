"""`fashion serve` answers any SavedModel as TF Serving does: TF2 and TF1-style, predict, classify, regress.

Against real `fashion serve` processes on loopback ports, with tiny `y = 0.5 x + 2` models the
tests write (`tests/support/tfs_models.py`) in version folders with leading zeros, and a plain
tensorflow-serving-api client, the way TF Serving's own test suite talks to its server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving import tensors
from serving.server.errors import ServingError
from serving.server.servable import Servable
from tests.support import serving as testing
from tests.support import tfs_models

pytestmark = [pytest.mark.server, pytest.mark.slow]

TF2, TF1 = "linear", "linear_v1"
TF2_VERSION, TF1_VERSION = 123, 7
CLASSIFY, REGRESS = "tensorflow/serving/classify", "tensorflow/serving/regress"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two base paths: the TF2 model as `00000123`, the TF1-style one as `0007`, and their models.config."""
    root = tmp_path_factory.mktemp("tfs-models")
    tf2 = tfs_models.write_tf2_model(root / TF2 / "00000123")
    _write_warmup(tf2)
    tfs_models.write_tf1_model(root / TF1 / "0007")
    config = testing.write_models_config(
        root / "models.config",
        [{"name": TF2, "base_path": str(root / TF2)}, {"name": TF1, "base_path": str(root / TF1)}],
    )
    return root, config


def _examples(*xs: float, request=None):
    request = request or classification_pb2.ClassificationRequest()
    for x in xs:
        request.input.example_list.examples.add().features.feature["x"].float_list.value.append(x)
    return request


def _write_warmup(version_dir) -> None:
    """Warmup records of every kind TF Serving replays: the version only loads if each of them runs."""
    import tensorflow as tf

    records = []
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.model_spec.name = TF2
    log.predict_log.request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0]], tf.float32))
    records.append(log)
    log = prediction_log_pb2.PredictionLog()
    log.classify_log.request.CopyFrom(_examples(1.0))
    log.classify_log.request.model_spec.signature_name = "classify_x_to_y"
    records.append(log)
    log = prediction_log_pb2.PredictionLog()
    _examples(1.0, request=log.regress_log.request)
    log.regress_log.request.model_spec.signature_name = "regress_x_to_y"
    records.append(log)
    log = prediction_log_pb2.PredictionLog()
    _examples(1.0, request=log.multi_inference_log.request)
    task = log.multi_inference_log.request.tasks.add(method_name=REGRESS)
    task.model_spec.name, task.model_spec.signature_name = TF2, "regress_x_to_y"
    records.append(log)
    path = version_dir / "assets.extra" / "tf_serving_warmup_requests"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record.SerializeToString())


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    _, config = models
    args = [f"--model_config_file={config}", "--enable_batching=false", "--file_system_poll_wait_seconds=0.5"]
    with testing.ServerProcess(args, log_path=tmp_path_factory.mktemp("log") / "server.log") as proc:
        yield proc


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.target)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


def _predict_request(model: str, signature: str = "", shape=(1,), values=(2.0,), alias: str = "x"):
    """TF Serving's own test request: `float_val` values and a shape (`[1]` for a `[?,1]` input)."""
    from tensorflow.core.framework import types_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    tensor = request.inputs[alias]
    tensor.dtype = types_pb2.DT_FLOAT
    tensor.float_val.extend(values)
    for d in shape:
        tensor.tensor_shape.dim.add(size=d)
    return request


def _error(call, request):
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30)
    return info.value.code(), info.value.details()


def _http(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# -- version folders ----------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "version"), [(TF2, TF2_VERSION), (TF1, TF1_VERSION)])
def test_a_version_folder_with_leading_zeros_is_served_under_its_number(server, model, version):
    channel = grpc.insecure_channel(server.target)
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec={"name": model}), timeout=30
    )
    assert [(s.version, s.state, s.status.error_code) for s in status.model_version_status] == [(version, 30, 0)]
    request = _predict_request(model)
    request.model_spec.version.value = version
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert (response.model_spec.name, response.model_spec.version.value) == (model, version)
    channel.close()


# -- Predict ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [TF2, TF1])
def test_predict_feeds_the_tensor_as_sent_and_answers_in_typed_fields(stub, model):
    # `[1]` for the signature's `[?,1]`: TF Serving passes it to the graph, which answers `[1]`.
    response = stub.Predict(_predict_request(model), timeout=30)
    y = response.outputs["y"]
    assert list(y.float_val) == [3.0] and y.tensor_content == b""
    assert [d.size for d in y.tensor_shape.dim] == [1]
    assert response.model_spec.signature_name == "serving_default"
    batch = stub.Predict(_predict_request(model, shape=(3, 1), values=(2.0, 4.0, 6.0)), timeout=30)
    assert list(batch.outputs["y"].float_val) == [3.0, 4.0, 5.0]


def test_every_output_dtype_comes_back_in_its_typed_field(stub):
    response = stub.Predict(_predict_request(TF2, "typed", shape=(2,), values=(1.0, 2.0)), timeout=30)
    out = response.outputs
    assert all(t.tensor_content == b"" for t in out.values())
    assert list(out["float"].float_val) == [2.5, 3.0]
    assert list(out["double"].double_val) == [2.5, 3.0]
    assert list(out["int64"].int64_val) == [2, 3]
    assert list(out["int32"].int_val) == [2, 3]
    assert list(out["bool"].bool_val) == [False, True]
    assert list(out["string"].string_val) == [b"2.5", b"3.0"]
    assert np.array(out["half"].half_val, np.uint16).view(np.float16).tolist() == [2.5, 3.0]
    # The project's TensorFlow-free reader reads the typed fields as TensorFlow does.
    import tensorflow as tf

    for alias, proto in out.items():
        np.testing.assert_array_equal(tensors.from_proto(proto), tf.make_ndarray(proto), err_msg=alias)


def test_predict_serves_classify_and_regress_signatures_without_a_method_check(stub):
    from tensorflow.core.framework import types_pb2

    examples = _examples(2.0, 4.0).input.example_list.examples
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = TF1, "regress_x_to_y"
    request.inputs["inputs"].dtype = types_pb2.DT_STRING
    request.inputs["inputs"].string_val.extend(e.SerializeToString() for e in examples)
    request.inputs["inputs"].tensor_shape.dim.add(size=2)
    response = stub.Predict(request, timeout=30)
    assert list(response.outputs["outputs"].float_val) == [3.0, 4.0]


def test_predict_errors_carry_tf_servings_words(stub):
    code, details = _error(stub.Predict, _predict_request(TF2, alias="z"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("Signature input alias: x(feed name: serving_default_x:0) not found in request")
    request = _predict_request(TF2)
    request.inputs["z"].CopyFrom(request.inputs["x"])
    code, details = _error(stub.Predict, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "input size does not match signature: 2!=1" in details
    request = _predict_request(TF2)
    request.output_filter.extend(["y", "y"])
    assert _error(stub.Predict, request) == (grpc.StatusCode.INVALID_ARGUMENT, "duplicate output tensor alias: y")
    request = _predict_request(TF2, values=())
    request.inputs["x"].tensor_content = np.zeros(3, np.float32).tobytes()  # three values for a shape of one
    assert _error(stub.Predict, request) == (grpc.StatusCode.INVALID_ARGUMENT, "tensor parsing error: x")


# -- Classify, Regress, MultiInference ----------------------------------------------------------


@pytest.mark.parametrize("model", [TF2, TF1])
def test_classify_and_regress_run_on_tf_examples(stub, model):
    request = _examples(2.0, 4.0)
    request.model_spec.name, request.model_spec.signature_name = model, "classify_x_to_y"
    response = stub.Classify(request, timeout=30)
    assert [[(c.label, c.score) for c in cl.classes] for cl in response.result.classifications] == [
        [("", 3.0)],
        [("", 4.0)],
    ]
    version = TF2_VERSION if model == TF2 else TF1_VERSION
    assert (response.model_spec.name, response.model_spec.signature_name) == (model, "classify_x_to_y")
    assert response.model_spec.version.value == version
    regress = _examples(2.0, request=regression_pb2.RegressionRequest())
    regress.model_spec.name, regress.model_spec.signature_name = model, "regress_x_to_y"
    response = stub.Regress(regress, timeout=30)
    assert [r.value for r in response.result.regressions] == [3.0]
    assert response.model_spec.version.value == version


def test_classes_and_scores_and_examples_with_a_context(stub):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = TF2, "classify_with_classes"
    # The context's features join every example's (proto concatenation merges them).
    request.input.example_list_with_context.context.features.feature["x"].float_list.value.append(0.0)
    request.input.example_list_with_context.examples.add()
    response = stub.Classify(request, timeout=30)
    classes = response.result.classifications[0].classes
    assert [(c.label, c.score) for c in classes] == [("low", -1.0), ("high", 2.0)]


@pytest.mark.parametrize("model", [TF2, TF1])
def test_multi_inference_runs_every_task_over_the_same_examples(stub, model):
    request = _examples(2.0, request=inference_pb2.MultiInferenceRequest())
    for signature, method in (("regress_x_to_y", REGRESS), ("classify_x_to_y", CLASSIFY)):
        task = request.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = model, signature
    response = stub.MultiInference(request, timeout=30)
    assert response.results[0].regression_result.regressions[0].value == 3.0
    assert response.results[1].classification_result.classifications[0].classes[0].score == 3.0
    assert [r.model_spec.signature_name for r in response.results] == ["regress_x_to_y", "classify_x_to_y"]


def test_classify_regress_and_multi_inference_errors_are_tf_servings(stub):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = TF2, "classify_x_to_y"
    assert _error(stub.Classify, request) == (grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")
    request = _examples(2.0)
    request.model_spec.name, request.model_spec.signature_name = TF2, "nope"
    assert _error(stub.Classify, request) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "No signature was found with the name: nope",
    )
    request.model_spec.signature_name = ""  # serving_default: one input, but not named `inputs`
    code, details = _error(stub.Classify, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("No classification inputs found")
    regress = _examples(2.0, request=regression_pb2.RegressionRequest())
    regress.model_spec.name, regress.model_spec.signature_name = TF2, "classify_with_classes"
    assert _error(stub.Regress, regress) == (grpc.StatusCode.INVALID_ARGUMENT, "Expected one output Tensor.")
    multi = _examples(2.0, request=inference_pb2.MultiInferenceRequest())
    for _ in range(2):
        task = multi.tasks.add(method_name=REGRESS)
        task.model_spec.name, task.model_spec.signature_name = TF2, "regress_x_to_y"
    assert _error(stub.MultiInference, multi) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Duplicate evaluation of signature: regress_x_to_y",
    )
    multi.tasks[1].model_spec.signature_name, multi.tasks[1].method_name = (
        "serving_default",
        "tensorflow/serving/predict",
    )
    assert _error(stub.MultiInference, multi) == (
        grpc.StatusCode.UNIMPLEMENTED,
        "Unsupported signature method_name: tensorflow/serving/predict",
    )
    assert _error(stub.MultiInference, inference_pb2.MultiInferenceRequest()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "ModelSpec has no name specified.",
    )


# -- REST ---------------------------------------------------------------------------------------


def test_rest_classify_regress_and_predict(server):
    base = f"{server.rest_url}/v1/models/{TF1}"
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    assert _http(f"{base}:classify", body) == (200, {"results": [[["", 3.0]]]})
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}, {"x": 4.0}]}
    assert _http(f"{base}:regress", body) == (200, {"results": [3.0, 4.0]})
    assert _http(f"{base}:predict", {"instances": [2.0, 3.0, 4.0]}) == (200, {"predictions": [3.0, 3.5, 4.0]})
    assert _http(f"{base}:predict", {"inputs": [2.0, 3.0, 4.0]}) == (200, {"outputs": [3.0, 3.5, 4.0]})
    code, answer = _http(f"{base}:regress", {"signature_name": "regress_x_to_y"})
    assert code == 400 and answer["error"].endswith(
        "When method is classify, key 'examples' is expected and was not found"
    )
    code, answer = _http(
        f"{base}:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0, "y": [1, "a"]}]}
    )
    assert (code, answer) == (400, {"error": "Unexpected element type in feature: y expecting type: int64"})


def test_rest_metadata_prints_fields_at_their_default_values(server):
    code, answer = _http(f"{server.rest_url}/v1/models/{TF1}/metadata")
    assert code == 200
    assert answer["model_spec"] == {"name": TF1, "signature_name": "", "version": str(TF1_VERSION)}
    predict = answer["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert predict["defaults"] == {} and predict["method_name"] == "tensorflow/serving/predict"
    assert predict["inputs"]["x"] == {
        "dtype": "DT_FLOAT",
        "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}], "unknown_rank": False},
        "name": "x:0",
    }
    classify = answer["metadata"]["signature_def"]["signature_def"]["classify_x_to_y"]
    assert classify["inputs"]["inputs"]["tensor_shape"] == {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False}


def test_grpc_metadata_lists_every_signature(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = TF2
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    stub.GetModelMetadata(request, timeout=30).metadata["signature_def"].Unpack(sig_map)
    assert "__saved_model_init_op" in sig_map.signature_def
    assert sig_map.signature_def["regress_x_to_y"].method_name == REGRESS


# -- batching, config errors, loading -----------------------------------------------------------


def test_a_scalar_output_under_batching_fails_that_request_and_the_server_keeps_answering(models, tmp_path):
    _, config = models
    batching = tmp_path / "batching.config"
    batching.write_text(
        "max_batch_size { value: 8 }\nbatch_timeout_micros { value: 0 }\nnum_batch_threads { value: 1 }\n"
    )
    args = [f"--model_config_file={config}", "--enable_batching=true", f"--batching_parameters_file={batching}"]
    with testing.ServerProcess(args, log_path=tmp_path / "server.log") as proc:
        channel = grpc.insecure_channel(proc.target)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(2):  # the batch thread survives the first one
            assert _error(stub.Predict, _predict_request(TF2, "scalar_y")) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                "Batched output tensor has 0 dimensions",
            )
        assert list(stub.Predict(_predict_request(TF2), timeout=30).outputs["y"].float_val) == [3.0]
        channel.close()


def test_a_config_file_that_does_not_parse_names_protobufs_parse_error(tmp_path):
    bad = tmp_path / "bad_model_config.txt"
    bad.write_text("improperly formatted file")
    command = [sys.executable, "-m", "pipeline.cli", "serve", f"--model_config_file={bad}", "--port=0"]
    result = subprocess.run(command, cwd=testing.REPO, capture_output=True, text=True, timeout=300, check=False)  # noqa: S603
    assert result.returncode != 0
    assert (
        "Error parsing text-format tensorflow.serving.ModelServerConfig: 1:1: "
        'Message type "tensorflow.serving.ModelServerConfig" has no field named "improperly".'
    ) in result.stderr
    assert f"Invalid protobuf file: '{bad}'" in result.stderr


def test_a_warmup_record_of_an_unsupported_kind_fails_the_load(models, tmp_path):
    import shutil

    import tensorflow as tf

    root, _ = models
    version = tmp_path / "1"
    shutil.copytree(root / TF2 / "00000123", version)
    log = prediction_log_pb2.PredictionLog()
    log.session_run_log.SetInParent()
    with tf.io.TFRecordWriter(str(version / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        writer.write(log.SerializeToString())
    servable = Servable(TF2, 1, str(version))
    try:
        with pytest.raises(ServingError) as err:
            servable.warmup()
        assert (err.value.code, err.value.message) == (
            grpc.StatusCode.UNIMPLEMENTED,
            "Unsupported log_type for warmup: 5",
        )
    finally:
        servable.close()


def test_a_meta_graph_is_chosen_by_its_exact_tag_set(models):
    root, _ = models
    with pytest.raises(ServingError) as err:
        Servable(TF1, 7, str(root / TF1 / "0007"), tags=("serve", "gpu"))
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert err.value.message.startswith("Could not find meta graph def matching supplied tags: { gpu serve }")


# -- the tensor converter -----------------------------------------------------------------------


def test_fewer_typed_values_than_the_shape_repeat_the_last_one_as_tensorflow_reads_them():
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2, types_pb2

    for dtype, field, values in (
        (types_pb2.DT_FLOAT, "float_val", [1.5]),
        (types_pb2.DT_INT64, "int64_val", [1, 2]),
        (types_pb2.DT_STRING, "string_val", [b"a"]),
        (types_pb2.DT_INT32, "int_val", []),
        (types_pb2.DT_DOUBLE, "double_val", [1.0, 2.0, 3.0, 4.0]),  # past the shape: dropped, as TF's C++ does
    ):
        proto = tensor_pb2.TensorProto(dtype=dtype)
        proto.tensor_shape.dim.add(size=3)
        getattr(proto, field).extend(values)
        expected = tf.make_ndarray(proto) if len(values) <= 3 else np.array(values[:3])
        np.testing.assert_array_equal(tensors.from_proto(proto), expected)
    proto = tensors.to_proto(np.array([1.0, 2.0], np.float32))
    assert list(proto.float_val) == [1.0, 2.0] and proto.tensor_content == b""
    content = tensors.to_proto(np.array([1.0, 2.0], np.float32), as_content=True)
    assert not content.float_val and tensors.from_proto(content).tolist() == [1.0, 2.0]
