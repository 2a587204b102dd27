"""`fashion run` end to end: serve (or reuse the server), run the whole DAG locally, then ask the endpoint over gRPC."""

from __future__ import annotations

import contextlib
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from core.config import Config
from core.errors import StepError
from pipeline.console import Console, c_stderr_into, logging_to
from pipeline.local.logs import RUN_LOG, RunLogs
from pipeline.local.results import RunResult
from pipeline.local.runner import local_config, run_logs, run_pipeline
from pipeline.local.server import ServerHandle, ensure_server, stop_server
from serving import store


def pick_sample(samples_dir: str | Path, subcategories: list[str] | None = None) -> Path:
    """A held-out photo for the end-of-run prediction, preferably of a class the model knows.

    The bundled samples are named `<article-type>-<id>.jpg`; none is in any catalogue.

    Raises:
        StepError: the folder holds no photo.
    """
    photos = sorted(p for p in Path(samples_dir).glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        raise StepError(f"{samples_dir}: no sample photos (.jpg/.png) to send to the endpoint")
    known = {re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") for s in subcategories or []}
    for photo in photos:
        if photo.stem.rsplit("-", 1)[0] in known:
            return photo
    return photos[0]


def preflight(config: Config, samples_dir: str | Path) -> None:
    """Check the source, the sample photos and the MLflow store before anything starts.

    Raises:
        StepError: one of them cannot be used; the message says which and how to fix it.
    """
    from components.ingest.sources import check_source
    from components.register.backend import check_reachable

    check_source(config.data.source_uri)
    pick_sample(samples_dir)
    check_reachable(config.registry.tracking_uri)


def run_and_serve(
    config: Config,
    workdir: str | Path,
    samples_dir: str | Path,
    use_cache: bool = True,
    console: Console | None = None,
    verbose: bool = False,
    log_dir: str | Path | None = None,
) -> RunResult:
    """`fashion run`: serve (or reuse the server), run the whole DAG locally, then ask the endpoint over gRPC.

    The server starts first because the deploy step verifies the live endpoint before it promotes
    a version; when a step fails, nothing is published and the server keeps the current champion,
    which then answers the prediction.

    The console gets one line per step as it starts and ends and the steps' live progress; every
    other line, of this process and of each step's, goes to the run's log files (`logs.RunLogs`:
    `<run folder>/logs/`, or `log_dir`). With `verbose` every line is shown as well.

    Returns:
        The run result with the server handle, the prediction of the `stable` version (or why
        there is none: nothing deployed yet) and the folder of the logs.
    """
    console = console or Console(sys.stdout)
    with contextlib.ExitStack() as stack:
        logs = stack.enter_context(run_logs(workdir, log_dir))
        stack.enter_context(logging_to(console, logs.writer(RUN_LOG), verbose))
        if not verbose:
            # Library start-up lines this process writes below Python (gRPC's core, TensorFlow) go to run.log.
            stderr = stack.enter_context(tempfile.NamedTemporaryFile(prefix="fashion-run-stderr-", suffix=".log"))
            stack.callback(logs.append_file, RUN_LOG, Path(stderr.name))
            stack.enter_context(c_stderr_into(stderr.name))
        result = _run_and_serve(config, workdir, samples_dir, use_cache, console, logs, verbose)
    result.logs_dir = str(logs.folder or "")
    return result


def _run_and_serve(
    config: Config,
    workdir: str | Path,
    samples_dir: str | Path,
    use_cache: bool,
    console: Console,
    logs: RunLogs,
    verbose: bool,
) -> RunResult:
    config = local_config(config, workdir)
    preflight(config, samples_dir)
    server = ensure_server(config, workdir)
    console.line(
        f"==> serving {config.serving.model_name} from {config.serving.model_base_path} at {server.grpc_address} "
        f"({'reused' if server.reused else 'started'}, pid {server.pid})"
    )
    result = run_pipeline(config, workdir, use_cache=use_cache, console=console, logs=logs, verbose=verbose)
    result.server = server
    if not result.ok and not server.reused and not store.list_versions(config.serving.model_base_path):
        # This run started the server and nothing was ever deployed: a server with nothing to serve
        # would only hold the ports.
        stop_server(workdir)
        result.server = None
        console.line(f"==> stopped the server this run started (pid {server.pid}): there is no version to serve")
        return result
    # Whatever is `stable` answers: this run's model when it was deployed, else the champion an
    # earlier run deployed (the gate kept this one out, or a step failed).
    import grpc

    labels = result.artifact("train-model", "model").get("metadata", {})
    photo = pick_sample(samples_dir, labels.get("subcategories"))
    try:
        result.prediction = predict_photo(server, photo, config.serving.request_timeout_s)
    except grpc.RpcError as err:
        result.prediction_error = f"{err.code().name}: {err.details()}"
    return result


def predict_photo(server: ServerHandle, photo: str | Path, timeout_s: float = 30.0) -> dict[str, Any]:
    """One real gRPC Predict call for `photo` to the version labelled `stable` (the champion)."""
    from serving.client import PredictionClient
    from serving.model_config import STABLE_LABEL

    with PredictionClient(server.grpc_address, server.model_name, label=STABLE_LABEL, timeout_s=timeout_s) as client:
        result = client.predict([Path(photo).read_bytes()])[0]
    return {"photo": str(photo), **result}
