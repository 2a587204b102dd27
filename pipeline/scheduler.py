"""Scheduled retraining on one machine: cron schedules kept in the work directory, and the scheduler that fires them.

`fashion schedule` without a cluster host stores each schedule in `<workdir>/schedules/schedules.json`
and starts `fashion schedule --serve` in the background. That process runs `fashion run` with the
schedule's parameters at every slot of its cron expression (croniter computes the slots, with the
usual cron meaning of every field). What it promises:

- **Durable**: the schedules are a file; a restarted scheduler reads it again and carries on, and
  the store is re-read every second, so `--cron` and `--delete` take effect on a running scheduler.
- **No catch-up**: slots are counted from the moment the scheduler (re)starts; a slot it wakes up
  to more than `MISFIRE_GRACE_S` late (a suspended machine) is recorded as missed, not run.
- **One retrain at a time** per work directory: a fire takes `retrain.lock` (an advisory `flock`)
  and hands it to the `fashion run` process, which holds it until it exits, even when the scheduler
  is stopped meanwhile. A slot that comes while the lock is held is skipped and recorded.
- **A record of every run**: each fire writes its own log, `<workdir>/schedules/<name>/<slot>.log`,
  and one JSON line per event (started, finished, skipped, missed) to `<name>/history.jsonl`; the
  scheduler prints the same events to `<workdir>/schedules/scheduler.log`. The run itself is an
  ordinary `fashion run`: its steps, MLflow run and registry versions are those of any run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from core.errors import StepError

SCHEDULES_DIR = "schedules"
STORE_FILE = "schedules.json"
STORE_LOCK_FILE = "schedules.lock"
SCHEDULER_PID_FILE = "scheduler.pid"
SCHEDULER_LOG_FILE = "scheduler.log"
RETRAIN_LOCK_FILE = "retrain.lock"
HISTORY_FILE = "history.jsonl"
# How late a slot may be found and still run (a busy tick); later than that it was missed.
MISFIRE_GRACE_S = 60.0
# How often the scheduler wakes at most: it re-reads the store and reaps a finished run.
TICK_S = 1.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# What a `fashion run` exit code means (pipeline.cli's EXIT_* codes).
_OUTCOMES = {0: "succeeded", 1: "failed", 2: "refused its settings", 3: "gate rejected the model", 130: "interrupted"}


@dataclasses.dataclass(frozen=True)
class LocalSchedule:
    """One schedule of the local scheduler.

    Attributes:
        name: unique in its work directory; also the folder of its run logs.
        cron: six fields, seconds first (the form Kubeflow's scheduler takes too).
        run_args: the arguments of the `fashion run` each slot starts.
        cwd: the folder `fashion run` starts in (where the schedule was created: relative paths hold).
        created: when it was created, ISO 8601 with the offset.
    """

    name: str
    cron: str
    run_args: tuple[str, ...]
    cwd: str
    created: str

    def command(self) -> list[str]:
        """The process a slot starts: `fashion run` with this schedule's arguments, on this interpreter."""
        return [sys.executable, "-m", "pipeline.cli", "run", *self.run_args]


def now() -> datetime.datetime:
    """The local time, with its offset (slots follow the machine's time zone, daylight saving included)."""
    return datetime.datetime.now().astimezone()


def schedules_dir(workdir: str | Path) -> Path:
    """`<workdir>/schedules`: the store, the locks, the scheduler's log and one folder of run logs per schedule."""
    return Path(workdir).resolve() / SCHEDULES_DIR


def parse_cron(expression: str) -> str:
    """The expression in the six-field form, seconds first, after checking each field's values.

    Five fields (`0 3 * * 1`: minute hour day month weekday) get a leading `0` seconds field, as
    for a Kubeflow recurring run; weekdays count from Sunday (0 or 7) and take names (`MON-FRI`).

    Raises:
        StepError: the expression has another number of fields or a value out of range.
    """
    from croniter import croniter

    from pipeline.cluster import kfp_cron

    six = kfp_cron(expression)
    if not croniter.is_valid(six, second_at_beginning=True):
        raise StepError(
            f"cron {expression!r}: a field is out of range (seconds 0-59, minutes 0-59, hours 0-23, "
            "days 1-31, months 1-12 or JAN-DEC, weekdays 0-7 or SUN-SAT)"
        )
    return six


def next_slot(cron: str, after: datetime.datetime) -> datetime.datetime:
    """The first slot of a six-field `cron` strictly after `after` (an aware datetime)."""
    from croniter import croniter

    return croniter(cron, after, second_at_beginning=True).get_next(datetime.datetime)


def check_name(name: str) -> str:
    """The schedule name, which names its log folder too.

    Raises:
        StepError: it is empty or has characters other than letters, digits, `.`, `_` and `-`.
    """
    if not _NAME.match(name):
        raise StepError(
            f"schedule name {name!r}: use letters, digits, '.', '_' and '-' (it names the folder of its logs)"
        )
    return name


# --- the store ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _store_locked(folder: Path) -> Iterator[None]:
    """Hold the store's lock: a read-modify-write of the store by two commands cannot lose one's change."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / STORE_LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _read_store(folder: Path) -> list[LocalSchedule]:
    path = folder / STORE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except json.JSONDecodeError as err:
        raise StepError(f"{path}: not a schedule store ({err}); move it away to start afresh") from None
    return [LocalSchedule(**{**item, "run_args": tuple(item["run_args"])}) for item in data.get("schedules", [])]


def _write_store(folder: Path, schedules: list[LocalSchedule]) -> None:
    # Written whole and renamed into place: a reader sees the old store or the new one, never half.
    path = folder / STORE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"schedules": [dataclasses.asdict(s) for s in schedules]}, indent=2) + "\n")
    os.replace(tmp, path)


def load_schedules(workdir: str | Path) -> list[LocalSchedule]:
    """The work directory's schedules, in the order they were created (none when it has no store)."""
    return _read_store(schedules_dir(workdir))


def add_schedule(workdir: str | Path, schedule: LocalSchedule) -> None:
    """Store a new schedule.

    Raises:
        StepError: the work directory has a schedule of that name already.
    """
    folder = schedules_dir(workdir)
    with _store_locked(folder):
        schedules = _read_store(folder)
        if any(s.name == schedule.name for s in schedules):
            raise StepError(
                f"a schedule named {schedule.name!r} exists in {Path(workdir)}: delete it first "
                f"(fashion schedule --delete {schedule.name} --workdir {Path(workdir)}) or pick another --name"
            )
        _write_store(folder, [*schedules, schedule])


def remove_schedule(workdir: str | Path, name: str) -> LocalSchedule:
    """Delete a schedule from the store (its run logs stay); the scheduler stops firing it within a second.

    Raises:
        StepError: there is no schedule of that name.
    """
    folder = schedules_dir(workdir)
    with _store_locked(folder):
        schedules = _read_store(folder)
        found = [s for s in schedules if s.name == name]
        if not found:
            known = ", ".join(s.name for s in schedules) or "none"
            raise StepError(f"no schedule named {name!r} in {Path(workdir)} (schedules there: {known})")
        _write_store(folder, [s for s in schedules if s.name != name])
    return found[0]


def history(workdir: str | Path, name: str) -> list[dict[str, Any]]:
    """The recorded events of one schedule, oldest first: started, finished, skipped, missed."""
    path = schedules_dir(workdir) / name / HISTORY_FILE
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


# --- locks -------------------------------------------------------------------------------------


def _try_lock(path: Path, patience_s: float = 0.0) -> int | None:
    """An open descriptor of `path` holding its exclusive `flock`, or None when another process holds it.

    Args:
        path: the lock file (created when missing).
        patience_s: how long to keep trying: a holder that is only probing the lock (`--list`) lets
            go within microseconds, one that runs keeps it.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + patience_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.01)


def _write_holder(fd: int, holder: dict[str, Any]) -> None:
    """Say in a held lock file who holds it, for the messages of those who find it taken."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text() or "{}")
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def scheduler_pid(workdir: str | Path) -> int | None:
    """The pid of the scheduler serving this work directory, None when none runs."""
    path = schedules_dir(workdir) / SCHEDULER_PID_FILE
    if not path.exists():
        return None
    fd = _try_lock(path)
    if fd is not None:  # nobody holds it: no scheduler runs
        os.close(fd)
        return None
    return _read_holder(path).get("pid")


def running_retrain(workdir: str | Path) -> dict[str, Any] | None:
    """Who holds the retrain lock (pid, schedule, slot, log), None when no scheduled retrain runs."""
    path = schedules_dir(workdir) / RETRAIN_LOCK_FILE
    if not path.exists():
        return None
    fd = _try_lock(path)
    if fd is not None:
        os.close(fd)
        return None
    return _read_holder(path)


def start_scheduler(workdir: str | Path, timeout_s: float = 60.0) -> tuple[int, bool]:
    """Start `fashion schedule --serve` for this work directory in the background, unless one runs.

    Returns:
        The scheduler's pid, and whether this call started it.

    Raises:
        StepError: the scheduler it started exited, or did not take its lock within `timeout_s`.
    """
    running = scheduler_pid(workdir)
    if running:
        return running, False
    folder = schedules_dir(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / SCHEDULER_LOG_FILE
    command = [sys.executable, "-m", "pipeline.cli", "schedule", "--serve", "--workdir", str(folder.parent)]
    with open(log_path, "ab") as log:
        # Its own session: closing the terminal that created the schedule does not stop the scheduler.
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + timeout_s
    while (pid := scheduler_pid(workdir)) is None:
        if proc.poll() is not None:
            raise StepError(f"the scheduler exited with code {proc.returncode} at start; see {log_path}")
        if time.monotonic() > deadline:
            raise StepError(f"the scheduler did not start within {timeout_s:.0f} s; see {log_path}")
        time.sleep(0.1)
    return pid, pid == proc.pid


# --- the scheduler process ---------------------------------------------------------------------


@dataclasses.dataclass
class _Run:
    """The `fashion run` this scheduler started and has not reaped yet."""

    name: str
    slot: datetime.datetime
    proc: subprocess.Popen
    log: IO[bytes]
    log_path: Path
    started: float


class Scheduler:
    """The loop of `fashion schedule --serve`: fire each schedule's slots, one retrain at a time.

    Args:
        workdir: the work directory whose schedules it serves.
        out: where its event lines go (its log when started in the background).
    """

    def __init__(self, workdir: str | Path, out: IO[str] | None = None) -> None:
        self.folder = schedules_dir(workdir)
        self.out = out or sys.stdout
        self.slots: dict[str, tuple[str, datetime.datetime]] = {}  # name -> (cron, next slot)
        self.run: _Run | None = None

    def say(self, text: str) -> None:
        """One event line, with the time."""
        self.out.write(f"{now():%Y-%m-%d %H:%M:%S%z} fashion schedule: {text}\n")
        self.out.flush()

    def record(self, name: str, event: str, **fields: Any) -> None:
        """Append an event to the schedule's history."""
        folder = self.folder / name
        folder.mkdir(parents=True, exist_ok=True)
        entry = {"event": event, "at": now().isoformat(timespec="seconds"), **fields}
        with open(folder / HISTORY_FILE, "a") as handle:
            handle.write(json.dumps(entry) + "\n")

    def tick(self, at: datetime.datetime) -> float | None:
        """Reap a finished run, follow the store, fire what is due at `at`.

        Returns:
            Seconds until the next wake-up, or None when nothing is left to do (no schedule, no run).
        """
        self._reap()
        schedules = {s.name: s for s in _read_store(self.folder)}
        for name in [n for n in self.slots if n not in schedules]:
            del self.slots[name]
            self.say(f"{name}: deleted, no further runs")
        for name, schedule in schedules.items():
            if name not in self.slots or self.slots[name][0] != schedule.cron:
                # Counted from now: slots that passed while no scheduler ran are not caught up.
                self.slots[name] = (schedule.cron, next_slot(schedule.cron, at))
                self.say(f"{name}: cron '{schedule.cron}', first run at {self.slots[name][1]:%Y-%m-%d %H:%M:%S}")
        for name, schedule in schedules.items():
            cron, slot = self.slots[name]
            if slot > at:
                continue
            late_s = (at - slot).total_seconds()
            if late_s > MISFIRE_GRACE_S:
                self.say(f"{name}: missed the slot of {slot:%Y-%m-%d %H:%M:%S} ({late_s:.0f} s late), not caught up")
                self.record(name, "missed", slot=slot.isoformat(), late_s=round(late_s, 1))
            else:
                self._fire(schedule, slot)
            # The next slot after now, not after the one just handled: never a burst of past slots.
            self.slots[name] = (cron, next_slot(cron, at))
        if not schedules and self.run is None:
            return None
        waits = [(slot - at).total_seconds() for _, slot in self.slots.values()]
        return max(0.05, min([TICK_S, *waits]))

    def _fire(self, schedule: LocalSchedule, slot: datetime.datetime) -> None:
        name = schedule.name
        if self.run is not None:
            reason = (
                f"the run of {self.run.name} started at {self.run.slot:%H:%M:%S} (pid {self.run.proc.pid}) "
                "is still running"
            )
            self._skip(name, slot, reason)
            return
        lock_path = self.folder / RETRAIN_LOCK_FILE
        fd = _try_lock(lock_path, patience_s=0.2)
        if fd is None:
            holder = _read_holder(lock_path)
            reason = f"another retrain holds {lock_path} (pid {holder.get('pid')}, schedule {holder.get('schedule')})"
            self._skip(name, slot, reason)
            return
        log_path = self.folder / name / f"{slot:%Y%m%d-%H%M%S}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115 (closed when the run is reaped)
        command = schedule.command()
        try:
            log.write(f"# fashion schedule {name}: cron '{schedule.cron}', slot {slot.isoformat()}\n".encode())
            log.write(f"# {' '.join(command)}\n".encode())
            log.flush()
            # The child inherits the locked descriptor: the lock lives as long as the retrain does.
            proc = subprocess.Popen(
                command,
                cwd=schedule.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(fd,),
                start_new_session=True,
            )
        except OSError as err:
            os.close(fd)
            log.close()
            self.say(f"{name}: could not start the run of {slot:%H:%M:%S}: {err}")
            self.record(name, "failed to start", slot=slot.isoformat(), error=str(err))
            return
        _write_holder(fd, {"pid": proc.pid, "schedule": name, "slot": slot.isoformat(), "log": str(log_path)})
        os.close(fd)
        self.run = _Run(name, slot, proc, log, log_path, time.monotonic())
        self.say(f"{name}: started the run of {slot:%H:%M:%S} (pid {proc.pid}), log {log_path}")
        self.record(name, "started", slot=slot.isoformat(), pid=proc.pid, log=str(log_path))

    def _skip(self, name: str, slot: datetime.datetime, reason: str) -> None:
        self.say(f"{name}: skipped the slot of {slot:%H:%M:%S}: {reason}")
        self.record(name, "skipped", slot=slot.isoformat(), reason=reason)

    def _reap(self) -> None:
        run = self.run
        if run is None or run.proc.poll() is None:
            return
        code, seconds = run.proc.returncode, round(time.monotonic() - run.started, 1)
        outcome = _OUTCOMES.get(code, "failed")
        run.log.write(f"# exit code {code} ({outcome}) after {seconds:.0f} s\n".encode())
        run.log.close()
        self.run = None
        self.say(f"{run.name}: the run of {run.slot:%H:%M:%S} {outcome} (exit code {code}, {seconds:.0f} s)")
        self.record(
            run.name, "finished", slot=run.slot.isoformat(), exit_code=code, outcome=outcome, seconds=seconds,
            log=str(run.log_path),
        )  # fmt: skip


def serve(workdir: str | Path, out: IO[str] | None = None) -> int:
    """Run the scheduler of a work directory until no schedule is left or it is told to stop (SIGTERM).

    A second scheduler for the same work directory exits at once. Stopping leaves a retrain that is
    running to finish (it holds the retrain lock); the next scheduler skips slots until it ends.

    Returns:
        0.
    """
    scheduler = Scheduler(workdir, out)
    folder = scheduler.folder
    folder.mkdir(parents=True, exist_ok=True)
    fd = _try_lock(folder / SCHEDULER_PID_FILE, patience_s=0.5)
    if fd is None:
        scheduler.say(f"a scheduler already serves {folder.parent} (pid {scheduler_pid(workdir)})")
        return 0
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        _write_holder(fd, {"pid": os.getpid(), "started": now().isoformat(timespec="seconds")})
        scheduler.say(f"serving the schedules of {folder.parent} (pid {os.getpid()})")
        while not stop.is_set():
            wait = scheduler.tick(now())
            if wait is None and _stop_when_still_empty(folder, fd):
                fd = None
                scheduler.say("no schedule left: the scheduler stops (`fashion schedule --cron` starts it again)")
                break
            stop.wait(TICK_S if wait is None else wait)
        if stop.is_set():
            left = f"; the run in progress (pid {scheduler.run.proc.pid}) finishes" if scheduler.run else ""
            scheduler.say(f"stopped{left}")
    finally:
        signal.signal(signal.SIGTERM, previous)
        if fd is not None:
            os.close(fd)
    return 0


def _stop_when_still_empty(folder: Path, fd: int) -> bool:
    """Release the scheduler's lock if the store is still empty, under the store's lock.

    A schedule created meanwhile is either seen here, or created after the lock was released, in
    which case its command finds no scheduler and starts one: never a schedule nobody serves.
    """
    with _store_locked(folder):
        if _read_store(folder):
            return False
        os.close(fd)
        return True
