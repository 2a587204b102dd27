"""Benchmark: served gRPC and REST throughput and latency against the same SavedModel called in-process.

Closed loop: N concurrent clients (1, 8, 32 by default), each sending one photo per Predict
request and waiting for the answer, for a fixed time, against a `fashion serve` process with and
without server-side batching. Baseline, in the same run: the same SavedModel's signature called
in-process by N threads with the same photos (no network, no serialisation, no server).
The model is the `demo` preset's network with random weights (same graph and cost as a trained one).
Against the same server processes, REST clients (`--rest-concurrency`, 32 by default) post the
same photos as `{"instances": [{"b64": ...}]}`, once opening a new connection per request and once
over kept-alive connections; any failed request (a connection reset included) counts as an error.
gRPC at the REST concurrency is measured again right after the REST runs, and REST is compared with
the mean of the two gRPC runs that bracket it, so load from other jobs that comes or goes during a
run weighs on both sides alike.

    .venv/bin/python -m bench.serving --seconds 10

Last line: a JSON object with "ratio" = served throughput at the highest concurrency (batching
on) / in-process throughput at the same concurrency, and "rest_ratio" = REST (kept alive, batching
on) / gRPC (batching on, the mean of the bracketing runs) at the REST concurrency.
"""

from __future__ import annotations

import argparse
import base64
import collections
import http.client
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from components.register import export
from core.config import load_config, parse_overrides
from tests.support import serving as testing


