"""The log files of one local run: `<run folder>/logs/<step>.log` for every step that ran, `run.log` for the rest.

Everything a step's process prints (its own records, kfp's executor, TensorFlow, Beam, MLflow,
gRPC) goes to its step's file; `run.log` gets what the `fashion run` process itself logs (kfp.local's
task records, the server's start, the final prediction's client) and its C-level stderr. Nothing
is coloured: terminal codes are taken out.

kfp.local names the run folder (`<pipeline root>/<pipeline>-<timestamp>`) and makes it only when
the first step's executor makes its output folders, so lines written before it exists are held
in memory and written there as soon as it appears. A run that never made one (kfp failed before
its first step) leaves its lines in `<work dir>/logs/<timestamp>/`.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from pipeline.console import plain

LOGS_DIR = "logs"
RUN_LOG = "run"


class RunLogs:
    """One run's log files, written as lines arrive; a context manager that closes them.

    Args:
        find_run_folder: returns this run's folder once kfp.local has made it, else None.
        fallback_dir: where the logs go when no run folder ever appears.
        folder: write the logs here from the start instead (`--log-dir`).
    """

    def __init__(
        self, find_run_folder: Callable[[], Path | None], fallback_dir: Path, folder: Path | None = None
    ) -> None:
        self._find = find_run_folder
        self._fallback = fallback_dir
        self.folder = Path(folder) if folder else None
        self._held: dict[str, list[str]] = {}
        self._files: dict[str, TextIO] = {}
        self._lock = threading.Lock()
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, stream: str = RUN_LOG) -> Path | None:
        """The file of one stream (a step name, or `run`), once the folder is known."""
        return self.folder / f"{stream}.log" if self.folder else None

    def write(self, stream: str, text: str) -> None:
        """Append `text` (one or more lines, colour codes removed) to the stream's file."""
        line = plain(text) if text.endswith("\n") else plain(text) + "\n"
        with self._lock:
            if self.folder is None:
                run = self._find()
                if run is None:
                    self._held.setdefault(stream, []).append(line)
                    return
                self._open(run / LOGS_DIR)
            self._file(stream).write(line)

    def writer(self, stream: str = RUN_LOG) -> _StreamWriter:
        """A text stream whose writes go to one stream's file (for a logging handler)."""
        return _StreamWriter(self, stream)

    def append_file(self, stream: str, path: Path) -> None:
        """Append the text of a file (another writer's output, e.g. captured stderr) to a stream."""
        if path.is_file() and path.stat().st_size:
            self.write(stream, path.read_text(errors="replace"))

    def close(self) -> Path | None:
        """Write out held lines (to the fallback folder when no run folder appeared) and close every file.

        Returns:
            The folder the logs are in, or None when nothing was ever written.
        """
        with self._lock:
            if self.folder is None and self._held:
                run = self._find()
                if run is not None:
                    self._open(run / LOGS_DIR)
                else:
                    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
                    self._open(self._fallback / stamp)
            for handle in self._files.values():
                handle.close()
            self._files.clear()
            return self.folder

    def _open(self, folder: Path) -> None:
        """Settle on `folder` and write out what was held (caller holds the lock)."""
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        held, self._held = self._held, {}
        for stream, lines in held.items():
            self._file(stream).write("".join(lines))

    def _file(self, stream: str) -> TextIO:
        handle = self._files.get(stream)
        if handle is None:
            handle = open(self.folder / f"{stream}.log", "a", encoding="utf-8", buffering=1)  # noqa: SIM115
            self._files[stream] = handle
        return handle

    def __enter__(self) -> RunLogs:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _StreamWriter:
    """`write`/`flush` onto one stream of a `RunLogs`, splitting at newlines."""

    def __init__(self, logs: RunLogs, stream: str) -> None:
        self.logs, self.stream = logs, stream
        self._partial = ""

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self.logs.write(self.stream, line)
        return len(text)

    def flush(self) -> None:
        """Lines are written as they complete; nothing is buffered but a partial line."""
