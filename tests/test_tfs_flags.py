"""tensorflow_model_server's command line and monitoring: every flag accepted, Prometheus, Unix sockets, TLS, health.

A command line written for the binary must start `fashion serve` unchanged: the flags this server
applies behave as the binary's do, and the others are accepted and logged as ignored. The servers
here serve a tiny `y = 0.5 * x + 2` SavedModel the test writes.
"""

from __future__ import annotations

import datetime
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from core.errors import StepError
from pipeline.cli import build_parser
from pipeline.commands import serve
from serving import protos
from serving.server import monitoring
from serving.server.health import health_messages
from serving.server.server import ModelServer, ServerOptions
from tests.support import serving as testing
from tests.support.ports import free_port

# Every flag of tensorflow_serving/model_servers/main.cc (tensorflow/serving 9d981c5c), with a value it takes.
MAIN_CC_FLAGS = {
    "port": "8500",
    "grpc_socket_path": "/tmp/tf-serving.sock",
    "rest_api_port": "8501",
    "rest_api_num_threads": "4",
    "rest_api_timeout_in_ms": "5000",
    "rest_api_enable_cors_support": "true",
    "enable_batching": "true",
    "allow_version_labels_for_unavailable_models": "true",
    "batching_parameters_file": "/tmp/batching.txt",
    "enable_per_model_batching_parameters": "true",
    "model_config_file": "/tmp/models.config",
    "model_config_file_poll_wait_seconds": "1",
    "model_name": "default",
    "model_base_path": "/tmp/model",
    "num_load_threads": "2",
    "num_unload_threads": "2",
    "max_num_load_retries": "5",
    "load_retry_interval_micros": "60000000",
    "file_system_poll_wait_seconds": "1",
    "flush_filesystem_caches": "true",
    "tensorflow_session_parallelism": "2",
    "tensorflow_session_config_file": "/tmp/session.txt",
    "tensorflow_intra_op_parallelism": "2",
    "tensorflow_inter_op_parallelism": "2",
    "use_alts_credentials": "false",
    "ssl_config_file": "/tmp/ssl.txt",
    "platform_config_file": "/tmp/platform.txt",
    "per_process_gpu_memory_fraction": "0.5",
    "saved_model_tags": "serve",
    "grpc_channel_arguments": "grpc.max_connection_age_ms=2000",
    "grpc_max_threads": "8",
    "enable_model_warmup": "true",
    "num_request_iterations_for_warmup": "2",
    "version": "false",
    "monitoring_config_file": "/tmp/monitoring.txt",
    "remove_unused_fields_from_bundle_metagraph": "true",
    "prefer_tflite_model": "true",
    "num_tflite_pools": "2",
    "num_tflite_interpreters_per_pool": "1",
    "enable_signature_method_name_check": "true",
    "xla_cpu_compilation_enabled": "false",
    "xla_gpu_compilation_enabled": "false",
    "enable_profiler": "true",
    "thread_pool_factory_config_file": "/tmp/threads.txt",
    "mixed_precision": "bfloat16",
    "skip_initialize_tpu": "true",
    "enable_grpc_healthcheck_service": "true",
    "enable_serialization_as_tensor_content": "false",
}
BOOL_FLAGS = {name for name, value in MAIN_CC_FLAGS.items() if value in ("true", "false")}
# TF Serving's own testdata/monitoring_config.txt.
TFS_MONITORING_CONFIG = 'prometheus_config: {\n  enable: true,\n  path: "/monitoring/prometheus/metrics"\n}\n'


def _parse(*flags: str):
    return build_parser().parse_args(["serve", *flags])


def test_every_flag_of_tensorflow_model_server_parses():
    args = _parse(*(f"--{name}={value}" for name, value in MAIN_CC_FLAGS.items()))
    assert args.port == 8500 and args.grpc_socket_path == "/tmp/tf-serving.sock" and args.enable_batching is True
    assert args.per_process_gpu_memory_fraction == 0.5 and args.mixed_precision == "bfloat16"
    # Boolean flags also stand alone, as the binary's do.
    bare = _parse(*(f"--{name}" for name in sorted(BOOL_FLAGS - {"version"})))
    assert all(getattr(bare, name) is True for name in BOOL_FLAGS - {"version"})


