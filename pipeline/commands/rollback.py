"""`fashion rollback`: move the `stable` label and the MLflow `champion` alias back one version."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `rollback` subcommand."""
    from pipeline.cli import add_config_arguments
    from pipeline.commands.deploy import add_endpoint_arguments

    parser = subparsers.add_parser(
        "rollback",
        help="serve the previous champion again: move `stable` and `champion` back",
        description="Point the endpoint's `stable` label at the version the current champion replaced (loading it "
        "again if needed) and unload the current one on every replica, so requests that name no version get it too, "
        "then move the MLflow `champion` alias back.",
    )
    add_endpoint_arguments(parser)
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handle `fashion rollback`."""
    from components.deploy.step import rollback_model
    from pipeline.commands.deploy import endpoint_inputs

    config, registry, server = endpoint_inputs(args)
    result = rollback_model(registry, config, server, args.model_config_file, args.timeout)
    print(json.dumps(result.to_dict()))
    return 0
