"""`fashion compile`: the pipeline as a Kubeflow Pipelines v2 YAML package."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `compile` subcommand."""
    from pipeline.cli import add_config_arguments
    from pipeline.commands.submit import add_parameter_arguments

    parser = subparsers.add_parser(
        "compile",
        help="compile the pipeline to a Kubeflow Pipelines YAML package",
        description="Build the pipeline from the configuration and write its KFP v2 YAML. Images and "
        "resources (pipeline.*) are fixed in the package; the other settings become the defaults of the "
        "pipeline parameters (source_uri, preset, overrides, gate_floors, model_name, mlflow_tracking_uri, "
        "model_base_path, beam_args), which a run can change.",
    )
    parser.add_argument("--out", default="pipeline.yaml", help="output YAML path (default: pipeline.yaml)")
    add_parameter_arguments(parser)
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handle `fashion compile`."""
    from pipeline.cluster import compile_pipeline, image_warning
    from pipeline.commands.submit import beam_args, resolve_cluster_config

    config = resolve_cluster_config(args)
    path = compile_pipeline(config, args.out, beam_args(args))
    print(f"compiled {config.pipeline.name} ({config.preset}) to {path}")
    warning = image_warning(config)
    if warning:
        print(f"fashion compile: {warning}", file=sys.stderr)
    return 0
