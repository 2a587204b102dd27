"""`fashion serve` in a child process: one helper for `fashion run`'s detached server and the tests' attached ones.

`ServerProcess` starts `python -m pipeline.cli serve` with this interpreter on the ports it is
given, waits until they accept connections, writes the server's output to a log file and stops
it. Detached (`fashion run`), the server gets a session of its own so it outlives the CLI; the
next run or `stop_pid` finds it again by its pid alone. Attached (tests, benchmarks), it is a
plain child, stopped when its `with` block ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from core.errors import StepError


def port_open(host: str, port: int) -> bool:
    """True when something accepts TCP connections on `host:port`."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def pid_alive(pid: int) -> bool:
    """True while a process with this id exists (one of another user included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_pid(pid: int, timeout_s: float = 20.0) -> bool:
    """SIGTERM the process `pid`, SIGKILL it when still up after `timeout_s`; True when it was running.

    For a server known only by its pid (a detached one an earlier `fashion run` started): there
    is no Popen to wait on, so this polls, and reaps it when it happens to be our own child.
    """
    if not pid_alive(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return True


class ServerProcess:
    """`fashion serve` on `host`, `grpc_port` and `rest_port` (0: no REST API), plus `args`; a context manager.

    Args:
        args: further `fashion serve` flags (`--model_base_path=...`, `--model_config_file=...`).
        host: the interface both ports bind to.
        grpc_port: the gRPC port.
        rest_port: the REST port; 0 serves no REST API.
        log_path: where the server's stdout and stderr are appended (none: discarded).
        detached: run in a session of its own, so it outlives this process and its terminal.
        env: environment variables set for the server on top of this process's.
        cwd: the server's working directory (none: this process's).
        ready_timeout_s: how long `start` waits for the ports to accept connections.
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        host: str,
        grpc_port: int,
        rest_port: int,
        log_path: str | Path | None = None,
        detached: bool = False,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        ready_timeout_s: float = 180.0,
    ) -> None:
        self.host = host
        self.grpc_port = grpc_port
        self.rest_port = rest_port
        self.command = [
            sys.executable,
            "-m",
            "pipeline.cli",
            "serve",
            f"--host={host}",
            f"--port={grpc_port}",
            f"--rest_api_port={rest_port}",
            *args,
        ]
        self.log_path = Path(log_path) if log_path else None
        self.detached = detached
        self.env = dict(env or {})
        self.cwd = cwd
        self.ready_timeout_s = ready_timeout_s
        self.process: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        """The gRPC target, host:port."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        """Base URL of the REST API."""
        return f"http://{self.host}:{self.rest_port}"

    @property
    def pid(self) -> int:
        """The server's process id (once started)."""
        if self.process is None:
            raise RuntimeError("the server process has not been started")
        return self.process.pid

    def ready(self) -> bool:
        """True when the gRPC port (and the REST port, when there is one) accepts connections."""
        ports = [self.grpc_port, *([self.rest_port] if self.rest_port else [])]
        return all(port_open(self.host, port) for port in ports)

    def start(self) -> ServerProcess:
        """Start the server and block until its ports accept connections.

        Raises:
            StepError: the process exited first, or its ports did not open within `ready_timeout_s`.
        """
        environment = {**os.environ, **self.env} if self.env else None
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(self.log_path, "ab") if self.log_path else contextlib.nullcontext(subprocess.DEVNULL)
        # The child keeps its own descriptor of the log; this process closes its copy at once.
        with log_file as out:
            self.process = subprocess.Popen(  # noqa: S603 (our own CLI)
                self.command,
                cwd=self.cwd,
                env=environment,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=self.detached,
            )
        deadline = time.monotonic() + self.ready_timeout_s
        while not self.ready():
            if self.process.poll() is not None:
                raise StepError(f"the serving process exited with code {self.process.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise StepError(
                    f"the serving process did not open {self.target} within {self.ready_timeout_s:.0f}s: "
                    f"{self.log_tail()}"
                )
            time.sleep(0.3)
        return self

    def log_tail(self, lines: int = 5) -> str:
        """The last lines of the server's log, joined for an error message."""
        if self.log_path and self.log_path.is_file():
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        return "(no log)"

    def stop(self, timeout_s: float = 20.0) -> None:
        """Terminate the server and wait for it; kill it when it does not exit within `timeout_s`."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
