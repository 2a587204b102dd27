"""One server per port, and a startup problem is one line: a second server never shares a port silently."""

from __future__ import annotations

import socket

import pytest

from components.register import export
from core.errors import StepError
from pipeline.cli import main
from serving.server.server import ModelServer, ServerOptions
from tests.support import serving as testing
from tests.support.ports import free_port

pytestmark = [pytest.mark.server]


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    base = root / "fashion"
    export.export_model(testing.make_model_dir(root / "model"), str(base / "1"))
    return base


def _options(base_path, grpc_port: int, rest_port: int, **extra) -> ServerOptions:
    return ServerOptions(
        port=grpc_port, rest_api_port=rest_port, host="127.0.0.1", model_name="fashion",
        model_base_path=str(base_path), **extra,
    )  # fmt: skip


@pytest.mark.parametrize("taken", ["grpc", "rest"])
def test_a_port_in_use_fails_at_start_naming_the_port(base_path, taken):
    grpc_port, rest_port = free_port(), free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", grpc_port if taken == "grpc" else rest_port))
        holder.listen()
        with pytest.raises(StepError, match=rf"127\.0\.0\.1:{grpc_port if taken == 'grpc' else rest_port}.*in use"):
            ModelServer(_options(base_path, grpc_port, rest_port)).start()
    # Nothing was left bound by the failed start: the same ports now serve.
    server = ModelServer(_options(base_path, grpc_port, rest_port)).start()
    server.stop()


def test_a_second_server_on_the_same_grpc_port_is_refused(base_path):
    grpc_port = free_port()
    first = ModelServer(_options(base_path, grpc_port, 0, grpc_allow_port_sharing=True)).start()
    try:
        with pytest.raises(StepError, match="in use"):
            ModelServer(_options(base_path, grpc_port, 0)).start()
        # TF Serving's own behaviour, sharing the port, stays available when both servers ask for it.
        shared = ModelServer(_options(base_path, grpc_port, 0, grpc_allow_port_sharing=True)).start()
        shared.stop()
    finally:
        first.stop()


def test_a_label_on_a_missing_version_is_a_one_line_error(base_path, tmp_path, capsys):
    config = tmp_path / "models.config"
    testing.write_models_config(config, [{"name": "fashion", "base_path": str(base_path), "labels": {"stable": 7}}])
    code = main(["serve", f"--model_config_file={config}", f"--port={free_port()}", "--rest_api_port=0",
                 "--host=127.0.0.1"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 1
    # Besides the log file's path (printed first by a long-running command) and any warning, the
    # error is one line, the last one.
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("fashion serve:")]
    assert errors == [err.splitlines()[-1]]
    assert "stable" in errors[0] and "7" in errors[0]
