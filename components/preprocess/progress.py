"""Live progress of the Beam pipeline on this machine: photos processed, counted by the workers in files.

The DirectRunner's workers are other processes (`direct_running_mode=multi_processing`), and Beam
reports their counters only once the pipeline is over. So each photo-processing DoFn instance
keeps its running count in a small file of its own, in a folder the step makes; a thread of the
step's process sums the files and reports through `core.progress`. A remote runner (Dataflow)
shows its own progress, and gets no folder.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

from core.progress import Progress

COUNT_SUFFIX = ".count"


class PhotoCounter:
    """A worker's running count of processed photos, in its own file of `folder` (picklable: holds a path)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.count = 0
        self._name = ""

    def add(self, photos: int) -> None:
        """Count `photos` more and rewrite the file (whole: the reader never sees half a number)."""
        self.count += photos
        if not self._name:
            self._name = f"{os.getpid()}-{uuid.uuid4().hex}"
        path = Path(self.folder) / (self._name + COUNT_SUFFIX)
        partial = path.with_suffix(".partial")
        try:
            partial.write_text(str(self.count))
            os.replace(partial, path)
        except OSError:
            pass  # progress is a courtesy: a full disk or a removed folder must not fail the photos

    def __getstate__(self) -> dict[str, object]:
        # A copy shipped to another worker starts its own count in its own file.
        return {"folder": self.folder, "count": 0, "_name": ""}


def counted(folder: str | Path) -> int:
    """Photos counted so far by every worker writing in `folder`."""
    total = 0
    for path in Path(folder).glob(f"*{COUNT_SUFFIX}"):
        with contextlib.suppress(OSError, ValueError):
            total += int(path.read_text() or 0)
    return total


@contextlib.contextmanager
def watching(total: int | None, interval_s: float = 0.5) -> Iterator[str]:
    """A fresh counting folder for the workers; until the block ends a thread reports their sum as progress.

    Yields:
        The folder to give `PhotoCounter`s.
    """
    with tempfile.TemporaryDirectory(prefix="photo-progress-") as folder:
        progress = Progress("processing photos", total, "photos")
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(interval_s):
                done = counted(folder)
                if done:
                    progress.update(min(done, total) if total else done)

        thread = threading.Thread(target=watch, name="photo-progress", daemon=True)
        thread.start()
        try:
            yield folder
        finally:
            stop.set()
            thread.join()
        progress.finish()
