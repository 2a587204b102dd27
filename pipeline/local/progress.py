"""Live progress of a kfp.local run on the console: one line per step as it starts, retries and ends.

Nothing here decides what a step did: `results` reads statuses, outputs, parameters and cache
hits from kfp.local's files once the run is over. What only exists while the run is going on is
kept here: when each step started and ended, how many attempts it took, and each step's own
output (the console shows it without the executor-input dump kfp prints, a failed step's
exception is taken from it, and training that picks up an earlier run's checkpoint says so).
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.local.results import STEP_ORDER

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TASK = r"'([A-Za-z0-9_.-]+)'"
_STARTED = re.compile(rf"Executing task {_TASK}")
_FINISHED = re.compile(rf"Task {_TASK} finished with status (\w+)")
_CACHE_HIT = re.compile(r"Task '?([A-Za-z0-9_.-]+?)'? cache hit \(key=\w+\)")
_ERROR_LINE = re.compile(r"^\s*(?:[A-Za-z_][\w.]*\.)?([A-Z]\w*(?:Error|Exception)): (.+)$")
# The train step's log line (components/train/step.py) when it continues from a checkpoint, as
# kfp's executor logs it ("[KFP Executor <time> INFO]: ..."); the prefix keeps the echo itself out.
_RESUMED = re.compile(r"\]: (resuming training from epoch \d+ of \d+|training finished earlier, after epoch \d+)")


def plain(text: str) -> str:
    """`text` without the terminal colour codes kfp.local puts around task names and statuses."""
    return _ANSI.sub("", text)


class StepTracker(logging.Filter):
    """Echoes a line when kfp.local starts, ends or reuses a step, and times each step; passes every record on.

    kfp.local (2.17) has no callback and writes nothing while a task runs or retries, so the
    records it logs per task are the only live signal; a filter on the root logger sees them
    (kfp swaps the root's handlers during a run, but keeps its filters).
    """

    def __init__(self, echo: Callable[[str], None]) -> None:
        super().__init__()
        self.echo = echo
        self.current: str | None = None
        self.attempts: dict[str, int] = collections.Counter()
        self.started: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """Echo and time the step the record is about, if any; always keep the record."""
        text = plain(record.getMessage())
        now = record.created
        if m := _STARTED.match(text):
            name = m.group(1)
            self.attempts[name] += 1
            self.started.setdefault(name, now)
            self.current = name
            position = f"{STEP_ORDER.index(name) + 1}/{len(STEP_ORDER)}" if name in STEP_ORDER else "-"
            retry = f" (attempt {self.attempts[name]})" if self.attempts[name] > 1 else ""
            self.echo(f"==> [{position}] {name}{retry}")
        elif m := _FINISHED.match(text):
            name = m.group(1)
            self.seconds[name] = now - self.started.get(name, now)
            outcome = "succeeded" if m.group(2) == "SUCCESS" else "failed"
            self.echo(f"==> {name} {outcome} in {self.seconds[name]:.1f}s")
        elif m := _CACHE_HIT.match(text):
            self.echo(f"==> {m.group(1)} reused from the step cache")
        return True


class Tee(io.TextIOBase):
    """A stdout stand-in that writes through line by line and keeps the last lines of each step's output.

    kfp's executor logs every step's whole executor input as indented JSON; that block is left
    out of the terminal (it is in the step's folder) so the steps' own progress stays readable.
    """

    def __init__(self, target: Any, tracker: StepTracker, keep: int = 200) -> None:
        self.target = target
        self.tracker = tracker
        self.tails: dict[str, collections.deque[str]] = collections.defaultdict(lambda: collections.deque(maxlen=keep))
        self._partial = ""
        self._skipping = False
        self._notes: list[str] = []

    def write(self, text: str) -> int:
        """Pass whole lines on (see `_line`); hold a trailing partial line until its newline."""
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._line(line)
        if not self._partial:
            self._echo_notes()
        return len(text)

    def _echo_notes(self) -> None:
        """Echo the progress lines `_line` noted, now that no partial line is held (echo may write here)."""
        notes, self._notes = self._notes, []
        for note in notes:
            self.tracker.echo(note)

    def _line(self, line: str) -> None:
        text = plain(line)
        if self._skipping:
            # The dump ends with its top-level brace, indented only by kfp's streamed-log prefix.
            if text.rstrip() == "    }" or "[KFP Executor" in text:
                self._skipping = False
            if "[KFP Executor" not in text:
                return
        if text.rstrip().endswith("Got executor_input:"):
            self._skipping = True
            self.target.write(line + " (not shown)\n")
            return
        self.target.write(line + "\n")
        if self.tracker.current:
            self.tails[self.tracker.current].append(text)
            if m := _RESUMED.search(text):
                self._notes.append(f"==> {self.tracker.current}: {m.group(1)} (checkpoint of an earlier run)")

    def flush(self) -> None:
        """Flush the real stdout."""
        self.target.flush()

    def drain(self) -> None:
        """Write out a last line that had no newline."""
        if self._partial:
            self._line(self._partial)
            self._partial = ""
        self._echo_notes()
        self.flush()

    def error_message(self, step: str) -> str:
        """The last `SomethingError: message` line the step printed (its exception), else ''.

        kfp.local keeps no record of a step's exception: the traceback the step's process prints,
        which kfp relays to stdout, is the only place its message exists.
        """
        for line in reversed(self.tails.get(step, ())):
            if m := _ERROR_LINE.match(line):
                return f"{m.group(1)}: {m.group(2).strip()}"
        return ""


@contextlib.contextmanager
def tracking(echo: Callable[[str], None]) -> Iterator[tuple[StepTracker, Tee]]:
    """Track kfp.local's steps and tee stdout for the duration of a run."""
    tracker = StepTracker(echo)
    tee = Tee(sys.stdout, tracker)
    root = logging.getLogger()
    level = root.level
    # Some of kfp.local's progress records (cache hits) are logged outside its own INFO context.
    root.setLevel(min(level or logging.WARNING, logging.INFO))
    root.addFilter(tracker)
    try:
        with contextlib.redirect_stdout(tee):
            yield tracker, tee
    finally:
        tee.drain()
        root.removeFilter(tracker)
        root.setLevel(level)
