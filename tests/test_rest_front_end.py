"""The REST front end as an HTTP server: TF Serving's status codes and JSON errors, timeouts, keep-alive, load."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import time

import pytest

from components.register import export
from serving import contract as sig
from tests.support import serving as testing
from tests.support.ports import free_port

pytestmark = [pytest.mark.server, pytest.mark.slow]

HEADER_TIMEOUT_S = 1.0
READ_TIMEOUT_S = 1.0
MAX_BODY_BYTES = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("rest")
    base = root / "fashion"
    export.export_model(testing.make_model_dir(root / "model"), str(base / "1"))
    config = testing.write_models_config(root / "models.config", [{"name": "fashion", "base_path": str(base)}])
    # A long batch timeout, so concurrent requests are merged into one batch.
    batching = root / "batching.config"
    batching.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 300000 }\n")
    # start_local_server turns REST off (port 0) unless it is given a port.
    started = testing.start_local_server(
        config,
        rest_api_port=free_port(),
        enable_batching=True,
        batching_parameters_file=str(batching),
        max_message_bytes=MAX_BODY_BYTES,
        rest_api_header_timeout_in_ms=int(HEADER_TIMEOUT_S * 1000),
        rest_api_read_timeout_in_ms=int(READ_TIMEOUT_S * 1000),
    )
    yield started
    started.stop()


def _photo(name: str = "jeans-24204.jpg") -> bytes:
    return (testing.SAMPLES_DIR / name).read_bytes()


def _predict_body(*photos: bytes) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(p).decode()} for p in photos]}).encode()


def _exchange(port: int, data: bytes, timeout_s: float = 30.0) -> tuple[int, dict, float]:
    """Send raw bytes on a new connection; (status, JSON body, seconds until the answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as conn:
        began = time.monotonic()
        conn.sendall(data)
        answer = http.client.HTTPResponse(conn)
        answer.begin()
        body = answer.read()
        assert answer.getheader("Content-Type", "").startswith("application/json"), body
        return answer.status, json.loads(body), time.monotonic() - began


def _post_head(path: str, *headers: str) -> bytes:
    return ("\r\n".join([f"POST {path} HTTP/1.1", "Host: test", *headers]) + "\r\n\r\n").encode()


PREDICT = "/v1/models/fashion:predict"


@pytest.mark.parametrize("length", ["abc", "-1", "1e3", "99999999999999999999999999"])
def test_a_malformed_content_length_is_400_json_at_once(server, length):
    status, body, seconds = _exchange(server.rest_port, _post_head(PREDICT, f"Content-Length: {length}"))
    assert status == 400 and "Content-Length" in body["error"]
    assert seconds < 1.0


def test_a_body_over_the_limit_is_413_before_it_is_read(server):
    status, body, seconds = _exchange(server.rest_port, _post_head(PREDICT, f"Content-Length: {10**12}"))
    assert status == 413 and f"({10**12} vs. {MAX_BODY_BYTES})" in body["error"]
    assert seconds < 1.0
    chunked = _post_head(PREDICT, "Transfer-Encoding: chunked") + b"".join(
        b"%x\r\n%s\r\n" % (64 << 10, b" " * (64 << 10)) for _ in range(MAX_BODY_BYTES // (64 << 10) + 1)
    )
    status, body, _ = _exchange(server.rest_port, chunked)
    assert status == 413 and "larger than max" in body["error"]


def test_a_body_shorter_than_its_content_length_is_408_after_the_read_timeout(server):
    status, body, seconds = _exchange(server.rest_port, _post_head(PREDICT, "Content-Length: 100") + b'{"inst')
    assert status == 408 and "not received" in body["error"]
    assert READ_TIMEOUT_S * 0.9 <= seconds < READ_TIMEOUT_S + 5


def test_deeply_nested_json_is_400(server):
    deep = b'{"instances": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    status, body, _ = _exchange(server.rest_port, _post_head(PREDICT, f"Content-Length: {len(deep)}") + deep)
    assert status == 400 and "JSON Parse error" in body["error"]


def test_empty_instances_are_400(server):
    data = b'{"instances": []}'
    status, body, _ = _exchange(server.rest_port, _post_head(PREDICT, f"Content-Length: {len(data)}") + data)
    assert status == 400 and "No values in 'instances' array" in body["error"]


@pytest.mark.parametrize(
    ("request_line", "expected", "message"),
    [
        ("GET /index.html", 404, "Not found: GET /index.html"),
        ("POST /predict", 404, "Not found: POST /predict"),
        # Under /v1/ TF Serving's handler answers, and it calls what it cannot route malformed.
        ("GET /v1/foo", 400, "Malformed request: GET /v1/foo"),
        ("PUT /v1/models/fashion", 400, "Malformed request: PUT /v1/models/fashion"),
        ("DELETE /v1/models/fashion", 400, "Malformed request: DELETE /v1/models/fashion"),
        ("OPTIONS /v1/models/fashion", 400, "Origin header is missing in CORS preflight"),
        ("TRACE /v1/models/fashion", 405, "Method not allowed: TRACE"),
        ("BREW /v1/models/fashion", 400, "Malformed HTTP request"),
    ],
)
def test_unknown_paths_and_methods_get_tf_servings_codes_in_json(server, request_line, expected, message):
    data = f"{request_line} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n".encode()
    status, body, _ = _exchange(server.rest_port, data)
    assert status == expected and message in body["error"]


def test_a_chunked_body_is_accepted(server):
    body = _predict_body(_photo())
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    data = _post_head(PREDICT, "Transfer-Encoding: chunked") + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    status, answer, _ = _exchange(server.rest_port, data + b"0\r\n\r\n")
    assert status == 200 and len(answer["predictions"]) == 1


def test_slow_clients_are_cut_off_after_the_header_timeout_while_others_are_served(server):
    slow = [
        socket.create_connection(("127.0.0.1", server.rest_port), timeout=HEADER_TIMEOUT_S + 10) for _ in range(100)
    ]
    try:
        began = time.monotonic()
        for conn in slow:
            conn.sendall(b"POST /v1/models/fashion:predict HTTP/1.1\r\nHost: te")
        status, body, _ = _exchange(server.rest_port, b"GET /v1/models/fashion HTTP/1.1\r\nHost: test\r\n\r\n")
        assert status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
        assert [conn.recv(1024) for conn in slow] == [b""] * len(slow)  # each closed by the server
        assert HEADER_TIMEOUT_S * 0.9 <= time.monotonic() - began < HEADER_TIMEOUT_S + 5
    finally:
        for conn in slow:
            conn.close()


def test_keep_alive_carries_several_requests_on_one_connection(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    try:
        local_ports = set()
        for i in range(4):
            if i % 2:
                conn.request(
                    "POST", PREDICT, body=_predict_body(_photo()), headers={"Content-Type": "application/json"}
                )
            else:
                conn.request("GET", "/v1/models/fashion")
            answer = conn.getresponse()
            assert answer.status == 200, answer.read()
            answer.read()
            local_ports.add(conn.sock.getsockname()[1])
        assert len(local_ports) == 1
    finally:
        conn.close()


def test_64_concurrent_connections_are_not_reset(server):
    clients, rounds = 64, 3
    gate = threading.Barrier(clients)
    failures: list[str] = []
    statuses: list[int] = []

    def client() -> None:
        gate.wait()
        for _ in range(rounds):
            conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=60)
            try:
                conn.request("GET", "/v1/models/fashion")
                answer = conn.getresponse()
                answer.read()
                statuses.append(answer.status)
            except OSError as err:
                failures.append(repr(err))
            finally:
                conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert failures == []
    assert statuses == [200] * (clients * rounds)


def test_a_corrupt_photo_fails_only_its_own_request_in_a_batch(server):
    photos = [p.read_bytes() for p in testing.sample_photos(7)]
    bodies = (
        [_predict_body(p) for p in photos[:3]]
        + [_predict_body(b"not a photo")]
        + [_predict_body(p) for p in photos[3:]]
    )
    results: dict[int, tuple[int, dict]] = {}
    gate = threading.Barrier(len(bodies))

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=60)
        try:
            gate.wait()
            conn.request("POST", PREDICT, body=bodies[i], headers={"Content-Type": "application/json"})
            answer = conn.getresponse()
            results[i] = answer.status, json.loads(answer.read())
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results[3][0] == 400 and "error" in results[3][1]
    for i in set(range(len(bodies))) - {3}:
        status, answer = results[i]
        assert status == 200 and len(answer["predictions"]) == 1
        assert set(answer["predictions"][0]) == set(sig.OUTPUT_KEYS)
