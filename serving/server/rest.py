"""REST front end on TF Serving's paths and JSON formats.

    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]            model status
    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata   signature definitions
    POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict    `instances` (row) or `inputs` (columnar)
    GET  /monitoring/prometheus/metrics                          with a monitoring config that enables it

Binary values travel as `{"b64": "..."}`; errors are `{"error": "..."}` with the HTTP status TF
Serving maps the canonical code to. `RestApi` holds those semantics; `RestServer` carries them
over aiohttp's HTTP/1.1 server, on an event loop of its own, with the API calls in a thread pool,
and counts and times each call as TF Serving's REST dispatcher does (`serving.server.monitoring`).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import logging
import re
import socket
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import numpy as np
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from google.protobuf import json_format

from serving import contract as sig
from serving.server import handlers, monitoring, rest_examples
from serving.server.errors import ServingError, invalid_argument
from serving.server.manager import ModelManager
from serving.server.servable import dtype_name

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

    try:
        if dtype == "string":
            return np.array(values, dtype=object)
        return np.array(values, dtype=tf.dtypes.as_dtype("float32" if dtype == "float" else dtype).as_numpy_dtype)
    except (ValueError, TypeError) as err:
        raise invalid_argument(f"Failed to process element: {err}") from err


def _debug_string(doc: Any, limit: int = 256) -> str:
    """A JSON document as TF Serving quotes it in an error, cut short so an answer never echoes a large body."""
    text = json.dumps(doc, separators=(",", ":"))
    return text if len(text) <= limit else text[:limit] + "..."


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
        if not instances:
            raise invalid_argument(f"JSON Value: {_debug_string(body)} No values in 'instances' array")
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

    def __init__(
        self, manager: ModelManager, timeout_s: float | None = None, metrics: monitoring.Metrics | None = None
    ):
        self.manager = manager
        self.timeout_s = timeout_s
        self.metrics = metrics or monitoring.Metrics()

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
                # As TF Serving prints it: fields at their default values included (`"defaults": {}`, ...).
                "metadata": {
                    "signature_def": json_format.MessageToDict(
                        sig_map, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
                    )
                },
            }
        return status_json(handlers.status_response(self.manager, spec))

    def post(self, path: str, body: bytes) -> dict:
        """POST: predict, or classify/regress on `tf.Example`s (`serving.server.rest_examples`)."""
        match = _POST.match(path)
        if not match:
            raise invalid_argument(f"Malformed request: POST {path}")
        try:
            doc = json.loads(body.decode("utf-8")) if body.strip() else None
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise invalid_argument(f"JSON Parse error: Invalid value. {err}") from err
        except RecursionError as err:
            # Python's parser recurses per nesting level; a document nested past the stack is the client's error.
            raise invalid_argument("JSON Parse error: The document is nested too deeply") from err
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
            return rest_examples.classify_or_regress(self.manager, spec, doc, method, self.timeout_s)
        with self.manager.servable(spec.name, spec.version, spec.label) as servable:
            specs = servable.input_specs(signature_name)
        try:
            inputs, row_format = decode_inputs(doc, specs)
        except RecursionError as err:
            raise invalid_argument("Failed to process element: the value is nested too deeply") from err
        result = handlers.predict(self.manager, spec, inputs, timeout_s=self.timeout_s)
        monitoring.answered_by(result.version, result.signature_name)
        return encode_outputs(result.outputs, row_format)


# aiohttp, not uvicorn: its keep-alive timer starts as a connection opens, so a half-sent header is cut off.

# TF Serving hands every path under /v1/ to its REST handler (kHTTPRestApiHandlerPathRegex); others are 404.
_API_PATH = re.compile(r"(?i)/v1/.*")
# The methods TF Serving's libevent server lets through to the handler; any other is refused before it.
_METHODS = ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH")
_CORS_ORIGIN = re.compile(r"https?://")
# What TF Serving adds to every REST API answer with --rest_api_enable_cors_support (AddCORSHeaders).
_CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET",
    "Access-Control-Allow-Headers": "Content-Type",
}


@dataclass(frozen=True)
class RestOptions:
    """How the REST front end treats connections and request bodies.

    Attributes:
        max_body_bytes: a larger body is refused (413) before it is read.
        header_timeout_s: a connection that has not sent a whole request header this long after it opened
            (or after its last answer, when kept alive) is closed.
        body_timeout_s: a body that has not fully arrived this long after its header is answered 408.
        num_threads: threads running the API calls (decode, predict, encode); they block, the event loop must not.
        backlog: connections the kernel queues before the server accepts them.
        large_body_bytes: bodies over this size are large; a few copies of each are alive while it is served.
        max_large_bodies: large bodies served at once, so concurrent big requests cannot ratchet memory up.
        large_body_wait_s: how long a large body waits for its turn before it is answered 503.
        prometheus_path: where the Prometheus page is served (none: nowhere), as a monitoring config asks.
        enable_cors_support: add TF Serving's CORS headers to every API answer.
    """

    max_body_bytes: int = sig.DEFAULT_MAX_MESSAGE_BYTES
    header_timeout_s: float = 15.0
    body_timeout_s: float = 60.0
    num_threads: int = 64
    backlog: int = 1024
    large_body_bytes: int = 4 << 20
    max_large_bodies: int = 2
    large_body_wait_s: float = 30.0
    prometheus_path: str | None = None
    enable_cors_support: bool = False


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=json.dumps({"error": message}).encode(), content_type="application/json")


def _answer(fn: Callable[[], dict]) -> tuple[int, bytes, str]:
    """Run one API call (on a pool thread) and encode its answer or its error as TF Serving does.

    Returns:
        The HTTP status, the body and the canonical status name the call is counted under.
    """
    try:
        return 200, json.dumps(fn()).encode(), "OK"
    except ServingError as err:
        _release_frames(err)
        return err.http_status, json.dumps({"error": err.message}).encode(), err.code.name
    except Exception as err:  # noqa: BLE001 - the server keeps serving whatever one request does
        log.exception("REST request failed")
        _release_frames(err)
        return 500, json.dumps({"error": f"{type(err).__name__}: {err}"}).encode(), "INTERNAL"


def _measured_answer(fn: Callable[[], dict], metrics: monitoring.Metrics, call: monitoring.Call) -> tuple[int, bytes]:
    """`_answer`, counted and timed under `call` (on the pool thread, where `answered_by` notes the version)."""
    with metrics.measure(call):
        status, body, status_name = _answer(fn)
    metrics.record(call, status_name)
    return status, body


def _rest_call(method: str, path: str) -> monitoring.Call:
    """What TF Serving's REST dispatcher records a call under: the model in the path and its `:method`."""
    match = (_POST if method == "POST" else _GET).match(path) if method in ("GET", "POST") else None
    return monitoring.Call(
        model_name=match.group("name") if match else "",
        api=match.group("method") if match and method == "POST" else "",
        entrypoint="REST",
    )


