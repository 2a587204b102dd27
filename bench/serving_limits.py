"""Benchmark: the 20000 x 20000 PNG against a real server, its latency and the server's memory, beside a normal photo.

Starts `fashion serve` (batching on unless `--no-batching`) on the `demo` preset's network with
random weights, exported as a SavedModel with the default `serving.max_image_pixels` (40 Mpx),
and reads the server's resident memory from /proc once it is warm (idle). Then, one request
after the other:

- baseline: a normal catalogue photo per request, over gRPC and over REST (a new connection each);
- bomb: the 20000 x 20000 RGB PNG of issue 14 (1.2 MB on the wire, 1.2 GB of pixels) per request,
  over gRPC and REST, with the server's resident memory sampled every 5 ms;
- beside: normal photos over gRPC while another client sends bombs back to back, so bombs and
  photos meet in the same batches.

    .venv/bin/python -m bench.serving_limits --requests 20

Prints the answers' status, latency (median, p90, max), the ratio of each to the normal photo's
median over the same protocol, and resident memory peak and after vs idle. Aims (issue 14): the
bomb answers INVALID_ARGUMENT in under 100 ms and memory stays within 1.5x of idle. Last line: a
JSON object with the figures ("ratio" = bomb / normal photo median latency over gRPC).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

from components.register import export
from core.config import load_config
from serving.client import PredictionClient
from tests.support import serving as testing
from tests.support.hostile import ResidentMemory, blank_png, rss_bytes

MIB = 1 << 20


def timed(call: Callable[[], str], requests: int) -> dict:
    """Run `call` `requests` times; the statuses it returned and latency percentiles in ms."""
    latencies, statuses = [], {}
    for _ in range(requests):
        began = time.perf_counter()
        status = call()
        latencies.append((time.perf_counter() - began) * 1000)
        statuses[status] = statuses.get(status, 0) + 1
    lat = np.array(latencies)
    return {
        "requests": requests,
        "statuses": statuses,
        "p50_ms": float(np.percentile(lat, 50)),
        "p90_ms": float(np.percentile(lat, 90)),
        "max_ms": float(lat.max()),
    }


def grpc_caller(client: PredictionClient, photo: bytes) -> Callable[[], str]:
    """One Predict of `photo`; its status code's name."""

    def call() -> str:
        try:
            client.predict_raw([photo])
        except grpc.RpcError as err:
            return err.code().name
        return "OK"

    return call


def rest_caller(host: str, port: int, photo: bytes) -> Callable[[], str]:
    """One REST predict of `photo` on a new connection; its HTTP status."""
    body = json.dumps({"instances": [{"b64": base64.b64encode(photo).decode()}]}).encode()

    def call() -> str:
        conn = http.client.HTTPConnection(host, port, timeout=120)
        try:
            conn.request("POST", "/v1/models/fashion:predict", body=body, headers={"Content-Type": "application/json"})
            answer = conn.getresponse()
            answer.read()
            return f"HTTP {answer.status}"
        finally:
            conn.close()

    return call


def measure(base: Path, photo: bytes, bomb: bytes, requests: int, batching: bool, log: Path) -> dict:
    """Start the server, measure idle memory, then the baseline, bomb and beside phases."""
    args = ["--preset=demo", f"--model_base_path={base}", "--model_name=fashion", f"--enable_batching={batching}"]
    with testing.ServerProcess(args, log_path=log) as server:
        with PredictionClient(server.target, "fashion", timeout_s=120, max_message_bytes=64 * MIB) as client:
            normal_grpc = grpc_caller(client, photo)
            normal_rest = rest_caller(server.host, server.rest_port, photo)
            timed(normal_grpc, 10)  # warm up both paths
            timed(normal_rest, 10)
            time.sleep(1.0)
            idle = rss_bytes(server.pid)
            result: dict = {"idle_rss": idle}
            result["normal photo, gRPC"] = timed(normal_grpc, requests)
            result["normal photo, REST"] = timed(normal_rest, requests)
            with ResidentMemory(server.pid) as memory:
                result["bomb, gRPC"] = timed(grpc_caller(client, bomb), requests)
                result["bomb, REST"] = timed(rest_caller(server.host, server.rest_port, bomb), requests)
                stop = threading.Event()
                sent = [0]

                def bombard() -> None:
                    with PredictionClient(server.target, "fashion", timeout_s=120) as other:
                        call = grpc_caller(other, bomb)
                        while not stop.is_set():
                            call()
                            sent[0] += 1

                bomber = threading.Thread(target=bombard)
                bomber.start()
                try:
                    result["normal photo beside bombs, gRPC"] = timed(normal_grpc, requests)
                finally:
                    stop.set()
                    bomber.join()
                result["bombs sent beside"] = sent[0]
            time.sleep(1.0)
            result["peak_rss"] = memory.peak
            result["after_rss"] = rss_bytes(server.pid)
    return result


