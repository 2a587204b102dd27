"""`fashion mlflow-ui`: open the MLflow UI on the run's store and print direct links to its runs and model.

The links open the experiment's runs table in the UI's model-training view (MLflow 3 opens
experiments in its GenAI view by default) and the registered model's versions.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import urllib.parse
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from core.config import Config

# The MLflow 3 UI's choice of view, as a query parameter of its (hash-routed) pages.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `mlflow-ui` subcommand."""
    from pipeline.cli import add_config_arguments

    parser = subparsers.add_parser(
        "mlflow-ui",
        help="browse runs, versions and aliases in the MLflow UI",
        description="Start `mlflow ui` on the store registration uses: registry.tracking_uri when set "
        "(then open that server instead), else the embedded store in <workdir>/mlflow/. Prints direct "
        "links to the experiment's runs (model-training view) and to the registered model.",
    )
    parser.add_argument(
        "--workdir", help="work directory of the embedded store (default: runs/<preset>, as `fashion run`)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    parser.add_argument(
        "--print-command",
        action="store_true",
        help="print the mlflow command instead of running it (the links go to stderr)",
    )
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


def ui_links(ui_url: str, experiment_id: str | None, model_name: str) -> dict[str, str]:
    """Direct links into the MLflow UI at `ui_url`: the experiment's runs table and the registered model.

    Args:
        ui_url: where the UI answers (`http://host:port`).
        experiment_id: the experiment; None links the list of experiments (none made yet).
        model_name: the registered model.

    Returns:
        `runs` and `model` -> URL.
    """
    base = ui_url.rstrip("/")
    if experiment_id:
        experiment = urllib.parse.quote(experiment_id, safe="")
        runs = f"{base}/#/experiments/{experiment}/runs?compareRunsMode=TABLE&{MODEL_TRAINING_VIEW}"
    else:
        runs = f"{base}/#/experiments?{MODEL_TRAINING_VIEW}"
    model = urllib.parse.quote(model_name, safe="")
    return {"runs": runs, "model": f"{base}/#/models/{model}?{MODEL_TRAINING_VIEW}"}


def describe_store(tracking_uri: str, experiment: str, model_name: str) -> tuple[str | None, str | None]:
    """(experiment id or None, a note on what the store holds yet or None) of the store the links point into.

    Raises:
        StepError: the store cannot be reached or read.
    """
    from mlflow.exceptions import MlflowException

    from components.register.backend import backend_errors, is_not_found, make_client

    client = make_client(tracking_uri)
    with backend_errors(tracking_uri, f"read experiment {experiment!r}"):
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None and found.lifecycle_stage == "active" else None
        try:
            client.get_registered_model(model_name)
            registered = True
        except MlflowException as err:
            if not is_not_found(err):
                raise
            registered = False
    if experiment_id is None:
        return None, f"no run in experiment {experiment!r} yet: run the pipeline (make run) first"
    return experiment_id, None if registered else f"no version of {model_name!r} registered yet"


def _browser_host(host: str) -> str:
    """The host a browser on this machine uses for a server bound to `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else f"[{host}]" if ":" in host else host


def _print_links(ui_url: str, tracking_uri: str, config: Config, out: TextIO) -> None:
    registry = config.registry
    experiment_id, note = describe_store(tracking_uri, registry.experiment, registry.model_name)
    links = ui_links(ui_url, experiment_id, registry.model_name)
    print(f"  runs:  {links['runs']}", file=out)
    print(f"  model: {links['model']}", file=out)
    if note:
        print(f"  ({note})", file=out)


def run(args: argparse.Namespace) -> int:
    """Handle `fashion mlflow-ui`."""
    from components.register.backend import is_server, resolve_backend
    from core.errors import StepError
    from pipeline.cli import resolve_config

    config = resolve_config(args)
    workdir = args.workdir or f"runs/{config.preset}"
    backend = resolve_backend(config.registry, workdir)
    if is_server(backend.tracking_uri):
        print(f"MLflow runs as a server: open {backend.tracking_uri} in a browser")
        _print_links(backend.tracking_uri, backend.tracking_uri, config, sys.stdout)
        return 0
    if backend.tracking_uri.startswith("sqlite:///") and not config.registry.tracking_uri:
        if not os.path.isdir(os.path.join(workdir, "mlflow")):
            raise StepError(f"no MLflow store in {workdir}/mlflow yet: run the pipeline (make run) first")
    cmd = ui_command(backend.tracking_uri, backend.artifact_uri, args.host, args.port)
    ui_url = f"http://{_browser_host(args.host)}:{args.port}"
    if args.print_command:
        print(shlex.join(cmd))
        print(f"MLflow UI on {ui_url} once started:", file=sys.stderr)
        _print_links(ui_url, backend.tracking_uri, config, sys.stderr)
        return 0
    print(f"MLflow UI on {ui_url} (Ctrl+C to stop)")
    _print_links(ui_url, backend.tracking_uri, config, sys.stdout)
    sys.stdout.flush()  # execve drops whatever is still buffered
    # The UI needs no background job workers; they would only take CPU from the pipeline.
    os.execve(cmd[0], cmd, dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
    return 0  # not reached: execv replaces this process
