"""`fashion serve`: the TF Serving-compatible model server, with tensorflow_model_server's flag names.

Every flag of tensorflow_model_server (tensorflow_serving/model_servers/main.cc) is accepted with
its type, so a command line written for the binary starts this server unchanged. The flags that
cannot apply here (TFLite, TPUs, XLA, the profiler, thread-pool and memory tuning of the C++
runtime) are parsed, checked and logged as ignored, never refused; `IGNORED_FLAGS` says why for each.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

log = logging.getLogger(__name__)


def flag_bool(value: str) -> bool:
    """tensorflow_model_server's boolean flags: `--flag`, `--flag=true`, `--flag=false`."""
    lowered = str(value).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


# tensorflow_model_server's flags this server accepts and does not apply: (type, why).
IGNORED_FLAGS: dict[str, tuple[type, str]] = {
    "enable_per_model_batching_parameters": (bool, "batching parameters come from --batching_parameters_file only"),
    "num_load_threads": (int, "versions load one at a time"),
    "num_unload_threads": (int, "versions unload one at a time"),
    "flush_filesystem_caches": (bool, "there are no TensorFlow file-system caches to flush"),
    "tensorflow_session_config_file": (str, "sessions take --tensorflow_*_parallelism and TensorFlow's defaults"),
    "platform_config_file": (str, "only the tensorflow platform is served"),
    "per_process_gpu_memory_fraction": (float, "TensorFlow allocates GPU memory as it needs it"),
    "num_request_iterations_for_warmup": (int, "each warmup record is replayed once"),
    "remove_unused_fields_from_bundle_metagraph": (bool, "a memory saving of the C++ runtime"),
    "prefer_tflite_model": (bool, "TensorFlow Lite models are out of scope; the SavedModel is served"),
    "num_tflite_pools": (int, "TensorFlow Lite models are out of scope"),
    "num_tflite_interpreters_per_pool": (int, "TensorFlow Lite models are out of scope"),
    "enable_serialization_as_tensor_content": (bool, "outputs always fill the typed fields (`float_val`, ...)"),
    "xla_cpu_compilation_enabled": (bool, "XLA JIT stays as TensorFlow sets it"),
    "xla_gpu_compilation_enabled": (bool, "XLA JIT stays as TensorFlow sets it"),
    "enable_profiler": (bool, "the profiler service is out of scope"),
    "thread_pool_factory_config_file": (str, "requests run on the gRPC and REST worker threads"),
    "mixed_precision": (str, "models run in the precision they were exported with"),
    "skip_initialize_tpu": (bool, "TPUs are out of scope"),
}


def _add_bool(add: Any, name: str, default: bool | None, help_text: str) -> None:
    add(f"--{name}", type=flag_bool, nargs="?", const=True, default=default, help=help_text)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `serve` subcommand."""
    from pipeline.cli import add_config_arguments

    parser = subparsers.add_parser(
        "serve",
        help="serve SavedModel versions over gRPC and REST (TF Serving API)",
        description="Serve the versions under a model base path (or every model of a models.config) "
        "with TensorFlow Serving's gRPC and REST APIs. Flags carry tensorflow_model_server's names and "
        "every one of its flags is accepted; ports, host and model name default to the serving section "
        "of the configuration.",
    )
    add = parser.add_argument
    add("--port", type=int, help="gRPC port (default serving.grpc_port); 0 with --grpc_socket_path: the socket only")
    add("--grpc_socket_path", default="", help="also listen for gRPC on this Unix socket")
    add("--rest_api_port", type=int, help="REST port, 0 disables REST (default serving.rest_port)")
    add("--host", help="interface to bind (default serving.host; not a tensorflow_model_server flag)")
    add("--model_name", help="model name with --model_base_path (default serving.model_name)")
    add("--model_base_path", help="folder or gs:// prefix of numbered versions (default serving.model_base_path)")
    add("--model_config_file", default="", help="models.config (ModelServerConfig text proto), local or gs://")
    add("--model_config_file_poll_wait_seconds", type=float, default=0.0, help="re-read the config file this often")
    _add_bool(add, "enable_batching", False, "server-side batching (off by default, as in tensorflow_model_server)")
    add(
        "--batching_parameters_file",
        default="",
        help="BatchingParameters text proto, with --enable_batching (default: from serving.*)",
    )
    add("--file_system_poll_wait_seconds", type=float, default=1.0, help="how often base paths are polled")
    _add_bool(add, "enable_model_warmup", True, "replay warmup records")
    _add_bool(
        add,
        "enable_signature_method_name_check",
        False,
        "serve an API only from signatures of its method_name (off: any signature whose tensors fit)",
    )
    add("--saved_model_tags", default="serve", help="comma-separated tags of the meta graph to load")
    _add_bool(
        add,
        "allow_version_labels_for_unavailable_models",
        False,
        "let labels point at versions that are not loaded yet",
    )
    add("--max_num_load_retries", type=int, default=5, help="retries of a failing version load")
    add("--load_retry_interval_micros", type=int, default=60_000_000, help="wait between load retries")
    add("--grpc_max_threads", type=int, default=64, help="gRPC worker threads")
    add("--grpc_channel_arguments", default="", help="extra gRPC server options, k=v,k2=v2")
    _add_bool(add, "enable_grpc_healthcheck_service", False, "serve the standard grpc.health.v1.Health service")
    _add_bool(add, "use_alts_credentials", False, "gRPC over Google ALTS")
    add("--ssl_config_file", default="", help="SSLConfig text proto: gRPC over TLS")
    add("--monitoring_config_file", default="", help="MonitoringConfig text proto (Prometheus page on the REST port)")
    add("--max_message_mb", type=int, help="gRPC/REST message size limit in MB (default serving.max_message_mb)")
    add("--rest_api_timeout_in_ms", type=int, default=30_000, help="REST request deadline")
    add("--rest_api_num_threads", type=int, default=0, help="REST worker threads (0 = as many as --grpc_max_threads)")
    _add_bool(add, "rest_api_enable_cors_support", False, "add CORS headers to REST answers")
    add(
        "--rest_api_header_timeout_in_ms",
        type=int,
        default=15_000,
        help="close a REST connection whose request header has not arrived in time (also the keep-alive idle time)",
    )
    add("--rest_api_read_timeout_in_ms", type=int, default=60_000, help="answer 408 when a REST body is this slow")
    add("--tensorflow_session_parallelism", type=int, default=0, help="TF intra- and inter-op threads (0 = all cores)")
    add("--tensorflow_intra_op_parallelism", type=int, default=0, help="TF intra-op threads (0 = all cores)")
    add("--tensorflow_inter_op_parallelism", type=int, default=0, help="TF inter-op threads (0 = all cores)")
    _add_bool(
        add,
        "grpc_allow_port_sharing",
        False,
        "share the gRPC port with another server (TF Serving does; off here so a stale server cannot hide)",
    )
    _add_bool(add, "version", False, "print the server's and TensorFlow's versions, then exit")
    ignored = parser.add_argument_group(
        "accepted for tensorflow_model_server compatibility, logged and ignored",
    )
    for name, (kind, why) in IGNORED_FLAGS.items():
        if kind is bool:
            _add_bool(ignored.add_argument, name, None, why)
        else:
            ignored.add_argument(f"--{name}", type=kind, default=None, help=why)
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def ignored_flags(args: argparse.Namespace) -> list[str]:
    """The given flags this server does not apply, each as a log line saying why."""
    lines = []
    for name, (kind, why) in IGNORED_FLAGS.items():
        value = getattr(args, name, None)
        if value is not None:
            shown = str(value).lower() if kind is bool else value
            lines.append(f"--{name}={shown} is accepted as tensorflow_model_server does and ignored: {why}")
    return lines


def version_lines() -> list[str]:
    """What `--version` prints: tensorflow_model_server's two lines, naming this server and TensorFlow."""
    from importlib.metadata import PackageNotFoundError, version

    from pipeline.cli import version_text

    try:
        tensorflow = version("tensorflow")
    except PackageNotFoundError:
        tensorflow = "not installed"
    return [f"TensorFlow ModelServer: {version_text()}", f"TensorFlow Library: {tensorflow}"]


