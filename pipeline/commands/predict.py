"""`fashion predict`: ask the serving endpoint over gRPC about photos; one JSON object per photo."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `predict` subcommand."""
    from pipeline.cli import add_config_arguments

    parser = subparsers.add_parser(
        "predict",
        help="predict category, sub-category and attributes of photos via the gRPC endpoint",
        description="Send each photo to the serving endpoint (TF Serving PredictionService) and print one "
        "JSON object per photo: category, sub-category, attributes and their scores. The category and "
        "sub-category are the best pair the model's category tree allows; each level's own arg-max follows "
        "as category_independent and subcategory_independent.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG or PNG files")
    parser.add_argument("--server", help="gRPC host:port (default serving.host:serving.grpc_port)")
    parser.add_argument("--model_name", help="served model name (default serving.model_name)")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--version", type=int, help="ask for this version number")
    choice.add_argument("--label", help="ask for the version behind this label, e.g. stable")
    parser.add_argument("--signature_name", default="serving_default", help="signature to run")
    parser.add_argument(
        "--timeout", type=float, help="deadline per call in seconds (default serving.request_timeout_s)"
    )
    parser.add_argument(
        "--threshold", type=float, help="list attributes scoring at least this (default evaluate.attribute_threshold)"
    )
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handle `fashion predict`; exits 1 when any photo could not be predicted."""
    from pipeline.cli import resolve_config
    from serving.client import PredictionClient

    config = resolve_config(
        args,
        {
            "serving": {"model_name": args.model_name, "request_timeout_s": args.timeout},
            "evaluate": {"attribute_threshold": args.threshold},
        },
    )
    serving = config.serving
    target = args.server or f"{serving.host}:{serving.grpc_port}"
    with PredictionClient(
        target,
        serving.model_name,
        version=args.version,
        label=args.label,
        signature_name=args.signature_name,
        timeout_s=serving.request_timeout_s,
        max_message_bytes=serving.max_message_mb * 1024 * 1024,
    ) as client:
        results = client.predict_files(args.images, config.evaluate.attribute_threshold)
    for result in results:
        print(json.dumps(result))
    return 1 if any("error" in r for r in results) else 0