def _row(label: str, r: dict) -> str:
    statuses = ", ".join(f"{k} x{v}" for k, v in r["statuses"].items())
    return f"{label:<34} {statuses:<24} p50 {r['p50_ms']:7.1f} ms  p90 {r['p90_ms']:7.1f} ms  max {r['max_ms']:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20, help="requests per phase and protocol")
    parser.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True, help="server-side batching")
    args = parser.parse_args()
    config = load_config("demo")
    photo = testing.sample_photos(1)[0].read_bytes()
    began = time.perf_counter()
    bomb = blank_png(20000, 20000)
    built_s = time.perf_counter() - began
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(
        f"model: demo preset ({config.model.backbone}, width {config.model.width_multiplier}), "
        f"serving.max_image_pixels {config.serving.max_image_pixels:,}, batching {'on' if args.batching else 'off'}"
    )
    print(
        f"bomb: 20000x20000 RGB PNG, {len(bomb):,} bytes (built in {built_s:.1f} s); normal photo {len(photo):,} bytes"
    )
    with tempfile.TemporaryDirectory(prefix="bench-serving-limits-") as tmp:
        tmp = Path(tmp)
        model_dir = testing.make_model_dir(tmp / "model", config=config)
        export.export_model(model_dir, str(tmp / "base" / "1"), config=config)
        r = measure(tmp / "base", photo, bomb, args.requests, args.batching, tmp / "server.log")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    phases = [
        "normal photo, gRPC",
        "bomb, gRPC",
        "normal photo, REST",
        "bomb, REST",
        "normal photo beside bombs, gRPC",
    ]
    for phase in phases:
        print(_row(phase, r[phase]))
    print(f"({r['bombs sent beside']} bombs sent during the beside phase)")
    ratios = {
        "bomb/normal p50, gRPC": r["bomb, gRPC"]["p50_ms"] / r["normal photo, gRPC"]["p50_ms"],
        "bomb/normal p50, REST": r["bomb, REST"]["p50_ms"] / r["normal photo, REST"]["p50_ms"],
        "beside/normal p50, gRPC": r["normal photo beside bombs, gRPC"]["p50_ms"] / r["normal photo, gRPC"]["p50_ms"],
    }
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}")
    idle, peak, after = r["idle_rss"], r["peak_rss"], r["after_rss"]
    print(
        f"resident memory: idle {idle / MIB:,.0f} MiB, peak during bombs {peak / MIB:,.0f} MiB "
        f"({peak / idle:.2f}x), after {after / MIB:,.0f} MiB ({after / idle:.2f}x)"
    )
    bomb_max = max(r["bomb, gRPC"]["max_ms"], r["bomb, REST"]["max_ms"])
    refused = r["bomb, gRPC"]["statuses"] == {"INVALID_ARGUMENT": args.requests} and r["bomb, REST"]["statuses"] == {
        "HTTP 400": args.requests
    }
    print(
        json.dumps(
            {
                "ratio": round(ratios["bomb/normal p50, gRPC"], 3),
                "rest_ratio": round(ratios["bomb/normal p50, REST"], 3),
                "beside_ratio": round(ratios["beside/normal p50, gRPC"], 3),
                "bomb_grpc_p50_ms": round(r["bomb, gRPC"]["p50_ms"], 1),
                "bomb_rest_p50_ms": round(r["bomb, REST"]["p50_ms"], 1),
                "bomb_max_ms": round(bomb_max, 1),
                "normal_grpc_p50_ms": round(r["normal photo, gRPC"]["p50_ms"], 1),
                "normal_rest_p50_ms": round(r["normal photo, REST"]["p50_ms"], 1),
                "idle_rss_mib": round(idle / MIB),
                "peak_rss_ratio": round(peak / idle, 3),
                "after_rss_ratio": round(after / idle, 3),
                "all_refused_invalid_argument": refused,
                "under_100_ms": bomb_max < 100,
                "within_1_5x_idle": peak < 1.5 * idle and after < 1.5 * idle,
            }
        )
    )


if __name__ == "__main__":
    main()
