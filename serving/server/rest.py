"""REST front end on TF Serving's paths and JSON formats.

    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]            model status
    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata   signature definitions
    POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict    `instances` (row) or `inputs` (columnar)

Binary values travel as `{"b64": "..."}`; errors are `{"error": "..."}` with the HTTP status TF
Serving maps the canonical code to.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from google.protobuf import json_format

from serving.server import handlers
from serving.server.errors import ServingError, invalid_argument
from serving.server.manager import ModelManager
from serving.server.servable import CLASSIFY_METHOD, REGRESS_METHOD, dtype_name

log = logging.getLogger(__name__)

_MODEL = r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
_GET = re.compile(_MODEL + r"(?P<metadata>/metadata)?$")
_POST = re.compile(_MODEL + r":(?P<method>predict|classify|regress)$")


def _spec(match: re.Match, signature_name: str = "") -> handlers.Spec:
    version = match.group("version")
    if version is not None:
        try:
            value = int(version)
            if value >= 2**63:
                raise ValueError(version)
        except ValueError as err:
            raise invalid_argument(f"Failed to convert version: {version} to numeric.") from err
    return handlers.Spec(
        name=match.group("name"),
        version=int(version) if version is not None else None,
        label=match.group("label"),
        signature_name=signature_name,
    )


def _decode_value(value: Any, dtype: str) -> Any:
    """One JSON value (possibly nested lists) -> Python values of the signature's dtype."""
    if isinstance(value, list):
        return [_decode_value(v, dtype) for v in value]
    if isinstance(value, dict):
        if set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except ValueError as err:
                raise invalid_argument(f"Unable to base64 decode: {err}") from err
        raise invalid_argument(f"JSON object: does not have named input: {next(iter(value), '')}")
    if dtype == "string":
        if isinstance(value, str):
            return value.encode()
        raise invalid_argument(f"JSON Value: {json.dumps(value)} not of expected type: string")
    if isinstance(value, str) or value is None:
        raise invalid_argument(f"JSON Value: {json.dumps(value)} not of expected type: {dtype}")
    return value


def _to_array(values: Any, dtype: str) -> np.ndarray:
    import tensorflow as tf

    if dtype == "string":
        return np.array(values, dtype=object)
    try:
        return np.array(values, dtype=tf.dtypes.as_dtype("float32" if dtype == "float" else dtype).as_numpy_dtype)
    except (ValueError, TypeError) as err:
        raise invalid_argument(f"Failed to process element: {err}") from err


def decode_inputs(body: dict, specs: dict[str, Any]) -> tuple[dict[str, np.ndarray], bool]:
    """JSON request body -> (input arrays, row format?), following TF Serving's rules."""
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances == has_inputs:
        raise invalid_argument(
            "Missing 'inputs' or 'instances' key"
            if not has_instances
            else "Not formatted correctly expecting only one of 'inputs' or 'instances' keys exclusively"
        )
    dtypes = {alias: dtype_name(spec.dtype) for alias, spec in specs.items()}
    if has_instances:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise invalid_argument("Excepting 'instances' to be an list/array")
        columns: dict[str, list] = {alias: [] for alias in specs}
        for instance in instances:
            named = isinstance(instance, dict) and not (set(instance) == {"b64"})
            if len(specs) > 1 and not named:
                raise invalid_argument("Expecting object but got list at item 0 of input list")
            if named:
                if set(instance) != set(specs):
                    raise invalid_argument(
                        f"Failed to process element: 0 key: {sorted(set(instance) ^ set(specs))[0]} "
                        "of 'instances' list. "
                        f"Error: Missing or unexpected named input; expected {sorted(specs)}"
                    )
                for alias in specs:
                    columns[alias].append(_decode_value(instance[alias], dtypes[alias]))
            else:
                alias = next(iter(specs))
                columns[alias].append(_decode_value(instance, dtypes[alias]))
        return {alias: _to_array(v, dtypes[alias]) for alias, v in columns.items()}, True
    inputs = body["inputs"]
    if isinstance(inputs, dict) and not set(inputs) == {"b64"}:
        unknown = set(inputs) - set(specs)
        if unknown:
            expected = ",".join(sorted(specs))
            raise invalid_argument(
                f"input tensor alias not found in signature: {sorted(unknown)[0]}. "
                f"Inputs expected to be in the set {{{expected}}}."
            )
        return {a: _to_array(_decode_value(v, dtypes[a]), dtypes[a]) for a, v in inputs.items()}, False
    if len(specs) != 1:
        raise invalid_argument("Expecting object with named inputs in 'inputs'")
    alias = next(iter(specs))
    return {alias: _to_array(_decode_value(inputs, dtypes[alias]), dtypes[alias])}, False


def _json_value(array: np.ndarray, alias: str) -> Any:
    if array.dtype == object or array.dtype.kind in ("S", "U"):
        binary = alias.endswith("_bytes")

        def conv(x: Any) -> Any:
            if isinstance(x, list):
                return [conv(v) for v in x]
            data = x if isinstance(x, bytes) else str(x).encode()
            if binary:
                return {"b64": base64.b64encode(data).decode()}
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(data).decode()}

        return conv(array.tolist())
    return array.tolist()


