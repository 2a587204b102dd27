"""A local HTTP server speaking the Kubeflow Pipelines v2beta1 REST endpoints that kfp.Client calls.

No Kubeflow API server can run here, so the cluster commands are tested against this stand-in:
it keeps experiments, runs and recurring runs in memory, answers in the API's JSON shapes
(snake_case fields, as kfp_server_api expects) and records every request so tests can assert on
what a real server would have received: the pipeline spec, the parameters, the cron, the experiment.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

PREFIX = "/apis/v2beta1"


@dataclasses.dataclass
class Request:
    """One request the stub received."""

    method: str
    path: str
    query: dict[str, str]
    body: Any


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _matches(item: dict[str, Any], filter_json: str | None) -> bool:
    """Apply the EQUALS predicates of a KFP list filter (the only kind kfp.Client sends by name)."""
    if not filter_json:
        return True
    for predicate in json.loads(filter_json).get("predicates", []):
        value = predicate.get("stringValue", predicate.get("string_value"))
        if item.get(predicate["key"]) != value:
            return False
    return True


class KfpApiStub:
    """The in-memory KFP API; `url` is its base address once started."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.recurring_runs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`."""
        assert self._server is not None, "stub not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> KfpApiStub:
        """Serve on a free loopback port in a background thread."""
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def _handle(self, method: str) -> None:
                parsed = urlparse(self.path)
                query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except json.JSONDecodeError:
                    body = raw.decode("utf-8", "replace")
                with stub._lock:
                    stub.requests.append(Request(method, parsed.path, query, body))
                    status, payload = stub.dispatch(method, parsed.path, query, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Shut the server down and wait for its thread."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def requests_to(self, method: str, path: str) -> list[Request]:
        """The recorded requests with this method and path (path relative to /apis/v2beta1)."""
        return [r for r in self.requests if r.method == method and r.path == PREFIX + path]

    def dispatch(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        """Answer one request as the KFP API server would."""
        if not path.startswith(PREFIX):
            return 404, {"error": f"no route {path}", "code": 5}
        parts = [p for p in path[len(PREFIX) :].split("/") if p]
        route = (method, parts[0] if parts else "", len(parts))
        if route == ("GET", "healthz", 1):
            return 200, {"commit_sha": "stub", "tag_name": "2.5.0", "multi_user": False}
        if route == ("POST", "experiments", 1):
            experiment = {
                "experiment_id": str(uuid.uuid4()),
                "display_name": body["display_name"],
                "description": body.get("description") or "",
                "namespace": body.get("namespace") or "",
                "created_at": _now(),
                "storage_state": "AVAILABLE",
            }
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if route == ("GET", "experiments", 1):
            found = [e for e in self.experiments.values() if _matches(e, query.get("filter"))]
            return 200, {"experiments": found, "total_size": len(found)} if found else {}
        if route == ("GET", "experiments", 2):
            return self._get(self.experiments, parts[1], "experiment")
        if route == ("POST", "runs", 1):
            if body.get("experiment_id") not in self.experiments:
                return 400, {"error": f"experiment {body.get('experiment_id')} not found", "code": 3}
            run = {**body, "run_id": str(uuid.uuid4()), "state": "PENDING", "created_at": _now()}
            self.runs[run["run_id"]] = run
            return 200, run
        if route == ("GET", "runs", 2):
            return self._get(self.runs, parts[1], "run")
        if route == ("POST", "recurringruns", 1):
            if body.get("experiment_id") not in self.experiments:
                return 400, {"error": f"experiment {body.get('experiment_id')} not found", "code": 3}
            created = {
                **body,
                "recurring_run_id": str(uuid.uuid4()),
                "status": "ENABLED" if body.get("mode") == "ENABLE" else "DISABLED",
                "created_at": _now(),
                "updated_at": _now(),
            }
            self.recurring_runs[created["recurring_run_id"]] = created
            return 200, created
        if route == ("GET", "recurringruns", 1):
            found = [
                r
                for r in self.recurring_runs.values()
                if query.get("experiment_id") in (None, "", r.get("experiment_id")) and _matches(r, query.get("filter"))
            ]
            # The API names this list field in camelCase, unlike every other field.
            return 200, {"recurringRuns": found, "total_size": len(found)} if found else {}
        if route == ("GET", "recurringruns", 2):
            return self._get(self.recurring_runs, parts[1], "recurring run")
        if route == ("DELETE", "recurringruns", 2):
            if self.recurring_runs.pop(parts[1], None) is None:
                return 404, {"error": f"recurring run {parts[1]} not found", "code": 5}
            return 200, {}
        return 404, {"error": f"no route {method} {path}", "code": 5}

    @staticmethod
    def _get(store: dict[str, dict[str, Any]], key: str, kind: str) -> tuple[int, Any]:
        if key not in store:
            return 404, {"error": f"{kind} {key} not found", "code": 5}
        return 200, store[key]
