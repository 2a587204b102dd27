"""No request can hurt the server: a decompression bomb, concurrent large bodies, requests past their deadline.

Against real servers on loopback ports: a `fashion serve` process (its memory read from /proc) for
the bomb and the large bodies, an in-process server for the deadlines (its model calls counted).
"""

from __future__ import annotations

import base64
import http.client
import json
import sys
import threading
import time

import grpc
import numpy as np
import pytest

from components.register import export
from serving.client import PredictionClient
from serving.server import handlers
from serving.server.batching import BatchScheduler
from serving.server.config import BatchingParameters
from serving.server.errors import ServingError
from serving.server.servable import Servable
from tests.support import serving as testing
from tests.support.hostile import ResidentMemory, blank_png, rss_bytes

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads resident memory from /proc"),
]

PREDICT = "/v1/models/fashion:predict"
MIB = 1 << 20


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    export.export_model(testing.make_model_dir(root / "model"), str(root / "fashion" / "1"))
    return root / "fashion"


@pytest.fixture(scope="module")
def served(base_path, tmp_path_factory):
    """`fashion serve` with batching, the default pixel limit (40 Mpx) and the default body limit (64 MB)."""
    args = ["--preset=ci", f"--model_base_path={base_path}", "--model_name=fashion", "--enable_batching=true"]
    with testing.ServerProcess(args, log_path=tmp_path_factory.mktemp("log") / "server.log") as proc:
        yield proc


def _photo() -> bytes:
    return testing.sample_photos(1)[0].read_bytes()


def _rest_predict(port: int, body: bytes) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", PREDICT, body=body, headers={"Content-Type": "application/json"})
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def _b64_body(*values: bytes) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(v).decode()} for v in values]}).encode()


def _idle_rss(proc: testing.ServerProcess) -> int:
    """Resident memory once the server has answered a few photos (warm) and settled."""
    with PredictionClient(proc.target, "fashion", timeout_s=60) as client:
        for _ in range(3):
            client.predict_raw([_photo()])
    time.sleep(0.5)
    return rss_bytes(proc.pid)


@pytest.mark.slow
def test_a_20000x20000_png_is_invalid_argument_over_grpc_and_rest_and_memory_stays_near_idle(served):
    bomb = blank_png(20000, 20000)  # 1.2 MB on the wire, 1.2 GB of pixels
    idle = _idle_rss(served)
    good: list[tuple[int, dict]] = []
    with ResidentMemory(served.pid) as memory:
        with PredictionClient(served.target, "fashion", timeout_s=60) as client:
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as err:
                    client.predict_raw([bomb])
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "pixel limit" in err.value.details()
        for _ in range(3):
            status, answer = _rest_predict(served.rest_port, _b64_body(bomb))
            assert status == 400 and "pixel limit" in answer["error"]
        # A good photo sent beside a bomb (batched with it, or not) is answered.
        beside = threading.Thread(target=lambda: good.append(_rest_predict(served.rest_port, _b64_body(_photo()))))
        beside.start()
        status, _ = _rest_predict(served.rest_port, _b64_body(bomb))
        beside.join(timeout=120)
        assert status == 400
    after = rss_bytes(served.pid)
    assert good and good[0][0] == 200 and len(good[0][1]["predictions"]) == 1
    # Loose on purpose (the machine is shared): a full decode would add 1.2 GB or more to about 1 GB.
    assert memory.peak < 1.5 * idle, f"peak {memory.peak / MIB:.0f} MiB vs idle {idle / MIB:.0f} MiB"
    assert after < 1.5 * idle, f"after {after / MIB:.0f} MiB vs idle {idle / MIB:.0f} MiB"


@pytest.mark.slow
def test_rounds_of_concurrent_large_rest_bodies_do_not_ratchet_memory_up(served):
    clients, rounds = 8, 4
    # 12 MiB that are no photo, 16 MiB once base64 in JSON: each request is read, decoded and refused (400).
    body = _b64_body(np.random.default_rng(0).bytes(12 * MIB))
    after_round = []
    for _ in range(rounds):
        statuses: list[int] = []

        def client(out: list[int] = statuses) -> None:
            out.append(_rest_predict(served.rest_port, body)[0])

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert statuses == [400] * clients
        time.sleep(0.5)
        after_round.append(rss_bytes(served.pid))
    rounds_mib = [f"{r / MIB:.0f}" for r in after_round]
    # Memory a round leaves behind is reused by the next, so after the first round RSS stays about level
    # (measured: 1143, 1187, 1183, 1199 MiB). Kept bodies add several copies of a round's bodies every
    # round: the front end before the fix went 1405, 1832, 2440, 2848 MiB on this test.
    growth = after_round[-1] - after_round[0]
    assert growth < 2 * clients * len(body), f"RSS after each round (MiB): {rounds_mib}"
    with PredictionClient(served.target, "fashion", timeout_s=60) as client:
        assert client.predict_raw([_photo()]).version == 1


# -- deadlines ---------------------------------------------------------------------------------

