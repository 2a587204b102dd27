"""Only what can succeed on retry is retried: transient network and storage errors, not user errors."""

from __future__ import annotations

import sqlite3

import pytest

from core.errors import StepError
from core.retry import call_with_retries, is_transient
from core.storage import StorageError


def _caused(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as err:
            raise outer from err
    except BaseException as caught:
        return caught


@pytest.mark.parametrize(
    "err, transient",
    [
        (ConnectionResetError("peer reset"), True),
        (TimeoutError("read timed out"), True),
        (_caused(StepError("cannot read gs://b/styles.csv"), ConnectionRefusedError(111, "refused")), True),
        (_caused(StorageError("gs://b/x"), type("ServiceUnavailable", (Exception,), {})("503")), True),
        (sqlite3.OperationalError("database is locked"), True),
        (sqlite3.OperationalError("attempt to write a readonly database"), False),
        (StepError("source /nope does not exist"), False),
        (FileNotFoundError(2, "No such file or directory"), False),
        (ValueError("not a zip"), False),
    ],
)
def test_transient_errors_are_told_from_permanent_ones(err, transient):
    assert is_transient(err) is transient


def test_a_transient_failure_is_retried_until_it_succeeds():
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("peer reset")
        return "done"

    assert call_with_retries(flaky, retries=2, backoff_s=0, what="read") == "done"
    assert len(calls) == 3


def test_a_permanent_failure_fails_once_with_its_own_error():
    calls = []

    def broken() -> None:
        calls.append(1)
        raise StepError("source /nope does not exist (give a folder, a .zip, or a gs://bucket/prefix)")

    with pytest.raises(StepError, match="does not exist"):
        call_with_retries(broken, retries=5, backoff_s=0, what="ingest")
    assert len(calls) == 1


def test_retries_are_bounded():
    calls = []

    def down() -> None:
        calls.append(1)
        raise ConnectionRefusedError(111, "refused")

    with pytest.raises(ConnectionRefusedError):
        call_with_retries(down, retries=2, backoff_s=0, what="register")
    assert len(calls) == 3
