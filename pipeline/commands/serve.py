"""`fashion serve`: the TF Serving-compatible model server, with tensorflow_model_server's flag names."""

from __future__ import annotations

import argparse


def flag_bool(value: str) -> bool:
    """tensorflow_model_server's boolean flags: `--flag`, `--flag=true`, `--flag=false`."""
    lowered = str(value).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `serve` subcommand."""
    from pipeline.cli import add_config_arguments

    parser = subparsers.add_parser(
        "serve",
        help="serve SavedModel versions over gRPC and REST (TF Serving API)",
        description="Serve the versions under a model base path (or every model of a models.config) "
        "with TensorFlow Serving's gRPC and REST APIs. Flags carry tensorflow_model_server's names; "
        "defaults come from the serving section of the configuration.",
    )
    add = parser.add_argument
    add("--port", type=int, help="gRPC port (default serving.grpc_port)")
    add("--rest_api_port", type=int, help="REST port, 0 disables REST (default serving.rest_port)")
    add("--host", help="interface to bind (default serving.host)")
    add("--model_name", help="model name with --model_base_path (default serving.model_name)")
    add("--model_base_path", help="folder or gs:// prefix of numbered versions (default serving.model_base_path)")
    add("--model_config_file", default="", help="models.config (ModelServerConfig text proto), local or gs://")
    add("--model_config_file_poll_wait_seconds", type=float, default=0.0, help="re-read the config file this often")
    add(
        "--enable_batching",
        type=flag_bool,
        nargs="?",
        const=True,
        help="server-side batching (default serving.enable_batching)",
    )
    add("--batching_parameters_file", default="", help="BatchingParameters text proto (default: from serving.*)")
    add("--file_system_poll_wait_seconds", type=float, default=1.0, help="how often base paths are polled")
    add("--enable_model_warmup", type=flag_bool, nargs="?", const=True, default=True, help="replay warmup records")
    add(
        "--allow_version_labels_for_unavailable_models",
        type=flag_bool,
        nargs="?",
        const=True,
        default=False,
        help="let labels point at versions that are not loaded yet",
    )
    add("--max_num_load_retries", type=int, default=5, help="retries of a failing version load")
    add("--load_retry_interval_micros", type=int, default=60_000_000, help="wait between load retries")
    add("--grpc_max_threads", type=int, default=64, help="gRPC worker threads")
    add("--grpc_channel_arguments", default="", help="extra gRPC server options, k=v,k2=v2")
    add("--max_message_mb", type=int, help="gRPC/REST message size limit in MB (default serving.max_message_mb)")
    add("--rest_api_timeout_in_ms", type=int, default=30_000, help="REST request deadline")
    add("--rest_api_num_threads", type=int, default=0, help="REST worker threads (0 = as many as --grpc_max_threads)")
    add(
        "--rest_api_header_timeout_in_ms",
        type=int,
        default=15_000,
        help="close a REST connection whose request header has not arrived in time (also the keep-alive idle time)",
    )
    add("--rest_api_read_timeout_in_ms", type=int, default=60_000, help="answer 408 when a REST body is this slow")
    add("--tensorflow_intra_op_parallelism", type=int, default=0, help="TF intra-op threads (0 = all cores)")
    add("--tensorflow_inter_op_parallelism", type=int, default=0, help="TF inter-op threads (0 = all cores)")
    add(
        "--grpc_allow_port_sharing",
        type=flag_bool,
        nargs="?",
        const=True,
        default=False,
        help="share the gRPC port with another server (TF Serving does; off here so a stale server cannot hide)",
    )
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handle `fashion serve`."""
    from core.errors import StepError
    from pipeline.cli import resolve_config
    from serving.server.server import ServerOptions, run_server

    config = resolve_config(
        args,
        {
            "serving": {
                "grpc_port": args.port,
                "rest_port": args.rest_api_port,
                "host": args.host,
                "model_name": args.model_name,
                "model_base_path": args.model_base_path,
                "enable_batching": args.enable_batching,
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
        enable_batching=serving.enable_batching,
        batching_parameters_file=args.batching_parameters_file,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        enable_model_warmup=args.enable_model_warmup,
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
        tensorflow_intra_op_parallelism=args.tensorflow_intra_op_parallelism,
        tensorflow_inter_op_parallelism=args.tensorflow_inter_op_parallelism,
        grpc_allow_port_sharing=args.grpc_allow_port_sharing,
    )
    return run_server(options, serving)
