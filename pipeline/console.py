"""What a person sees of a `fashion` command: its own lines, live progress, results; library chatter goes to a log file.

Without `-v` a command shows the lines it prints, one live progress line for long work and the
project's own warnings; every log record (TensorFlow's, Beam's, kfp's, MLflow's, gRPC's, urllib3's,
the project's INFO) and the C-level stderr of the libraries (TensorFlow's and absl's start-up lines,
CUDA probes) go to one log file per command, whose path the command prints last. `-v` shows
everything live as well. Colour and the redrawn progress line are for a terminal only: a pipe or a
file gets plain lines, and progress at most every `SPARSE_INTERVAL_S`.

A step run by the local runner (`pipeline.local`) is another process: `report_progress` in the
step turns its progress records into `PROGRESS_PREFIX` lines the runner recognises in the step's
output and renders the same way.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from core.progress import LOGGER_NAME, Update, update_of

# Set by the local runner for the step processes it starts: their progress goes to it as lines.
PROGRESS_TO_RUNNER_ENV = "FASHION_PROGRESS_TO_RUNNER"
PROGRESS_PREFIX = "fashion-progress: "
# Off a terminal, a progress line at most this often: a CI log gets a heartbeat, not a flood.
SPARSE_INTERVAL_S = 30.0
DEFAULT_LOG_DIR = "runs/logs"
# Loggers whose warnings are the project's own, worth a console line.
PROJECT_LOGGERS = ("components", "core", "pipeline", "serving", "fashion", "__main__")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_COLOURS = {"green": "32", "red": "31", "yellow": "33", "cyan": "36", "bold": "1"}


def plain(text: str) -> str:
    """`text` without terminal escape codes (colours, cursor moves)."""
    return _ANSI.sub("", text)


def is_project_logger(name: str) -> bool:
    """Whether a logger belongs to this project (not to a library)."""
    return name.split(".", 1)[0] in PROJECT_LOGGERS


class Console:
    """The terminal of one command: permanent lines, and one live progress line the next line replaces.

    On a terminal the progress line is redrawn in place and statuses are coloured; elsewhere (a
    pipe, a file, CI) every line is plain and a progress line is written only when nothing was
    written for `sparse_interval_s`, so a log of a long run stays short.

    Args:
        stream: where lines go: a text stream, or `"stdout"`/`"stderr"` for whatever `sys.stdout` or
            `sys.stderr` is at each write (`c_stderr_into` swaps `sys.stderr` for the console's copy).
        tty: whether `stream` is a terminal (default: ask it).
        sparse_interval_s: off a terminal, the least time between a line and a progress line.
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(
        self,
        stream: TextIO | str = "stdout",
        tty: bool | None = None,
        sparse_interval_s: float = SPARSE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self.tty = _isatty(self.stream) if tty is None else tty
        self.sparse_interval_s = sparse_interval_s
        self._clock = clock
        self._last_line = clock()
        self._live = False
        self._lock = threading.RLock()

    @property
    def stream(self) -> TextIO:
        """The stream written to now."""
        return getattr(sys, self._stream) if isinstance(self._stream, str) else self._stream

    def colour(self, text: str, colour: str) -> str:
        """`text` in `colour` on a terminal; as it is elsewhere."""
        return f"\x1b[{_COLOURS[colour]}m{text}\x1b[0m" if self.tty and colour in _COLOURS else text

    def line(self, text: str) -> None:
        """Write one permanent line (in place of the live progress line, if one is shown)."""
        with self._lock:
            self._clear_live()
            self.stream.write((text if self.tty else plain(text)) + "\n")
            self.stream.flush()
            self._last_line = self._clock()

    def progress(self, update: Update, prefix: str = "") -> None:
        """Show where a piece of work stands: redrawn in place on a terminal, a sparse line elsewhere.

        A final update only clears the live line: the line that follows (a step's end, the
        command's result) says how it ended.
        """
        text = f"{prefix}{update.text()}"
        with self._lock:
            if self.tty:
                if update.final:
                    self._clear_live()
                    return
                width = shutil.get_terminal_size((100, 24)).columns - 1
                self.stream.write("\r" + text[:width] + "\x1b[K")
                self.stream.flush()
                self._live = True
            elif not update.final and self._clock() - self._last_line >= self.sparse_interval_s:
                self.line(text)

    def close(self) -> None:
        """Clear the live progress line, if one is shown."""
        with self._lock:
            self._clear_live()

    def _clear_live(self) -> None:
        if self._live:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._live = False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class ConsoleHandler(logging.Handler):
    """Progress records as the console's live line, the project's warnings and errors as lines; nothing else.

    Args:
        console: where the lines go.
        show_info: show the project's INFO records too, time-stamped (a server's log is its output).
        library_warnings: show the libraries' warnings and errors too (for a command with no log file).
    """

    def __init__(self, console: Console, show_info: bool = False, library_warnings: bool = False) -> None:
        super().__init__(logging.INFO)
        self.console = console
        self.show_info = show_info
        self.library_warnings = library_warnings
        self.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        """Render one record, or drop it (it is in the log file, when the command has one)."""
        try:
            update = update_of(record)
            if update is not None:
                self.console.progress(update)
                return
            ours = is_project_logger(record.name)
            if self.show_info and (ours or record.levelno >= logging.WARNING):
                self.console.line(self.format(record))
            elif record.levelno >= logging.WARNING and (ours or self.library_warnings):
                level = "error" if record.levelno >= logging.ERROR else "warning"
                where = "" if ours else f" ({record.name})"
                self.console.line(self.console.colour(f"{level}{where}: {record.getMessage()}", "yellow"))
        except Exception:  # a broken console must not break the command; logging reports it
            self.handleError(record)


class SparseGate:
    """Lets each task's progress through at most every `interval_s`, and always its final update."""

    def __init__(self, interval_s: float = SPARSE_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}

    def allow(self, key: str, update: Update, now: float) -> bool:
        """Whether to keep `update` of the task named `key`, seen at `now` (seconds)."""
        if update.final:
            self._last.pop(key, None)
            return True
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            return False
        self._last[key] = now
        return True


class SparseProgress(logging.Filter):
    """Passes each task's progress records at most every `interval_s` (and its final one); other records always.

    For a log file or a pod's log: the live line a terminal redraws five times a second would
    otherwise become thousands of lines.
    """

    def __init__(self, interval_s: float = SPARSE_INTERVAL_S) -> None:
        super().__init__()
        self._gate = SparseGate(interval_s)

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep the record unless it is a progress update too soon after the last one kept."""
        update = update_of(record)
        return update is None or self._gate.allow(update.task, update, record.created)


# Loggers that say nothing worth keeping at INFO, even in a log file: Alembic's migrations of a new
# MLflow store (MLflow keeps them at WARNING when it configures logging itself), Beam's note on every
# string type hint and its workers' life cycle, each a record relayed as protobuf text.
CHATTY_LOGGERS = (
    "alembic",
    "sqlalchemy.engine",
    "apache_beam.typehints.native_type_compatibility",
    "apache_beam.runners.portability.local_job_service",
)


def quiet_chatty_loggers() -> None:
    """Keep `CHATTY_LOGGERS` at WARNING: their warnings and errors still reach the log."""
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def log_file_handler(target: str | Path | TextIO, verbose: bool = False) -> logging.Handler:
    """A handler writing every record to a file (a path to append to, or an open text stream); progress sparsely."""
    if isinstance(target, str | Path):
        handler: logging.Handler = logging.FileHandler(target, encoding="utf-8")
    else:
        handler = logging.StreamHandler(target)
    handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    handler.addFilter(SparseProgress())
    return handler


def command_log_path(command: str, log_dir: str | Path | None = None) -> Path:
    """`<log_dir>/<command>-<YYYYmmdd-HHMMSS>.log`: one log file per command run (default folder `runs/logs`)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(log_dir or DEFAULT_LOG_DIR) / f"{command}-{stamp}.log"


@contextlib.contextmanager
def logging_to(
    console: Console, log_target: str | Path | TextIO | None, verbose: bool = False, show_info: bool = False
) -> Iterator[None]:
    """For the length of one command: every record into the log, progress and the project's warnings on the console.

    Without a log (`log_target` None) the libraries' warnings are shown too, so none is lost;
    `show_info` shows the project's INFO records as well (`fashion serve`). With `verbose`, every
    record (DEBUG included) is written to stderr as it comes. Python warnings become records
    (`py.warnings`), so they land in the log too.
    """
    root = logging.getLogger()
    saved = root.level, root.handlers[:]
    handlers: list[logging.Handler] = []
    if log_target is not None:
        handlers.append(log_file_handler(log_target, verbose))
    if verbose:
        live = logging.StreamHandler(sys.stderr)
        live.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
        handlers.append(live)
    else:
        handlers.append(ConsoleHandler(console, show_info=show_info, library_warnings=log_target is None))
    root.handlers = handlers
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        quiet_chatty_loggers()
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for handler in handlers:
            handler.close()
        root.setLevel(saved[0])
        root.handlers = saved[1]
        console.close()


@contextlib.contextmanager
def c_stderr_into(path: str | Path) -> Iterator[None]:
    """Point file descriptor 2 at `path` (appending) while Python's own `sys.stderr` keeps writing to the console.

    TensorFlow, absl, gRPC's core and CUDA write their start-up lines to descriptor 2 directly,
    below Python, and no environment variable silences them all (TensorFlow 2.21's absl lines ignore
    `TF_CPP_MIN_LOG_LEVEL`); processes started meanwhile inherit the redirection. Where
    `sys.stderr` is descriptor 2 it is swapped for a copy of the original, so the command's own
    messages and tracebacks still reach the console.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.flush()
    saved_fd = os.dup(2)
    target = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    python_stderr = sys.stderr
    swapped = None
    if _fileno(python_stderr) == 2:
        swapped = io.TextIOWrapper(
            os.fdopen(os.dup(saved_fd), "wb", buffering=0),
            encoding=getattr(python_stderr, "encoding", None) or "utf-8",
            errors="backslashreplace",
            line_buffering=True,
        )
        sys.stderr = swapped
    os.dup2(target, 2)
    os.close(target)
    try:
        yield
    finally:
        if swapped is not None:
            with contextlib.suppress(OSError, ValueError):
                swapped.flush()
            sys.stderr = python_stderr
            swapped.close()
        os.dup2(saved_fd, 2)
        os.close(saved_fd)


def _fileno(stream: TextIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return None


@contextlib.contextmanager
def command_output(console: Console, log_path: Path, verbose: bool = False, show_info: bool = False) -> Iterator[Path]:
    """One in-process command's output: records and library stderr into `log_path`, the console kept for people.

    With `verbose` the libraries' stderr stays on the console and every record is shown live;
    the log file is written either way. `show_info`: the project's INFO records are shown too
    (a server's log is its output).

    Yields:
        The log file's path.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if not verbose:
            stack.enter_context(c_stderr_into(log_path))
        stack.enter_context(logging_to(console, log_path, verbose, show_info))
        yield log_path


def report_progress() -> None:
    """In a pipeline step's process: send progress where it is read, and keep `CHATTY_LOGGERS` quiet.

    Under the local runner (which sets `PROGRESS_TO_RUNNER_ENV`) each update becomes one
    `PROGRESS_PREFIX` line on stdout for the runner to render; on a cluster the updates stay log
    records of the step, at most one per task every `SPARSE_INTERVAL_S`, in its pod's log.
    """
    quiet_chatty_loggers()
    progress = logging.getLogger(LOGGER_NAME)
    progress.setLevel(logging.INFO)
    if os.environ.get(PROGRESS_TO_RUNNER_ENV):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(_RunnerFormatter())
        progress.handlers = [handler]
        progress.propagate = False
    elif not any(isinstance(f, SparseProgress) for f in progress.filters):
        progress.addFilter(SparseProgress())


class _RunnerFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        update = update_of(record)
        if update is None:
            return super().format(record)
        return PROGRESS_PREFIX + json.dumps(update.to_dict(), separators=(",", ":"))


def parse_progress_line(line: str) -> Update | None:
    """The update in a `PROGRESS_PREFIX` line a step printed (any prefix before it, such as kfp's indent), else None."""
    at = line.find(PROGRESS_PREFIX)
    if at < 0:
        return None
    try:
        return Update.from_dict(json.loads(line[at + len(PROGRESS_PREFIX) :]))
    except (ValueError, TypeError):
        return None