def test_the_flags_that_do_not_apply_are_logged_as_ignored_and_no_others():
    args = _parse(*(f"--{name}={value}" for name, value in MAIN_CC_FLAGS.items()))
    lines = serve.ignored_flags(args)
    named = {re.match(r"--(\w+)=", line).group(1) for line in lines}
    assert named == set(serve.IGNORED_FLAGS) and named < set(MAIN_CC_FLAGS)
    assert "--prefer_tflite_model=true is accepted as tensorflow_model_server does and ignored" in "\n".join(lines)
    assert serve.ignored_flags(_parse("--model_base_path=/m")) == []


def test_a_flag_of_the_wrong_type_is_refused_as_the_binary_refuses_it(capsys):
    with pytest.raises(SystemExit):
        _parse("--num_load_threads=many")
    assert "num_load_threads" in capsys.readouterr().err


def test_batching_is_off_unless_asked_as_in_tensorflow_model_server(tmp_path):
    options, _ = serve.server_options(_parse("--model_base_path=/m"))
    assert options.enable_batching is False
    assert ModelServer(options).manager.options.batching is None
    options, _ = serve.server_options(_parse("--model_base_path=/m", "--enable_batching"))
    assert options.enable_batching is True
    assert ModelServer(options).manager.options.batching is not None
    batching = tmp_path / "batching.txt"
    batching.write_text("max_batch_size { value: 4 }\n")
    with pytest.raises(StepError, match="batching_parameters_file is set without setting --enable_batching"):
        ModelServer(ServerOptions(model_base_path="/m", batching_parameters_file=str(batching)))


def test_tags_and_the_method_name_check_reach_the_model_manager():
    options, _ = serve.server_options(
        _parse("--model_base_path=/m", "--saved_model_tags=tpu,serve", "--enable_signature_method_name_check")
    )
    manager_options = ModelServer(options).manager.options
    assert manager_options.saved_model_tags == ("tpu", "serve")
    assert manager_options.enable_signature_method_name_check is True
    defaults = ModelServer(serve.server_options(_parse("--model_base_path=/m"))[0]).manager.options
    assert (defaults.saved_model_tags, defaults.enable_signature_method_name_check) == (("serve",), False)


def test_parallelism_flags_follow_tensorflow_model_server():
    from serving.server.server import thread_counts

    assert thread_counts(ServerOptions(tensorflow_session_parallelism=3)) == (3, 3)
    assert thread_counts(ServerOptions(tensorflow_session_parallelism=3, tensorflow_intra_op_parallelism=2)) == (2, 0)
    with pytest.raises(StepError, match="You cannot configure all"):
        thread_counts(
            ServerOptions(
                tensorflow_session_parallelism=1, tensorflow_intra_op_parallelism=1, tensorflow_inter_op_parallelism=1
            )
        )