def closed_loop(make_caller: Callable[[], Callable[[], None]], concurrency: int, seconds: float) -> dict:
    """Run `concurrency` callers back to back for `seconds`; throughput and latency percentiles."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    error_kinds: collections.Counter[str] = collections.Counter()
    start_gate = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def worker(i: int) -> None:
        call = make_caller()
        start_gate.wait()
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter()
            try:
                call()
            except Exception as err:  # noqa: BLE001 - failed requests are counted, not fatal
                errors[i] += 1
                error_kinds[type(err).__name__] += 1
                continue
            latencies[i].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    start_gate.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    all_lat = np.array([x for lat in latencies for x in lat]) * 1000
    return {
        "concurrency": concurrency,
        "requests": int(all_lat.size),
        "errors": int(sum(errors)),
        "error_kinds": dict(error_kinds),
        "throughput": all_lat.size / elapsed,
        "p50_ms": float(np.percentile(all_lat, 50)) if all_lat.size else None,
        "p99_ms": float(np.percentile(all_lat, 99)) if all_lat.size else None,
    }


def in_process(version_dir: str, photos: list[bytes], levels: list[int], seconds: float) -> list[dict]:
    import tensorflow as tf

    serve = tf.saved_model.load(version_dir).signatures["serving_default"]
    counter = iter(range(10**12))

    def make_caller() -> Callable[[], None]:
        def call() -> None:
            photo = photos[next(counter) % len(photos)]
            serve(image_bytes=tf.constant([photo]))["category"].numpy()

        return call

    closed_loop(make_caller, 1, 1.0)  # warm up
    return [closed_loop(make_caller, n, seconds) for n in levels]


def rest_caller(host: str, port: int, bodies: list[bytes], counter: Any, keep_alive: bool) -> Callable[[], None]:
    """One REST client: POST one photo per call, on one kept-alive connection or a new one each time."""
    path = "/v1/models/fashion:predict"
    conn: list[http.client.HTTPConnection | None] = [None]

    def call() -> None:
        if conn[0] is None:
            conn[0] = http.client.HTTPConnection(host, port, timeout=60)
        headers = {"Content-Type": "application/json"}
        if not keep_alive:
            headers["Connection"] = "close"
        try:
            conn[0].request("POST", path, body=bodies[next(counter) % len(bodies)], headers=headers)
            answer = conn[0].getresponse()
            data = answer.read()
        except Exception:
            conn[0].close()
            conn[0] = None
            raise
        if not keep_alive:
            conn[0].close()
            conn[0] = None
        if answer.status != 200:
            raise RuntimeError(f"HTTP {answer.status}: {data[:200]!r}")

    return call


def served(
    base: Path,
    photos: list[bytes],
    levels: list[int],
    seconds: float,
    batching: bool,
    log: Path,
    rest_concurrency: int,
) -> tuple[list[dict], dict[str, dict], dict]:
    """Measure gRPC at each level, REST (new connection, kept alive) at `rest_concurrency`, then gRPC there again."""
    from serving.client import PredictionClient

    args = ["--preset=demo", f"--model_base_path={base}", "--model_name=fashion", f"--enable_batching={batching}"]
    results = []
    bodies = [json.dumps({"instances": [{"b64": base64.b64encode(p).decode()}]}).encode() for p in photos]
    with testing.ServerProcess(args, log_path=log) as server:
        counter = iter(range(10**12))

        def make_caller() -> Callable[[], None]:
            client = PredictionClient(server.target, "fashion", timeout_s=60)

            def call() -> None:
                client.predict_raw([photos[next(counter) % len(photos)]])

            return call

        closed_loop(make_caller, 1, 1.0)  # warm up
        for n in levels:
            results.append(closed_loop(make_caller, n, seconds))
        rest = {}
        for mode, keep_alive in (("new connection", False), ("keep-alive", True)):
            rest[mode] = closed_loop(
                lambda keep_alive=keep_alive: rest_caller(server.host, server.rest_port, bodies, counter, keep_alive),
                rest_concurrency,
                seconds,
            )
        grpc_after_rest = closed_loop(make_caller, rest_concurrency, seconds)
    return results, rest, grpc_after_rest


def _row(label: str, r: dict) -> str:
    kinds = f" {r['error_kinds']}" if r["error_kinds"] else ""
    return (
        f"{label:<40} c={r['concurrency']:>3}  {r['throughput']:8.1f} req/s  "
        f"p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}{kinds}"
    )


def _at(rows: list[dict], concurrency: int) -> dict:
    return next(r for r in rows if r["concurrency"] == concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each load level")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    parser.add_argument("--rest-concurrency", type=int, default=32, help="REST clients (beside gRPC at the same count)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="demo preset override, e.g. serving.flip_tta=true"
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    photos = [p.read_bytes() for p in testing.sample_photos()]
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        tmp = Path(tmp)
        config = load_config("demo", overrides=parse_overrides(args.overrides))
        model_dir = testing.make_model_dir(tmp / "model", config=config)
        version_dir = export.export_model(model_dir, str(tmp / "base" / "1"), config=config)
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        model = f"{config.model.backbone}, width {config.model.width_multiplier}"
        tta = ", flip test-time augmentation" if config.serving.flip_tta else ""
        print(f"model: demo preset ({model}{tta}), one photo per request")
        base = in_process(version_dir, photos, levels, args.seconds)
        plain, plain_rest, plain_after = served(
            tmp / "base", photos, levels, args.seconds, False, tmp / "plain.log", args.rest_concurrency
        )
        batched, batched_rest, batched_after = served(
            tmp / "base", photos, levels, args.seconds, True, tmp / "batched.log", args.rest_concurrency
        )
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    for label, rows in (("in-process (baseline)", base), ("served gRPC, no batching", plain)):
        for r in rows:
            print(_row(label, r))
    for mode, r in plain_rest.items():
        print(_row(f"served REST {mode}, no batching", r))
    print(_row("served gRPC after REST, no batching", plain_after))
    for r in batched:
        print(_row("served gRPC, batching", r))
    for mode, r in batched_rest.items():
        print(_row(f"served REST {mode}, batching", r))
    print(_row("served gRPC after REST, batching", batched_after))
    n = args.rest_concurrency

    def grpc_rps(rows: list[dict], after: dict) -> float:
        before = [r["throughput"] for r in rows if r["concurrency"] == n]
        return float(np.mean([*before, after["throughput"]]))

    rest_ratios = {
        f"{mode}, {label}": round(rest[mode]["throughput"] / grpc_rps(grpc_rows, after), 3)
        for label, grpc_rows, rest, after in (
            ("no batching", plain, plain_rest, plain_after),
            ("batching", batched, batched_rest, batched_after),
        )
        for mode in rest
    }
    for key, value in rest_ratios.items():
        print(f"REST/gRPC at c={n} ({key}): {value}")
    ratio = _at(batched, levels[-1])["throughput"] / base[-1]["throughput"]
    print(
        json.dumps(
            {
                "ratio": round(ratio, 3),
                "concurrency": levels[-1],
                "in_process_rps": round(base[-1]["throughput"], 1),
                "served_batching_rps": round(_at(batched, levels[-1])["throughput"], 1),
                "served_plain_rps": round(_at(plain, levels[-1])["throughput"], 1),
                "served_batching_p99_ms": round(_at(batched, levels[-1])["p99_ms"], 1),
                "rest_concurrency": n,
                "rest_ratio": rest_ratios["keep-alive, batching"],
                "rest_ratios": rest_ratios,
                "errors": sum(r["errors"] for r in [*plain, *batched, plain_after, batched_after]),
                "rest_errors": sum(r["errors"] for r in [*plain_rest.values(), *batched_rest.values()]),
            }
        )
    )


if __name__ == "__main__":
    main()
