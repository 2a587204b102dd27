"""The model server process: options named after tensorflow_model_server's flags, gRPC + REST + polling.

gRPC listens on a TCP port and, with `grpc_socket_path`, on a Unix socket too (only there when
`port` is 0, as tensorflow_model_server does; port 0 alone binds an ephemeral port instead, which
tensorflow_model_server refuses). REST listens on its own port, with the Prometheus page when
the monitoring config enables it.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from core import storage
from core.config import ServingConfig
from core.errors import StepError
from serving import contract as sig
from serving import model_config
from serving.server import config as server_config
from serving.server import credentials, monitoring
from serving.server.grpc_service import ModelService, PredictionService
from serving.server.health import HealthService
from serving.server.manager import ManagerOptions, ModelManager
from serving.server.rest import RestApi, RestOptions, RestServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerOptions:
    """What `fashion serve` accepts; names and defaults follow tensorflow_model_server's flags."""

    port: int = 8500
    rest_api_port: int = 8501
    host: str = "0.0.0.0"
    model_name: str = "default"
    model_base_path: str = ""
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: float = 0.0
    enable_batching: bool = False
    batching_parameters_file: str = ""
    file_system_poll_wait_seconds: float = 1.0
    enable_model_warmup: bool = True
    enable_signature_method_name_check: bool = False
    saved_model_tags: str = "serve"
    allow_version_labels_for_unavailable_models: bool = False
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60_000_000
    grpc_max_threads: int = 64
    grpc_channel_arguments: str = ""
    max_message_bytes: int = sig.DEFAULT_MAX_MESSAGE_BYTES
    rest_api_timeout_in_ms: int = 30_000
    # 0: as many as --grpc_max_threads, so REST admits as many requests at once as gRPC does.
    rest_api_num_threads: int = 0
    # Not tensorflow_model_server flags: how long a REST client may take over a request's header (also how long
    # an idle keep-alive connection stays open) and over its body.
    rest_api_header_timeout_in_ms: int = 15_000
    rest_api_read_timeout_in_ms: int = 60_000
    tensorflow_session_parallelism: int = 0
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    grpc_socket_path: str = ""
    monitoring_config_file: str = ""
    rest_api_enable_cors_support: bool = False
    enable_grpc_healthcheck_service: bool = False
    use_alts_credentials: bool = False
    ssl_config_file: str = ""
    # Not a tensorflow_model_server flag: TF Serving shares a gRPC port with a second server
    # (SO_REUSEPORT), which hides a stale one; here that takes asking for.
    grpc_allow_port_sharing: bool = False


def channel_arguments(text: str) -> list[tuple[str, Any]]:
    """`--grpc_channel_arguments=k=v,k2=v2` as gRPC options (integers where they parse)."""
    options: list[tuple[str, Any]] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise StepError(f"--grpc_channel_arguments: {item!r} is not key=value")
        options.append((key.strip(), int(value) if value.strip().lstrip("-").isdigit() else value.strip()))
    return options


def saved_model_tags(text: str) -> tuple[str, ...]:
    """`--saved_model_tags=tpu,serve` as the tag set a version's meta graph is chosen by (`serve` when empty)."""
    return tuple(tag.strip() for tag in text.split(",") if tag.strip()) or ("serve",)


def thread_counts(options: ServerOptions) -> tuple[int, int]:
    """(intra-op, inter-op) TensorFlow threads, 0 for TensorFlow's choice, as tensorflow_model_server sets them.

    Raises:
        StepError: all three parallelism flags set, which tensorflow_model_server refuses too.
    """
    intra, inter, session = (
        options.tensorflow_intra_op_parallelism,
        options.tensorflow_inter_op_parallelism,
        options.tensorflow_session_parallelism,
    )
    if intra > 0 and inter > 0 and session > 0:
        raise StepError(
            "Either configure --tensorflow_session_parallelism or (--tensorflow_intra_op_parallelism, "
            "--tensorflow_inter_op_parallelism) separately. You cannot configure all."
        )
    if intra > 0 or inter > 0:
        return max(intra, 0), max(inter, 0)
    return max(session, 0), max(session, 0)