def server_options(args: argparse.Namespace) -> tuple[Any, Any]:
    """(ServerOptions, ServingConfig) from the parsed flags and the configuration they resolve."""
    from core.errors import StepError
    from pipeline.cli import resolve_config
    from serving.server.server import ServerOptions

    config = resolve_config(
        args,
        {
            "serving": {
                "grpc_port": args.port,
                "rest_port": args.rest_api_port,
                "host": args.host,
                "model_name": args.model_name,
                "model_base_path": args.model_base_path,
                "max_message_mb": args.max_message_mb,
            }
        },
    )
    serving = config.serving
    if not args.model_config_file and not serving.model_base_path:
        raise StepError("nothing to serve: give --model_base_path (or serving.model_base_path) or --model_config_file")
    options = ServerOptions(
        port=serving.grpc_port,
        rest_api_port=serving.rest_port,
        host=serving.host,
        model_name=serving.model_name,
        model_base_path="" if args.model_config_file else serving.model_base_path,
        model_config_file=args.model_config_file,
        model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
        # As tensorflow_model_server: off unless the flag asks (serving.enable_batching is what the
        # project's own launches pass as this flag).
        enable_batching=bool(args.enable_batching),
        batching_parameters_file=args.batching_parameters_file,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        enable_model_warmup=args.enable_model_warmup,
        enable_signature_method_name_check=args.enable_signature_method_name_check,
        saved_model_tags=args.saved_model_tags,
        allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
        max_num_load_retries=args.max_num_load_retries,
        load_retry_interval_micros=args.load_retry_interval_micros,
        grpc_max_threads=args.grpc_max_threads,
        grpc_channel_arguments=args.grpc_channel_arguments,
        max_message_bytes=serving.max_message_mb * 1024 * 1024,
        rest_api_timeout_in_ms=args.rest_api_timeout_in_ms,
        rest_api_num_threads=args.rest_api_num_threads,
        rest_api_header_timeout_in_ms=args.rest_api_header_timeout_in_ms,
        rest_api_read_timeout_in_ms=args.rest_api_read_timeout_in_ms,
        tensorflow_session_parallelism=args.tensorflow_session_parallelism,
        tensorflow_intra_op_parallelism=args.tensorflow_intra_op_parallelism,
        tensorflow_inter_op_parallelism=args.tensorflow_inter_op_parallelism,
        grpc_socket_path=args.grpc_socket_path,
        monitoring_config_file=args.monitoring_config_file,
        rest_api_enable_cors_support=args.rest_api_enable_cors_support,
        enable_grpc_healthcheck_service=args.enable_grpc_healthcheck_service,
        use_alts_credentials=args.use_alts_credentials,
        ssl_config_file=args.ssl_config_file,
        grpc_allow_port_sharing=args.grpc_allow_port_sharing,
    )
    return options, serving


def run(args: argparse.Namespace) -> int:
    """Handle `fashion serve`."""
    from serving.server.server import run_server

    if args.version:
        print("\n".join(version_lines()))
        return 0
    options, serving = server_options(args)
    for line in ignored_flags(args):
        log.warning(line)
    return run_server(options, serving)