def _release_frames(err: BaseException) -> None:
    """Drop the locals of the finished frames an error (and what it was raised from) passed through.

    Those frames hold the request's body, its parsed document and its arrays, and a frame that
    caught or awaited the error holds it in turn: a reference cycle that only a full garbage
    collection frees. Eight failing 63 MB requests pinned 1.4 GB that way.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [err]
    while pending:
        raised = pending.pop()
        if raised is None or id(raised) in seen:
            continue
        seen.add(id(raised))
        traceback.clear_frames(raised.__traceback__)
        pending += [raised.__cause__, raised.__context__]


class _Protocol(RequestHandler):
    """aiohttp's connection handler, answering what its HTTP parser refuses with TF Serving's JSON error body."""

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        """A malformed request (bad Content-Length, header too long, ...) -> `{"error": ...}`, then close."""
        if request.writer.output_size > 0:
            raise ConnectionError("the answer has started; the error cannot be sent")
        if status >= 500:
            log.error("REST request from %s failed", request.remote, exc_info=exc)
        else:
            log.debug("REST request from %s refused: %s", request.remote, message)
        # The parser's message quotes the offending line under its first; the first line names the fault.
        lines = (message or "").strip().splitlines()
        detail = lines[0].rstrip(": ") if lines else HTTPStatus(status).phrase
        response = _error(status, f"Malformed HTTP request: {detail}" if status < 500 else detail)
        response.force_close()
        return response


class _Server(web.Server):
    """aiohttp's low-level server, with connections handled by `_Protocol`."""

    def __init__(self, handler: Callable, **protocol_options: Any):
        super().__init__(handler, **protocol_options)
        self._protocol_options = protocol_options

    def __call__(self) -> RequestHandler:
        return _Protocol(self, loop=asyncio.get_running_loop(), **self._protocol_options)


