"""`fashion submit`: one pipeline run on a Kubeflow Pipelines cluster."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from pipeline.cluster import DEFAULT_EXPERIMENT


def add_parameter_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags for the pipeline parameters users change per run (shared by compile, submit, schedule)."""
    group = parser.add_argument_group("pipeline parameters")
    group.add_argument("--source", help="catalogue: folder, .zip or gs://bucket/prefix (data.source_uri)")
    group.add_argument("--pipeline-root", help="where the cluster stores step outputs, e.g. gs://bucket/pipeline")
    group.add_argument("--mlflow-uri", help="MLflow tracking server URI (registry.tracking_uri)")
    group.add_argument("--model-base-path", help="TF Serving model base path, e.g. gs://bucket/models/fashion")
    group.add_argument("--model-name", help="MLflow registered model name (registry.model_name)")
    group.add_argument(
        "--beam-args",
        default="",
        help='Beam flags for the preprocess step as one string, written --beam-args="--runner=DataflowRunner '
        '--project=P --region=R --temp_location=gs://B/tmp --sdk_container_image=IMAGE" (default: Beam runs '
        "in the step's pod)",
    )


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that say which Kubeflow Pipelines API to talk to (shared by submit and schedule)."""
    group = parser.add_argument_group("cluster")
    group.add_argument(
        "--host",
        default=os.environ.get("KF_PIPELINES_ENDPOINT"),
        help="KFP API address, e.g. http://localhost:8080 (default: $KF_PIPELINES_ENDPOINT)",
    )
    group.add_argument("--namespace", help="Kubernetes namespace (multi-user Kubeflow)")
    group.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="KFP experiment (created when missing)")
    group.add_argument("--package", help="a package from `fashion compile` (default: compile now)")
    group.add_argument("--service-account", help="Kubernetes service account the steps run as")
    group.add_argument("--token", default=os.environ.get("KF_PIPELINES_TOKEN"), help="bearer token for the API")


def resolve_cluster_config(args: argparse.Namespace):
    """The Config from the shared flags plus the pipeline-parameter flags."""
    from pipeline.cli import resolve_config

    return resolve_config(
        args,
        {
            "data": {"source_uri": args.source},
            "pipeline": {"pipeline_root": args.pipeline_root},
            "registry": {"tracking_uri": args.mlflow_uri, "model_name": args.model_name},
            "serving": {"model_base_path": args.model_base_path},
        },
    )


def beam_args(args: argparse.Namespace) -> list[str]:
    """The --beam-args string as a list of flags."""
    import shlex

    return shlex.split(args.beam_args or "")


def require_host(args: argparse.Namespace) -> str:
    """The API address, or a StepError saying how to give one."""
    from core.errors import StepError

    if not args.host:
        raise StepError("no Kubeflow Pipelines API address: pass --host URL or set KF_PIPELINES_ENDPOINT")
    return args.host


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `submit` subcommand."""
    from pipeline.cli import add_config_arguments

    parser = subparsers.add_parser(
        "submit",
        help="start one pipeline run on a Kubeflow Pipelines cluster",
        description="Compile the pipeline (or take --package) and create a run in an experiment, with the "
        "configuration's values as run parameters.",
    )
    parser.add_argument("--run-name", help="display name of the run")
    add_connection_arguments(parser)
    add_parameter_arguments(parser)
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def warn_unpullable_images(config: Any, args: argparse.Namespace) -> None:
    """Warn on stderr when the package compiled here names images no cluster can pull (not for --package)."""
    from pipeline.cluster import image_warning

    warning = None if getattr(args, "package", None) else image_warning(config)
    if warning:
        print(f"fashion {args.command}: {warning}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Handle `fashion submit`."""
    from pipeline.cluster import submit_run

    config = resolve_cluster_config(args)
    warn_unpullable_images(config, args)
    created = submit_run(
        config,
        require_host(args),
        experiment=args.experiment,
        run_name=args.run_name,
        package=args.package,
        namespace=args.namespace,
        token=args.token,
        service_account=args.service_account,
        beam_args=beam_args(args),
    )
    print(f"run {created['run_id']} ({created['name']}) created in experiment {args.experiment}")
    print(f"details: {created['url']}")
    return 0