def test_version_prints_the_binarys_two_lines(capsys):
    args = _parse("--version")
    assert serve.run(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("TensorFlow ModelServer: fashion ") and out[1].startswith("TensorFlow Library: ")


def test_monitoring_config_reads_tf_servings_own_file_and_refuses_a_bad_one():
    config = monitoring.parse_monitoring_config(TFS_MONITORING_CONFIG)
    assert config == monitoring.MonitoringConfig(True, "/monitoring/prometheus/metrics")
    assert monitoring.parse_monitoring_config("prometheus_config { enable: true }").prometheus_path == (
        monitoring.DEFAULT_PROMETHEUS_PATH
    )
    with pytest.raises(StepError, match=r"Invalid protobuf file: 'm.txt'.*has no field named \"enabled\""):
        monitoring.parse_monitoring_config("prometheus_config { enabled: true }", "m.txt")


def test_the_prometheus_page_is_rendered_as_tf_servings_exporter_renders_it():
    metrics = monitoring.Metrics()
    call = monitoring.Call("half", "Predict", "GRPC", version=123, signature_name="serving_default")
    metrics.record(call, "OK", latency_us=15)  # in the bucket below 18
    metrics.record(monitoring.Call("half", "Predict", "GRPC", signature_name="serving_default"), "NOT_FOUND")
    page = metrics.prometheus_page()
    lines = page.splitlines()
    assert page.endswith("\n") and not any(line.startswith("# HELP") for line in lines)
    assert "# TYPE :tensorflow:serving:request_count counter" in lines
    assert ':tensorflow:serving:request_count{model_name="half",status="OK"} 1' in lines
    assert ':tensorflow:serving:request_count{model_name="half",status="NOT_FOUND"} 1' in lines
    assert "# TYPE :tensorflow:serving:request_latency histogram" in lines
    prefix = ':tensorflow:serving:request_latency_bucket{model_name="half",API="Predict",entrypoint="GRPC",'
    buckets = [line for line in lines if line.startswith(prefix)]
    assert len(buckets) == 34  # TF Serving's 33 exponential limits and +Inf
    assert buckets[0] == prefix + 'le="10"} 0' and buckets[1] == prefix + 'le="18"} 1'
    assert buckets[2] == prefix + 'le="32.4"} 1' and buckets[-1] == prefix + 'le="+Inf"} 1'
    assert ':tensorflow:serving:request_latency_count{model_name="half",API="Predict",entrypoint="GRPC"} 1' in lines
    assert (
        ':fashion:serving:request_count{model_name="half",version="123",signature_name="serving_default",'
        'API="Predict",entrypoint="GRPC",status="OK"} 1'
    ) in lines


# -- real servers ------------------------------------------------------------------------------


def _write_half_plus_two(base: Path) -> Path:
    """`y = 0.5 * x + 2` as a TF2 SavedModel, version 123 (TF Serving's own test model, rebuilt)."""
    import tensorflow as tf

    class HalfPlusTwo(tf.Module):
        def __init__(self):
            super().__init__()
            self.a = tf.Variable(0.5)
            self.b = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
        def predict(self, x):
            return {"y": self.a * x + self.b}

    module = HalfPlusTwo()
    tf.saved_model.save(module, str(base / "123"), signatures={"serving_default": module.predict})
    return base


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    return _write_half_plus_two(tmp_path_factory.mktemp("half_plus_two") / "half")


def _predict_request(x: list[float], model: str = "half"):
    api = protos.api()
    request = api.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "serving_default"
    tensor = request.inputs["x"]
    tensor.dtype = api.DT_FLOAT
    tensor.tensor_shape.dim.add(size=len(x))
    tensor.tensor_shape.dim.add(size=1)
    tensor.float_val.extend(x)
    return request


def _predict(channel: grpc.Channel, x: list[float], model: str = "half") -> tuple[np.ndarray, int]:
    from serving import tensors

    predict = protos.unary(channel, protos.PREDICTION_SERVICE, "Predict")
    response = predict(_predict_request(x, model), timeout=30)
    return tensors.from_proto(response.outputs["y"]).reshape(-1), response.model_spec.version.value


def _get(url: str, headers: dict | None = None) -> tuple[int, dict, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


@pytest.fixture(scope="module")
def tfs_command_line(base_path, tmp_path_factory):
    """`fashion serve` started with a tensorflow_model_server command line like TF Serving's test suite's."""
    root = tmp_path_factory.mktemp("tfs_command_line")
    monitoring_file = root / "monitoring_config.txt"
    monitoring_file.write_text(TFS_MONITORING_CONFIG)
    socket_path = root / "tf-serving.sock"
    log_path = root / "server.log"
    server = testing.ServerProcess(
        [
            "--model_name=half",
            f"--model_base_path={base_path}",
            "--rest_api_timeout_in_ms=5000",
            f"--grpc_socket_path={socket_path}",
            f"--monitoring_config_file={monitoring_file}",
            "--grpc_channel_arguments=grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb,grpc.so_reuseaddr=1",
            "--rest_api_enable_cors_support",
            "--enable_grpc_healthcheck_service=true",
            # Flags that do not apply here: accepted, logged, ignored.
            "--prefer_tflite_model=true",
            "--enable_profiler=true",
            "--num_load_threads=2",
            "--xla_cpu_compilation_enabled",
        ],
        log_path=log_path,
    ).start()
    try:
        yield server, socket_path, log_path
    finally:
        server.stop()


@pytest.mark.server
def test_the_ignored_flags_are_logged_at_start(tfs_command_line):
    _, _, log_path = tfs_command_line
    log = log_path.read_text()
    for flag in ("--prefer_tflite_model=true", "--enable_profiler=true", "--num_load_threads=2"):
        assert f"{flag} is accepted as tensorflow_model_server does and ignored" in log
    assert "--xla_cpu_compilation_enabled=true is accepted" in log


@pytest.mark.server
def test_predict_over_the_unix_socket(tfs_command_line):
    server, socket_path, _ = tfs_command_line
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        y, version = _predict(channel, [1.0, 2.0, 5.0])
    np.testing.assert_allclose(y, [2.5, 3.0, 4.5])
    assert version == 123
    with grpc.insecure_channel(server.target) as channel:  # the TCP port serves alongside
        assert _predict(channel, [4.0])[0].tolist() == [4.0]


@pytest.mark.server
def test_prometheus_shows_request_count_and_latency_per_model_version_and_signature(tfs_command_line):
    server, _, _ = tfs_command_line
    with grpc.insecure_channel(server.target) as channel:
        for x in range(3):
            _predict(channel, [float(x)])
        with pytest.raises(grpc.RpcError) as missing:
            _predict(channel, [1.0], model="missing")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    body = json.dumps({"instances": [[1.0]]}).encode()
    request = urllib.request.Request(f"{server.rest_url}/v1/models/half:predict", data=body)
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.loads(response.read()) == {"predictions": [[2.5]]}

    status, headers, page = _get(f"{server.rest_url}/monitoring/prometheus/metrics")
    assert status == 200 and headers["Content-Type"] == "text/plain"
    counts = {
        line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if not line.startswith("#") and "_bucket{" not in line and "_sum{" not in line
    }
    # TF Serving's own metrics, names and labels as its exporter writes them (earlier tests add calls).
    assert "# TYPE :tensorflow:serving:request_count counter" in page
    assert counts[':tensorflow:serving:request_count{model_name="half",status="OK"}'] >= 4
    assert counts[':tensorflow:serving:request_count{model_name="missing",status="NOT_FOUND"}'] == 1
    assert counts[':tensorflow:serving:request_latency_count{model_name="half",API="Predict",entrypoint="GRPC"}'] >= 3
    assert counts[':tensorflow:serving:request_latency_count{model_name="half",API="predict",entrypoint="REST"}'] == 1
    # Per version and signature.
    grpc_ok = (
        ':fashion:serving:request_count{model_name="half",version="123",signature_name="serving_default",'
        'API="Predict",entrypoint="GRPC",status="OK"}'
    )
    assert counts[grpc_ok] >= 3
    rest_latency = (
        ':fashion:serving:request_latency_count{model_name="half",version="123",signature_name="serving_default",'
        'API="predict",entrypoint="REST"}'
    )
    assert counts[rest_latency] == 1
    assert ":tensorflow:serving:request_latency_bucket{" in page and 'le="+Inf"}' in page


@pytest.mark.server
def test_rest_answers_carry_cors_headers_when_asked(tfs_command_line):
    server, _, _ = tfs_command_line
    status, headers, _ = _get(f"{server.rest_url}/v1/models/half")
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert headers["Access-Control-Allow-Methods"] == "POST, GET"


@pytest.mark.server
def test_the_grpc_health_service_reports_serving(tfs_command_line):
    server, _, _ = tfs_command_line
    messages = health_messages()
    with grpc.insecure_channel(server.target) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=messages.HealthCheckRequest.SerializeToString,
            response_deserializer=messages.HealthCheckResponse.FromString,
        )
        for name in ("", "PredictionService", "ModelService"):
            assert check(messages.HealthCheckRequest(service=name), timeout=10).status == 1  # SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            check(messages.HealthCheckRequest(service="Nope"), timeout=10)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        watch = channel.unary_stream(
            "/grpc.health.v1.Health/Watch",
            request_serializer=messages.HealthCheckRequest.SerializeToString,
            response_deserializer=messages.HealthCheckResponse.FromString,
        )
        stream = watch(messages.HealthCheckRequest(service=""), timeout=10)
        assert next(stream).status == 1
        stream.cancel()


