"""`fashion register`: track a trained, evaluated model in MLflow and register it as the `challenger`."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `register` subcommand."""
    from pipeline.cli import add_config_arguments

    parser = subparsers.add_parser(
        "register",
        help="record a run in MLflow and register its SavedModel as the challenger",
        description="Log the run (config, history, test metrics, reports, both model formats, dataset) "
        "and, when the gate blessed it, make its TF Serving SavedModel a new version of the registered "
        "model with the alias `challenger`. Registering the same --run-id again changes nothing.",
    )
    parser.add_argument("--model", required=True, help="the trainer's model folder")
    parser.add_argument("--eval", dest="eval_dir", required=True, help="the evaluator's output folder")
    parser.add_argument("--export", required=True, help="SavedModel folder (exported from --model when empty)")
    parser.add_argument("--run-id", required=True, help="pipeline run id (one MLflow run and version per id)")
    parser.add_argument("--manifest", help="the ingest manifest.csv (or its folder), logged as the run's dataset")
    parser.add_argument(
        "--workdir",
        help="work directory of the embedded MLflow store (<workdir>/mlflow/) when registry.tracking_uri is "
        "empty; default runs/<preset>, as `fashion run`",
    )
    parser.add_argument("--tracking-uri", help="MLflow tracking server or store (default: registry.tracking_uri)")
    parser.add_argument("--force", action="store_true", help="register even when the gate did not bless the model")
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handle `fashion register`."""
    from components.register import register_model
    from pipeline.cli import resolve_config

    config = resolve_config(args, {"registry": {"tracking_uri": args.tracking_uri}})
    # MLflow prints run links on stdout; keep stdout for the JSON result.
    with contextlib.redirect_stdout(sys.stderr):
        result = register_model(
            args.model,
            args.eval_dir,
            args.export,
            config,
            args.run_id,
            workdir=args.workdir or f"runs/{config.preset}",
            manifest_uri=args.manifest,
            require_blessed=not args.force,
        )
    print(json.dumps(result.to_dict(), indent=2))
    if result.version is None:
        from pipeline.cli import EXIT_GATE_REJECTED

        print(f"fashion register: not registered: the gate did not bless run {args.run_id}", file=sys.stderr)
        return EXIT_GATE_REJECTED
    return 0
