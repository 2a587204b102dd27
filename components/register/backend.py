"""Where MLflow lives: the embedded store of a work directory or a server, reachability, error wording.

The embedded default keeps a SQLite store and a file artifact root under `<workdir>/mlflow/`; a
tracking server is any `http(s)://` URI; an artifact root may be a folder or `gs://`. Every call
to a backend goes through `backend_errors`, so a failure reaches the user as a StepError that
names the URI and what to check.
"""

from __future__ import annotations

import contextlib
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.register import coordination
from core.config import RegistryConfig
from core.errors import StepError

log = logging.getLogger(__name__)

EMBEDDED_DIR = "mlflow"
EMBEDDED_DB = "mlflow.db"
EMBEDDED_ARTIFACTS = "artifacts"
PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Backend:
    """A resolved MLflow location.

    Attributes:
        tracking_uri: the tracking and registry store (`sqlite:///...`, `http://host:port`, ...).
        artifact_uri: the artifact root new experiments get; empty lets the server decide.
    """

    tracking_uri: str
    artifact_uri: str = ""


def embedded_backend(workdir: str | Path) -> Backend:
    """The embedded store of a work directory: `<workdir>/mlflow/mlflow.db` and `<workdir>/mlflow/artifacts`."""
    root = Path(workdir).resolve() / EMBEDDED_DIR
    return Backend(tracking_uri=f"sqlite:///{root / EMBEDDED_DB}", artifact_uri=str(root / EMBEDDED_ARTIFACTS))


def resolve_backend(registry: RegistryConfig, workdir: str | Path | None = None) -> Backend:
    """The backend a step uses: `registry.tracking_uri`, or the embedded store of `workdir` when empty.

    Raises:
        StepError: the tracking URI is empty and no work directory was given.
    """
    if registry.tracking_uri:
        return Backend(registry.tracking_uri, registry.artifact_uri)
    if workdir is None:
        raise StepError(
            "registry.tracking_uri is empty and no work directory was given: pass --workdir for the "
            "embedded MLflow store, or set registry.tracking_uri to a tracking server"
        )
    embedded = embedded_backend(workdir)
    return Backend(embedded.tracking_uri, registry.artifact_uri or embedded.artifact_uri)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` store, None for any other store (or an in-memory one)."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///") :]
    if not rest or rest.startswith(":memory:"):
        return None
    return Path(rest.split("?", 1)[0])


def check_reachable(tracking_uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Fail fast, naming the URI, when the tracking store cannot be reached.

    A server is probed with one short HTTP request (MLflow's own client would retry for minutes);
    a SQLite store needs an existing folder for its file (the embedded default creates it).

    Raises:
        StepError: the server does not answer, or the SQLite file's folder does not exist.
    """
    if is_server(tracking_uri):
        url = tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s):
                return
        except urllib.error.HTTPError:
            return  # it answered: reachable, whatever it thinks of /health
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise StepError(
                f"MLflow tracking server {tracking_uri} cannot be reached ({reason}); start it, or fix "
                "registry.tracking_uri (empty = the embedded store in the work directory)"
            ) from err
    if tracking_uri.startswith("sqlite:///"):
        path = sqlite_path(tracking_uri)
        if path is not None and not path.parent.is_dir():
            raise StepError(
                f"MLflow store {tracking_uri} cannot be opened: folder {path.parent} does not exist; "
                "create it or fix registry.tracking_uri"
            )


def is_server(tracking_uri: str) -> bool:
    """Whether the store is a tracking server (`http(s)://`) rather than a database the client opens itself."""
    return tracking_uri.startswith(("http://", "https://"))


def backend_exceptions() -> tuple[type[BaseException], ...]:
    """The exception types a call to a backend raises when it fails: MLflow, HTTP, GCS, database, files."""
    import requests
    from google.api_core import exceptions as gcs_exceptions
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    return (MlflowException, requests.RequestException, gcs_exceptions.GoogleAPIError, SQLAlchemyError, OSError)


@contextlib.contextmanager
def backend_errors(uri: str, action: str) -> Iterator[None]:
    """Turn any MLflow, HTTP, GCS, database or file error inside the block into a StepError naming `uri`."""
    try:
        yield
    except StepError:
        raise
    except backend_exceptions() as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StepError(f"MLflow at {uri}: could not {action}: {message}") from err


def make_client(tracking_uri: str) -> Any:
    """An MlflowClient bound to `tracking_uri` for both tracking and registry, after a reachability probe.

    The client never falls back on MLflow's process-wide default URI, so two backends can be used
    side by side in one process. A SQLite store is opened under a file lock: opening a new one creates
    its schema, which two processes must not do at once; a process that does not take the lock (an
    `mlflow ui` on the same file) only makes the opening fail for a moment, and it is tried again.
    """
    check_reachable(tracking_uri)
    from mlflow import MlflowClient

    def open_store() -> Any:
        return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    with backend_errors(tracking_uri, "open the tracking store"), coordination.store_lock(sqlite_path(tracking_uri)):
        return coordination.retry_store_race(open_store, f"open {tracking_uri}")


def is_not_found(err: BaseException) -> bool:
    """Whether an MlflowException says the entity does not exist."""
    return getattr(err, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def is_already_exists(err: BaseException) -> bool:
    """Whether an MlflowException says the entity exists already."""
    return getattr(err, "error_code", "") in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")
