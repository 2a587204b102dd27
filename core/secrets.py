"""Keeping credentials out of logs, messages, saved configs and MLflow: URI passwords become `***`."""

from __future__ import annotations

import logging
import re
from typing import Any

# scheme://user:password@host -> scheme://user:***@host; a bare token (`user@host`) is left as it is.
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+):(?P<secret>[^@\s/]+)@")
MASK = "***"


def redact(text: str) -> str:
    """`text` with the password of every URI in it replaced by `***`."""
    return _USERINFO.sub(lambda m: f"{m.group('head')}:{MASK}@", text)


def redact_value(value: Any) -> Any:
    """A copy of a plain value (dicts, lists, strings) with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    return value


_installed = False


def install_log_redaction() -> None:
    """Redact every log record of every library as it is made (idempotent).

    A record factory sees each record before any handler formats it, including records that
    propagate from library loggers, which a filter on the root logger would not see.
    """
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