@pytest.mark.server
def test_without_a_monitoring_config_there_is_no_prometheus_page(base_path):
    server = ModelServer(
        ServerOptions(port=0, rest_api_port=free_port(), host="127.0.0.1", model_name="half",
                      model_base_path=str(base_path))
    ).start()  # fmt: skip
    try:
        status, _, _ = _get(f"http://127.0.0.1:{server.rest_port}/monitoring/prometheus/metrics")
        assert status == 404
    finally:
        server.stop()


@pytest.mark.server
def test_port_zero_with_a_socket_serves_the_socket_only(base_path, tmp_path):
    socket_path = tmp_path / "only.sock"
    server = ModelServer(
        ServerOptions(port=0, rest_api_port=0, host="127.0.0.1", model_name="half", model_base_path=str(base_path),
                      grpc_socket_path=str(socket_path))
    ).start()  # fmt: skip
    try:
        assert server.grpc_port == 0
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            assert _predict(channel, [2.0])[0].tolist() == [3.0]
    finally:
        server.stop()


@pytest.mark.server
def test_a_socket_path_that_cannot_be_bound_is_a_one_line_error(base_path, tmp_path):
    with pytest.raises(StepError, match="cannot listen on the Unix socket"):
        ModelServer(
            ServerOptions(port=0, rest_api_port=0, host="127.0.0.1", model_name="half",
                          model_base_path=str(base_path), grpc_socket_path=str(tmp_path / "no" / "such.sock"))
        ).start()  # fmt: skip


