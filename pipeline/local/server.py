"""The TF Serving-compatible server a local run deploys to: started detached, found again and stopped later.

The server outlives `fashion run` on purpose: users send predictions to it afterwards. Its pid,
ports and model live in `<workdir>/serving/server.json`, so the next run reuses it and
`stop_server` can stop it later from any process.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from core import layouts, storage
from core.config import Config
from core.errors import StepError
from pipeline.server_process import ServerProcess, pid_alive, port_open, stop_pid
from serving.model_config import model_config_uri


@dataclasses.dataclass
class ServerHandle:
    """The local TF Serving-compatible server the run deploys to."""

    pid: int
    host: str
    grpc_port: int
    rest_port: int
    model_name: str
    model_base_path: str
    model_config_file: str
    log_path: str
    reused: bool = False

    @property
    def grpc_address(self) -> str:
        """`host:port` of the gRPC endpoint."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def rest_address(self) -> str:
        """Base URL of the REST endpoint."""
        return f"http://{self.host}:{self.rest_port}"


def _server_file(workdir: str | Path) -> Path:
    return Path(workdir) / "serving" / layouts.SERVER_STATE


def running_server(workdir: str | Path) -> ServerHandle | None:
    """The server a previous run started for `workdir`, when it is still up."""
    path = _server_file(workdir)
    if not path.is_file():
        return None
    handle = ServerHandle(**json.loads(path.read_text()))
    if pid_alive(handle.pid) and port_open(handle.host, handle.grpc_port):
        return dataclasses.replace(handle, reused=True)
    return None


def _ensure_model_config(model_name: str, model_base_path: str) -> str:
    """The models.config the server starts from; a single-model one before the first deploy writes its own."""
    from serving import model_config as server_config

    uri = model_config_uri(model_base_path)
    if not storage.exists(uri):
        server_config.write_model_server_config(uri, server_config.single_model_config(model_name, model_base_path))
    return uri


def ensure_server(config: Config, workdir: str | Path, timeout_s: float = 120.0) -> ServerHandle:
    """Reuse the workdir's running server when it serves the same model and ports, else start one.

    The server reads the models.config beside the model base path, which the deploy step
    rewrites and pushes to it (HandleReloadConfigRequest) when it publishes and promotes a version.

    Raises:
        StepError: the configured port is taken by another process, or the server did not come up.
    """
    serving = config.serving
    current = running_server(workdir)
    if current is not None:
        same = (current.grpc_port, current.rest_port, current.model_name, current.model_base_path) == (
            serving.grpc_port,
            serving.rest_port,
            serving.model_name,
            serving.model_base_path,
        ) and current.model_config_file == model_config_uri(serving.model_base_path)
        if same:
            return current
        stop_server(workdir)
    for port in (serving.grpc_port, serving.rest_port):
        if port_open(serving.host, port):
            raise StepError(
                f"port {serving.host}:{port} is already in use by another process: stop it, or pick free ports "
                "with --set serving.grpc_port=N --set serving.rest_port=M"
            )
    if not storage.is_gcs(serving.model_base_path):
        Path(serving.model_base_path).mkdir(parents=True, exist_ok=True)
    config_file = _ensure_model_config(serving.model_name, serving.model_base_path)
    log_path = Path(workdir).resolve() / "serving" / "server.log"
    process = ServerProcess(
        [
            f"--preset={config.preset}",
            f"--model_name={serving.model_name}",
            f"--model_config_file={config_file}",
            "--file_system_poll_wait_seconds=1",
            # Off unless asked, as in tensorflow_model_server: the project's setting asks for it.
            f"--enable_batching={str(serving.enable_batching).lower()}",
            # The libraries' own output (TensorFlow's start-up lines) beside the server's log.
            f"--log-dir={log_path.parent}",
        ],
        host=serving.host,
        grpc_port=serving.grpc_port,
        rest_port=serving.rest_port,
        log_path=log_path,
        detached=True,
        ready_timeout_s=timeout_s,
    ).start()
    handle = ServerHandle(
        pid=process.pid,
        host=serving.host,
        grpc_port=serving.grpc_port,
        rest_port=serving.rest_port,
        model_name=serving.model_name,
        model_base_path=serving.model_base_path,
        model_config_file=config_file,
        log_path=str(log_path),
    )
    _server_file(workdir).write_text(json.dumps(dataclasses.asdict(handle), indent=2))
    return handle


def stop_server(workdir: str | Path, timeout_s: float = 20.0) -> bool:
    """Stop the server `fashion run` started for `workdir`; True when one was running."""
    path = _server_file(workdir)
    if not path.is_file():
        return False
    handle = ServerHandle(**json.loads(path.read_text()))
    path.unlink()
    return stop_pid(handle.pid, timeout_s)
