"""`fashion deploy`: publish the registry's challenger to the endpoint, verify it, promote it."""

from __future__ import annotations

import argparse
import json


def add_endpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by deploy and rollback: the endpoint, its config file and the registry."""
    parser.add_argument(
        "--server",
        help="the endpoint's replicas: gRPC host:port, a comma-separated list of them, or dns:///NAME:PORT for "
        "every address NAME resolves to, e.g. a Kubernetes headless service (default serving.host:serving.grpc_port)",
    )
    parser.add_argument(
        "--model_config_file", required=True, help="the models.config every replica reads (local or gs://)"
    )
    parser.add_argument("--model_base_path", help="where versions are published (default serving.model_base_path)")
    parser.add_argument("--model_name", help="served model name (default serving.model_name)")
    parser.add_argument(
        "--workdir", help="run folder holding the embedded MLflow store (when registry.tracking_uri is empty)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a version may take to become AVAILABLE")


def endpoint_inputs(args: argparse.Namespace) -> tuple:
    """(config with the endpoint flags applied, registry, gRPC target) for deploy and rollback."""
    from components.register.registry import Registry
    from pipeline.cli import resolve_config

    config = resolve_config(args, {"serving": {"model_base_path": args.model_base_path, "model_name": args.model_name}})
    server = args.server or f"{config.serving.host}:{config.serving.grpc_port}"
    return config, Registry.from_config(config, args.workdir), server


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `deploy` subcommand."""
    from pipeline.cli import add_config_arguments

    parser = subparsers.add_parser(
        "deploy",
        help="publish the MLflow challenger to the endpoint, verify it, move `stable` and `champion`",
        description="Publish the challenger's SavedModel as the next version, load it as `<model>-canary` until "
        "every replica reports it AVAILABLE, compare smoke predictions with the evaluation's on each replica, then "
        "serve it under the model's name and move the `stable` label and the MLflow `champion` alias. Until then, "
        "requests that name no version get the previous version; on any failure it keeps serving everywhere.",
    )
    add_endpoint_arguments(parser)
    parser.add_argument("--predictions", help="the evaluation's predictions.jsonl (smoke photos and reference labels)")
    parser.add_argument("--photos", nargs="*", default=[], help="more known photos for the smoke prediction")
    parser.add_argument(
        "--min-agreement",
        type=float,
        default=None,
        help="least share of photos agreeing with the evaluation (default: serving.smoke_min_agreement, 0.9)",
    )
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handle `fashion deploy`."""
    from components.deploy.step import deploy_model

    config, registry, server = endpoint_inputs(args)
    result = deploy_model(
        registry,
        config,
        server,
        args.model_config_file,
        predictions_path=args.predictions,
        smoke_photos=args.photos,
        timeout_s=args.timeout,
        min_agreement=config.serving.smoke_min_agreement if args.min_agreement is None else args.min_agreement,
    )
    print(json.dumps(result.to_dict()))
    return 0
