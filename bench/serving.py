"""Benchmark: served gRPC throughput and latency against the same SavedModel called in-process.

Closed loop: N concurrent clients (1, 8, 32 by default), each sending one photo per Predict
request and waiting for the answer, for a fixed time, against a `fashion serve` process with and
without server-side batching. Baseline, in the same run: the same SavedModel's signature called
in-process by N threads with the same photos (no network, no serialisation, no server).
The model is the `demo` preset's network with random weights (same graph and cost as a trained one).

    .venv/bin/python -m bench.serving --seconds 10

Last line: a JSON object with "ratio" = served throughput at the highest concurrency (batching
on) / in-process throughput at the same concurrency.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from components.register import export
from core.config import load_config
from tests.support import serving as testing


def closed_loop(make_caller: Callable[[], Callable[[], None]], concurrency: int, seconds: float) -> dict:
    """Run `concurrency` callers back to back for `seconds`; throughput and latency percentiles."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    start_gate = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def worker(i: int) -> None:
        call = make_caller()
        start_gate.wait()
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter()
            try:
                call()
            except Exception:  # noqa: BLE001 - failed requests are counted, not fatal
                errors[i] += 1
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


def served(base: Path, photos: list[bytes], levels: list[int], seconds: float, batching: bool, log: Path) -> list[dict]:
    from serving.client import PredictionClient

    args = ["--preset=demo", f"--model_base_path={base}", "--model_name=fashion", f"--enable_batching={batching}"]
    results = []
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
    return results


def _row(label: str, r: dict) -> str:
    return (
        f"{label:<24} c={r['concurrency']:>3}  {r['throughput']:8.1f} req/s  "
        f"p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each load level")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    photos = [p.read_bytes() for p in testing.sample_photos()]
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        tmp = Path(tmp)
        config = load_config("demo")
        model_dir = testing.make_model_dir(tmp / "model", config=config)
        version_dir = export.export_model(model_dir, str(tmp / "base" / "1"), config=config)
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        model = f"{config.model.backbone}, width {config.model.width_multiplier}"
        print(f"model: demo preset ({model}), one photo per request")
        base = in_process(version_dir, photos, levels, args.seconds)
        plain = served(tmp / "base", photos, levels, args.seconds, False, tmp / "plain.log")
        batched = served(tmp / "base", photos, levels, args.seconds, True, tmp / "batched.log")
    for label, rows in (("in-process (baseline)", base), ("served, no batching", plain), ("served, batching", batched)):
        for r in rows:
            print(_row(label, r))
    ratio = batched[-1]["throughput"] / base[-1]["throughput"]
    print(
        json.dumps(
            {
                "ratio": round(ratio, 3),
                "concurrency": levels[-1],
                "in_process_rps": round(base[-1]["throughput"], 1),
                "served_batching_rps": round(batched[-1]["throughput"], 1),
                "served_plain_rps": round(plain[-1]["throughput"], 1),
                "served_batching_p99_ms": round(batched[-1]["p99_ms"], 1),
                "errors": sum(r["errors"] for r in plain + batched),
            }
        )
    )


if __name__ == "__main__":
    main()
