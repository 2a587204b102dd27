"""Request failures carrying TF Serving's canonical status codes, for both gRPC and REST answers."""

from __future__ import annotations

import grpc

# TF Serving's mapping from canonical codes to HTTP statuses (its REST handler's ToHTTPStatusCode).
_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


class ServingError(Exception):
    """A request that cannot be served; `code` is the canonical status it is answered with."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        """The HTTP status TF Serving's REST API answers with for this code."""
        return _HTTP_STATUS.get(self.code, 500)

    @property
    def error_code(self) -> int:
        """The numeric canonical code, as in `tensorflow.error.Code`."""
        return self.code.value[0]


def invalid_argument(message: str) -> ServingError:
    """INVALID_ARGUMENT: the request itself is wrong."""
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    """NOT_FOUND: no such model or version."""
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    """FAILED_PRECONDITION: the request is valid but the server's state does not allow it."""
    return ServingError(grpc.StatusCode.FAILED_PRECONDITION, message)


def deadline_exceeded(message: str = "Deadline Exceeded") -> ServingError:
    """DEADLINE_EXCEEDED: the client's deadline passed before the request could be computed."""
    return ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, message)


def unavailable(message: str) -> ServingError:
    """UNAVAILABLE: try again later (full queue, shutting down)."""
    return ServingError(grpc.StatusCode.UNAVAILABLE, message)
