"""Live progress of a kfp.local run: a console line per step as it starts and ends, progress between; the rest to logs.

Nothing here decides what a step did: `results` reads statuses, outputs, parameters and cache
hits from kfp.local's files. What only exists while the run is going on is kept here: when each
step started and ended, how many attempts it took, and each step's own output. That output goes
to the step's log file (`logs.RunLogs`); the console gets only the step's progress lines (the
`pipeline.console.PROGRESS_PREFIX` lines its `core.progress` reports become) and the notice that
training picks up an earlier run's checkpoint. With `verbose`, every line is shown as well.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.console import Console, SparseGate, parse_progress_line, plain
from pipeline.local.logs import RUN_LOG, RunLogs
from pipeline.local.results import STEP_ORDER

_TASK = r"'([A-Za-z0-9_.-]+)'"
_STARTED = re.compile(rf"Executing task {_TASK}")
_FINISHED = re.compile(rf"Task {_TASK} finished with status (\w+)")
_CACHE_HIT = re.compile(r"Task '?([A-Za-z0-9_.-]+?)'? cache hit \(key=\w+\)")
_ERROR_LINE = re.compile(r"^\s*(?:[A-Za-z_][\w.]*\.)?([A-Z]\w*(?:Error|Exception)): (.+)$")
# The train step's log line (components/train/step.py) when it continues from a checkpoint, as
# kfp's executor logs it ("[KFP Executor <time> INFO]: ..."); the prefix keeps the echo itself out.
_RESUMED = re.compile(r"\]: (resuming training from epoch \d+ of \d+|training finished earlier, after epoch \d+)")
# How far a step's progress line is indented under its step line.
INDENT = "    "

__all__ = ["StepTracker", "Tee", "plain", "tracking"]


class StepTracker(logging.Filter):
    """Echoes a line when kfp.local starts, ends or reuses a step, and times each step; passes every record on.

    kfp.local (2.17) has no callback and writes nothing while a task runs or retries, so the
    records it logs per task are the only live signal; a filter on the root logger sees them
    (kfp swaps the root's handlers during a run, but keeps its filters).

    Args:
        echo: where the step lines go.
        headline: what a finished step made, for its end line (`summary.step_note`); '' for nothing.
        colour: colours a status word for the console (`Console.colour`).
    """

    def __init__(
        self,
        echo: Callable[[str], None],
        headline: Callable[[str, bool], str] | None = None,
        colour: Callable[[str, str], str] | None = None,
    ) -> None:
        super().__init__()
        self.echo = echo
        self.headline = headline or (lambda name, ok: "")
        self.colour = colour or (lambda text, colour: text)
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
            ok = m.group(2) == "SUCCESS"
            outcome = self.colour("succeeded", "green") if ok else self.colour("failed", "red")
            note = self.headline(name, ok)
            self.echo(f"==> {name} {outcome} in {self.seconds[name]:.1f}s" + (f": {note}" if note else ""))
        elif m := _CACHE_HIT.match(text):
            self.echo(f"==> {m.group(1)} reused from the step cache")
        return True


class Tee(io.TextIOBase):
    """A stdout stand-in for the run: every line to its step's log, progress to the console, the rest kept off it.

    kfp.local relays each step's output line by line to stdout, and logs its own task records
    there too. A line belongs to the step kfp last started (`tracker.current`), or to the run.

    Args:
        target: the real stdout; with `verbose` every line is written there as well (plain when
            it is no terminal). kfp's dump of each step's whole executor input is not, though it is
            in the step's log.
        tracker: the step tracker of the run.
        logs: the run's log files (none: lines go nowhere but `target`, when verbose).
        console: where progress lines are shown (none: not shown).
        verbose: show every line on `target`.
        keep: lines of each step's output kept for `error_message`.
    """

    def __init__(
        self,
        target: Any,
        tracker: StepTracker,
        logs: RunLogs | None = None,
        console: Console | None = None,
        verbose: bool = False,
        keep: int = 200,
    ) -> None:
        self.target = target
        self.tracker = tracker
        self.logs = logs
        self.console = console
        self.verbose = verbose
        self.tails: dict[str, collections.deque[str]] = collections.defaultdict(lambda: collections.deque(maxlen=keep))
        self._partial = ""
        self._skipping = False
        self._notes: list[str] = []
        self._colour_ok = _isatty(target)
        self._log_gate = SparseGate()

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
        """Echo the notices `_line` noted, now that no partial line is held (echo may write here)."""
        notes, self._notes = self._notes, []
        for note in notes:
            self.tracker.echo(note)

    def _line(self, line: str) -> None:
        text = plain(line)
        step = self.tracker.current
        update = parse_progress_line(text)
        if update is not None:
            if self.logs is not None and self._log_gate.allow(f"{step}/{update.task}", update, time.monotonic()):
                self.logs.write(step or RUN_LOG, f"{INDENT}{update.text()}")
            if self.console is not None:
                self.console.progress(update, prefix=f"{INDENT}{step}: " if step else INDENT)
            return
        if self.logs is not None:
            self.logs.write(step or RUN_LOG, text)
        if self.verbose:
            self._show(line, text)
        if step:
            self.tails[step].append(text)
            if m := _RESUMED.search(text):
                self._notes.append(f"==> {step}: {m.group(1)} (checkpoint of an earlier run)")

    def _show(self, line: str, text: str) -> None:
        """Write a line on the real stdout, without kfp's dump of the executor input."""
        if self._skipping:
            # The dump ends with its top-level brace, indented only by kfp's streamed-log prefix.
            if text.rstrip() == "    }" or "[KFP Executor" in text:
                self._skipping = False
            if "[KFP Executor" not in text:
                return
        if text.rstrip().endswith("Got executor_input:"):
            self._skipping = True
            self.target.write((line if self._colour_ok else text) + " (not shown: it is in the step's log)\n")
            return
        self.target.write((line if self._colour_ok else text) + "\n")

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


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def tracking(
    echo: Callable[[str], None],
    logs: RunLogs | None = None,
    console: Console | None = None,
    verbose: bool = False,
    headline: Callable[[str, bool], str] | None = None,
) -> Iterator[tuple[StepTracker, Tee]]:
    """Track kfp.local's steps and route its stdout (see `Tee`) for the duration of a run."""
    tracker = StepTracker(echo, headline, console.colour if console is not None else None)
    tee = Tee(sys.stdout, tracker, logs, console, verbose)
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
