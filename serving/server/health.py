"""The standard gRPC health service (`grpc.health.v1.Health`), as `--enable_grpc_healthcheck_service` turns on.

tensorflow_model_server enables gRPC's default health service, which reports the whole server
(service name "") and, by its short names, `ModelService` and `PredictionService` as SERVING until
the server shuts down. This is the same service over grpc's health.proto (declared here, as
grpcio does not ship it), so Kubernetes' `grpc` probes and `grpc_health_probe` work unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import grpc

from serving import protos

SERVICE = "grpc.health.v1.Health"
# The names TF Serving marks as serving, besides the whole server's "".
SERVED_NAMES = ("", "ModelService", "PredictionService")


def health_messages() -> Any:
    """grpc/health/v1/health.proto's messages and its ServingStatus values."""
    return protos.declared_messages(
        "grpc/health/v1/health.proto",
        "grpc.health.v1",
        (
            ("HealthCheckRequest", (("service", 1, "string"),)),
            ("HealthCheckResponse", (("status", 1, "HealthCheckResponse.ServingStatus"),)),
        ),
        (
            (
                "HealthCheckResponse.ServingStatus",
                (("UNKNOWN", 0), ("SERVING", 1), ("NOT_SERVING", 2), ("SERVICE_UNKNOWN", 3)),
            ),
        ),
    )


class HealthService:
    """Serving status by service name: SERVING from start until `shut_down`."""

    def __init__(self) -> None:
        self._messages = health_messages()
        serving = self._messages.ServingStatus["SERVING"]
        self._status = dict.fromkeys(SERVED_NAMES, serving)
        self._changed = threading.Condition()
        self._stopped = False

    def shut_down(self) -> None:
        """Report every service NOT_SERVING and end the watches (the server is stopping)."""
        with self._changed:
            self._status = dict.fromkeys(self._status, self._messages.ServingStatus["NOT_SERVING"])
            self._stopped = True
            self._changed.notify_all()

    def generic_handler(self) -> grpc.GenericRpcHandler:
        """The service's handler, for `grpc.Server.add_generic_rpc_handlers`."""
        request, response = self._messages.HealthCheckRequest, self._messages.HealthCheckResponse
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    self._check, request_deserializer=request.FromString, response_serializer=response.SerializeToString
                ),
                "Watch": grpc.unary_stream_rpc_method_handler(
                    self._watch, request_deserializer=request.FromString, response_serializer=response.SerializeToString
                ),
            },
        )

    def _check(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._changed:
            status = self._status.get(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "")
        return self._messages.HealthCheckResponse(status=status)

    def _watch(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        """The current status, then each change, until the client leaves or the server stops."""
        unknown = self._messages.ServingStatus["SERVICE_UNKNOWN"]
        last = None
        while context.is_active():
            with self._changed:
                status = self._status.get(request.service, unknown)
                if status == last:
                    if self._stopped:
                        return
                    # Woken by a change or, every second, to notice a client that has gone.
                    self._changed.wait(1.0)
                    continue
            last = status
            yield self._messages.HealthCheckResponse(status=status)
