"""Progress of long work (photos checked, batches trained, products predicted): counts and time left, as log records.

A step reports through `Progress` and knows nothing of terminals: each update is a record of the
`fashion.progress` logger that carries an `Update` (the record's `progress` attribute). Whoever
owns the console renders it (the CLI as one live line, the local runner per step); any other
handler writes the record's text, so a log file or a cluster's pod log reads "checking photos:
512/1200 photos (43%), 2s left".
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

LOGGER_NAME = "fashion.progress"
# Updates closer together than this are dropped (the last one is always sent): a terminal line
# redrawn five times a second looks live and costs nothing next to a batch of photos.
MIN_INTERVAL_S = 0.2


def format_seconds(seconds: float) -> str:
    """`45s`, `3m05s`, `1h02m`: a duration as a person reads it on a progress line."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclasses.dataclass(frozen=True)
class Update:
    """Where one piece of work stands.

    Attributes:
        task: what is being done, e.g. `checking photos`, `epoch 3/8`.
        done: units done so far.
        total: units in all (None when not known: no percentage, no time left).
        unit: what is counted, e.g. `photos`, `batches`.
        elapsed_s: seconds since the work began.
        note: figures worth seeing next to the count, e.g. `loss 2.81`.
        final: the work is over (the last update of this task).
        left_s: the estimated seconds left (None: not known yet, or no total).
    """

    task: str
    done: int
    total: int | None
    unit: str
    elapsed_s: float
    note: str = ""
    final: bool = False
    left_s: float | None = None

    def text(self) -> str:
        """One line: `task: done/total unit (pct%), note, 12s left` (`..., done in 40s` when final)."""
        if self.total:
            count = f"{self.done}/{self.total} {self.unit} ({100 * self.done // self.total}%)"
        else:
            count = f"{self.done} {self.unit}"
        parts = [count] + ([self.note] if self.note else [])
        if self.final:
            parts.append(f"done in {format_seconds(self.elapsed_s)}")
        elif self.left_s is not None:
            parts.append(f"{format_seconds(self.left_s)} left")
        return f"{self.task}: {', '.join(parts)}"

    def to_dict(self) -> dict[str, Any]:
        """The update as plain JSON-ready values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Update:
        """The update `to_dict` made (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class Progress:
    """Reports `done` of `total` units of one task as `fashion.progress` records, at most every `MIN_INTERVAL_S`.

    Use it as a context manager, or call `finish` at the end: the final update is always sent.

    Args:
        task: what is being done, e.g. `checking photos`.
        total: units in all (None when unknown).
        unit: what is counted, e.g. `photos`.
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, task: str, total: int | None, unit: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.task, self.total, self.unit = task, total, unit
        self.done = 0
        self._clock = clock
        self._started = clock()
        self._first: tuple[float, int] | None = None
        self._sent = float("-inf")
        self._finished = False
        self._log = logging.getLogger(LOGGER_NAME)

    def update(self, done: int, note: str = "") -> None:
        """Record that `done` units are done; sends an update unless one went out just now."""
        self.done = done
        now = self._clock()
        if self._first is None and done > 0:
            self._first = (now, done)
        if now - self._sent >= MIN_INTERVAL_S or (self.total is not None and done >= self.total):
            self._sent = now
            elapsed = now - self._started
            self._emit(Update(self.task, done, self.total, self.unit, elapsed, note, left_s=self._left(now)))

    def _left(self, now: float) -> float | None:
        """Seconds left at the rate since the first unit was done.

        The first unit is left out of the rate: it carries the start-up (a model's first batch
        traces the graph, a pool starts its processes) and would make every estimate too long.
        """
        if self._first is None or self.total is None:
            return None
        since, first_done = self._first
        if self.done <= first_done or now <= since or self.done >= self.total:
            return None
        return max(0.0, (now - since) / (self.done - first_done) * (self.total - self.done))

    def advance(self, units: int = 1, note: str = "") -> None:
        """Record `units` more done."""
        self.update(self.done + units, note)

    def finish(self, note: str = "") -> None:
        """Send the final update (once): all units done when the total is known."""
        if self._finished:
            return
        self._finished = True
        done = self.total if self.total is not None else self.done
        self._emit(Update(self.task, done, self.total, self.unit, self._clock() - self._started, note, final=True))

    def _emit(self, update: Update) -> None:
        if self._log.isEnabledFor(logging.INFO):
            self._log.info("%s", update.text(), extra={"progress": update})

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        if kind is None:
            self.finish()


def update_of(record: logging.LogRecord) -> Update | None:
    """The `Update` a progress record carries, else None."""
    update = getattr(record, "progress", None)
    return update if isinstance(update, Update) else None