def batching_from(
    options: ServerOptions, serving: ServingConfig | None = None
) -> server_config.BatchingParameters | None:
    """The batching parameters in effect: the file when given, else the project's serving config.

    Raises:
        StepError: a batching file without `enable_batching`, which tensorflow_model_server refuses too.
    """
    if not options.enable_batching:
        if options.batching_parameters_file:
            raise StepError(
                "--batching_parameters_file is set without setting --enable_batching to true (batching is off by "
                "default, as in tensorflow_model_server)"
            )
        return None
    if options.batching_parameters_file:
        return server_config.read_batching_parameters(options.batching_parameters_file)
    return server_config.parse_batching_parameters(server_config.render_batching_parameters(serving or ServingConfig()))


class ModelServer:
    """Manager + gRPC server + REST server; `start()` returns once initial models are loaded."""

    def __init__(self, options: ServerOptions, serving: ServingConfig | None = None):
        self.options = options
        if bool(options.model_config_file) == bool(options.model_base_path):
            raise StepError("give exactly one of --model_config_file and --model_base_path")
        self._threads = thread_counts(options)
        # Read now, as the model config is: a bad file fails before a port is bound or a model loads.
        self._credentials = credentials.server_credentials(options.use_alts_credentials, options.ssl_config_file)
        self.monitoring = (
            monitoring.read_monitoring_config(options.monitoring_config_file)
            if options.monitoring_config_file
            else monitoring.MonitoringConfig()
        )
        self.metrics = monitoring.Metrics()
        if options.model_config_file:
            self._config_text = storage.read_bytes(options.model_config_file).decode()
            config = model_config.parse_model_server_config(self._config_text, options.model_config_file)
        else:
            self._config_text = ""
            config = model_config.single_model_config(options.model_name, options.model_base_path)
        self.manager = ModelManager(
            config,
            ManagerOptions(
                batching=batching_from(options, serving),
                enable_model_warmup=options.enable_model_warmup,
                allow_version_labels_for_unavailable_models=options.allow_version_labels_for_unavailable_models,
                file_system_poll_wait_seconds=options.file_system_poll_wait_seconds,
                max_num_load_retries=options.max_num_load_retries,
                load_retry_interval_micros=options.load_retry_interval_micros,
                enable_signature_method_name_check=options.enable_signature_method_name_check,
                saved_model_tags=saved_model_tags(options.saved_model_tags),
            ),
        )
        self.grpc_port = 0
        self.rest_port = 0
        self._grpc: grpc.Server | None = None
        self._rest: RestServer | None = None
        self._health: HealthService | None = None
        self._stop = threading.Event()
        self._config_poller: threading.Thread | None = None

    def start(self) -> ModelServer:
        """Bind the ports, load the initial versions, then serve gRPC and REST.

        The ports are bound first, so a port in use fails in a second, before any model loads.

        Raises:
            StepError: a port is in use, or the initial config cannot be served (one line each).
        """
        import tensorflow as tf

        from serving.server.errors import ServingError

        intra, inter = self._threads
        if intra:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(inter)
        self._bind()
        try:
            self.manager.start()
        except ServingError as err:
            self._unbind()
            raise StepError(
                f"cannot serve {self.options.model_config_file or self.options.model_base_path}: {err} "
                "(fix the config, publish the version, or pass --allow_version_labels_for_unavailable_models)"
            ) from err
        self._grpc.start()
        if self.grpc_port:
            log.info("Running gRPC ModelServer at %s:%d ...", self.options.host, self.grpc_port)
        if self.options.grpc_socket_path:
            log.info("Running gRPC ModelServer at UNIX socket %s ...", self.options.grpc_socket_path)
        if self._rest:
            self._rest.start()
            log.info("Exporting HTTP/REST API at:%s:%d ...", self.options.host, self.rest_port)
            if self.monitoring.prometheus_enabled:
                log.info("Prometheus metrics at %s", self.monitoring.prometheus_path)
        elif self.monitoring.prometheus_enabled:
            log.warning("the monitoring config enables Prometheus, which is served on the REST port: REST is off")
        if self.options.model_config_file and self.options.model_config_file_poll_wait_seconds > 0:
            self._config_poller = threading.Thread(target=self._poll_config, name="config-poller", daemon=True)
            self._config_poller.start()
        return self

    def _bind(self) -> None:
        host = self.options.host
        rest_port = self.options.rest_api_port
        if rest_port and rest_port == self.options.port:
            log.error(
                "--rest_api_port cannot be the same as --port. Please use a different port for HTTP/REST API. "
                "Skipped exporting HTTP/REST API."
            )
            rest_port = 0
        # REST first: a plain socket releases its port at once when the gRPC bind then fails.
        if rest_port:
            api = RestApi(self.manager, self.options.rest_api_timeout_in_ms / 1000, self.metrics)
            rest_options = RestOptions(
                max_body_bytes=self.options.max_message_bytes,
                header_timeout_s=self.options.rest_api_header_timeout_in_ms / 1000,
                body_timeout_s=self.options.rest_api_read_timeout_in_ms / 1000,
                num_threads=self.options.rest_api_num_threads or self.options.grpc_max_threads,
                prometheus_path=self.monitoring.prometheus_path if self.monitoring.prometheus_enabled else None,
                enable_cors_support=self.options.rest_api_enable_cors_support,
            )
            try:
                self._rest = RestServer(api, host, rest_port, rest_options)
            except OSError as err:
                raise StepError(
                    f"REST port {host}:{rest_port} is already in use ({err.strerror}): stop the "
                    "other server or pick another --rest_api_port (0 turns REST off)"
                ) from err
            self.rest_port = self._rest.port
        grpc_options = [
            ("grpc.max_receive_message_length", self.options.max_message_bytes),
            ("grpc.max_send_message_length", self.options.max_message_bytes),
            *channel_arguments(self.options.grpc_channel_arguments),
        ]
        if not self.options.grpc_allow_port_sharing:
            grpc_options.append(("grpc.so_reuseport", 0))
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.options.grpc_max_threads, thread_name_prefix="grpc"),
            options=grpc_options,
            interceptors=[monitoring.GrpcMetricsInterceptor(self.metrics)],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(self.manager), self._grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self.manager), self._grpc)
        if self.options.enable_grpc_healthcheck_service:
            self._health = HealthService()
            self._grpc.add_generic_rpc_handlers((self._health.generic_handler(),))
        socket_path = self.options.grpc_socket_path
        # Port 0 with a socket: the socket only, as tensorflow_model_server does.
        if self.options.port or not socket_path:
            self.grpc_port = self._add_port(f"{host}:{self.options.port}")
            if not self.grpc_port:
                self._grpc = None
                self._unbind()
                raise StepError(
                    f"gRPC port {host}:{self.options.port} is already in use: stop the other server, pick another "
                    "--port, or pass --grpc_allow_port_sharing=true to share it as tensorflow_model_server does"
                )
        if socket_path and not self._add_port(f"unix:{socket_path}"):
            self._unbind()
            raise StepError(
                f"cannot listen on the Unix socket {socket_path}: its folder must exist and be writable, and the "
                "path must not be an existing file other than a socket"
            )

    def _add_port(self, address: str) -> int:
        """Listen on `address` with the configured credentials; the port (1 for a Unix socket), 0 when it fails."""
        assert self._grpc is not None
        try:
            if self._credentials is None:
                return self._grpc.add_insecure_port(address)
            return self._grpc.add_secure_port(address, self._credentials)
        except RuntimeError:
            return 0

    def _unbind(self) -> None:
        if self._rest:
            self._rest.close()
            self._rest = None
        if self._grpc:
            # A gRPC server that never started keeps its port until it has started and stopped.
            self._grpc.start()
            self._grpc.stop(0).wait()
            self._grpc = None

    def _poll_config(self) -> None:
        from serving.server.errors import ServingError

        while not self._stop.wait(self.options.model_config_file_poll_wait_seconds):
            try:
                text = storage.read_bytes(self.options.model_config_file).decode()
                if text == self._config_text:
                    continue
                config = model_config.parse_model_server_config(text, self.options.model_config_file)
                self.manager.reload_config(config)
                self._config_text = text
                log.info("reloaded %s", self.options.model_config_file)
            except (StepError, ServingError, storage.StorageError, UnicodeDecodeError) as err:
                log.error("config file %s not applied: %s", self.options.model_config_file, err)

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting requests, let in-flight ones finish, unload every model."""
        self._stop.set()
        if self._health:
            self._health.shut_down()
        if self._rest:
            self._rest.stop(grace_s)
        if self._grpc:
            self._grpc.stop(grace_s).wait()
        self.manager.stop()

    def wait(self) -> None:
        """Block until SIGTERM/SIGINT, then stop."""
        done = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: done.set())
        done.wait()
        self.stop()


def run_server(options: ServerOptions, serving: ServingConfig | None = None) -> int:
    """Start a server and serve until terminated."""
    server = ModelServer(options, serving).start()
    server.wait()
    return 0