class _BodyTooLarge(Exception):
    """A chunked body grew past the limit while it was read."""


class _NoTurn(Exception):
    """A large body waited longer than `large_body_wait_s` for its turn."""


class _LargeBodySlot:
    """One request's claim on the large-body semaphore, taken at most once and always given back."""

    def __init__(self, semaphore: asyncio.Semaphore, wait_s: float):
        self._semaphore = semaphore
        self._wait_s = wait_s
        self.held = False

    async def take(self) -> None:
        if not self.held:
            try:
                await asyncio.wait_for(self._semaphore.acquire(), self._wait_s)
            except TimeoutError as err:
                raise _NoTurn from err
            self.held = True

    def release(self) -> None:
        if self.held:
            self._semaphore.release()
            self.held = False


class RestServer:
    """The REST API on aiohttp's HTTP/1.1 server: keep-alive, chunked bodies, timeouts, bounded bodies.

    The port is bound at construction (so a port in use fails before any model loads) and listens
    from `start()`; the event loop runs in a thread of its own and the API calls in a thread pool.
    """

    def __init__(self, api: RestApi, host: str, port: int, options: RestOptions | None = None):
        self.api = api
        self.options = options or RestOptions()
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            # As any server socket: a restart may bind while the last run's connections sit in TIME_WAIT.
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, port))
        except OSError:
            self._sock.close()
            raise
        self.port = self._sock.getsockname()[1]
        self._pool = concurrent.futures.ThreadPoolExecutor(self.options.num_threads, thread_name_prefix="rest")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.ServerRunner | None = None
        self._large: asyncio.Semaphore | None = None

    def start(self) -> None:
        """Listen and serve on a background event loop; returns once the port accepts connections."""
        loop = asyncio.new_event_loop()
        started: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._open())
            except BaseException as err:  # noqa: BLE001 - handed to start()'s caller
                started.set_exception(err)
                loop.close()
                return
            started.set_result(None)
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="rest", daemon=True)
        self._thread.start()
        started.result(timeout=60)

    async def _open(self) -> None:
        self._large = asyncio.Semaphore(self.options.max_large_bodies)
        server = _Server(
            self._handle,
            keepalive_timeout=self.options.header_timeout_s,
            access_log=None,
        )
        self._runner = web.ServerRunner(server)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock, backlog=self.options.backlog).start()

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting connections, give requests in flight `grace_s` to finish, then close the rest."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            self.close()
            return
        try:
            asyncio.run_coroutine_threadsafe(self._close(grace_s), loop).result(timeout=grace_s + 10)
        except concurrent.futures.TimeoutError:
            log.warning("the REST server did not shut down within %.0fs", grace_s + 10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = self._thread = None
        self.close()

    async def _close(self, grace_s: float) -> None:
        if self._runner is not None:
            try:
                await asyncio.wait_for(self._runner.cleanup(), grace_s)
            except TimeoutError:
                log.warning("REST requests still in flight after %.0fs were cut off", grace_s)
        # What is left (a connection draining the body of a refused request) ends with the loop.
        rest = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def close(self) -> None:
        """Release the port and the threads (for a server that never started, or after `stop`)."""
        self._sock.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- one request --------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        method, path = request.method, request.path
        if method not in _METHODS:
            response = _error(405, f"Method not allowed: {method}")
            response.headers["Allow"] = ", ".join(_METHODS)
            return response
        if self.options.prometheus_path is not None and path == self.options.prometheus_path:
            page = self.api.metrics.prometheus_page()
            return web.Response(status=200, body=page.encode(), headers={"Content-Type": "text/plain"})
        if not _API_PATH.fullmatch(path):
            return _error(404, f"Not found: {method} {path}")
        response = await self._api_call(request, method, path)
        if self.options.enable_cors_support:
            response.headers.update(_CORS_HEADERS)
        return response

    async def _api_call(self, request: web.BaseRequest, method: str, path: str) -> web.StreamResponse:
        call = _rest_call(method, path)
        if method == "GET":
            return await self._call(lambda: self.api.get(path), call)
        if method == "POST":
            return await self._post(request, path, call)
        if method == "OPTIONS":
            # TF Serving answers a CORS preflight itself: OK with an Origin, FAILED_PRECONDITION without.
            if _CORS_ORIGIN.search(request.headers.get("Origin", "")):
                self.api.metrics.record(call, "OK")
                return web.Response(status=200)
            self.api.metrics.record(call, "FAILED_PRECONDITION")
            return _error(400, "Origin header is missing in CORS preflight")
        self.api.metrics.record(call, "INVALID_ARGUMENT")
        return _error(400, f"Malformed request: {method} {path}")

    async def _call(self, fn: Callable[[], dict], call: monitoring.Call) -> web.Response:
        status, body = await asyncio.get_running_loop().run_in_executor(
            self._pool, _measured_answer, fn, self.api.metrics, call
        )
        return web.Response(status=status, body=body, content_type="application/json")

    async def _post(self, request: web.BaseRequest, path: str, call: monitoring.Call) -> web.StreamResponse:
        limit = self.options.max_body_bytes
        length = request.content_length
        if length is not None and length > limit:
            # Not read: aiohttp drains what the client still sends for a while, then closes.
            return _error(413, f"Request body larger than max ({length} vs. {limit})")
        assert self._large is not None
        slot = _LargeBodySlot(self._large, self.options.large_body_wait_s)
        try:
            if length is not None and length > self.options.large_body_bytes:
                # Wait for a turn before reading, so a large body waits in the client, not in this process.
                await slot.take()
            if request.headers.get("Expect", "").lower() == "100-continue":
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await self._read_body(request, slot)
            return await self._call(lambda: self.api.post(path, body), call)
        except TimeoutError:
            response = _error(408, f"Request body not received within {self.options.body_timeout_s:g}s")
        except _NoTurn:
            response = _error(503, "Too many large requests in flight; retry later")
        except _BodyTooLarge as err:
            response = _error(413, f"Request body larger than max ({err} vs. {limit})")
        except ConnectionError as err:
            # The client went away mid-body: nobody reads this answer, and it is no server failure.
            log.debug("REST client left before its body arrived: %s", err)
            response = _error(400, "Connection lost before the request body arrived")
        finally:
            slot.release()
        # The body was left half read: the connection cannot carry another request.
        response.force_close()
        return response

    async def _read_body(self, request: web.BaseRequest, slot: _LargeBodySlot) -> bytes:
        """The whole body (chunked or not), within the body timeout and the size limit."""
        chunks: list[bytes] = []
        size = 0
        async with asyncio.timeout(self.options.body_timeout_s) as deadline:
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > self.options.max_body_bytes:
                    raise _BodyTooLarge(size)
                if size > self.options.large_body_bytes and not slot.held:
                    # A chunked body declares no length: it queues for a turn once it turns out large.
                    deadline.reschedule(None)
                    await slot.take()
                    deadline.reschedule(asyncio.get_running_loop().time() + self.options.body_timeout_s)
                chunks.append(chunk)
        return b"".join(chunks)
