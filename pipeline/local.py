"""Run the whole pipeline on this machine with kfp.local, serve what it deployed, and summarise the run.

The same `@dsl.pipeline` that compiles for a cluster runs here through `kfp.local`'s
SubprocessRunner in the project's own environment (no Docker, no pip installs). Everything lives
under one work directory: the pipeline root, the local step cache, the MLflow store, the model
base path the TF Serving-compatible server polls, and that server's pid file.

kfp.local reports progress only as log lines; a logging filter on the root logger (kfp swaps the
handlers during a run, but keeps the logger's filters) turns them into per-step events with
timestamps, and a tee on stdout keeps each step's last output lines so a failure can be reported
with the step's own message.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from core import layouts, storage
from core.config import Config
from core.errors import StepError
from pipeline.params import model_config_uri, pipeline_arguments

log = logging.getLogger(__name__)

STEP_ORDER = ("ingest-images", "resize-images", "train-model", "evaluate-model", "register-model", "deploy-model")
GATED_STEPS = ("register-model", "deploy-model")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TASK = r"'([A-Za-z0-9_.-]+)'"
_ERROR_LINE = re.compile(r"^\s*(?:[A-Za-z_][\w.]*\.)?([A-Z]\w*(?:Error|Exception)): (.+)$")


@dataclasses.dataclass
class StepRecord:
    """One step of a local run, as the summary shows it."""

    name: str
    status: str = "not run"
    seconds: float | None = None
    message: str = ""
    outputs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    started: float | None = None
    attempts: int = 0
    cache_key: str = ""


@dataclasses.dataclass
class ServerHandle:
    """The local TF Serving-compatible server the run deploys to."""

    pid: int
    host: str
    grpc_port: int
    rest_port: int
    model_name: str
    model_base_path: str
    model_config_file: str
    log_path: str
    reused: bool = False

    @property
    def grpc_address(self) -> str:
        """`host:port` of the gRPC endpoint."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def rest_address(self) -> str:
        """Base URL of the REST endpoint."""
        return f"http://{self.host}:{self.rest_port}"


@dataclasses.dataclass
class RunResult:
    """What a local pipeline run did: every step, the gate, the registered version, the endpoint."""

    ok: bool
    run_dir: str
    seconds: float
    steps: dict[str, StepRecord]
    error: str = ""
    server: ServerHandle | None = None
    prediction: dict[str, Any] | None = None
    prediction_error: str = ""
    pipeline_root_uri: str = ""

    def artifact(self, step: str, name: str) -> dict[str, Any]:
        """`{"uri": ..., "metadata": {...}}` of one output artifact ({} when the step did not make it)."""
        return self.steps[step].outputs.get(name, {}) if step in self.steps else {}


def local_config(config: Config, workdir: str | Path) -> Config:
    """Fill the settings a local run keeps under `workdir` (MLflow store, model base path) when unset."""
    from components.register.backend import embedded_backend

    root = Path(workdir).resolve()
    registry = config.registry
    if not registry.tracking_uri:
        # The steps run in their own folders, so the embedded store is pinned to the work directory.
        embedded = embedded_backend(root)
        (root / "mlflow").mkdir(parents=True, exist_ok=True)
        registry = dataclasses.replace(
            registry,
            tracking_uri=embedded.tracking_uri,
            artifact_uri=registry.artifact_uri or embedded.artifact_uri,
        )
    serving = config.serving
    if not serving.model_base_path:
        serving = dataclasses.replace(serving, model_base_path=str(root / "models" / serving.model_name))
    return dataclasses.replace(config, registry=registry, serving=serving)