def encode_outputs(outputs: dict[str, np.ndarray], row_format: bool) -> dict:
    """Output arrays -> `{"predictions": [...]}` (row) or `{"outputs": ...}` (columnar)."""
    if row_format:
        sizes = {a.shape[0] if a.ndim else None for a in outputs.values()}
        if len(sizes) != 1 or None in sizes:
            raise invalid_argument(
                "Output tensors do not share the same 0th-dimension size; use the columnar 'inputs' format"
            )
        values = {alias: _json_value(array, alias) for alias, array in outputs.items()}
        if len(values) == 1:
            return {"predictions": next(iter(values.values()))}
        n = sizes.pop()
        return {"predictions": [{alias: v[i] for alias, v in values.items()} for i in range(n)]}
    values = {alias: _json_value(array, alias) for alias, array in outputs.items()}
    return {"outputs": next(iter(values.values())) if len(values) == 1 else values}


def status_json(response: Any) -> dict:
    """GetModelStatusResponse in TF Serving's REST form (every field spelled out, `status` included)."""
    response = type(response).FromString(response.SerializeToString())
    for version_status in response.model_version_status:
        # TF Serving always sets `status`; marking it present makes json_format print an OK status too.
        version_status.status.SetInParent()
    return json_format.MessageToDict(
        response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


class RestApi:
    """The REST handlers, bound to a model manager."""

    def __init__(self, manager: ModelManager, max_body_bytes: int, timeout_s: float | None = None):
        self.manager = manager
        self.max_body_bytes = max_body_bytes
        self.timeout_s = timeout_s

    def get(self, path: str) -> dict:
        """GET: status or metadata."""
        if path.rstrip("/") == "/v1/models":
            raise invalid_argument("Missing model name in request.")
        match = _GET.match(path)
        if not match:
            raise invalid_argument(f"Malformed request: GET {path}")
        spec = _spec(match)
        if match.group("metadata"):
            version, sig_map = handlers.metadata(self.manager, spec, ["signature_def"])
            return {
                "model_spec": {"name": spec.name, "signature_name": "", "version": str(version)},
                "metadata": {"signature_def": json_format.MessageToDict(sig_map, preserving_proto_field_name=True)},
            }
        return status_json(handlers.status_response(self.manager, spec))

    def post(self, path: str, body: bytes) -> dict:
        """POST: predict (classify/regress answer as for a predict-only model)."""
        match = _POST.match(path)
        if not match:
            raise invalid_argument(f"Malformed request: POST {path}")
        try:
            doc = json.loads(body.decode("utf-8")) if body.strip() else None
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise invalid_argument(f"JSON Parse error: Invalid value. {err}") from err
        if doc is None:
            raise invalid_argument("JSON Parse error: The document is empty")
        if not isinstance(doc, dict):
            raise invalid_argument("JSON Parse error: top level must be an object")
        signature_name = doc.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise invalid_argument("'signature_name' key must be a string value.")
        spec = _spec(match, signature_name)
        method = match.group("method")
        if method != "predict":
            handlers.check_method(self.manager, spec, CLASSIFY_METHOD if method == "classify" else REGRESS_METHOD)
        with self.manager.servable(spec.name, spec.version, spec.label) as servable:
            specs = servable.input_specs(signature_name)
        inputs, row_format = decode_inputs(doc, specs)
        result = handlers.predict(self.manager, spec, inputs, timeout_s=self.timeout_s)
        return encode_outputs(result.outputs, row_format)


def make_handler(api: RestApi) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to `api`."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "fashion-model-server"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
            log.debug("%s " + format, self.address_string(), *args)

        def _answer(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _serve(self, fn: Any) -> None:
            try:
                self._answer(200, fn())
            except ServingError as err:
                self._answer(err.http_status, {"error": err.message})
            except Exception as err:  # noqa: BLE001 - the server keeps serving whatever one request does
                log.exception("REST %s %s failed", self.command, self.path)
                self._answer(500, {"error": f"{type(err).__name__}: {err}"})

        def do_GET(self) -> None:  # noqa: N802
            self._serve(lambda: api.get(self.path))

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            if length > api.max_body_bytes:
                import grpc

                # Drain what fits a socket buffer so the client reads the answer, then close.
                self.close_connection = True
                self._answer(
                    ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, "").http_status,
                    {"error": f"Request body larger than max ({length} vs. {api.max_body_bytes})"},
                )
                return
            body = self.rfile.read(length) if length else b""
            self._serve(lambda: api.post(self.path, body))

    return Handler


class RestServer:
    """A threaded HTTP server for the REST API."""

    def __init__(self, api: RestApi, host: str, port: int):
        self.httpd = ThreadingHTTPServer((host, port), make_handler(api))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="rest", daemon=True)

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting requests."""
        self.httpd.shutdown()
        self.httpd.server_close()
