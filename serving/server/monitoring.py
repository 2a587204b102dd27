"""Request metrics under TF Serving's names, and the Prometheus page its `--monitoring_config_file` turns on.

TF Serving counts every Predict, Classify and Regress call over gRPC, and every call of its REST API,
in `/tensorflow/serving/request_count{model_name, status}`, and times the successful ones in
`/tensorflow/serving/request_latency{model_name, API, entrypoint}` (microseconds, 33 exponential
buckets from 10 by 1.8). These are kept here with the same names, labels and buckets. TF Serving
has no metric per version or signature, so the same calls are also counted and timed in
`/fashion/serving/request_count` and `/fashion/serving/request_latency`, which carry `version` and
`signature_name` as well.

With `prometheus_config { enable: true }` in the monitoring config, the REST port answers
`/monitoring/prometheus/metrics` (or the configured path) with the page TF Serving's
PrometheusExporter writes: every character of a name outside `[a-zA-Z0-9_]` becomes `:`
(`:tensorflow:serving:request_count`), a `# TYPE` line per metric, no `# HELP`, a counter's series
under the metric's own name, bucket limits as `%g`. It is written here, not by prometheus_client:
that library renames a counter's series (`_total`, `_created`), so a dashboard built on TF Serving's
page would find nothing.
"""

from __future__ import annotations

import bisect
import contextlib
import contextvars
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from serving import protos
from serving.model_config import parse_text_proto, read_config_text

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"

REQUEST_COUNT = "/tensorflow/serving/request_count"
REQUEST_LATENCY = "/tensorflow/serving/request_latency"
VERSION_REQUEST_COUNT = "/fashion/serving/request_count"
VERSION_REQUEST_LATENCY = "/fashion/serving/request_latency"


def _exponential_limits(scale: float, growth_factor: float, count: int) -> tuple[float, ...]:
    """TensorFlow's `Buckets::Exponential`, computed as it does, plus the DBL_MAX bucket its histograms add."""
    limits, bound = [], scale
    for _ in range(count):
        limits.append(bound)
        bound *= growth_factor
    return (*limits, sys.float_info.max)


# TF Serving's request latency buckets: Exponential(10, 1.8, 33), about 20 minutes at the top.
LATENCY_BUCKET_LIMITS = _exponential_limits(10.0, 1.8, 33)

# The gRPC methods TF Serving records (its PredictionServiceImpl); not MultiInference, metadata or ModelService.
GRPC_APIS = {
    "/tensorflow.serving.PredictionService/Predict": "Predict",
    "/tensorflow.serving.PredictionService/Classify": "Classify",
    "/tensorflow.serving.PredictionService/Regress": "Regress",
}
INFERENCE_APIS = frozenset({*GRPC_APIS.values(), "predict", "classify", "regress"})


@dataclass(frozen=True)
class MonitoringConfig:
    """What a `tensorflow.serving.MonitoringConfig` asks for."""

    prometheus_enabled: bool = False
    prometheus_path: str = DEFAULT_PROMETHEUS_PATH


def monitoring_config_class() -> type:
    """`tensorflow.serving.MonitoringConfig` (tensorflow_serving/config/monitoring_config.proto)."""
    return protos.declared_messages(
        "tensorflow_serving/config/monitoring_config.proto",
        "tensorflow.serving",
        (
            ("PrometheusConfig", (("enable", 1, "bool"), ("path", 2, "string"))),
            ("MonitoringConfig", (("prometheus_config", 1, "PrometheusConfig"),)),
        ),
    ).MonitoringConfig


def parse_monitoring_config(text: str, source: str = "monitoring config") -> MonitoringConfig:
    """A text-format MonitoringConfig; an empty `path` is TF Serving's default path."""
    message = parse_text_proto(text, monitoring_config_class()(), source)
    prometheus = message.prometheus_config
    return MonitoringConfig(bool(prometheus.enable), prometheus.path or DEFAULT_PROMETHEUS_PATH)


def read_monitoring_config(uri: str) -> MonitoringConfig:
    """Read `--monitoring_config_file` (local or `gs://`)."""
    return parse_monitoring_config(read_config_text(uri), uri)


@dataclass
class Call:
    """One request being measured: what it asked for, and which version and signature answered it."""

    model_name: str
    api: str
    entrypoint: str
    version: int | None = None
    signature_name: str = ""
    started_ns: int = field(default_factory=time.monotonic_ns)


_current_call: contextvars.ContextVar[Call | None] = contextvars.ContextVar("serving_call", default=None)


def answered_by(version: int, signature_name: str) -> None:
    """Note the version and signature that answered the request being measured on this thread (if any)."""
    call = _current_call.get()
    if call is not None:
        call.version = version
        call.signature_name = signature_name


class _Histogram:
    """A TensorFlow histogram: a value falls in the first bucket whose limit is above it."""

    def __init__(self) -> None:
        self.counts = [0] * len(LATENCY_BUCKET_LIMITS)
        self.sum = 0.0

    def add(self, value: float) -> None:
        self.counts[min(bisect.bisect_right(LATENCY_BUCKET_LIMITS, value), len(self.counts) - 1)] += 1
        self.sum += value


@dataclass(frozen=True)
class _Metric:
    name: str
    kind: str  # "counter" or "histogram"
    labels: tuple[str, ...]