class _StepTracker(logging.Filter):
    """Turns kfp.local's log records into step events; passes every record through unchanged."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        super().__init__()
        self.steps: dict[str, StepRecord] = {name: StepRecord(name) for name in STEP_ORDER}
        self.current: str | None = None
        self.echo = echo

    def _step(self, name: str) -> StepRecord:
        return self.steps.setdefault(name, StepRecord(name))

    def filter(self, record: logging.LogRecord) -> bool:
        text = _ANSI.sub("", record.getMessage())
        now = record.created
        if m := re.match(rf"Executing task {_TASK}", text):
            step = self._step(m.group(1))
            step.attempts += 1
            step.started = step.started or now
            step.status = "running"
            self.current = step.name
            position = f"{STEP_ORDER.index(step.name) + 1}/{len(STEP_ORDER)}" if step.name in STEP_ORDER else "-"
            retry = f" (attempt {step.attempts})" if step.attempts > 1 else ""
            self.echo(f"==> [{position}] {step.name}{retry}")
        elif m := re.match(rf"Task {_TASK} finished with status (\w+)", text):
            step = self._step(m.group(1))
            step.status = "succeeded" if m.group(2) == "SUCCESS" else "failed"
            step.seconds = now - (step.started or now)
            self.echo(f"==> {step.name} {step.status} in {step.seconds:.1f}s")
        elif m := re.match(r"Task '?([A-Za-z0-9_.-]+?)'? cache hit \(key=(\w+)\)", text):
            step = self._step(m.group(1))
            step.status, step.seconds, step.cache_key = "cached", 0.0, m.group(2)
            self.echo(f"==> {step.name} reused from the step cache")
        return True


class _Tee(io.TextIOBase):
    """A stdout stand-in that writes through line by line and keeps the last lines of each step's output.

    kfp's executor logs every step's whole executor input as indented JSON; that block is left
    out of the terminal (it is in the step's folder) so the steps' own progress stays readable.
    """

    def __init__(self, target: Any, tracker: _StepTracker, keep: int = 200) -> None:
        self.target = target
        self.tracker = tracker
        self.tails: dict[str, collections.deque[str]] = collections.defaultdict(lambda: collections.deque(maxlen=keep))
        self._partial = ""
        self._skipping = False

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def _line(self, line: str) -> None:
        plain = _ANSI.sub("", line)
        if self._skipping:
            # The dump ends with its top-level brace, indented only by kfp's streamed-log prefix.
            if plain.rstrip() == "    }" or "[KFP Executor" in plain:
                self._skipping = False
            if "[KFP Executor" not in plain:
                return
        if plain.rstrip().endswith("Got executor_input:"):
            self._skipping = True
            self.target.write(line + " (not shown)\n")
            return
        self.target.write(line + "\n")
        if self.tracker.current:
            self.tails[self.tracker.current].append(plain)

    def flush(self) -> None:
        self.target.flush()

    def drain(self) -> None:
        """Write out a last line that had no newline."""
        if self._partial:
            self._line(self._partial)
            self._partial = ""
        self.flush()

    def error_message(self, step: str) -> str:
        """The last `SomethingError: message` line the step printed (its exception), else ''."""
        for line in reversed(self.tails.get(step, ())):
            if m := _ERROR_LINE.match(line):
                return f"{m.group(1)}: {m.group(2).strip()}"
        return ""


def _read_outputs(task_dir: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Artifacts (`{name: {uri, metadata}}`) and parameters from one task's executor_output.json."""
    path = task_dir / "executor_output.json"
    if not path.is_file():
        return {}, {}
    data = json.loads(path.read_text())
    artifacts = {
        name: {"uri": entry["artifacts"][0].get("uri", ""), "metadata": entry["artifacts"][0].get("metadata", {})}
        for name, entry in (data.get("artifacts") or {}).items()
        if entry.get("artifacts")
    }
    return artifacts, dict(data.get("parameterValues") or {})


def _read_cached_outputs(cache_root: Path, key_prefix: str) -> dict[str, dict[str, Any]]:
    """Artifacts of a step served from the local cache (the entry kfp.local stored when it first ran)."""
    for entry in sorted(cache_root.glob(f"{key_prefix}*.json")):
        data = json.loads(entry.read_text())
        outputs = data.get("outputs", data)
        found = {}
        for name, value in outputs.items():
            if isinstance(value, dict) and "uri" in value:
                found[name] = {"uri": value.get("uri", ""), "metadata": value.get("metadata", {})}
        return found
    return {}


@contextlib.contextmanager
def _tracking(echo: Callable[[str], None]) -> Iterator[tuple[_StepTracker, _Tee]]:
    tracker = _StepTracker(echo)
    tee = _Tee(sys.stdout, tracker)
    root = logging.getLogger()
    level = root.level
    # Some of kfp.local's progress records (cache hits) are logged outside its own INFO context.
    root.setLevel(min(level or logging.WARNING, logging.INFO))
    root.addFilter(tracker)
    try:
        with contextlib.redirect_stdout(tee):
            yield tracker, tee
    finally:
        tee.drain()
        root.removeFilter(tracker)
        root.setLevel(level)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _server_file(workdir: str | Path) -> Path:
    return Path(workdir) / "serving" / layouts.SERVER_STATE


def running_server(workdir: str | Path) -> ServerHandle | None:
    """The server a previous run started for `workdir`, when it is still up."""
    path = _server_file(workdir)
    if not path.is_file():
        return None
    handle = ServerHandle(**json.loads(path.read_text()))
    if _pid_alive(handle.pid) and _port_open(handle.host, handle.grpc_port):
        return dataclasses.replace(handle, reused=True)
    return None


def _ensure_model_config(model_name: str, model_base_path: str) -> str:
    """The models.config the server starts from; a single-model one before the first deploy writes its own."""
    from serving.server import config as server_config

    uri = model_config_uri(model_base_path)
    if not storage.exists(uri):
        server_config.write_model_server_config(uri, server_config.single_model_config(model_name, model_base_path))
    return uri


def ensure_server(config: Config, workdir: str | Path, timeout_s: float = 120.0) -> ServerHandle:
    """Reuse the workdir's running server when it serves the same model and ports, else start one.

    The server outlives `fashion run` on purpose: users send predictions to it afterwards. It
    reads the models.config beside the model base path, which the deploy step rewrites and pushes
    to it (HandleReloadConfigRequest) when it publishes and promotes a version.

    Raises:
        StepError: the configured port is taken by another process, or the server did not come up.
    """
    serving = config.serving
    current = running_server(workdir)
    if current is not None:
        same = (current.grpc_port, current.rest_port, current.model_name, current.model_base_path) == (
            serving.grpc_port,
            serving.rest_port,
            serving.model_name,
            serving.model_base_path,
        ) and current.model_config_file == model_config_uri(serving.model_base_path)
        if same:
            return current
        stop_server(workdir)
    for port in (serving.grpc_port, serving.rest_port):
        if _port_open(serving.host, port):
            raise StepError(
                f"port {serving.host}:{port} is already in use by another process: stop it, or pick free ports "
                "with --set serving.grpc_port=N --set serving.rest_port=M"
            )
    if not storage.is_gcs(serving.model_base_path):
        Path(serving.model_base_path).mkdir(parents=True, exist_ok=True)
    config_file = _ensure_model_config(serving.model_name, serving.model_base_path)
    log_path = Path(workdir).resolve() / "serving" / "server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "serve",
        f"--preset={config.preset}",
        f"--host={serving.host}",
        f"--port={serving.grpc_port}",
        f"--rest_api_port={serving.rest_port}",
        f"--model_name={serving.model_name}",
        f"--model_config_file={config_file}",
        "--file_system_poll_wait_seconds=1",
    ]
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(  # noqa: S603 (our own CLI)
            command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    handle = ServerHandle(
        pid=process.pid,
        host=serving.host,
        grpc_port=serving.grpc_port,
        rest_port=serving.rest_port,
        model_name=serving.model_name,
        model_base_path=serving.model_base_path,
        model_config_file=config_file,
        log_path=str(log_path),
    )
    deadline = time.monotonic() + timeout_s
    while not _port_open(handle.host, handle.grpc_port):
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise StepError(f"the serving process exited with code {process.returncode}: {' | '.join(tail)}")
        if time.monotonic() > deadline:
            process.terminate()
            raise StepError(f"the serving process did not open {handle.grpc_address} within {timeout_s:.0f}s")
        time.sleep(0.3)
    path = _server_file(workdir)
    path.write_text(json.dumps(dataclasses.asdict(handle), indent=2))
    return handle


def stop_server(workdir: str | Path, timeout_s: float = 20.0) -> bool:
    """Stop the server `fashion run` started for `workdir`; True when one was running."""
    path = _server_file(workdir)
    if not path.is_file():
        return False
    handle = ServerHandle(**json.loads(path.read_text()))
    path.unlink()
    if not _pid_alive(handle.pid):
        return False
    os.kill(handle.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _pid_alive(handle.pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(handle.pid, os.WNOHANG)
        time.sleep(0.2)
    if _pid_alive(handle.pid):
        os.kill(handle.pid, signal.SIGKILL)
    return True


def run_pipeline(
    config: Config,
    workdir: str | Path,
    use_cache: bool = True,
    echo: Callable[[str], None] = print,
) -> RunResult:
    """Run the whole DAG with kfp.local in this environment; never raises for a failed step.

    Args:
        config: the resolved run configuration (see `local_config` for what is filled in).
        workdir: where the pipeline root, cache, MLflow store and model base path live.
        use_cache: reuse the outputs of cached steps (ingest, preprocess) from earlier runs.
        echo: where progress lines go.

    Returns:
        Every step's status, time and outputs; `ok` is False with `error` set when a step failed.
    """
    from kfp import local

    from pipeline.dag import build_pipeline

    workdir = Path(workdir).resolve()
    pipeline_root = workdir / "pipeline"
    cache_root = workdir / "cache"
    pipeline_root.mkdir(parents=True, exist_ok=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(pipeline_root),
        raise_on_error=True,
        enable_caching=use_cache,
        cache_root=str(cache_root),
    )
    pipeline = build_pipeline(config)
    before = {p.name for p in pipeline_root.iterdir()}
    started = time.monotonic()
    error = ""
    with _tracking(echo) as (tracker, tee), _quiet_local_warnings():
        try:
            pipeline(**pipeline_arguments(config))
        except RuntimeError as err:
            error = _ANSI.sub("", str(err))
    seconds = time.monotonic() - started
    runs = sorted(p for p in pipeline_root.iterdir() if p.name not in before and p.is_dir())
    run_dir = runs[-1] if runs else pipeline_root
    steps = tracker.steps
    for step in steps.values():
        if step.status == "cached":
            step.outputs = _read_cached_outputs(cache_root, step.cache_key)
        else:
            step.outputs, step.parameters = _read_outputs(run_dir / step.name)
        if step.status == "failed":
            step.message = tee.error_message(step.name) or "failed (see its log above)"
    evaluate = steps["evaluate-model"]
    if evaluate.status in ("succeeded", "cached") and evaluate.parameters.get("Output") is False:
        for name in GATED_STEPS:
            steps[name].status = "skipped (gate)"
        echo("==> gate not passed: register and deploy skipped, the champion keeps serving")
    failed = [s for s in steps.values() if s.status == "failed"]
    if failed:
        error = f"step {failed[0].name} failed: {failed[0].message}"
    result = RunResult(ok=not error, run_dir=str(run_dir), seconds=seconds, steps=steps, error=error)
    if storage.is_gcs(config.pipeline.pipeline_root) and runs:
        result.pipeline_root_uri = upload_run(run_dir, config.pipeline.pipeline_root)
    return result


def upload_run(run_dir: str | Path, pipeline_root: str) -> str:
    """Copy a local run's outputs to `<pipeline_root>/<run name>/`, as KFP's launcher does on a cluster.

    kfp.local keeps its pipeline root on the local disk (steps write through `artifact.path`);
    on a cluster the launcher uploads each step's outputs to the gs:// pipeline root. Mirroring
    the finished run gives a local run the same place in the bucket.

    Returns:
        The run's URI under the pipeline root.
    """
    target = storage.join(pipeline_root, Path(run_dir).name)
    count = storage.copy_tree(str(run_dir), target)
    log.info("uploaded %d files of the run to %s", count, target)
    return target


@contextlib.contextmanager
def _quiet_local_warnings() -> Iterator[None]:
    """kfp.local warns that images, resources and display names have no local effect; that is expected here."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*have no effect in the current local runner.*")
        warnings.filterwarnings("ignore", message=r".*custom or non-Python base image.*")
        yield


HEADLINE_METRICS = (
    "category_accuracy",
    "subcategory_accuracy",
    "category_of1",
    "subcategory_of1",
    "attributes_of1",
    "attributes_map",
    "hierarchy_consistency",
)


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _step_note(step: StepRecord) -> str:
    """One line on what the step produced, from its artifacts' metadata."""
    if step.status == "failed":
        return step.message
    meta = {name: out.get("metadata", {}) for name, out in step.outputs.items()}
    if step.name == "ingest-images" and "manifest" in meta:
        m = meta["manifest"]
        splits = ", ".join(f"{k} {_number(v)}" for k, v in sorted((m.get("splits") or {}).items()))
        return f"{_number(m.get('usable', '?'))} usable of {_number(m.get('rows', '?'))} rows ({splits})"
    if step.name == "resize-images" and "examples" in meta:
        m = meta["examples"]
        splits = ", ".join(f"{k} {_number(v)}" for k, v in sorted((m.get("splits") or {}).items()))
        size = f"{_number(m.get('image_height', '?'))}x{_number(m.get('image_width', '?'))}"
        return f"{size} {m.get('image_format', '')} shards ({splits}), {_number(m.get('rejected', 0))} rejected"
    if step.name == "train-model" and "model" in meta:
        m = meta["model"]
        epochs, best = _number(m.get("epochs", "?")), _number(m.get("best_epoch", "?"))
        return f"{m.get('backbone', '?')}, {epochs} epochs, best epoch {best}"
    if step.name == "evaluate-model" and step.status == "succeeded":
        return "blessed" if step.parameters.get("Output") else "not blessed"
    if step.name == "register-model" and "saved_model" in meta:
        m = meta["saved_model"]
        return f"{m.get('model_name', '')} version {_number(m.get('version', '?'))}"
    if step.name == "deploy-model" and "deployment" in meta:
        m = meta["deployment"]
        return f"serving version {_number(m.get('serving_version', '?'))} at {m.get('endpoint', '?')}, verified"
    return ""


def format_summary(result: RunResult) -> str:
    """The end-of-run report: steps with status and time, metrics, gate, version, endpoint, prediction."""
    state = "succeeded" if result.ok else "FAILED"
    lines = [f"Pipeline run {state} in {result.seconds:.0f}s  ({result.run_dir})", ""]
    lines.append(f"  {'step':<16} {'status':<16} {'time':>8}  notes")
    for name in STEP_ORDER:
        step = result.steps.get(name, StepRecord(name))
        took = f"{step.seconds:.1f}s" if step.seconds is not None else "-"
        lines.append(f"  {name:<16} {step.status:<16} {took:>8}  {_step_note(step)}")
    metrics = result.artifact("evaluate-model", "metrics").get("metadata", {})
    if metrics:
        shown = [k for k in HEADLINE_METRICS if k in metrics] or sorted(metrics)[:6]
        lines += ["", "Metrics (test split): " + "  ".join(f"{k} {_number(metrics[k])}" for k in shown)]
    evaluate = result.steps.get("evaluate-model")
    if evaluate and evaluate.parameters:
        verdict = "PASSED" if evaluate.parameters.get("Output") else "NOT PASSED"
        reason = result.artifact("evaluate-model", "evaluation").get("metadata", {}).get("reason", "")
        lines.append(f"Gate: {verdict}: {reason}")
    registered = result.artifact("register-model", "saved_model").get("metadata", {})
    if registered:
        lines.append(
            f"Registered: {registered.get('model_name', '?')} version {_number(registered.get('version', '?'))}"
            f" (MLflow run {registered.get('run_id', '?')})"
        )
    deployed = result.artifact("deploy-model", "deployment").get("metadata", {})
    if deployed:
        lines.append(
            f"Deployed: registry version {_number(deployed.get('registry_version', '?'))} is serving version "
            f"{_number(deployed.get('serving_version', '?'))} (label stable, alias champion)"
        )
    if result.pipeline_root_uri:
        lines.append(f"Pipeline root: {result.pipeline_root_uri}")
    if result.server is not None:
        s = result.server
        how = "reused" if s.reused else "started"
        lines.append(
            f"Endpoint: gRPC {s.grpc_address}, REST {s.rest_address}/v1/models/{s.model_name} "
            f"(server pid {s.pid}, {how}; log {s.log_path})"
        )
    if result.prediction:
        p = result.prediction
        groups = ", ".join(f"{g} {v['value']} ({v['score']:.2f})" for g, v in p.get("attribute_groups", {}).items())
        lines.append(
            f"Prediction over gRPC (stable = version {p.get('model_version', '?')}) for {p['photo']}, a photo outside "
            f"the training data: category {p['category']} ({p['category_score']:.2f}), sub-category "
            f"{p['subcategory']} ({p['subcategory_score']:.2f}); {groups}"
        )
    if result.prediction_error:
        lines.append(f"No prediction: nothing is serving yet ({result.prediction_error}).")
    if not result.ok:
        lines += ["", f"Error: {result.error}", "The serving champion was left untouched."]
    return "\n".join(lines)


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


def run_and_serve(
    config: Config,
    workdir: str | Path,
    samples_dir: str | Path,
    use_cache: bool = True,
    echo: Callable[[str], None] = print,
) -> RunResult:
    """`fashion run`: serve (or reuse the server), run the whole DAG locally, then ask the endpoint over gRPC.

    The server starts first because the deploy step verifies the live endpoint before it promotes
    a version; when a step fails, nothing is published and the server keeps the current champion,
    which then answers the prediction.

    Returns:
        The run result with the server handle and the prediction of the `stable` version (or why
        there is none: nothing deployed yet).
    """
    config = local_config(config, workdir)
    server = ensure_server(config, workdir)
    echo(
        f"==> serving {config.serving.model_name} from {config.serving.model_base_path} at {server.grpc_address} "
        f"({'reused' if server.reused else 'started'}, pid {server.pid})"
    )
    result = run_pipeline(config, workdir, use_cache=use_cache, echo=echo)
    result.server = server
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
    from components.deploy.step import STABLE_LABEL
    from serving.client import PredictionClient

    with PredictionClient(server.grpc_address, server.model_name, label=STABLE_LABEL, timeout_s=timeout_s) as client:
        result = client.predict([Path(photo).read_bytes()])[0]
    return {"photo": str(photo), **result}