BATCH_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def local_server(base_path, tmp_path_factory):
    """An in-process server with a long batch timeout (a lone request waits 1 s) and two gRPC threads."""
    root = tmp_path_factory.mktemp("deadlines")
    config = testing.write_models_config(root / "models.config", [{"name": "fashion", "base_path": str(base_path)}])
    batching = root / "batching.config"
    batching.write_text(
        f"max_batch_size {{ value: 8 }}\nbatch_timeout_micros {{ value: {int(BATCH_TIMEOUT_S * 1e6)} }}\n"
        "num_batch_threads { value: 1 }\n"
    )
    server = testing.start_local_server(
        config, enable_batching=True, batching_parameters_file=str(batching), grpc_max_threads=2
    )
    yield server
    server.stop()


@pytest.fixture()
def model_runs(local_server):
    """The batch sizes the served model computes during a test."""
    with local_server.manager.servable("fashion") as servable:
        run = servable.run
        sizes: list[int] = []

        def counted(signature_name, inputs):
            sizes.append(len(next(iter(inputs.values()))))
            return run(signature_name, inputs)

        servable.run = counted
    yield sizes
    del servable.run


def _predict_in_thread(target: str, timeout_s: float, results: list) -> threading.Thread:
    def call() -> None:
        try:
            with PredictionClient(target, "fashion", timeout_s=timeout_s) as client:
                results.append(client.predict_raw([_photo()]).version)
        except grpc.RpcError as err:
            results.append(err.code())

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def test_a_request_whose_deadline_passes_while_it_waits_for_its_batch_is_not_computed(local_server, model_runs):
    target = f"127.0.0.1:{local_server.grpc_port}"
    patient, hasty = [], []
    first = _predict_in_thread(target, 30, patient)
    time.sleep(0.1)
    # Joins the batch the first request opened, and gives up long before the batch timeout runs it.
    second = _predict_in_thread(target, BATCH_TIMEOUT_S / 4, hasty)
    for t in (first, second):
        t.join(timeout=60)
    assert hasty == [grpc.StatusCode.DEADLINE_EXCEEDED]
    assert patient == [1]
    assert model_runs == [1]


def test_a_request_past_its_deadline_when_a_server_thread_takes_it_is_not_computed(local_server, model_runs):
    target = f"127.0.0.1:{local_server.grpc_port}"
    patient, late = [], []
    # Both gRPC threads wait (1 s) for the batch these two open; a third request queues for a thread meanwhile.
    # gRPC drops a call that expires in that queue; one that expires on its way to the model is refused there.
    busy = [_predict_in_thread(target, 30, patient) for _ in range(2)]
    time.sleep(0.1)
    queued = _predict_in_thread(target, BATCH_TIMEOUT_S / 4, late)
    for t in [*busy, queued]:
        t.join(timeout=60)
    time.sleep(0.5)  # a request that reached the model after all would show up by now
    assert late == [grpc.StatusCode.DEADLINE_EXCEEDED]
    assert patient == [1, 1]
    assert model_runs == [2]


@pytest.mark.parametrize("batching", [None, BatchingParameters(max_batch_size=8, num_batch_threads=1)])
def test_a_predict_arriving_past_its_deadline_is_deadline_exceeded_without_running(base_path, batching):
    servable = Servable("fashion", 1, str(base_path / "1"), batching)
    runs: list[int] = []
    run = servable.run

    def counted(signature_name, inputs):
        runs.append(len(inputs["image_bytes"]))
        return run(signature_name, inputs)

    servable.run = counted
    inputs = {"image_bytes": np.array([_photo()], dtype=object)}
    try:
        with pytest.raises(ServingError) as err:
            servable.predict("", inputs, deadline=time.monotonic() - 0.001)
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and err.value.http_status == 504
        assert runs == []
        assert servable.predict("", inputs, deadline=time.monotonic() + 30)["category"].shape == (1,)
        assert runs == [1]
    finally:
        servable.close()


def test_the_handler_refuses_a_request_with_no_time_left(local_server, model_runs):
    inputs = {"image_bytes": np.array([_photo()], dtype=object)}
    with pytest.raises(ServingError) as err:
        handlers.predict(local_server.manager, handlers.Spec("fashion"), inputs, timeout_s=0.0)
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert model_runs == []


def test_the_batch_scheduler_drops_expired_and_cancelled_tasks_from_their_batch():
    sizes: list[int] = []

    def model(inputs):
        sizes.append(len(inputs["x"]))
        return {"y": inputs["x"] + 1}

    scheduler = BatchScheduler(
        model, BatchingParameters(max_batch_size=8, batch_timeout_micros=300_000, num_batch_threads=1)
    )
    try:
        with pytest.raises(ServingError) as err:
            scheduler.schedule({"x": np.array([0])}, deadline=time.monotonic())
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        kept = scheduler.schedule({"x": np.array([1])}, deadline=time.monotonic() + 30)
        expired = scheduler.schedule({"x": np.array([2])}, deadline=time.monotonic() + 0.05)
        cancelled = scheduler.schedule({"x": np.array([3])})
        assert cancelled.cancel()
        assert kept.result(30)["y"].tolist() == [2]
        with pytest.raises(ServingError) as err:
            expired.result(30)
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert sizes == [1]
    finally:
        scheduler.stop()