_METRICS = (
    _Metric(REQUEST_COUNT, "counter", ("model_name", "status")),
    _Metric(REQUEST_LATENCY, "histogram", ("model_name", "API", "entrypoint")),
    _Metric(
        VERSION_REQUEST_COUNT, "counter", ("model_name", "version", "signature_name", "API", "entrypoint", "status")
    ),
    _Metric(VERSION_REQUEST_LATENCY, "histogram", ("model_name", "version", "signature_name", "API", "entrypoint")),
)


class Metrics:
    """The server's request metrics, safe to record from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cells: dict[str, dict[tuple[str, ...], Any]] = {metric.name: {} for metric in _METRICS}

    @contextlib.contextmanager
    def measure(self, call: Call) -> Iterator[Call]:
        """Make `call` the one `answered_by` notes on this thread while the block runs."""
        token = _current_call.set(call)
        try:
            yield call
        finally:
            _current_call.reset(token)

    def record(self, call: Call, status: str, latency_us: int | None = None) -> None:
        """Count `call` with its canonical status name (`OK`, `NOT_FOUND`, ...); time it when it succeeded.

        The latency is the time since the call started, unless given.
        """
        if latency_us is None:
            latency_us = (time.monotonic_ns() - call.started_ns) // 1000
        version = "" if call.version is None else str(call.version)
        with self._lock:
            self._count(REQUEST_COUNT, (call.model_name, status))
            if status == "OK":
                self._time(REQUEST_LATENCY, (call.model_name, call.api, call.entrypoint), latency_us)
            if call.api in INFERENCE_APIS:
                labels = (call.model_name, version, call.signature_name, call.api, call.entrypoint)
                self._count(VERSION_REQUEST_COUNT, (*labels, status))
                if status == "OK":
                    self._time(VERSION_REQUEST_LATENCY, labels, latency_us)

    def _count(self, name: str, labels: tuple[str, ...]) -> None:
        cells = self._cells[name]
        cells[labels] = cells.get(labels, 0) + 1

    def _time(self, name: str, labels: tuple[str, ...], latency_us: int) -> None:
        cells = self._cells[name]
        if labels not in cells:
            cells[labels] = _Histogram()
        cells[labels].add(float(latency_us))

    def prometheus_page(self) -> str:
        """The metrics as TF Serving's PrometheusExporter renders them."""
        lines: list[str] = []
        with self._lock:
            for metric in sorted(_METRICS, key=lambda m: m.name):
                name = prometheus_name(metric.name)
                lines.append(f"# TYPE {name} {metric.kind}")
                for values, cell in sorted(self._cells[metric.name].items()):
                    labels = [
                        f'{_label_name(k)}="{_label_value(v)}"' for k, v in zip(metric.labels, values, strict=True)
                    ]
                    if metric.kind == "counter":
                        lines.append(f"{name}{{{','.join(labels)}}} {cell}")
                        continue
                    prefix = f"{name}_bucket{{{','.join(labels)}{',' if labels else ''}"
                    cumulative = 0
                    for i, count in enumerate(cell.counts):
                        cumulative += count
                        limit = "+Inf" if i == len(cell.counts) - 1 else _g(LATENCY_BUCKET_LIMITS[i])
                        lines.append(f'{prefix}le="{limit}"}} {cumulative}')
                    lines.append(f"{name}_sum{{{','.join(labels)}}} {_g(cell.sum)}")
                    lines.append(f"{name}_count{{{','.join(labels)}}} {cumulative}")
        return "\n".join(lines) + "\n"


def prometheus_name(name: str) -> str:
    """A TensorFlow metric name as Prometheus sees it (`/tensorflow/serving/x` -> `:tensorflow:serving:x`)."""
    renamed = re.sub(r"[^a-zA-Z0-9_]", ":", name)
    return f"_{renamed}" if renamed[:1].isdigit() else renamed


def _label_name(name: str) -> str:
    renamed = re.sub(r"[^a-zA-Z0-9]", "_", name)
    return f"_{renamed}" if renamed[:1].isdigit() else renamed


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _g(value: float) -> str:
    """A double as absl::StrCat writes it (six significant digits, as printf's %g)."""
    return f"{value:g}"


def _status_name(code: grpc.StatusCode | None, default: str) -> str:
    return code.name if isinstance(code, grpc.StatusCode) else default


class GrpcMetricsInterceptor(grpc.ServerInterceptor):
    """Measures the gRPC calls TF Serving measures, reading the answering version from the response."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        """Wrap Predict, Classify and Regress; every other method passes untouched."""
        handler = continuation(handler_call_details)
        api = GRPC_APIS.get(handler_call_details.method)
        if handler is None or api is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        metrics = self.metrics

        def measured(request: Any, context: grpc.ServicerContext) -> Any:
            spec = request.model_spec
            call = Call(
                model_name=spec.name,
                api=api,
                entrypoint="GRPC",
                version=spec.version.value if spec.WhichOneof("version_choice") == "version" else None,
                signature_name=spec.signature_name or "serving_default",
            )
            try:
                with metrics.measure(call):
                    response = inner(request, context)
            except BaseException:
                # context.abort() raised after setting the code; anything else reaches the client as UNKNOWN.
                metrics.record(call, _status_name(context.code(), "UNKNOWN"))
                raise
            answered = getattr(response, "model_spec", None)
            if answered is not None and answered.name:
                call.version = answered.version.value if answered.HasField("version") else call.version
                call.signature_name = answered.signature_name or call.signature_name
            metrics.record(call, _status_name(context.code(), "OK"))
            return response

        return grpc.unary_unary_rpc_method_handler(
            measured,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
