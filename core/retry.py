"""Retrying what can succeed on retry: network and storage hiccups, never a user error or a corrupt input.

A step retries itself (tenacity) only when the failure, or anything in its chain of causes, is
transient: a dropped or refused connection, a timeout, a server's 429/5xx, a locked database.
A `StepError` about the input or the settings fails at once, once, with its own message. kfp's
task-level retry cannot tell the two apart, which is why the pipeline does not use it.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import TypeVar

import tenacity

log = logging.getLogger(__name__)

T = TypeVar("T")

# Exception class names (anywhere in the MRO) that mean "try again": the network, object storage
# (google.api_core), HTTP clients (requests, urllib3) and gRPC's UNAVAILABLE-style errors.
TRANSIENT_TYPES = frozenset(
    {
        "ConnectionError",
        "TimeoutError",
        "ServiceUnavailable",
        "InternalServerError",
        "BadGateway",
        "GatewayTimeout",
        "TooManyRequests",
        "DeadlineExceeded",
        "RetryError",
        "ProtocolError",
        "ReadTimeout",
        "ConnectTimeout",
        "ChunkedEncodingError",
        "IncompleteRead",
        "RemoteDisconnected",
    }
)
TRANSIENT_ERRNOS = frozenset({errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EAGAIN})
TRANSIENT_MESSAGES = ("database is locked", "temporarily unavailable", "try again")


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def is_transient(err: BaseException) -> bool:
    """True when `err` or one of its causes is a failure that can succeed on retry."""
    for e in _chain(err):
        if any(cls.__name__ in TRANSIENT_TYPES for cls in type(e).__mro__):
            return True
        if isinstance(e, OSError) and e.errno in TRANSIENT_ERRNOS:
            return True
        if type(e).__name__ == "OperationalError" and any(m in str(e).lower() for m in TRANSIENT_MESSAGES):
            return True
    return False


def call_with_retries(fn: Callable[[], T], retries: int, backoff_s: float, what: str) -> T:
    """`fn()`, retried up to `retries` times after transient failures, waiting `backoff_s` and doubling.

    Args:
        fn: the work; it must be safe to run again after a failure (every step that uses this is).
        retries: retries after the first attempt (0: one attempt only).
        backoff_s: the first wait in seconds; each later wait doubles it.
        what: what is being done, for the log line before each retry.

    Raises:
        The last exception, unchanged, when it is not transient or the retries are spent.
    """

    def _before_sleep(state: tenacity.RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        log.warning(
            "%s failed with a transient error (%s: %s); attempt %d of %d in %.0f s",
            what,
            type(err).__name__,
            err,
            state.attempt_number + 1,
            retries + 1,
            state.upcoming_sleep,
        )

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(retries + 1),
        wait=tenacity.wait_exponential(multiplier=backoff_s),
        retry=tenacity.retry_if_exception(is_transient),
        before_sleep=_before_sleep,
        reraise=True,
    )
    return retrying(fn)
