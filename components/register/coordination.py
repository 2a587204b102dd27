"""Registrations at once: locks for the embedded store, liveness of unfinished runs, retries after clashes.

An embedded SQLite store lives on the local file system, so callers take OS file locks next to it:
one while the store is created (MLflow's migrations must not run twice at once), one per pipeline
run while its MLflow run and version are found or made. A tracking server shares no file system,
so there the find-or-create itself converges (`tracking.claim_run`, `Registry.find_or_register`),
and a run being logged proves it is alive with a heartbeat tag that waiting callers watch.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import tenacity

from core.errors import StepError

log = logging.getLogger(__name__)

T = TypeVar("T")

LOCKS_SUFFIX = ".locks"
STORE_LOCK_WAIT_S = 120.0
# A registration logs a SavedModel (seconds to minutes on a remote artifact store); callers of the
# same pipeline run wait that long for it before giving up.
REGISTRATION_WAIT_S = 900.0
LOCK_POLL_S = 0.1
HEARTBEAT_TAG = "registration_heartbeat"
HEARTBEAT_S = 3.0
# An unfinished run whose heartbeat has not moved for this long was left by a crashed attempt.
STALE_S = 30.0
RACE_ATTEMPTS = 5
RACE_FIRST_DELAY_S = 0.5
# SQLite busy; two creations of a new store at once (alembic, or a table or column made a moment
# ago by the other one); two first settings of one alias at once (both insert it; SQLite, Postgres
# and MySQL word the clash differently): the next attempt finds the store ready, or the alias there.
_STORE_RACE = re.compile(
    r"database (table )?is locked|online migration expected to match one row|"
    r"table \S+ already exists|duplicate column name|(unique constraint|duplicate).*registered_model_alias",
    re.IGNORECASE,
)


# The standard library's flock rather than a lock package: none is installed (filelock would wrap
# this same call), and a file next to the database is seen by every process that opens it.
@contextlib.contextmanager
def file_lock(path: Path, what: str, wait_s: float) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` (created if missing), waiting at most `wait_s` for it.

    The lock belongs to the open file, so the kernel drops it when the holder exits or is killed:
    a crashed registration never leaves it held.

    Raises:
        StepError: another holder kept it for longer than `wait_s`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    told = False
    with open(path, "a") as handle:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() > deadline:
                raise StepError(
                    f"{what}: another registration has held {path} for over {wait_s:.0f}s; wait for it to "
                    "finish, or stop it and run again"
                )
            if not told:
                log.info("%s: waiting for another registration to finish (%s)", what, path)
                told = True
            time.sleep(LOCK_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _locks_dir(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + LOCKS_SUFFIX)


@contextlib.contextmanager
def store_lock(db_path: Path | None) -> Iterator[None]:
    """Serialise opening (and so creating) the SQLite store at `db_path`.

    Nothing is locked for a server (`db_path` None), nor for a store in a folder this process cannot
    write: it only reads such a store and creates nothing in it.
    """
    if db_path is None or not os.access(db_path.parent, os.W_OK):
        yield
        return
    with file_lock(_locks_dir(db_path) / "store.lock", f"open the MLflow store {db_path}", STORE_LOCK_WAIT_S):
        yield


@contextlib.contextmanager
def pipeline_run_lock(db_path: Path | None, pipeline_run_id: str) -> Iterator[bool]:
    """One registration of a pipeline run at a time on the SQLite store at `db_path`.

    Args:
        db_path: the store's database file; None for a server, where no file system is shared.
        pipeline_run_id: the pipeline run being registered.

    Yields:
        True when the lock is held (the caller is then the only one logging this pipeline run, so an
        unfinished run of it was left by a crashed attempt); False without a database file, where
        callers converge through the store instead.
    """
    if db_path is None:
        yield False
        return
    # Hashed: a pipeline run id may hold characters that do not belong in a file name.
    name = "run-" + hashlib.sha256(pipeline_run_id.encode()).hexdigest()[:24] + ".lock"
    with file_lock(_locks_dir(db_path) / name, f"register pipeline run {pipeline_run_id}", REGISTRATION_WAIT_S):
        yield True


def is_store_race(err: BaseException) -> bool:
    """Whether an error (or one it was raised from) is a clash with a concurrent caller: worth retrying."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _STORE_RACE.search(str(current)):
            return True
        current = current.__cause__ or current.__context__
    return False


def retry_store_race(
    action: Callable[[], T],
    what: str,
    attempts: int = RACE_ATTEMPTS,
    first_delay_s: float = RACE_FIRST_DELAY_S,
) -> T:
    """Run `action`, again after a growing, random pause while it fails with a clash (`is_store_race`).

    Only for actions that are safe to repeat (they find what an earlier attempt made). Network
    failures are not retried here: the pipeline step retries the whole registration for those
    (`core.retry`), and retrying them twice over would multiply the waits.

    Raises:
        Exception: the first error that is no clash, or the last one once `attempts` are used up.
    """

    def _before_sleep(state: tenacity.RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        log.warning(
            "%s: held up by a concurrent change (%s); trying again in %.1fs", what, reason, state.upcoming_sleep
        )

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        # Random pauses: callers that collided once do not collide again.
        wait=tenacity.wait_random_exponential(multiplier=first_delay_s, max=first_delay_s * 2**attempts),
        retry=tenacity.retry_if_exception(is_store_race),
        before_sleep=_before_sleep,
        reraise=True,
    )
    return retrying(action)


def now_ms() -> int:
    """Wall-clock milliseconds, the unit of MLflow timestamps."""
    return int(time.time() * 1000)


class Heartbeat:
    """Keeps the `registration_heartbeat` tag of a run being logged moving, in a background thread.

    Args:
        client: the MlflowClient of the run.
        run_id: the run.
        interval_s: seconds between beats.
    """

    def __init__(self, client: Any, run_id: str, interval_s: float = HEARTBEAT_S) -> None:
        self._client, self._run_id, self._interval_s = client, run_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._client.set_tag(self._run_id, HEARTBEAT_TAG, str(now_ms()))
            except Exception as err:  # a missed beat is harmless; the logging itself reports real failures
                log.debug("heartbeat of run %s missed: %s", self._run_id, err)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class StaleWatch:
    """Tells an unfinished run that is being logged from one a crashed attempt left behind.

    A run is stale when its last heartbeat (or its start, without one) is older than `stale_s` by this
    machine's clock, or when its heartbeat has not changed during `stale_s` of watching (which holds
    whatever the other machine's clock says).

    Args:
        stale_s: how long a live registration may go without a heartbeat.
    """

    def __init__(self, stale_s: float = STALE_S) -> None:
        self._stale_s = stale_s
        self._seen: dict[str, tuple[str, float]] = {}

    def is_stale(self, run: Any) -> bool:
        """Whether `run` (an MLflow Run) has shown no sign of life for too long."""
        beat = run.data.tags.get(HEARTBEAT_TAG) or str(run.info.start_time or 0)
        try:
            age_s = (now_ms() - int(beat)) / 1000
        except ValueError:
            age_s = 0.0
        if age_s > self._stale_s:
            return True
        run_id, watched = run.info.run_id, time.monotonic()
        last_beat, since = self._seen.get(run_id, (None, watched))
        if last_beat != beat:
            self._seen[run_id] = (beat, watched)
            return False
        return watched - since > self._stale_s