def _self_signed(tmp_path: Path) -> tuple[bytes, bytes]:
    """A key and a certificate for `localhost`, made with cryptography."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.server
def test_ssl_config_file_serves_grpc_over_tls(base_path, tmp_path):
    key, cert = _self_signed(tmp_path)
    ssl_file = tmp_path / "ssl_config.txt"
    ssl_file.write_text(f"server_key: {json.dumps(key.decode())}\nserver_cert: {json.dumps(cert.decode())}\n")
    server = ModelServer(
        ServerOptions(port=free_port(), rest_api_port=0, host="127.0.0.1", model_name="half",
                      model_base_path=str(base_path), ssl_config_file=str(ssl_file))
    ).start()  # fmt: skip
    try:
        tls = grpc.ssl_channel_credentials(root_certificates=cert)
        options = [("grpc.ssl_target_name_override", "localhost")]
        with grpc.secure_channel(f"127.0.0.1:{server.grpc_port}", tls, options=options) as channel:
            assert _predict(channel, [0.0])[0].tolist() == [2.0]
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel, pytest.raises(grpc.RpcError):
            _predict(channel, [0.0])  # plaintext is not served beside TLS
    finally:
        server.stop()


def test_ssl_and_alts_together_are_refused_as_the_binary_refuses_them(tmp_path):
    with pytest.raises(StepError, match="Either use_alts_credentials must be false or ssl_config_file must be empty"):
        ModelServer(ServerOptions(model_base_path="/m", use_alts_credentials=True, ssl_config_file="/tmp/ssl.txt"))
