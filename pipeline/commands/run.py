"""`fashion run`: the whole pipeline on this machine (kfp.local), served, with a summary and a live prediction."""

from __future__ import annotations

import argparse
from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "data" / "samples"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `run` subcommand."""
    from pipeline.cli import add_config_arguments

    parser = subparsers.add_parser(
        "run",
        help="run the whole pipeline locally and serve the model (kfp.local)",
        description="Run ingest -> preprocess -> train -> evaluate -> [gate] register -> deploy with kfp.local "
        "in this environment, serve the deployed model with the local TF Serving-compatible server (started, "
        "or reused when already up for this work directory), and print a summary ending with a gRPC "
        "prediction for a photo outside the training data.",
    )
    parser.add_argument("--source", help="catalogue: folder, .zip or gs://bucket/prefix (default: data.source_uri)")
    parser.add_argument("--workdir", help="where runs, cache, MLflow store and models live (default: runs/<preset>)")
    parser.add_argument("--samples", default=str(SAMPLES_DIR), help="held-out photos for the final prediction")
    parser.add_argument("--no-cache", action="store_true", help="re-run ingest and preprocess even if cached")
    parser.add_argument("--model-base-path", help="where versions are published (default: <workdir>/models)")
    parser.add_argument("--mlflow-uri", help="MLflow tracking URI (default: SQLite store in <workdir>/mlflow)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="retrain even when the catalogue and settings are those the champion was trained on "
        "(otherwise such a run trains nothing and exits 4)",
    )
    add_config_arguments(parser, default_preset="demo")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handle `fashion run`."""
    from core.errors import StepError
    from pipeline.cli import resolve_config
    from pipeline.local.run import run_and_serve
    from pipeline.local.summary import format_summary

    config = resolve_config(
        args,
        {
            "data": {"source_uri": args.source},
            "registry": {"tracking_uri": args.mlflow_uri},
            "serving": {"model_base_path": args.model_base_path},
            "train": {"skip_unchanged": False if args.force else None},
        },
    )
    workdir = Path(args.workdir or f"runs/{config.preset}")
    console = args.console
    result = run_and_serve(
        config,
        workdir,
        args.samples,
        use_cache=not args.no_cache,
        console=console,
        verbose=args.verbose,
        log_dir=args.log_dir,
    )
    console.line("")
    console.line(format_summary(result))
    if not result.ok:
        raise StepError(result.error)
    if result.artifact("train-model", "model").get("metadata", {}).get("unchanged"):
        from pipeline.cli import EXIT_UNCHANGED

        return EXIT_UNCHANGED
    if not result.blessed:
        from pipeline.cli import EXIT_GATE_REJECTED

        return EXIT_GATE_REJECTED
    return 0
