"""The process of one pipeline step: progress where the runner reads it, and an exit that does not wait on teardown.

A step is a fresh Python that runs one function under kfp's executor and ends. Tearing down an
interpreter that has loaded TensorFlow (or gRPC and MLflow) takes 1.5-3 s on a 2-core machine:
module finalisers, not work. Once the executor has written the step's output file, nothing of the
step is left to do, so `start_step` arms an exit hook that ends the process at once, and only
then: a step that raised, that never wrote its outputs, or that still has child processes exits
the ordinary way with its ordinary exit code. Its last log line says whether the step loaded
TensorFlow: only training, evaluation and export should.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import time
from pathlib import Path

from pipeline.console import report_progress

log = logging.getLogger(__name__)

# kfp's executor (kfp.dsl.executor_main) takes the step's ExecutorInput as this flag's JSON value.
EXECUTOR_INPUT_FLAG = "--executor_input"


def start_step() -> None:
    """Call first in a step body: progress to the runner (`report_progress`), and the prompt exit armed."""
    report_progress()
    output_file = executor_output_file(sys.argv)
    if output_file is not None:
        arm_prompt_exit(output_file)


def executor_output_file(argv: list[str]) -> Path | None:
    """The file kfp's executor writes the step's outputs to, read from its command line; None if absent."""
    for i, arg in enumerate(argv):
        if arg == EXECUTOR_INPUT_FLAG and i + 1 < len(argv):
            raw = argv[i + 1]
        elif arg.startswith(EXECUTOR_INPUT_FLAG + "="):
            raw = arg.split("=", 1)[1]
        else:
            continue
        try:
            path = json.loads(raw).get("outputs", {}).get("outputFile")
        except (ValueError, AttributeError):
            return None
        return Path(path) if path else None
    return None


def arm_prompt_exit(output_file: Path) -> None:
    """At interpreter exit, end the process at once if `output_file` was written after now and nothing failed.

    An uncaught exception (seen through `sys.excepthook`), an output file older than this call or
    missing, or a live child process of `multiprocessing` leaves the exit to Python.
    """
    armed_at = time.time()
    failed = False
    previous_hook = sys.excepthook

    def note_failure(kind, value, tb):  # noqa: ANN001 - sys.excepthook's signature
        nonlocal failed
        failed = True
        previous_hook(kind, value, tb)

    def exit_if_done() -> None:
        loaded = "with TensorFlow loaded" if "tensorflow" in sys.modules else "without TensorFlow"
        log.info("step process ends after %.1f s, %s", time.time() - armed_at, loaded)
        if failed or not _written_since(output_file, armed_at) or _has_children():
            return
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                return  # a stream that cannot flush: let Python's own exit report it
        os._exit(0)

    sys.excepthook = note_failure
    # atexit runs its handlers last-registered first, so the handlers of libraries the step imports
    # later (TensorFlow's, MLflow's) still run before this one; only module teardown is skipped.
    atexit.register(exit_if_done)


def _written_since(path: Path, since: float) -> bool:
    try:
        # Filesystem timestamps may be coarser than time.time(): allow one second.
        return path.stat().st_mtime >= since - 1.0
    except OSError:
        return False


def _has_children() -> bool:
    if "multiprocessing" not in sys.modules:
        return False
    import multiprocessing

    return bool(multiprocessing.active_children())
