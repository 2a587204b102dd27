"""`fashion mlflow-ui`: open the MLflow UI on the embedded store of a work directory (or print the command)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `mlflow-ui` subcommand."""
    from pipeline.cli import add_config_arguments

    parser = subparsers.add_parser(
        "mlflow-ui",
        help="browse runs, versions and aliases in the MLflow UI",
        description="Start `mlflow ui` on the store registration uses: registry.tracking_uri when set "
        "(then open that server instead), else the embedded store in <workdir>/mlflow/.",
    )
    parser.add_argument(
        "--workdir", help="work directory of the embedded store (default: runs/<preset>, as `fashion run`)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    parser.add_argument("--print-command", action="store_true", help="print the mlflow command instead of running it")
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def ui_command(tracking_uri: str, artifact_uri: str, host: str, port: int) -> list[str]:
    """The `mlflow ui` command line for a store."""
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        host,
        "--port",
        str(port),
    ]
    if artifact_uri:
        cmd += ["--default-artifact-root", artifact_uri]
    return cmd


def run(args: argparse.Namespace) -> int:
    """Handle `fashion mlflow-ui`."""
    from components.register.backend import resolve_backend
    from core.errors import StepError
    from pipeline.cli import resolve_config

    config = resolve_config(args)
    workdir = args.workdir or f"runs/{config.preset}"
    backend = resolve_backend(config.registry, workdir)
    if backend.tracking_uri.startswith(("http://", "https://")):
        print(f"MLflow runs as a server: open {backend.tracking_uri} in a browser")
        return 0
    if backend.tracking_uri.startswith("sqlite:///") and not config.registry.tracking_uri:
        if not os.path.isdir(os.path.join(workdir, "mlflow")):
            raise StepError(f"no MLflow store in {workdir}/mlflow yet: run the pipeline (make run) first")
    cmd = ui_command(backend.tracking_uri, backend.artifact_uri, args.host, args.port)
    if args.print_command:
        print(shlex.join(cmd))
        return 0
    print(f"MLflow UI on http://{args.host}:{args.port} (Ctrl+C to stop)", file=sys.stderr)
    # The UI needs no background job workers; they would only take CPU from the pipeline.
    os.execve(cmd[0], cmd, dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
    return 0  # not reached: execv replaces this process
